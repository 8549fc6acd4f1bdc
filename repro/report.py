"""`./run.sh report RUN_DIR...`: the paper's tables with this project's runs beside them.

Writes results/<name>/report.md, report.json (the same numbers as data) and the figures beside
them: learning curves, Figure 3 (conv1 kernels per run) and Figure 4 (top-5 predictions and
nearest training images, first run). Each run is evaluated with `repro.evaluate` (centre crop and
10 views in one pass), or its eval records are reused when they belong to the same checkpoint
files and shards. Published numbers come from results/published.json only (repro.tables).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from repro import checkpoint, data, evaluate, figures, files, rundir, tables
from repro.errors import ArgumentParser, UserError, at_least, device

DASH = "—"


def parse_args(argv):
    p = ArgumentParser(
        prog="./run.sh report", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The paper's tables with this project's runs beside them. Writes "
        "results/<name>/report.md, report.json (the same numbers) and PNG figures: Tables 1 and 2 and "
        "the ablations against the paper and code 145, learning curves, Figure 3 (conv1 kernels), "
        "Figure 4 (top-5, nearest training images), provenance. Evaluates each run (centre crop and "
        "10 views in one pass) unless its eval records are up to date.",
        epilog="Rows that no given run produced show no number of this project ('not run here').\n"
               "Ensembles appear when `./run.sh eval RUN --ensemble ...` has been run first.\n\n"
               "Examples:\n  ./run.sh report runs/alexnet_2gpu\n"
               "  ./run.sh report runs/alexnet_2gpu runs/ablation_no_lrn runs/ablation_nonoverlap_pool "
               "--name ablations")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (runs/<name>)")
    p.add_argument("--name", help="report name: results/<name>/ (default: the first run's name)")
    p.add_argument("--out", default="results", help="parent directory of the report (default results/)")
    p.add_argument("--views", choices=evaluate.VIEW_CHOICES, default="both",
                   help="views to evaluate (default both: centre crop and 10 views, one pass)")
    p.add_argument("--data", help="prepared shards for every run (default: each run's own)")
    p.add_argument("--figure4-images", type=at_least(1), default=5, help="validation images in Figure 4 (default 5)")
    p.add_argument("--neighbours", type=at_least(1), default=6, help="nearest training images shown per image (default 6)")
    p.add_argument("--neighbour-pool", type=at_least(1), default=10000,
                   help="training images searched for nearest neighbours, the first N in stored "
                        "(shuffled) order; the report states the number (default 10000)")
    p.add_argument("--batch-size", type=at_least(1), help="images per forward pass (default the run's eval.batch_size)")
    p.add_argument("--workers", type=at_least(0), help="loader processes (default the run's data.workers)")
    p.add_argument("--device", type=device, default="auto", help="cpu, cuda, ... (default: a GPU if any)")
    p.add_argument("--published", default=str(tables.PUBLISHED), help="the published numbers (default results/published.json)")
    return p.parse_args(argv)


def main(argv) -> int:
    args = parse_args(argv)
    if args.name is not None and (not args.name or args.name in (".", "..") or "/" in args.name or "\\" in args.name):
        raise UserError(f"--name {args.name!r}: a plain name (the report goes to {args.out}/<name>/), "
                        f"not a path; --out chooses where")
    published = tables.load_published(args.published)
    run_dirs = [Path(r) for r in args.run_dirs]
    opts = evaluate.EvalOptions(views=args.views, data=args.data, batch_size=args.batch_size,
                                workers=args.workers, device=args.device)
    for r in run_dirs:  # every missing piece is reported before any long work starts
        evaluate.check_run(r, opts)
    out = files.make_dir(Path(args.out) / (args.name or run_dirs[0].name), "--out")
    names = _unique([r.name for r in run_dirs])
    records = [evaluate.evaluate_run(r, opts) for r in run_dirs]
    runs = [tables.describe(n, rundir.read_config(r), rec, published)
            for n, r, rec in zip(names, run_dirs, records)]
    runs += _ensembles(run_dirs, records, published)
    report = {"name": out.name, "generated": rundir.now(), "git": rundir.git_commit(),
              "published_file": str(args.published),
              "runs": [_provenance(n, r, rec, run) for n, r, rec, run in zip(names, run_dirs, records, runs)],
              "ensembles": [{"name": e.name, "members": e.members, "results": e.results}
                            for e in runs if e.members],
              "tables": [{"id": t["id"], "title": t["title"], "split": t["split"],
                          "lines": tables.table_lines(t, runs)} for t in published["tables"]],
              "ablations": tables.ablation_lines(published, runs),
              "reproductions": tables.reproduction_lines(published, runs),
              "figures": _figures(out, names, run_dirs, records, args)}
    files.atomic_write(out / "report.json", json.dumps(report, indent=1) + "\n")
    files.atomic_write(out / "report.md", render(report, published))
    print(f"report written: {out / 'report.md'} (numbers in {out / 'report.json'})")
    return 0


def _unique(names: list[str]) -> list[str]:
    return [n if names.count(n) == 1 else f"{n}-{i}" for i, n in enumerate(names)]


def _ensembles(run_dirs, records, published) -> list[tables.Run]:
    """Ensembles evaluated earlier (eval --ensemble) on the same split as their first run."""
    found = []
    for r, rec in zip(run_dirs, records):
        split = next(iter(rec.values()))["split"]
        ens = {v: json.loads(p.read_text()) for v in rec
               if (p := evaluate.record_path(r, split, v, "-ensemble")).is_file()}
        if not ens:
            continue
        about = next(iter(ens.values()))["ensemble"]
        dirs = [_member_dir(m, r, i) for i, m in enumerate(about)]
        stale = _stale(about, dirs, next(iter(rec.values()))["checkpoint"])
        if stale:  # numbers of other checkpoints than the runs shown: left out, and said
            others = " ".join(str(d) for d in dirs[1:] if d is not None)
            again = (f"`./run.sh eval {r} --ensemble {others}" + ("" if split == rundir.read_config(r).data.eval_split
                                                                  else f" --split {split}") + "` makes it anew")
            print(f"report: left out the ensemble record of {r} ({stale}); "
                  + (again if others else "an ensemble needs other runs"), file=sys.stderr)
            continue
        cfgs = [rundir.read_config(d) for d in dirs]
        run = tables.describe(f"ensemble of {len(about)} ({r.name})", rundir.read_config(r), ens,
                              published, members=[d.name for d in dirs])
        run.changes = sorted({c for cfg in cfgs for c, test in tables.ABLATIONS.items() if test(cfg)})
        found.append(run)
    return found


def _member_dir(member: dict, first: Path, index: int) -> Path | None:
    """Where a member run of an ensemble record is now: the first is the run reported; the others
    as `eval` was given them, else beside the first (the record was made from another directory,
    or the runs moved together); None if neither is a run."""
    if index == 0:
        return first
    given = Path(member["run_dir"])
    for candidate in (given, first.parent / given.name):
        if (candidate / rundir.CONFIG).is_file():
            return candidate
    return None


def _stale(members: list[dict], dirs: list[Path | None], first: dict) -> str:
    """Why an ensemble record no longer stands for its runs ('' if it does): a member run gone, or
    one whose checkpoint now evaluated (the newest sound one) is not the one the record averaged.
    `first`: the checkpoint record of the first run, just evaluated (not checked again here)."""
    for i, (m, d) in enumerate(zip(members, dirs)):
        if d is None:
            return f"its member {m['run_dir']} is gone"
        ckpt = first if i == 0 else _checkpoint_now(d)
        if ckpt is None:
            return f"its member {d} has no sound checkpoint"
        if ckpt["sha256"] != m["checkpoint"].get("sha256"):
            return f"it averaged {d} at step {m['checkpoint'].get('step')}, whose checkpoint is now step {ckpt['step']}"
    return ""


def _checkpoint_now(run_dir: Path) -> dict | None:
    """The record of the checkpoint `eval` would use for a run now (its newest sound one)."""
    ckpt = checkpoint.newest_sound(run_dir, say=lambda text: None)
    return evaluate.checkpoint_record(ckpt) if ckpt is not None else None


def _provenance(name: str, run_dir: Path, rec: dict, run: tables.Run) -> dict:
    prov = _read_json(run_dir / rundir.PROVENANCE)
    sessions = prov.get("sessions") or [prov]
    metrics = rundir.read_metrics(run_dir)
    first = next(iter(rec.values()))
    return {"name": name, "run_dir": str(run_dir), "config": prov.get("config"),
            "description": run.cfg.description, "fidelity": run.variant, "changes": run.changes,
            "notes": run.notes, "comparable": run.comparable, "year": run.year, "results": run.results,
            "git": prov.get("git"), "hardware": prov.get("hardware"), "versions": prov.get("versions"),
            "placement": prov.get("placement"), "device": prov.get("device"),
            "world_size": prov.get("world_size"), "data": first.get("data"),
            "checkpoint": first.get("checkpoint"), "started": sessions[0].get("started"),
            "sessions": len(sessions), "last_logged": metrics[-1]["time"] if metrics else None,
            "evaluated": first.get("evaluated"), "eval_git": first.get("git")}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _figures(out: Path, names, run_dirs, records, args) -> dict:
    result = {"curves": "curves.png"}
    result["curves_data"] = figures.learning_curves(
        {n: rundir.read_metrics(r) for n, r in zip(names, run_dirs)}, out / result["curves"])
    result["figure3"] = {}
    for n, r in zip(names, run_dirs):
        kernels = _conv1_from_checkpoint(evaluate.latest_checkpoint(r))
        file = f"figure3-{_file_name(n)}.png"
        scores = figures.figure3(kernels, out / file, f"conv1 kernels of {n} (each stretched to its own range)")
        result["figure3"][n] = {"file": file, "colour_specificity": scores}
    first, rec = run_dirs[0], records[0]
    views = "ten" if "ten" in rec else "centre"
    model, cfg = evaluate.load_run(first, args.device)
    root = evaluate.data_root(first, args.data)
    normalizer = data.make_normalizer(root, cfg, model.placement.output_device)
    file = f"figure4-{_file_name(names[0])}.png"
    shown = figures.figure4(model, normalizer, root, rec[views]["split"], evaluate.load_probs(first, rec[views]),
                            out / file, args.figure4_images, args.neighbours, args.neighbour_pool,
                            cfg.eval.batch_size if args.batch_size is None else args.batch_size,
                            cfg.data.workers if args.workers is None else args.workers, _views(views))
    result["figure4"] = {"file": file, "run": names[0], "views": views, **shown}
    return result


def _conv1_from_checkpoint(ckpt: Path) -> list:
    """conv1 weights of each tower straight from the checkpoint files (no model needed)."""
    import torch

    out = []
    for f in sorted(ckpt.glob("tower*.pt"), key=lambda f: int(f.stem[5:])):
        params = torch.load(f, map_location="cpu", weights_only=True)["params"]
        out.append(params[f"towers.{f.stem[5:]}.conv1.weight"].float().numpy())
    return out


# ------------------------------------------------------------------------------- markdown

def _num(x, signed=False) -> str:
    return DASH if x is None else f"{x:+.2f}" if signed else f"{x:.2f}"


def _pub(x) -> str:
    """A published number as printed (37.47, 17.0)."""
    return DASH if x is None else str(x)


def _who(ln: dict, key: str = "run") -> str:
    """A run's name, marked † when it is not comparable with the paper (reduced scale, partly trained)."""
    return f"{ln[key]} †" if ln.get("comparable") is False else ln[key]


def _pair(d, fmt=_num) -> str:
    return DASH if not d else f"{fmt(d.get('top1'))} / {fmt(d.get('top5'))}"


def _delta(d) -> str:
    return _pair(d, lambda x: _num(x, signed=True))


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _paper_table(table: dict, spec: dict) -> str:
    views = [v for v in ("ten", "centre") if any(v in (ln["code145"] or {}) for ln in table["lines"])]
    headers = (["Model"] + [c[2] for c in spec["columns"]]
               + [f"code 145 log ({_views(v)})" for v in views]
               + ["this project (10 views)", "Δ vs paper", "Δ vs code 145 (10 views)",
                  "this project (centre crop)", "where from"])
    rows = []
    for ln in table["lines"]:
        paper = [_pub((ln["paper"].get(split) or {}).get(key)) for split, key, _ in spec["columns"]]
        code = [_pair(ln["code145"].get(v), _pub) for v in views]
        status = ln["status"] + (" †" if ln["comparable"] is False else "")
        where = " · ".join(x for x in (ln["source"], f"**{status}**") if x)
        rows.append([ln["model"]] + paper + code
                    + [_pair(ln["ours"].get("ten")), _delta(ln["delta_paper"]),
                       _delta(ln["delta_code145"].get("ten")), _pair(ln["ours"].get("centre")), where])
    return _table(headers, rows)


def _views(v: str) -> str:
    return {"ten": "10 views", "centre": "centre crop"}.get(v, v or DASH)


def _ablation_table(lines: list[dict]) -> str:
    headers = ["change against the full model", "paper: worse by", "code 145 family log", "this project",
               "full-model run here", "this project: worse by", "where from"]
    rows = []
    for ln in lines:
        p, c = ln["paper"], ln["code145"]
        paper = DASH if p is None else _pair(p, _pub) if p.get("top1_bound") is None else \
            f"{p['top1_bound']} {_pub(p['top1'])} / {_pub(p['top5'])}"
        code = DASH if c is None else (f"{c['run']}: {_pub(c['top1'])} / {_pub(c['top5'])} vs {c['baseline']}: "
                                       f"{_pub(c['baseline_top1'])} / {_pub(c['baseline_top5'])} "
                                       f"({_delta(ln['code145_delta'])}; {c['measured']})")
        ours = DASH if ln["run"] is None else f"{_who(ln)}: {_pair(ln['ours'])} ({_views(ln['views'])})"
        base = DASH if ln["baseline"] is None else f"{ln['baseline']}: {_pair(ln['baseline_ours'])}"
        sources = "; ".join(x["source"] for x in (p, c) if x)
        status = ln["status"] + (" †" if ln["comparable"] is False else "")
        rows.append([ln["change"], paper, code, ours, base, _delta(ln["delta"]), f"{sources} · **{status}**"])
    return _table(headers, rows)


def _reproduction_table(lines: list[dict]) -> str:
    headers = ["system", "how measured", "top-1 / top-5", "this project", "Δ (this project − system)", "source"]
    rows = [[ln["system"], f"{ln['notes']}; {ln['year']} {ln['split']}, {ln['views']}",
             _pair(ln, _pub), DASH if ln["run"] is None else f"{_who(ln)}: {_pair(ln['ours'])} ({_views(ln['ours_views'])})",
             _delta(ln["delta"]), ln["source"]] for ln in lines]
    return _table(headers, rows)


def _notes(lines: list[dict]) -> str:
    seen, out = set(), []
    for ln in lines:
        if ln.get("run") and ln["run"] not in seen and ln.get("notes"):
            seen.add(ln["run"])
            out.append(f"- {ln['run']}: " + "; ".join(ln["notes"]))
    return "\n".join(out)


def render(report: dict, published: dict) -> str:
    specs = {t["id"]: t for t in published["tables"]}
    figs = report["figures"]
    md = [f"# Report: {report['name']}", "",
          f"Generated {report['generated']} at commit {report['git']['commit'][:12]}"
          f"{' (uncommitted changes)' if report['git'].get('dirty') else ''}. Error rates in percent, "
          "top-1 / top-5. Published numbers: `results/published.json` (each with its source). "
          "\"run here\" marks rows this project produced, with the run's name; every other row shows "
          f"only published numbers, and {DASH} in this project's columns. Δ = this project − reference "
          "(positive: this project's error is higher). † marks a run that is not comparable with the "
          "paper: smaller than the paper's model or data, or stopped early (see its notes).", "", "## Runs", "",
          _table(["run", "config", "fidelity variant", "data", "checkpoint", "10 views", "centre crop"],
                 [[r["name"] + ("" if r["comparable"] else " †"), f"{r['config']}: {r['description']}", r["fidelity"],
                   f"{next(iter(r['results'].values()))['split']}, {next(iter(r['results'].values()))['images']:,} "
                   f"images (year {r['year']}, `{(r['data'] or {}).get('root')}`)",
                   f"step {(r['checkpoint'] or {}).get('step')}, epoch {(r['checkpoint'] or {}).get('epoch')}",
                   _pair(r["results"].get("ten")), _pair(r["results"].get("centre"))] for r in report["runs"]])]
    if report["ensembles"]:
        md += ["", "Ensembles (softmax outputs averaged): " + "; ".join(
            f"{e['name']} = {', '.join(e['members'])}" for e in report["ensembles"])]
    for t in report["tables"]:
        md += ["", f"## {t['title']}", "", _paper_table(t, specs[t["id"]]), "", _notes(t["lines"])]
    md += ["", "## Ablations (10-view error where available; Δ against a full-model run of this report)", "",
           _ablation_table(report["ablations"]), "", _notes(report["ablations"]),
           "", "## Known reproductions", "", _reproduction_table(report["reproductions"])]
    md += ["", "## Learning curves", "", f"![learning curves]({figs['curves']})", "",
           "Training loss (mean per epoch), validation error (centre crop, after each epoch), learning rate.",
           "", "## Figure 3: conv1 kernels", "",
           "Colour specificity of a kernel: the fraction of its variance that its grey (channel-mean) "
           "component does not explain (0: the same pattern in R, G and B; 1: purely chromatic; "
           "independent random weights give 2/3). The number per tower is the mean over its kernels. "
           "The paper: tower 0's kernels come out largely colour-agnostic, tower 1's colour-specific.", ""]
    for name, f in figs["figure3"].items():
        scores = ", ".join(f"tower {i}: {s:.3f}" for i, s in enumerate(f["colour_specificity"]))
        md += [f"**{name}** ({scores})", "", f"![conv1 kernels of {name}]({f['file']})", ""]
    f4 = figs["figure4"]
    md += ["## Figure 4: predictions and nearest training images", "",
           f"Run {f4['run']}; {len(f4['images'])} images spread evenly over the split (not picked); "
           f"top-5 with {_views(f4['views'])} probabilities; nearest neighbours by Euclidean distance of "
           f"fc7 activations (centre crops) among the first {f4['searched']:,} of {f4['train_images']:,} "
           "training images (stored order, shuffled once).", "", f"![figure 4]({f4['file']})", "",
           "## Provenance", ""]
    for r in report["runs"]:
        hw, ver = r["hardware"] or {}, r["versions"] or {}
        md += [f"### {r['name']}", "",
               f"- run directory: `{r['run_dir']}`; config `{r['config']}` ({r['description']}); "
               f"resolved config: `{r['run_dir']}/config.toml`",
               f"- fidelity variant: {r['fidelity']}" + (f"; ablation: {', '.join(r['changes'])}" if r["changes"] else ""),
               f"- notes: {'; '.join(r['notes'])}",
               f"- commit {((r['git'] or {}).get('commit') or '?')[:12]}"
               f"{' (uncommitted changes)' if (r['git'] or {}).get('dirty') else ''}; torch {ver.get('torch')}",
               f"- hardware: {hw.get('cpu')} ({hw.get('cpu_cores')} cores), GPUs: {', '.join(hw.get('gpus') or []) or 'none'}; "
               f"placement {r['placement']} on {r['device']}, world size {r['world_size']}",
               f"- dates: started {r['started']} ({r['sessions']} session(s)), last logged {r['last_logged']}, "
               f"evaluated {r['evaluated']}",
               f"- checkpoint `{(r['checkpoint'] or {}).get('path')}`; data `{(r['data'] or {}).get('root')}` "
               f"(ILSVRC-{r['year']}; shard sha256 in report.json)", ""]
    return "\n".join(md) + "\n"
