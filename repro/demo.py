"""`./run.sh demo`: the whole path of the project, on a CPU, in minutes, without ImageNet.

    1. generate   ten classes of shapes and textures (data_prep.demo_data), written as the
                  official ILSVRC-2012 archives (train tar of per-class tars, val tar, devkit)
    2. prepare    the real `./run.sh prepare` on those archives -> HDF5 shards + mean/PCA stats
    3. train      the paper's two-tower network with paper_configs/demo.toml
    4. report     centre-crop and 10-view evaluation, the paper's tables, figures -> results/demo/

Each stage picks up where an earlier, interrupted demo stopped: the archives are kept when they
match, prepare keeps finished shards, training resumes from its last checkpoint.
`--smoke` runs the smallest version (a few images, three steps) to check the path works.
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from data_prep import demo_data
from data_prep import prepare as prep
from repro import checkpoint, evaluate, files, report, rundir
from repro.config import CONFIG_DIR, load_config
from repro.errors import ArgumentParser, UserError
from repro.progress import Progress
from repro.train import check_resumable, train

FULL = {"classes": 10, "train_per_class": 150, "val_per_class": 20}
SMOKE = {"classes": 4, "train_per_class": 8, "val_per_class": 4}
SMOKE_SETTINGS = ["model.num_classes=4", "data.batch_size=8", "train.max_steps=3", "schedule.epochs=1", "schedule.drop_epochs=[1]",
                  "eval.batch_size=16", "train.log_every=1"]


def parse_args(argv):
    p = ArgumentParser(
        prog="./run.sh demo", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default="data/demo", help="where the archives and shards go (default data/demo)")
    p.add_argument("--run-dir", default="runs/demo", help="the training run (default runs/demo)")
    p.add_argument("--out", default="results", help="the report goes to OUT/demo/ (default results/)")
    p.add_argument("--smoke", action="store_true",
                   help="the smallest demo: 4 classes, a few images, 3 training steps (what CI runs); "
                        "writes under DIR-smoke, RUN_DIR-smoke and DIR-smoke/results")
    p.add_argument("--fresh", action="store_true", help="start again: delete this demo's data and run first")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override a value of paper_configs/demo.toml, e.g. --set schedule.epochs=4")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated images (default 0)")
    return p.parse_args(argv)


def main(argv) -> int:
    args = parse_args(argv)
    size = SMOKE if args.smoke else FULL
    suffix = "-smoke" if args.smoke else ""
    base, run_dir = Path(args.dir + suffix), Path(args.run_dir + suffix)
    out = base / "results" if args.smoke else Path(args.out)
    for path, option in ((base, "--dir"), (run_dir, "--run-dir"), (out, "--out")):
        files.check_dir(path, option, must_exist=False)  # said now, not after generating and preparing
    archives, shards = base / "archives", base / "shards"
    cfg = load_config(CONFIG_DIR / "demo.toml", (SMOKE_SETTINGS if args.smoke else []) + args.set)
    cfg.data.shards = str(shards)
    if args.fresh:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    resume = checkpoint.latest(run_dir) is not None
    if resume:  # its config, checked now, not after generating and preparing
        cfg = rundir.read_config(run_dir, args.set)
        check_resumable(rundir.read_config(run_dir), cfg, run_dir,
                        remedy=f"add --fresh to start the demo again (it deletes {base} and {run_dir} first)")
    t0 = time.monotonic()

    stage("1/4 generate", f"{size['classes']} classes x {size['train_per_class']} training and "
          f"{size['val_per_class']} validation images -> {archives}")
    generate(archives, size, args.seed)
    stage("2/4 prepare", f"./run.sh prepare --source {archives} --out {shards}")
    summary = prep.prepare(prep.Options(archives, shards))
    if not summary.complete:
        raise UserError(f"prepare rejected images of the generated set (see {shards}/rejects.tsv)")
    stage("3/4 train", f"./run.sh train paper_configs/demo.toml --data {shards} --run-dir {run_dir}"
          + (" --resume" if resume else ""))
    train(cfg, shards, run_dir, resume=resume)
    state = checkpoint.read_state(checkpoint.latest(run_dir))
    if state["epoch"] < cfg.schedule.epochs and not (cfg.train.max_steps and state["step"] >= cfg.train.max_steps):
        print(f"demo: training stopped at step {state['step']}; run the same command again to continue")
        return 130
    stage("4/4 report", f"./run.sh report {run_dir} --name demo --out {out}")
    report.main([str(run_dir), "--name", "demo", "--out", str(out)])
    records = evaluate.evaluate_run(run_dir, evaluate.EvalOptions(quiet=True))
    chance = 1 - 1 / cfg.model.num_classes
    print(f"\ndemo: done in {(time.monotonic() - t0) / 60:.1f} min. Validation top-1 / top-5 error: "
          f"centre crop {_pct(records['centre'])}, 10 views {_pct(records['ten'])} "
          f"(chance: {chance:.0%} top-1).")
    print(f"demo: report {out / 'demo' / 'report.md'}")
    return 0


def stage(name: str, what: str) -> None:
    print(f"\n== demo {name}: {what}", flush=True)


def _pct(rec: dict) -> str:
    return f"{rec['top1_error']:.1%} / {rec['top5_error']:.1%}"


def generate(archives: Path, size: dict, seed: int) -> None:
    """Write the archives unless the same ones are already there (a marker records the recipe)."""
    recipe = {**size, "seed": seed, "version": demo_data.VERSION}
    marker = archives / "demo.json"
    if marker.is_file() and json.loads(marker.read_text()) == recipe:
        print(f"demo: archives already in {archives}")
        return
    shutil.rmtree(archives, ignore_errors=True)
    tmp = archives.with_name(archives.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n = size["classes"] * (size["train_per_class"] + size["val_per_class"])
    with Progress(n, "generate", unit="img") as bar:
        demo_data.generate(tmp, size["train_per_class"], size["val_per_class"], size["classes"], seed, bar)
    (tmp / "demo.json").write_text(json.dumps(recipe) + "\n")
    tmp.rename(archives)
