"""Top-1 / top-5 error with the centre crop or 10 views (paper sections 4.1 and 6).

10 views: the four corner patches, the centre patch and the mirror of each; the network's softmax
outputs over the ten are averaged. Ensembles average the softmax outputs of several networks.

`./run.sh eval RUN_DIR` writes RUN_DIR/eval/<split>-<views>.json: the errors, the per-class errors,
the checkpoint (path, step, sha256 of its files) and the shards (sha256 from manifest.json), with
the softmax outputs beside it (<split>-<views>.probs.npy) for ensembles and figures.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from data_prep import shards
from repro import checkpoint, data, files, machine, rundir
from repro.errors import ArgumentParser, UserError, at_least, device
from repro.model import AlexNet, set_precision
from repro.parallel import OneDevice
from repro.progress import Progress


def topk_misses(probs: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> torch.Tensor:
    """How many rows' labels are not among their k highest scores, for each k: a tensor on the
    scores' device, so that the caller chooses when to wait for it (the trainer sums a metrics
    line's worth on the GPU and reads it once)."""
    k_max = min(max(ks), probs.shape[1])
    hit = probs.topk(k_max, dim=1).indices == labels[:, None]
    return torch.stack([(~hit[:, :min(k, k_max)].any(dim=1)).sum() for k in ks])


def topk_errors(probs: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[int, float]:
    """Fraction of rows whose label is not among the k highest scores, for each k."""
    if not len(labels):
        return {k: float("nan") for k in ks}
    return {k: m / len(labels) for k, m in zip(ks, topk_misses(probs, labels, ks).tolist())}


def average_views(logits: torch.Tensor, views: int) -> torch.Tensor:
    """Softmax of each view, averaged over the `views` consecutive rows of each image."""
    probs = F.softmax(logits.float(), dim=1)
    return probs.view(-1, views, probs.shape[1]).mean(dim=1)


@dataclass
class Errors:
    top1: float
    top5: float
    loss: float  # mean negative log of the averaged probability of the true class
    images: int

    def as_dict(self) -> dict:
        return {"top1_error": self.top1, "top5_error": self.top5, "loss": self.loss, "images": self.images}


def errors(probs: torch.Tensor, labels: torch.Tensor) -> Errors:
    e = topk_errors(probs, labels)
    nll = -probs[torch.arange(len(labels)), labels].clamp_min(1e-12).log().mean().item()
    return Errors(e[1], e[5], nll, len(labels))


def per_class_errors(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> np.ndarray:
    """float [C, 2]: top-1 and top-5 error of each class (nan for a class with no images)."""
    top5 = probs.topk(min(5, probs.shape[1]), dim=1).indices
    miss1 = (top5[:, 0] != labels).float()
    miss5 = 1.0 - (top5 == labels[:, None]).any(dim=1).float()
    out = np.full((num_classes, 2), np.nan)
    for c in labels.unique().tolist():
        rows = labels == c
        out[c] = [miss1[rows].mean().item(), miss5[rows].mean().item()]
    return out


# ------------------------------------------------------------------ both views in one pass

VIEW_CHOICES = ("centre", "ten", "both")


@torch.no_grad()
def predict_views(model, root, split: str, views: str, batch_size: int, workers: int, normalizer,
                  progress=None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """({"centre": probs, "ten": probs}, labels) for every image of a split, in file order.

    views "centre" reads the centre crop only; "ten" and "both" read the ten views once and take
    the centre crop's softmax from among them (the centre patch is one of the ten), so "both"
    costs no more than "ten".
    """
    model.eval()
    device = model.placement.output_device
    dtype = next(model.parameters()).dtype  # float32; float64 under train.dtype = "float64"
    read = "centre" if views == "centre" else "ten"
    offsets = data.view_offsets(read)
    centre = int(np.flatnonzero((offsets == data.view_offsets("centre")).all(axis=1))[0])
    out: dict[str, list] = {"centre": [], "ten": []} if views == "both" else {views: []}
    labels = []
    for images, y, view_offsets in data.eval_batches(root, split, read, batch_size, workers,
                                                     pin_memory=device.type == "cuda"):
        x = normalizer.views(images, view_offsets).to(device, dtype, non_blocking=True)
        p = F.softmax(model(x).float(), dim=1).view(len(y), len(offsets), -1)  # (B, V, C)
        if "centre" in out:
            out["centre"].append(p[:, centre].cpu())
        if "ten" in out:
            out["ten"].append(p.mean(dim=1).cpu())
        labels.append(y)
        if progress is not None:
            progress.update(len(y))
    return {k: torch.cat(v) for k, v in out.items()}, torch.cat(labels)


def ensemble(probs: list[torch.Tensor]) -> torch.Tensor:
    """The paper's "5 CNNs": the softmax outputs of several nets, averaged (section 6)."""
    return torch.stack(probs).mean(dim=0)


# --------------------------------------------------------------------------------- a run

def load_run(run_dir: str | Path, device: str = "cpu", ckpt: str | Path | None = None, overrides=()):
    """(model, cfg): a one-device model built from the run's config.toml (with `overrides`,
    section.key=value), with the weights of its latest checkpoint (or `ckpt`), in eval mode."""
    run_dir = Path(run_dir)
    if not (run_dir / rundir.CONFIG).is_file():
        raise UserError(f"{run_dir} is not a run directory ({rundir.CONFIG} missing)")
    cfg = rundir.read_config(run_dir, overrides)
    ckpt = ckpt or latest_checkpoint(run_dir)
    set_precision(cfg.speed)
    model = AlexNet.from_config(cfg, placement=OneDevice(resolve_device(device)))
    checkpoint.load_into(ckpt, model)
    return model.eval(), cfg


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest sound checkpoint of a run (a damaged newer one is reported on stderr)."""
    ckpt = checkpoint.newest_sound(run_dir)
    if ckpt is None and checkpoint.latest(run_dir) is not None:
        raise UserError(f"every checkpoint of {run_dir} is damaged (see the warnings above): restore "
                        f"the files or train again")
    if ckpt is None:
        raise UserError(f"{run_dir} has no finished checkpoint: train it first "
                        f"(./run.sh train CONFIG --run-dir {run_dir})")
    return ckpt


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def data_root(run_dir: str | Path, override: str | Path | None = None) -> Path:
    """The prepared data a run was trained on (its provenance.json), or `override` (--data)."""
    if override:
        return Path(override)
    path = Path(run_dir) / rundir.PROVENANCE
    try:
        root = Path(json.loads(path.read_text())["data"]["root"])
    except (OSError, ValueError, KeyError):
        raise UserError(f"{path} does not say which data the run used: pass --data DIR") from None
    if not root.is_absolute() and not root.exists() and (rundir.REPO / root).exists():
        root = rundir.REPO / root  # relative to the repository the run was started from
    if not root.exists():
        raise UserError(f"{run_dir} was trained on the data in {root} (its {rundir.PROVENANCE} says so), which is "
                        f"not there now: if it moved, pass --data DIR (where it is now)")
    return root


def checkpoint_record(ckpt: Path) -> dict:
    """Path, step, epoch and the sha256 of every file of a checkpoint."""
    state = checkpoint.read_state(ckpt)
    recorded = checkpoint.digests(ckpt)  # checked when the checkpoint was chosen
    return {"path": str(ckpt), "step": state.get("step"), "epoch": state.get("epoch"),
            "sha256": {f.name: recorded.get(f.name) or files.sha256(f) for f in sorted(ckpt.glob("*.pt"))}}


def data_record(root: Path, split: str) -> dict:
    """Where the data is, its year, its classes (and the subset they are, if `prepare --classes`
    made one), and the sha256 of the split's shards (from manifest.json)."""
    manifest = data.read_manifest(root)
    listed = manifest.get("splits", {}).get(split, {}).get("shards", [])
    return {"root": str(root), "year": manifest.get("year"), "split": split,
            "classes": len(manifest["classes"]), "subset": manifest.get("subset"),
            "shards": {s["name"]: s["sha256"] for s in listed}}


# ------------------------------------------------------------------------ eval records

@dataclass
class EvalOptions:
    split: str | None = None  # None: the run's data.eval_split
    views: str = "both"  # "centre", "ten" or "both"
    data: str | Path | None = None  # None: the run's own data (provenance.json)
    batch_size: int | None = None  # None: the run's eval.batch_size
    workers: int | None = None  # None: the run's data.workers
    device: str = "auto"
    reuse: bool = True  # reuse results of the same checkpoint on the same shards
    quiet: bool = False
    other_data: bool = False  # allow shards other than the run's own (same classes); own records kept


def record_path(run_dir: Path, split: str, views: str, tag: str = "") -> Path:
    return Path(run_dir) / "eval" / f"{split}-{views}{tag}.json"


def evaluate_run(run_dir: str | Path, opts: EvalOptions) -> dict[str, dict]:
    """Evaluate a run's latest checkpoint: {views: record}, one record per view kind asked for.

    Each record is written to RUN_DIR/eval/<split>-<views>.json, its softmax outputs beside it
    (.probs.npy, float32 [N, C], for ensembles and figures). A record of the same checkpoint
    files on the same shards is reused instead of evaluated again (unless opts.reuse is False).
    """
    run_dir = Path(run_dir)
    ckpt, cfg, split, root, tag = check_run(run_dir, opts)
    ckpt_rec, data_rec = checkpoint_record(ckpt), data_record(root, split)
    kinds = ["centre", "ten"] if opts.views == "both" else [opts.views]
    found = {k: _cached(run_dir, split, k, ckpt_rec, data_rec, tag) for k in kinds} if opts.reuse else {}
    todo = [k for k in kinds if found.get(k) is None]
    if todo:
        model, cfg = load_run(run_dir, opts.device, ckpt)
        normalizer = data.make_normalizer(root, cfg, model.placement.output_device)
        n = len(data.open_split(root, split))
        with Progress(n, f"eval {run_dir.name} {split} ({'+'.join(todo)})",
                      quiet=opts.quiet) as bar:
            probs, labels = predict_views(model, root, split, "both" if len(todo) == 2 else todo[0],
                                          cfg.eval.batch_size if opts.batch_size is None else opts.batch_size,
                                          cfg.data.workers if opts.workers is None else opts.workers,
                                          normalizer, bar)
        for k in todo:
            found[k] = write_record(run_dir, split, k, probs[k], labels, root,
                                    {"run": run_dir.name, "checkpoint": ckpt_rec, "data": data_rec}, tag)
    return {k: found[k] for k in kinds}


def check_run(run_dir: Path, opts: EvalOptions):
    """(newest sound checkpoint, config, split, data root, record tag) of a run; one UserError
    line if any is missing, or if the data is not the run's (see check_data)."""
    if not (Path(run_dir) / rundir.CONFIG).is_file():
        raise UserError(f"{run_dir} is not a run directory ({rundir.CONFIG} missing)")
    ckpt = latest_checkpoint(run_dir)
    cfg = rundir.read_config(run_dir)
    split = opts.split or cfg.data.eval_split
    root = data_root(run_dir, opts.data)
    data.open_split(root, split)
    return ckpt, cfg, split, root, check_data(run_dir, root, split, opts.other_data)


def check_data(run_dir: Path, root: Path, split: str | None, other_ok: bool = False) -> str:
    """The data a run is evaluated (or predicts) with must have the classes the run was trained
    on, and, for `split`, the shards it recorded: other shards are refused unless `other_ok`,
    and their records then get a tag of their own ("@" + a hash of the shards), so that they
    never replace the run's own. Returns the tag ("" for the run's own data)."""
    recorded = rundir.recorded_data(run_dir)
    if recorded is None:
        return ""  # a run from before data identities were recorded
    current = rundir.data_identity(root)
    classes = rundir.data_differences(recorded, current, splits=[])
    if classes:
        raise UserError(f"{root} has {classes[0]}: not the classes {run_dir} was trained on "
                        f"({recorded.get('root')}); its outputs would be read as other classes")
    if split is None:
        return ""
    differences = rundir.data_differences(recorded, current, splits=[split])
    if not differences:
        return ""
    if not other_ok:
        raise UserError(f"{root} is not the data {run_dir} recorded ({recorded.get('root')}): "
                        f"{'; '.join(differences)}. To evaluate on other data on purpose add --other-data "
                        f"(its results are written beside the run's own, never over them)")
    shard_ids = json.dumps(current["shards"].get(split, {}), sort_keys=True).encode()
    return "@" + hashlib.sha256(shard_ids).hexdigest()[:12]


def _cached(run_dir: Path, split: str, views: str, ckpt_rec: dict, data_rec: dict, tag: str = "") -> dict | None:
    path = record_path(run_dir, split, views, tag)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    same = (rec.get("checkpoint", {}).get("sha256") == ckpt_rec["sha256"]
            and rec.get("data", {}).get("shards") == data_rec["shards"])
    if not (same and (path.parent / rec.get("probs_file", "")).is_file()):
        return None
    return {**rec, "record_file": str(path), "reused": True}


def write_record(run_dir: Path, split: str, views: str, probs: torch.Tensor, labels: torch.Tensor,
                 root: Path, about: dict, tag: str = "") -> dict:
    """Errors, per-class errors and provenance of one evaluation -> eval/<split>-<views><tag>.json."""
    path = record_path(run_dir, split, views, tag)
    path.parent.mkdir(parents=True, exist_ok=True)
    probs_file = path.name.removesuffix(".json") + ".probs.npy"
    files.atomic_write(path.parent / probs_file, lambda f: np.save(f, probs.numpy().astype(np.float32)))
    names = data.class_names(root)
    per_class = per_class_errors(probs, labels, probs.shape[1])
    counts = np.bincount(labels.numpy(), minlength=probs.shape[1])
    rec = {"split": split, "views": views, **errors(probs, labels).as_dict(), **about,
           "probs_file": probs_file, "evaluated": rundir.now(), "git": rundir.git_commit(),
           "hardware": machine.hardware(), "versions": rundir.versions(),
           "per_class": [{"index": c, "wnid": names[c][0] if c < len(names) else "",
                          "words": names[c][1] if c < len(names) else "", "images": int(counts[c]),
                          "top1_error": _num(per_class[c, 0]), "top5_error": _num(per_class[c, 1])}
                         for c in range(probs.shape[1])]}
    files.atomic_write(path, json.dumps(rec, indent=1) + "\n")
    return {**rec, "record_file": str(path)}  # where it went (not stored in the file)


def _num(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def load_probs(run_dir: Path, rec: dict) -> torch.Tensor:
    return torch.from_numpy(np.load(Path(run_dir) / "eval" / rec["probs_file"]))


def evaluate_ensemble(run_dirs: list, opts: EvalOptions) -> dict[str, dict]:
    """Average the softmax outputs of several runs on the first run's data; the records go to
    the first run's eval/<split>-<views>-ensemble.json with every member's checkpoint."""
    first = Path(run_dirs[0])
    split = opts.split or rundir.read_config(first).data.eval_split
    root = data_root(first, opts.data)
    member_opts = dataclasses.replace(opts, split=split, data=root)
    members = [(Path(r), evaluate_run(r, member_opts)) for r in run_dirs]
    tag = "-ensemble" + check_data(first, root, split, opts.other_data)  # other data: beside, not over
    labels = torch.from_numpy(np.concatenate(data.open_split(root, split).labels))
    out = {}
    for views in members[0][1]:
        probs = [load_probs(r, recs[views]) for r, recs in members]
        if len({p.shape for p in probs}) != 1:
            raise UserError("the runs of an ensemble must predict the same classes "
                            f"(shapes {sorted({tuple(p.shape) for p in probs})})")
        about = {"run": first.name, "ensemble": [
            {"run": r.name, "run_dir": str(r), "checkpoint": recs[views]["checkpoint"],
             "top1_error": recs[views]["top1_error"], "top5_error": recs[views]["top5_error"]}
            for r, recs in members], "data": data_record(root, split)}
        out[views] = write_record(first, split, views, ensemble(probs), labels, root, about, tag)
    return out


# ------------------------------------------------------------------------ the command

def parse_args(argv):
    p = ArgumentParser(
        prog="./run.sh eval", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Top-1 / top-5 error of a run's latest checkpoint with the centre crop and with "
                    "10 views (the softmax outputs of the four corner and centre patches and their "
                    "mirrors, averaged; section 6), per-class errors, and ensembles (softmax outputs "
                    "of several runs averaged, the paper's \"5 CNNs\").",
        epilog="Writes RUN_DIR/eval/<split>-<views>.json (errors, per-class errors, the checkpoint's "
               "and the shards' sha256) and <split>-<views>.probs.npy (softmax outputs); with "
               "--ensemble, <split>-<views>-ensemble.json in the first run.\n\nExamples:\n"
               "  ./run.sh eval runs/alexnet_2gpu                    # centre crop and 10 views\n"
               "  ./run.sh eval runs/a --ensemble runs/b runs/c      # 3 CNNs averaged")
    p.add_argument("run_dir", help="a run directory (runs/<name>)")
    p.add_argument("--views", choices=VIEW_CHOICES, default="both",
                   help="centre crop, 10 views, or both from one pass over the ten (default both)")
    p.add_argument("--split", choices=shards.SPLITS, default=None,
                   help="split to evaluate (default the run's data.eval_split: val for ILSVRC-2012, "
                        "test for ILSVRC-2010)")
    p.add_argument("--ensemble", nargs="+", default=[], metavar="RUN_DIR",
                   help="more runs whose softmax outputs are averaged with this one's")
    p.add_argument("--data", help="prepared shards (default: the run's own, from provenance.json)")
    p.add_argument("--batch-size", type=at_least(1), help="images per forward pass (x10 inputs for 10 views)")
    p.add_argument("--workers", type=at_least(0), help="loader processes (default the run's data.workers)")
    p.add_argument("--device", type=device, default="auto", help="cpu, cuda, cuda:1, ... (default: a GPU if any)")
    p.add_argument("--again", action="store_true",
                   help="evaluate even if results of the same checkpoint on the same shards exist")
    p.add_argument("--other-data", action="store_true",
                   help="with --data: allow shards other than those the run recorded (same classes); the "
                        "results go to eval/<split>-<views>@<shards hash>.json, never over the run's own")
    return p.parse_args(argv)


def main(argv) -> int:
    args = parse_args(argv)
    if args.other_data and not args.data:
        raise UserError("--other-data goes with --data (the other shards to evaluate on)")
    runs = [args.run_dir, *args.ensemble]
    seen: dict = {}
    for r in runs:  # the same run twice would count its predictions twice
        key = Path(r).resolve()
        if key in seen:
            raise UserError(f"{r} is given twice ({seen[key]} and {r}): an ensemble averages different runs")
        seen[key] = r
    opts = EvalOptions(args.split, args.views, args.data, args.batch_size, args.workers,
                       args.device, reuse=not args.again, other_data=args.other_data)
    recs = evaluate_ensemble(runs, opts) if args.ensemble else evaluate_run(args.run_dir, opts)
    first = next(iter(recs.values()))
    what = f"ensemble of {len(runs)} runs" if args.ensemble else first["checkpoint"]["path"]
    print(f"{args.run_dir}: {first['split']}, {first['images']:,} images, {what}")
    for views, rec in recs.items():
        label = "10 views" if views == "ten" else "centre crop"
        print(f"  {label:<12} top-1 {rec['top1_error']:.2%}  top-5 {rec['top5_error']:.2%}")
    reused = [rec["record_file"] for rec in recs.values() if rec.get("reused")]
    written = [rec["record_file"] for rec in recs.values() if not rec.get("reused")]
    if written:
        print("written " + ", ".join(written))
    if reused:
        print("reused " + ", ".join(reused) + " (the same checkpoint on the same shards: nothing to evaluate; "
              "--again evaluates anew)")
    return 0
