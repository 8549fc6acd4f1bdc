"""`./run.sh bench [NAME ...] [--json] [--quick] [--model]`: the project's benchmarks as one table.

`--model` prints instead the GPU throughput ESTIMATE of repro.estimate (arithmetic, not timed).
`--gpu` runs instead the GPU check of repro/gpu_check.py: the CUDA paths against references,
and the training speed on the GPU, into results/gpu/<gpu-name>.json (a reduced mode on a CPU).

Each benchmark is a script `benchmarks/bench_<name>.py` at the root of the checkout, runnable on
its own (`python benchmarks/bench_lrn.py`) and exposing `run(quick: bool = False) -> list[dict]`.
Every row it returns is one comparison measured in the same run:

    name      short id of the row, e.g. "lrn_conv1"
    what      what was measured, in words (shapes, dtype, what the baseline is)
    unit      unit of `project` and `baseline` ("ms", "img/s", ...)
    project   this project's number
    baseline  the baseline's number, measured in the same process, interleaved with the project's
    ratio     how many times better the project is (> 1: project better): baseline / project for
              times, project / baseline for throughputs. The script computes it, since only it
              knows which way is better.

Performance claims of the project come from here and nowhere else, always as such a ratio.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable


from repro import machine
from repro.errors import ArgumentParser, UserError

BENCHMARKS = ("lrn", "train_step", "loader", "prepare")  # the default order
BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"
ROW_KEYS = ("name", "what", "unit", "project", "baseline", "ratio")


# --------------------------------------------------------------------------- for the scripts

def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
                        sync: Callable[[], object] | None = None) -> dict[str, float]:
    """Median wall time in seconds of each function, the functions taking turns (order reversed
    every other round) so that a slow spell of a shared machine hits them alike. `sync` (e.g.
    torch.cuda.synchronize) is called before each clock read when timing asynchronous work."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in (names if round_ % 2 == 0 else names[::-1]):
            if sync:
                sync()
            start = time.perf_counter()
            fns[name]()
            if sync:
                sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


# --------------------------------------------------------------------------- the runner

def load(name: str):
    """The module of benchmarks/bench_<name>.py, or None if the script is missing."""
    path = BENCH_DIR / f"bench_{name}.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "run", None)):
        raise RuntimeError(f"{path} has no run(quick=False) function")
    return module


def run_isolated(name: str, quick: bool) -> list[dict] | None:
    """benchmarks/bench_<name>.py's rows, from a process of its own (None if it failed, with the
    traceback on stderr). Each benchmark starts from a fresh process: one that has just trained
    holds gigabytes of heap (speed.keep_freed_memory keeps it), which every loader or pool
    worker it forks inherits, and the threads and allocator settings it leaves would slow, or
    speed, the next benchmark's measurement."""
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        out = Path(tmp) / "rows.json"
        code = ("import json, sys; from pathlib import Path; from repro import bench; "
                f"bench.BENCH_DIR = Path({str(BENCH_DIR)!r}); "
                f"rows = bench.check_rows(bench.load({name!r}).run(quick={quick!r}), 'bench_{name}.py'); "
                f"Path({str(out)!r}).write_text(json.dumps(rows))")
        repo = str(Path(__file__).resolve().parent.parent)
        path = os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONPATH": path}
        child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True, bufsize=1)
        for line in child.stdout:  # what the benchmark prints (its progress, its own report), as it comes
            sys.stderr.write(line)
            sys.stderr.flush()
        returncode = child.wait()
        if returncode != 0 or not out.is_file():
            print(f"bench: {name} failed (exit status {returncode}; its output is above)", file=sys.stderr)
            return None
        return json.loads(out.read_text())


def check_rows(rows, source: str) -> list[dict]:
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise RuntimeError(f"{source}: run() must return a list of dicts, got {type(rows).__name__}")
    for row in rows:
        missing = [k for k in ROW_KEYS if k not in row]
        if missing:
            raise RuntimeError(f"{source}: row {row.get('name', '?')!r} lacks {', '.join(missing)}")
    return rows


def _number(v) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) else str(v)


def table(rows: list[dict], header: str) -> str:
    cells = [("what", "this project", "baseline", "ratio", "unit")]
    cells += [(str(r["what"]), _number(r["project"]), _number(r["baseline"]),
               f"{r['ratio']:.2f}x" if isinstance(r["ratio"], (int, float)) else str(r["ratio"]),
               str(r["unit"])) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = [f"machine: {header}"]
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def throughput_model(as_json: bool) -> str:
    """The GPU throughput ESTIMATE of repro.estimate (arithmetic; nothing is timed)."""
    from repro import estimate
    from repro.config import ModelConfig

    if as_json:
        return json.dumps([{**estimate.estimate(s, ModelConfig()), "estimate": True}
                           for s in estimate.SETUPS], indent=1)
    return estimate.report()


GPU_HELP = """\
--gpu: one prepared check of the CUDA paths and of training speed on a GPU (repro/gpu_check.py).
It makes its own data (random-pixel shards in a temporary directory) and needs nothing from
outside the machine; about 5 minutes on one H100-class GPU (--quick: about 1.5), and on a
machine without CUDA a reduced mode of seconds (a narrow model, batch 4: every row is produced,
the CUDA-only ones marked "no CUDA" or computed on the CPU as a stand-in). It writes
results/gpu/<gpu-name>.json (--out to choose; rewritten after every step, so an interrupted
run keeps what it measured) and prints one table:

  checks (largest error found, and a tolerance whose reason the code states):
    the fast LRN and same-map norm, forward and backward, against the float64 formula;
    the trainer's model on the GPU against the plain model on the CPU (float64 logits, loss and
    gradients; float32 logits and loss with TF32 off and with torch's defaults); the grouped
    emulation against two towers; TwoDevices on one GPU and on two; Distributed over NCCL (two
    GPUs); the Normalizer and the test views on the GPU against the CPU (bit-identity);
    bf16 autocast and TF32 losses over a few training steps against float32
  speed (each a ratio measured in the same run, timings interleaved, batch 128):
    matmul rates (fp32, TF32, bf16); the training step of the paper config and of each speed
    switch alone and combined (channels-last, TF32, bf16, torch.compile, cudnn.benchmark)
    against a naive dense AlexNet with torch's LRN; the LRN kernels; the trainer's step with
    its per-step host reads; the whole pipeline (shards -> loader workers -> Normalizer ->
    train_step) and its share of time waiting for data; peak memory per tower; the GPU's busy
    share and top kernels (torch.profiler); model FLOP/s against the matmul rates; hours for
    90 epochs of ILSVRC-2012 beside --model's estimate for the same GPU.
A failing step is a row saying why (out of memory, a compile error, no NCCL), never the end of
the run; speed rows left when the time budget (--budget) is spent are skipped with a note.
Exit status 1 if any check failed or any step broke.
"""


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = ArgumentParser(
        prog="./run.sh bench",
        description="Run the project's benchmarks (benchmarks/bench_<name>.py) and print one table:\n"
                    "each row is this project against a baseline measured in the same run.",
        epilog=GPU_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list instead")
    p.add_argument("--quick", action="store_true", help="fewer repetitions and cases (a smoke run)")
    p.add_argument("--model", action="store_true",
                   help="print the GPU throughput ESTIMATE (img/s, 90-epoch time) instead of benchmarking")
    g = p.add_argument_group("the GPU check (see below)")
    g.add_argument("--gpu", action="store_true",
                   help="run the GPU check instead of the benchmarks (a reduced mode without CUDA)")
    g.add_argument("--out", metavar="FILE", help="where the GPU check writes its JSON "
                   "(default results/gpu/<gpu-name>.json; <gpu-name>.quick.json with --quick)")
    g.add_argument("--profile", action="store_true",
                   help="also write Chrome traces of one training step (torch.profiler) beside the JSON; "
                        "the top kernels are in the JSON either way")
    g.add_argument("--budget", type=float, metavar="SECONDS",
                   help="skip the remaining speed rows after this long (default 270; --quick 80)")
    g.add_argument("--tmp", metavar="DIR", help="where the generated shards go (default: the system's "
                   "temporary directory; a local disk)")
    g.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto: the GPU if torch sees one; cpu: the reduced mode even where a GPU is present")
    return p.parse_args(argv)


GPU_ONLY = ("out", "profile", "budget", "tmp")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.gpu:
        if args.names or args.model:
            raise UserError("--gpu runs the GPU check on its own: drop " + ("--model" if args.model else "NAME"))
        if args.budget is not None and args.budget <= 0:
            raise UserError(f"--budget {args.budget:g}: give a positive number of seconds")
        from repro import gpu_check
        return gpu_check.main(args)
    given = [f"--{k}" for k in GPU_ONLY if getattr(args, k) not in (None, False)]
    if given or args.device != "auto":
        raise UserError(f"{(given or ['--device'])[0]} belongs to the GPU check: add --gpu")
    if args.model:
        if args.names or args.quick:
            raise UserError("--model prints the GPU throughput estimate alone (nothing is timed): drop "
                            + ("NAME" if args.names else "--quick"))
        print(throughput_model(args.json))
        return 0
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        raise UserError(f"unknown benchmark {', '.join(map(repr, unknown))}; "
                        f"known: {', '.join(BENCHMARKS)}")
    names = list(dict.fromkeys(args.names)) or list(BENCHMARKS)
    header, rows, failed = machine.describe(), [], False
    for name in names:
        if not (BENCH_DIR / f"bench_{name}.py").is_file():  # loaded in its own process only
            print(f"bench: skipping {name}: benchmarks/bench_{name}.py does not exist yet", file=sys.stderr)
            continue
        found = run_isolated(name, args.quick)
        if found is None:  # one broken benchmark should not hide the others' numbers
            failed = True
        else:
            rows += found
    if args.json:
        print(json.dumps([{**r, "machine": header} for r in rows], indent=1))
    elif rows:
        print(table(rows, header))
    else:
        print(f"machine: {header}\nno benchmark ran")
    return 1 if failed else 0
