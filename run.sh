#!/usr/bin/env bash
# One entry point for the whole pipeline (see README.md):
#   ./run.sh setup      install the project and its dependencies (into .venv unless a venv is active;
#                       PYTHON=/path/to/python3 picks the interpreter, REPRO_VENV=DIR another venv folder)
#   ./run.sh test       the test suite (what CI runs)
#   ./run.sh prepare | train | eval | report | predict | export | demo | bench   (python -m repro ...)
# Every subcommand takes --help.
set -euo pipefail
REPO="$(cd "$(dirname "$0")" && pwd)"  # paths given to the commands stay relative to where you are

usage() {
  cat <<'TXT'
usage: ./run.sh <command> [options]

  setup      install the project and its dependencies (CPU torch where no GPU is found)
  test       run the test suite (fast; no GPU, network or ImageNet needed)
  prepare    official ILSVRC archives or an extracted tree -> HDF5 shards + mean/PCA stats
  train      train AlexNet from a config (default paper_configs/alexnet_2gpu.toml)
  eval       centre-crop and 10-view top-1 / top-5 error of a run, ensembles
  report     the paper's tables beside this project's runs, figures (results/<name>/report.md)
  predict    top-5 classes of image files with a trained run
  export     a trained run as TorchScript, ONNX or safetensors for use elsewhere
  demo       the whole path on a small generated dataset, on a CPU, in minutes
  bench      the project's benchmarks as one table

Run './run.sh <command> --help' for the options of each command.
TXT
}

# The project's virtual environment: .venv, or another folder named by REPRO_VENV (CI keeps a
# second one for the oldest Python it tests). PYTHON: the interpreter `setup` builds it from.
VENV="${REPRO_VENV:-$REPO/.venv}"
[[ "$VENV" == /* ]] || VENV="$REPO/$VENV"
MIN_PYTHON="3.11"  # tomllib; and the oldest Python the suite runs on in CI (3.11.2)
TORCH_MIN="2.5"  # setup.py's floor for torch (tests/test_cli.py checks that they agree)

# The interpreter: an active venv/conda env, else the project's venv, else python3.
python_bin() {
  if [[ -n "${VIRTUAL_ENV:-}" || -n "${CONDA_PREFIX:-}" || "${REPRO_NO_VENV:-0}" == 1 ]]; then
    command -v python3 || command -v python
  elif [[ -x "$VENV/bin/python" ]]; then
    echo "$VENV/bin/python"
  else
    command -v python3 || command -v python
  fi
}

python_ok() { "$1" -c "import sys; sys.exit(sys.version_info < tuple(map(int, '$MIN_PYTHON'.split('.'))))" 2>/dev/null; }
python_version() { "$1" -c 'import platform; print(platform.python_version())' 2>/dev/null || echo '?'; }

check_python() {
  python_ok "$1" || {
    echo "setup: $1 is Python $(python_version "$1"); this project needs $MIN_PYTHON or newer (set PYTHON=/path/to/python3.11)" >&2
    exit 2
  }
}

have_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

# torch_at_least PY VERSION: PY's torch VERSION is at least TORCH_MIN, by pip's own rules (a
# pre-release such as 2.5.0a0 is older than 2.5)
torch_at_least() {
  "$1" -c "
import sys
try:
    from packaging.version import Version
except ImportError:
    from pip._vendor.packaging.version import Version
sys.exit(Version('$2') < Version('$TORCH_MIN'))" 2>/dev/null
}

# torch into interpreter $1: with CUDA where a GPU is present, else a CPU build
install_torch() {
  local py=$1
  if have_gpu; then
    echo "setup: GPU found; installing torch with CUDA"
    "$py" -m pip install "torch>=$TORCH_MIN"
  else
    # No GPU: a CPU build, not the default index's multi-GB CUDA build. A local wheel first
    # (pip's find-links), else PyTorch's CPU index, each without its dependencies, which then
    # come from the usual index. Where neither is there (PyTorch's index blocked, only PyPI
    # reachable), the usual index's torch, and a warning: on Linux that is a CUDA build.
    echo "setup: no GPU found; installing a CPU build of torch"
    if "$py" -m pip install --no-index --no-deps "torch>=$TORCH_MIN" 2>/dev/null ||
       "$py" -m pip install --no-deps "torch>=$TORCH_MIN" --retries 1 --index-url https://download.pytorch.org/whl/cpu; then
      "$py" -m pip install "torch==$("$py" -c 'import importlib.metadata as m; print(m.version("torch"))')"
    else
      echo "setup: warning: PyTorch's CPU index (https://download.pytorch.org/whl/cpu) cannot be reached; installing torch from the usual index instead, which on Linux is a CUDA build: it runs on the CPU too, but downloads several GB. To avoid that, put a CPU wheel of torch where pip finds it (pip's find-links) and run setup again" >&2
      "$py" -m pip install "torch>=$TORCH_MIN"
    fi
  fi
}

setup() {
  local py base="${PYTHON:-python3}"
  cd "$REPO"
  if [[ -z "${VIRTUAL_ENV:-}" && -z "${CONDA_PREFIX:-}" && "${REPRO_NO_VENV:-0}" != 1 ]]; then
    if [[ -x "$VENV/bin/python" ]] && ! python_ok "$VENV/bin/python"; then
      echo "setup: $VENV was made with Python $(python_version "$VENV/bin/python"); this project needs $MIN_PYTHON or newer: remove it (rm -rf $VENV) and run setup again, with PYTHON=/path/to/python3.11 if python3 is older" >&2
      exit 2
    fi
    if [[ ! -x "$VENV/bin/python" ]]; then
      command -v "$base" >/dev/null || { echo "setup: no $base found: install Python $MIN_PYTHON or newer, or set PYTHON=/path/to/python3" >&2; exit 2; }
      check_python "$base"
      "$base" -m venv "$VENV" || { echo "setup: $base cannot make a virtual environment (on Debian/Ubuntu: apt install python3-venv), or activate one of your own and run setup again" >&2; exit 2; }
    fi
  fi
  py=$(python_bin)
  check_python "$py"
  echo "setup: using $py ($("$py" -V 2>&1))"
  local torch_now prefix
  torch_now=$("$py" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null ||
              "$py" -c 'import torch; print(torch.__version__)' 2>/dev/null) || torch_now=""
  prefix=$("$py" -c 'import os, sys; print(os.path.realpath(sys.prefix))')
  if [[ -n "$torch_now" ]] && torch_at_least "$py" "$torch_now"; then
    echo "setup: torch $torch_now already installed"
  elif [[ -n "$torch_now" && "$prefix" != "$(cd "$VENV" 2>/dev/null && pwd -P)" ]]; then
    # not the project's venv but the user's own environment (active, or REPRO_NO_VENV=1): its
    # torch is theirs to upgrade, with the build for their CUDA
    echo "setup: $prefix has torch $torch_now; this project needs $TORCH_MIN or newer: upgrade it there (pip install -U torch, from the index for your CUDA), or deactivate that environment (and unset REPRO_NO_VENV) to use the project's own venv" >&2
    exit 2
  else
    [[ -z "$torch_now" ]] || echo "setup: torch $torch_now is older than $TORCH_MIN, the oldest this project runs on; installing a newer one"
    install_torch "$py"
  fi
  if ! "$py" -m pip install -e '.[test]'; then
    # An optional package without a wheel for this Python or platform must not stop the rest:
    # the project and pytest, then each extra the suite uses on its own (the tests of one that
    # is missing are skipped, and say which package they need).
    echo "setup: warning: the test extras did not all install; installing the project and pytest, then each extra alone" >&2
    "$py" -m pip install -e . 'pytest>=7.3' || {
      echo "setup: the project's own dependencies did not install on Python $(python_version "$py") (pip's reason is above). A package with no wheel for this Python yet is built from source: h5py then needs HDF5's headers (Debian/Ubuntu: apt install libhdf5-dev pkg-config, then HDF5_DIR=/usr/lib/$(uname -m)-linux-gnu/hdf5/serial ./run.sh setup); or use a Python the README lists as tested" >&2
      exit 1
    }
    "$py" -c 'import importlib.metadata as m; print("\n".join(r.split(";")[0] for r in m.requires("alexnet-repro") or [] if "extra == \"test\"" in r and not r.startswith("pytest")))' |
      while read -r pkg; do
        "$py" -m pip install "$pkg" || echo "setup: warning: $pkg is not installed: the features that need it are not tested here" >&2
      done
  fi
  echo "setup: done. Next: ./run.sh demo   (or ./run.sh test)"
}

cmd="${1:-}"
case "$cmd" in
  setup) shift; setup "$@" ;;
  test) shift; cd "$REPO"; exec "$(python_bin)" -m pytest -q "$@" ;;  # pytest.ini: testpaths = tests
  prepare|train|eval|report|predict|export|demo|bench)
    PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" exec "$(python_bin)" -m repro "$@" ;;
  -h|--help|help) usage ;;
  "") usage >&2; exit 2 ;;
  *) echo "run.sh: unknown command '$cmd'" >&2; usage >&2; exit 2 ;;
esac
