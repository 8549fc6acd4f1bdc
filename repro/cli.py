"""`python -m repro <command>` (and ./run.sh): one module per command, each with main(argv) -> int.

Bad input anywhere raises repro.errors.UserError; it is printed here as one line and the
process exits with status 2.
"""
from __future__ import annotations

import importlib
import sys

from repro.errors import UserError

COMMANDS = {
    "prepare": ("data_prep.prepare", "official ILSVRC archives or a tree -> HDF5 shards + stats"),
    "train": ("repro.train", "train AlexNet from a config"),
    "eval": ("repro.evaluate", "centre-crop and 10-view top-1 / top-5 error, ensembles"),
    "report": ("repro.report", "the paper's tables beside this project's runs, with figures"),
    "predict": ("repro.predict", "top-5 classes of image files with a trained run"),
    "export": ("repro.export", "a trained run as TorchScript, ONNX or safetensors for use elsewhere"),
    "demo": ("repro.demo", "the whole path on a small generated dataset, on a CPU"),
    "bench": ("repro.bench", "the project's benchmarks as one table"),
}

TORCH_COMMANDS = ("train", "eval", "predict", "export", "demo")  # the ones that compute with torch


def usage() -> str:
    rows = "\n".join(f"  {name:<9}{text}" for name, (_, text) in COMMANDS.items())
    return f"usage: python -m repro <command> [--help]\n\ncommands:\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), end="", file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command '{name}'\n{usage()}", end="", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        if name in TORCH_COMMANDS:  # a container's CPU limit: no more torch threads than it allows
            from repro import machine

            machine.fit_torch_threads()  # (the machine line and a run's provenance.json show the count)
        return int(module.main(rest) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
