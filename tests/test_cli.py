"""Every subcommand: --help explains it; bad input is one line and a non-zero exit."""
import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from repro import cli, rundir
from tests.tiny_data import small_config

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_help_explains_every_option(command, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main([command, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ./run.sh " + command)
    assert out.count("\n") > 5 and "--" in out


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_unknown_option_is_one_line(command, capsys):
    assert cli.main([command, "x", "y", "--no-such-option"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--no-such-option" in err and "--help" in err
    assert len(err.splitlines()) == 1


def bad_inputs(tmp: Path):
    """(argv, words the one-line message must hold) for a missing or wrong input per command."""
    bad_config = tmp / "bad.toml"
    bad_config.write_text("[model]\nlrn = 'caffe'\n")
    return [
        (["prepare", "--source", str(tmp / "nowhere"), "--out", str(tmp / "out")], ["nowhere"]),
        (["prepare", "--source", str(tmp), "--out", str(tmp / "out")], [str(tmp)]),  # no known layout
        (["train", str(bad_config)], ["bad.toml", "model.lrn"]),
        (["train", "--data", str(tmp / "none"), "--run-dir", str(tmp / "r")], ["no prepared data", "demo"]),
        (["train", "--set", "optim.lr"], ["section.key=value"]),
        (["eval", str(tmp / "norun")], ["norun"]),
        (["report", str(tmp / "norun")], ["norun"]),
        (["predict", str(tmp / "norun"), str(tmp / "x.jpg")], ["norun"]),
        (["export", str(tmp / "norun")], ["norun"]),
        (["demo", "--set", "model.lrn=caffe"], ["model.lrn"]),
        (["bench", "no_such_benchmark"], ["no_such_benchmark"]),
    ]


def test_missing_or_wrong_input_is_one_line(tmp_path, capsys):
    for argv, words in bad_inputs(tmp_path):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error:"), (argv, err)
        for w in words:
            assert w in err, (argv, err)


def test_run_sh_unknown_command_prints_usage_and_fails():
    r = subprocess.run(["bash", str(REPO / "run.sh"), "frobnicate"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown command 'frobnicate'" in r.stderr and "setup" in r.stderr
    r = subprocess.run(["bash", str(REPO / "run.sh")], capture_output=True, text=True)
    assert r.returncode == 2 and "usage" in r.stderr


@pytest.mark.slow
def test_setup_says_what_to_do_when_the_dependencies_do_not_install(tmp_path):
    """A Python newer than some package's wheels (h5py had none for 3.15.0 on 2026-11-27): pip
    fails to build it, and setup ends with what to do instead of pip's output alone. Here a venv
    whose python runs the real one but fails every pip install stands in for it."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    stub = venv / "bin" / "python"
    stub.write_text(f'#!/bin/bash\nif [[ "$1 $2" == "-m pip" ]]; then echo "pip: no wheel, build failed" >&2; exit 1; fi\n'
                    f'exec {shlex.quote(sys.executable)} "$@"\n')
    stub.chmod(0o755)
    # an active venv or conda environment would be used instead of REPRO_VENV (and installed into)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "REPRO_NO_VENV", "PYTHON")}
    r = subprocess.run(["bash", str(REPO / "run.sh"), "setup"], capture_output=True, text=True,
                       env={**env, "REPRO_VENV": str(venv)}, timeout=120)
    assert r.returncode == 1, r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("setup: the project's own dependencies did not install on Python 3.") and "HDF5_DIR" in last


def setup_with_a_stub_python(tmp_path, torch_version: str | None, env_extra: dict | None = None):
    """`./run.sh setup` with REPRO_VENV a venv whose python reports `torch_version` installed (None:
    no torch), fails the two CPU-build installs of torch (no local wheel, PyTorch's CPU index
    unreachable), records every other pip call and runs everything else with the real Python;
    on a PATH whose nvidia-smi finds no GPU. Returns the result and the recorded pip calls."""
    venv, calls = tmp_path / "venv", tmp_path / "pip-calls"
    (venv / "bin").mkdir(parents=True)
    stub = venv / "bin" / "python"
    version = f"echo {torch_version}; exit 0" if torch_version else "exit 1"
    stub.write_text(textwrap.dedent(f"""\
        #!/bin/bash
        if [[ "$1" == "-c" && ( "$2" == *'m.version("torch")'* || "$2" == *'torch.__version__'* ) ]]; then {version}; fi
        if [[ "$1" == "-c" && "$2" == *'realpath(sys.prefix)'* ]]; then cd "$(dirname "$0")/.." && pwd -P; exit 0; fi
        if [[ "$1 $2" == "-m pip" ]]; then
          if [[ "$*" == *"--no-index"* || "$*" == *"download.pytorch.org"* ]]; then exit 1; fi
          echo "${{*:3}}" >> {shlex.quote(str(calls))}; exit 0
        fi
        exec {shlex.quote(sys.executable)} "$@"
        """))
    stub.chmod(0o755)
    (venv / "bin" / "python3").symlink_to("python")  # what an active environment is called by
    (tmp_path / "no-gpu").mkdir()  # an nvidia-smi that finds no GPU, whatever this machine has
    (tmp_path / "no-gpu" / "nvidia-smi").write_text("#!/bin/sh\nexit 9\n")
    (tmp_path / "no-gpu" / "nvidia-smi").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "REPRO_NO_VENV", "PYTHON")}
    r = subprocess.run(["bash", str(REPO / "run.sh"), "setup"], capture_output=True, text=True, timeout=120,
                       env={**env, "REPRO_VENV": str(venv), "PATH": f"{tmp_path / 'no-gpu'}:{env['PATH']}",
                            **(env_extra or {})})
    return r, (calls.read_text().splitlines() if calls.exists() else [])


def test_setup_without_pytorchs_cpu_index_says_it_falls_back_to_the_usual_index(tmp_path):
    """No GPU, no local torch wheel, and PyTorch's CPU index unreachable (only PyPI allowed, as
    behind some proxies): setup installs the usual index's torch, a CUDA build on Linux, and says
    so instead of claiming a CPU build."""
    r, calls = setup_with_a_stub_python(tmp_path, None)
    assert r.returncode == 0, r.stderr
    assert "setup: warning: PyTorch's CPU index (https://download.pytorch.org/whl/cpu) cannot be reached" in r.stderr
    assert "which on Linux is a CUDA build" in r.stderr
    assert calls == ["install torch>=2.5", "install -e .[test]"]


@pytest.mark.parametrize("active", ["none", "the project's venv", "the project's venv, conda's base too"])
def test_setup_replaces_a_torch_older_than_the_floor_in_its_venv_and_keeps_a_new_enough_one(tmp_path, active):
    """torch 2.4 fails this project (ONNX export, the --nproc launch), and a pre-release of 2.5
    is older than 2.5 to pip: in the project's venv, activated or not (conda activates its base
    environment by default, beside it), setup says so and installs a newer one; a new enough
    torch stays as it is."""
    def setup(name, version):
        venv = tmp_path / name / "venv"
        env = {"none": {},
               "the project's venv": {"VIRTUAL_ENV": str(venv)},
               "the project's venv, conda's base too": {"VIRTUAL_ENV": str(venv), "CONDA_PREFIX": str(tmp_path / "conda")},
               }[active]
        if env:
            env["PATH"] = f"{venv / 'bin'}:{tmp_path / name / 'no-gpu'}:{os.environ['PATH']}"
        return setup_with_a_stub_python(tmp_path / name, version, env)

    for i, old in enumerate(("2.4.1+cpu", "2.5.0a0+git1234")):
        r, calls = setup(f"old{i}", old)
        assert r.returncode == 0, r.stderr
        assert f"setup: torch {old} is older than 2.5, the oldest this project runs on; installing a newer one" in r.stdout
        assert calls == ["install torch>=2.5", "install -e .[test]"]
    for version in ("2.5.0", "2.13.0+cpu", "3.0.0"):
        r, calls = setup(version, version)
        assert r.returncode == 0, r.stderr
        assert f"setup: torch {version} already installed" in r.stdout and calls == ["install -e .[test]"]


@pytest.mark.parametrize("how", ["an active venv", "conda", "REPRO_NO_VENV=1"])
def test_setup_leaves_an_old_torch_in_the_users_own_environment_to_them(tmp_path, how):
    """An environment of the user's own (an active venv or conda environment other than the
    project's, or their interpreter with REPRO_NO_VENV=1) with torch 2.4: its torch is the user's
    (and their CUDA's) to upgrade, so setup stops with one line saying so and installs nothing."""
    venv = tmp_path / "venv"  # the stub's, first on PATH, and not REPRO_VENV
    env = {"an active venv": {"VIRTUAL_ENV": str(venv)}, "conda": {"CONDA_PREFIX": str(venv)},
           "REPRO_NO_VENV=1": {"REPRO_NO_VENV": "1"}}[how]
    r, calls = setup_with_a_stub_python(tmp_path, "2.4.1", {
        **env, "REPRO_VENV": str(tmp_path / "project-venv"),
        "PATH": f"{venv / 'bin'}:{tmp_path / 'no-gpu'}:{os.environ['PATH']}"})
    assert f"setup: using {venv / 'bin' / 'python3'}" in r.stdout
    assert r.returncode == 2 and calls == []
    assert r.stderr.count("\n") == 1
    assert f"setup: {venv.resolve()} has torch 2.4.1; this project needs 2.5 or newer: upgrade it there" in r.stderr


def test_run_sh_and_setup_py_name_the_same_torch_floor():
    """run.sh installs torch by its own TORCH_MIN before pip reads setup.py: they must agree."""
    import re

    floor = re.search(r'"torch>=([0-9.]+)"', (REPO / "setup.py").read_text()).group(1)
    assert re.search(r'^TORCH_MIN="([0-9.]+)"', (REPO / "run.sh").read_text(), re.M).group(1) == floor


def test_run_commands_fail_in_one_line(tiny_run, tiny_shards, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    rundir.write_config(empty, small_config())
    rundir.write_provenance(empty, small_config(), tiny_shards, {})
    no_data = shutil.copytree(tiny_run, tmp_path / "no_data", ignore=shutil.ignore_patterns("eval"))
    cases = [(["eval", str(empty)], "no finished checkpoint"),
             (["eval", str(tmp_path / "nothing")], "not a run directory"),
             (["eval", str(no_data), "--data", str(tmp_path / "gone")], "no prepared data"),
             (["report", str(tiny_run), str(empty), "--out", str(tmp_path / "r")], "no finished checkpoint"),
             (["predict", str(empty), "x.jpg"], "no finished checkpoint"),
             (["export", str(empty)], "no finished checkpoint")]
    for argv, message in cases:
        capsys.readouterr()
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "r").exists()  # the report checks every run before doing any work


def test_wrong_paths_and_options_that_do_not_apply_are_one_line(tiny_run, tmp_path, capsys):
    """Paths of the wrong kind (a file where a directory goes, and the reverse), options that do
    not apply together, and bad --published files: one line each, before any work or output."""
    a_file = tmp_path / "notes.txt"
    a_file.write_text("not a directory\n")
    (tmp_path / "not.json").write_text("{")
    (tmp_path / "empty.json").write_text("{}")
    reports = tmp_path / "reports"
    cases = [
        (["train", "--run-dir", str(a_file)], "--run-dir " + str(a_file) + " is a file"),
        (["train", str(tmp_path)], "is a directory, not a config file"),
        (["train", "--set", "optimm.lr=0.1"], "--set optimm.lr: unknown section 'optimm'"),
        (["report", str(tiny_run), "--name", "../escape", "--out", str(reports)], "a plain name"),
        (["report", str(tiny_run), "--published", str(tmp_path / "none.json"), "--out", str(reports)], "no such file"),
        (["report", str(tiny_run), "--published", str(tmp_path / "not.json"), "--out", str(reports)], "is not JSON"),
        (["report", str(tiny_run), "--published", str(tmp_path / "empty.json"), "--out", str(reports)], "lacks 'tables'"),
        (["report", str(tiny_run), "--out", str(a_file)], "cannot create --out " + str(a_file / "tiny")),
        (["eval", str(tiny_run), "--ensemble", str(tiny_run)], "is given twice"),
        (["eval", str(tiny_run), "--other-data"], "--other-data goes with --data"),
        (["demo", "--dir", str(a_file)], "--dir " + str(a_file) + " is a file"),
        (["bench", "--model", "lrn"], "drop NAME"),
        (["bench", "--gpu", "--device", "cpu", "--out", str(tmp_path)], "is a directory: name the JSON file"),
        (["prepare", "--verify", str(tmp_path / "none")], "no such directory"),
        (["prepare", "--verify", str(tmp_path), "--out", str(reports)], "--out does not apply to --verify"),
        (["prepare", "--verify", str(tmp_path), "--source", str(tmp_path / "none")], "--source"),
    ]
    for argv, message in cases:
        capsys.readouterr()
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not reports.exists() and a_file.read_text() == "not a directory\n"


def test_a_run_whose_data_moved_says_to_pass_data(tiny_run, tiny_shards, tmp_path, capsys):
    """The data a run recorded (provenance.json) is gone from there: eval, predict, export, report
    and train --resume say where the run looked and that --data tells them where it is now."""
    run = shutil.copytree(tiny_run, tmp_path / "run", ignore=shutil.ignore_patterns("eval"))
    provenance = json.loads((run / rundir.PROVENANCE).read_text())
    provenance["data"]["root"] = str(tmp_path / "moved")
    (run / rundir.PROVENANCE).write_text(json.dumps(provenance))
    for argv in (["eval", str(run)], ["predict", str(run), "x.jpg"], ["export", str(run), "--out", str(tmp_path / "m.pt")],
                 ["report", str(run), "--out", str(tmp_path / "r")], ["train", "--run-dir", str(run), "--resume"]):
        capsys.readouterr()
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.endswith("which is not there now: if it moved, pass --data DIR (where it is now)"), (argv, err)
        assert str(tmp_path / "moved") in err and len(err.splitlines()) == 1
    assert cli.main(["eval", str(run), "--data", str(tiny_shards), "--workers", "0"]) == 0
