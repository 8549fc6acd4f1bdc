"""The paper's tables with this project's runs beside them, as data (repro.report renders them).

The published numbers come only from results/published.json (each with its source); this
project's numbers come only from eval records of runs given to the report. A row that no run
fills carries no number of this project, and says why: "not run here" (a target of this project
that needs ImageNet and GPUs) or "paper only" (not a target: another method, or extra data).

How a run finds its row:
- the change it makes against the full model (ABLATIONS below, read from its config): none ->
  the full-model row of the table of its data's year (2010: Table 1, test; 2012: Table 2, val),
  one -> that ablation row, several -> no row of the paper;
- an ensemble of k full-model runs fills the row averaging k CNNs ("5 CNNs"), or a row of its own;
- its fidelity variant (paper text, code 145, mixed) compares the points where
  paper_configs/alexnet_2gpu.toml and alexnet_2gpu_code145.toml differ, whatever their values;
- its notes list every setting of the recipe that departs from the row's config file, compare
  its widths, classes and batch size with it, and say how far it trained, so a demo-sized run
  is never mistaken for the paper's experiment;
- only runs on ILSVRC's 1000 classes fill the rows of Tables 1 and 2 and sit beside the known
  reproductions: a run on other data (the demo's 10 generated classes) is listed with its own
  numbers in the runs table, and may still fill an ablation row against a full-model run of the
  same data in the same report (the delta is comparable; the absolute errors are not).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from repro import rundir
from repro.config import CONFIG_DIR, Config, flat, load_config
from repro.errors import UserError

PUBLISHED = rundir.REPO / "results" / "published.json"
FULL_MODEL = "alexnet_2gpu.toml"
CODE145 = "alexnet_2gpu_code145.toml"
SCALE_KEYS = ("model.widths.", "model.num_classes", "data.batch_size")
REDUCED, PARTLY_TRAINED, DEPARTS, SUBSET = "reduced scale", "partly trained", "departs from", "subset"
# Keys that say where and how a run computes, not what it computes (never a departure).
HOUSEKEEPING = ("description", "name", "data.shards", "data.source", "data.workers", "data.seed",
                "data.val_split", "data.eval_split", "data.year", "augment.on", "train.", "speed.", "eval.")
ILSVRC_CLASSES = 1000

# The change against the full model that each ablation row of published.json makes.
ABLATIONS = {
    "one_tower_half": lambda cfg: cfg.model.towers == 1,
    "no_lrn": lambda cfg: cfg.model.lrn == "none",
    "nonoverlap_pool": lambda cfg: cfg.model.pool == "nonoverlap",
    "no_pca": lambda cfg: cfg.augment.lighting == "none",
    "no_cross_links": lambda cfg: not cfg.model.cross_links,
}


def load_published(path: str | Path = PUBLISHED) -> dict:
    """The published numbers (results/published.json's format); a UserError, one line, for a
    file that is missing, not JSON, or lacks a section the report reads."""
    path = Path(path)
    try:
        published = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"--published {path}: no such file (the default is {PUBLISHED})") from None
    except IsADirectoryError:
        raise UserError(f"--published {path} is a directory, not a JSON file") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"--published {path} is not JSON ({e}); its format is that of {PUBLISHED}") from None
    missing = [k for k in PUBLISHED_SECTIONS if not isinstance(published, dict) or k not in published]
    if missing:
        raise UserError(f"--published {path} lacks {', '.join(repr(k) for k in missing)}: its format is that of "
                        f"{PUBLISHED}")
    return published


PUBLISHED_SECTIONS = ("tables", "ablations", "reproductions")  # what the report reads


@dataclass
class Run:
    """A run (or an ensemble of runs) of this project, as the tables see it."""
    name: str
    cfg: Config
    year: int
    results: dict  # views -> {"split", "top1", "top5" (percent), "images", "step", "epoch"}
    members: list = field(default_factory=list)  # run names of an ensemble
    changes: list = field(default_factory=list)  # ABLATIONS ids
    variant: str = ""
    notes: list = field(default_factory=list)
    subset: dict | None = None  # the data's manifest "subset" (prepare --classes N): a part of ILSVRC

    @property
    def nets(self) -> int:
        return max(1, len(self.members))

    @property
    def comparable(self) -> bool:
        """False for a run smaller than the paper's or stopped early (marked in the report)."""
        return not any(n.startswith((REDUCED, PARTLY_TRAINED, DEPARTS, SUBSET)) for n in self.notes)

    @property
    def ilsvrc(self) -> bool:
        """Only a run on ILSVRC's 1000 classes is set beside the paper's absolute numbers (Tables
        1 and 2, known reproductions); a run on other data (the demo) or on a subset of ILSVRC's
        classes appears in the runs table only."""
        return self.cfg.model.num_classes == ILSVRC_CLASSES and not self.subset

    @property
    def split(self) -> str | None:
        return next((r["split"] for r in self.results.values()), None)


def summary(rec: dict) -> dict:
    """The numbers of an eval record that the tables use, in percent."""
    ckpt = rec.get("checkpoint") or {}
    return {"split": rec["split"], "top1": 100 * rec["top1_error"], "top5": 100 * rec["top5_error"],
            "images": rec["images"], "step": ckpt.get("step"), "epoch": ckpt.get("epoch")}


def describe(name: str, cfg: Config, records: dict, published: dict, members=()) -> Run:
    """A Run from its config and its eval records {views: record} (repro.evaluate)."""
    first = next(iter(records.values()))
    year = (first.get("data") or {}).get("year") or cfg.data.year
    changes = [k for k, test in ABLATIONS.items() if test(cfg)]
    run = Run(name, cfg, int(year), {v: summary(r) for v, r in records.items()}, list(members), changes)
    run.subset = (first.get("data") or {}).get("subset")
    run.variant, points = fidelity(cfg)
    row = row_config(run, published)
    run.notes = [f"fidelity: {run.variant}"] + points + recipe_notes(cfg, row) + scale_notes(cfg, row, first)
    if run.subset:
        run.notes.append(f"{SUBSET}: {run.subset.get('classes')} of ILSVRC's {run.subset.get('of')} classes "
                         f"({run.subset.get('selected_by')}): never set beside the paper's numbers")
    elif not run.ilsvrc:
        run.notes.append(f"not ILSVRC ({cfg.model.num_classes} classes): not set beside the paper's "
                         f"absolute numbers")
    return run


def _config_values(name: str) -> dict:
    values = flat(load_config(CONFIG_DIR / name))
    values.pop("description"), values.pop("name")
    return values


def fidelity(cfg: Config) -> tuple[str, list[str]]:
    """("paper text" | "code 145" | "mixed" | "neither", notes on the points that follow neither)."""
    paper, code = _config_values(FULL_MODEL), _config_values(CODE145)
    run = flat(cfg)
    follows, other = set(), []
    for key in sorted(k for k in paper if paper[k] != code[k]):
        if run[key] == paper[key]:
            follows.add("paper text")
        elif run[key] == code[key]:
            follows.add("code 145")
        else:
            other.append(f"{key} = {run[key]!r} (paper text {paper[key]!r}, code 145 {code[key]!r})")
    variant = next(iter(follows)) if len(follows) == 1 else "mixed" if follows else "neither"
    if variant == "mixed":
        variant = "mixed: " + ", ".join(
            f"{k} follows code 145" for k in sorted(paper) if paper[k] != code[k] and run[k] == code[k])
    if other and follows:
        variant += f" (except {len(other)} point{'s' * (len(other) > 1)} that follow neither: see notes)"
    return variant, other


def row_config(run: Run, published: dict) -> str:
    """The config file of the row a run fills (for the scale comparison)."""
    if len(run.changes) == 1:
        return next(a["config"] for a in published["ablations"] if a["id"] == run.changes[0])
    rows = [r for t in published["tables"] if t["year"] == run.year for r in t["rows"]
            if r.get("config") and r.get("nets") == 1]
    return rows[0]["config"] if rows else FULL_MODEL


def recipe_notes(cfg: Config, config_name: str) -> list[str]:
    """Settings of the recipe that differ from the row's config, besides the fidelity points
    (reported by `fidelity`) and the scale (by `scale_notes`): e.g. the demo's biases and rate."""
    paper, code = _config_values(FULL_MODEL), _config_values(CODE145)
    ref, run = _config_values(config_name), flat(cfg)
    diffs = [f"{k} = {run[k]!r} ({ref[k]!r})" for k in sorted(ref)
             if run[k] != ref[k] and paper[k] == code[k] and not k.startswith(SCALE_KEYS + HOUSEKEEPING)]
    return [f"{DEPARTS} paper_configs/{config_name}: {'; '.join(diffs)}"] if diffs else []


def scale_notes(cfg: Config, config_name: str, rec: dict) -> list[str]:
    """Where a run is smaller than the row's config, and how far it trained."""
    ref, run = _config_values(config_name), flat(cfg)
    smaller = [f"{k} {run[k]} ({ref[k]})" for k in sorted(ref) if k.startswith(SCALE_KEYS) and run[k] != ref[k]]
    notes = [f"{REDUCED} against paper_configs/{config_name}: {', '.join(smaller)}"] if smaller else []
    ckpts = [m["checkpoint"] for m in rec.get("ensemble", [])] or [rec.get("checkpoint") or {}]
    epoch = min((c.get("epoch") for c in ckpts if c.get("epoch") is not None), default=None)
    if epoch is not None and epoch < cfg.schedule.epochs:
        notes.append(f"{PARTLY_TRAINED}: {epoch} of {cfg.schedule.epochs} epochs "
                     f"(checkpoint step {', '.join(str(c.get('step')) for c in ckpts)})")
    return notes


# ------------------------------------------------------------------------------ the tables

def _pair(d: dict | None, keys=("top1", "top5")) -> dict | None:
    return None if d is None else {k: d.get(k) for k in keys}


def _minus(a: dict | None, b: dict | None) -> dict | None:
    """a - b per key where both have a number; None when nothing can be compared."""
    if not a or not b:
        return None
    out = {k: a[k] - b[k] if a.get(k) is not None and b.get(k) is not None else None for k in ("top1", "top5")}
    return out if any(v is not None for v in out.values()) else None


def _status_not_run(row: dict) -> str:
    if row.get("config") is None:
        return "paper only (not a target of this project)"
    runs = f"{row['nets']} runs of " if (row.get("nets") or 1) > 1 else ""
    return f"not run here (needs ImageNet + GPUs: {runs}paper_configs/{row['config']})"


def _fills(row: dict, table: dict, run: Run) -> bool:
    return (row.get("config") is not None and row.get("nets") == run.nets and not run.changes and run.ilsvrc
            and run.year == table["year"] and run.split == table["split"])


def table_lines(table: dict, runs: list[Run]) -> list[dict]:
    """One line per published row and run that fills it (or one line with no run)."""
    lines = []
    for row in table["rows"]:
        fills = [r for r in runs if _fills(row, table, r)]
        for run in fills or [None]:
            lines.append(_line(table, row, run))
    for run in runs:  # ensembles with no row of their own in the paper
        if run.members and not run.changes and run.ilsvrc and run.year == table["year"] and run.split == table["split"] \
                and not any(_fills(row, table, run) for row in table["rows"]):
            lines.append(_line(table, {"id": f"{run.nets}_cnns", "model": f"{run.nets} CNNs",
                                       "paper": {}, "source": None}, run))
    return lines


def _line(table: dict, row: dict, run: Run | None) -> dict:
    code = row.get("code145") or {}
    paper = (row.get("paper") or {}).get(table["split"])
    line = {"table": table["id"], "row": row["id"], "model": row["model"], "paper": row.get("paper") or {},
            "source": row.get("source"), "code145": code, "run": None, "members": [], "ours": {},
            "delta_paper": None, "delta_code145": {}, "status": _status_not_run(row), "notes": [],
            "comparable": None}
    if run is None:
        return line
    line.update(run=run.name, members=run.members, notes=run.notes, comparable=run.comparable,
                status="run here: " + (f"ensemble of {', '.join(run.members)}" if run.members else run.name),
                ours={v: _pair(r) for v, r in run.results.items()})
    line["delta_paper"] = _minus(line["ours"].get("ten"), _pair(paper))
    line["delta_code145"] = {v: d for v in ("ten", "centre")
                             if (d := _minus(line["ours"].get(v), _pair(code.get(v)))) is not None}
    return line


def _baseline(run: Run, runs: list[Run]) -> Run | None:
    """The full-model run to measure an ablation against: same data year, preferably the same
    fidelity variant and the same scale."""
    full = [r for r in runs if not r.changes and not r.members and r.year == run.year and r.split == run.split]
    scale = lambda r: [n for n in r.notes if n.startswith(REDUCED)]  # noqa: E731
    full.sort(key=lambda r: (r.variant != run.variant, scale(r) != scale(run)))
    return full[0] if full else None


def ablation_lines(published: dict, runs: list[Run]) -> list[dict]:
    lines = []
    for ab in published["ablations"]:
        code = ab.get("code145")
        code_delta = None if code is None else _minus(code, {"top1": code["baseline_top1"],
                                                             "top5": code["baseline_top5"]})
        base = {"ablation": ab["id"], "change": ab["change"], "paper": ab.get("paper"), "code145": code,
                "code145_delta": code_delta, "run": None, "baseline": None, "views": None, "ours": None,
                "baseline_ours": None, "delta": None, "notes": [], "comparable": None,
                "status": f"not run here (needs ImageNet + GPUs: paper_configs/{ab['config']} "
                          f"and paper_configs/{FULL_MODEL})"}
        mine = [r for r in runs if r.changes == [ab["id"]] and not r.members]
        for run in mine:
            ref = _baseline(run, runs)
            views = next((v for v in ("ten", "centre") if v in run.results
                          and (ref is None or v in ref.results)), None)
            line = dict(base, run=run.name, views=views, notes=run.notes, ours=_pair(run.results.get(views)),
                        comparable=run.comparable and (ref is None or ref.comparable),
                        status=f"run here: {run.name}" + ("" if ref else " (no full-model run of the same "
                                                                           "data in this report to compare with)"))
            if ref is not None:
                line.update(baseline=ref.name, baseline_ours=_pair(ref.results.get(views)))
                line["delta"] = _minus(line["ours"], line["baseline_ours"])
            lines.append(line)
        if not mine:
            lines.append(base)
    return lines


def reproduction_lines(published: dict, runs: list[Run]) -> list[dict]:
    """Known reproductions beside this project's full-model runs measured the same way."""
    lines = []
    full = [r for r in runs if not r.changes and not r.members and r.ilsvrc]
    for rep in published["reproductions"]:
        views = "centre" if rep["views"] == "centre" else "ten"
        same = [r for r in full if r.year == rep["year"] and r.split == rep["split"] and views in r.results]
        for run in same or [None]:
            ours = _pair(run.results[views]) if run else None
            lines.append({**rep, "run": run.name if run else None, "ours_views": views, "ours": ours,
                          "comparable": run.comparable if run else None,
                          "delta": _minus(ours, rep)})
    return lines
