#!/usr/bin/env bash
# One entry point for the whole pipeline (see README.md):
#   ./run.sh setup      install the project and its dependencies (into .venv unless a venv is active)
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
  export     a trained run as TorchScript for use outside this project
  demo       the whole path on a small generated dataset, on a CPU, in minutes
  bench      the project's benchmarks as one table

Run './run.sh <command> --help' for the options of each command.
TXT
}

# The interpreter: an active venv/conda env, else the project's .venv, else python3.
python_bin() {
  if [[ -n "${VIRTUAL_ENV:-}" || -n "${CONDA_PREFIX:-}" || "${REPRO_NO_VENV:-0}" == 1 ]]; then
    command -v python3 || command -v python
  elif [[ -x "$REPO/.venv/bin/python" ]]; then
    echo "$REPO/.venv/bin/python"
  else
    command -v python3 || command -v python
  fi
}

have_gpu() { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }

setup() {
  local py
  cd "$REPO"
  if [[ -z "${VIRTUAL_ENV:-}" && -z "${CONDA_PREFIX:-}" && "${REPRO_NO_VENV:-0}" != 1 ]]; then
    [[ -x .venv/bin/python ]] || python3 -m venv .venv
  fi
  py=$(python_bin)
  echo "setup: using $py ($("$py" -V 2>&1))"
  if "$py" -c 'import torch' 2>/dev/null; then
    echo "setup: torch $("$py" -c 'import torch; print(torch.__version__)') already installed"
  elif have_gpu; then
    echo "setup: GPU found; installing torch with CUDA"
    "$py" -m pip install 'torch>=2.3'
  else
    # No GPU: a CPU build, never the default index's multi-GB CUDA build. A local wheel first
    # (pip's find-links), then its dependencies from the usual index; else PyTorch's CPU index.
    echo "setup: no GPU found; installing a CPU build of torch"
    if "$py" -m pip install --no-index --no-deps 'torch>=2.3' 2>/dev/null; then
      "$py" -m pip install "torch==$("$py" -c 'import importlib.metadata as m; print(m.version("torch"))')"
    else
      "$py" -m pip install 'torch>=2.3' --retries 1 --index-url https://download.pytorch.org/whl/cpu \
        --extra-index-url https://pypi.org/simple
    fi
  fi
  "$py" -m pip install -e '.[test]'
  echo "setup: done. Next: ./run.sh demo   (or ./run.sh test)"
}

cmd="${1:-}"
case "$cmd" in
  setup) shift; setup "$@" ;;
  test) shift; cd "$REPO"; exec "$(python_bin)" -m pytest -q tests "$@" ;;
  prepare|train|eval|report|predict|export|demo|bench)
    PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" exec "$(python_bin)" -m repro "$@" ;;
  -h|--help|help) usage ;;
  "") usage >&2; exit 2 ;;
  *) echo "run.sh: unknown command '$cmd'" >&2; usage >&2; exit 2 ;;
esac
