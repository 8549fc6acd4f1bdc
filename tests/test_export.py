"""`./run.sh export`: files that plain PyTorch, onnxruntime or this project's model code load,
with the run's function, written whole or not at all; bad --out and missing packages in one line."""
import contextlib
import io
import json
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from data_prep import shards
from repro import augment, checkpoint, cli, data, evaluate, export, files, rundir
from repro.config import dumps_toml, from_dict
from repro.errors import UserError
from repro.model import AlexNet
from tests.tiny_data import SIGNAL, small_config
from tests.tolerance import FLOAT32_NET_TOL, rel_err, softmax_atol
from tests.views import explicit_ten_view, val_images, views_atol

REPO = Path(__file__).resolve().parent.parent


def onnx_packages():
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name, reason=f"{name} is not installed (setup.py's test extra: ./run.sh setup "
                                         f"installs it where it has a wheel for this Python)")


def test_the_batch_axis_is_called_batch_whatever_the_exporter_called_it():
    """torch 2.5's exporter writes the free batch axis as "s0" (2.7's keeps the Dim's name): export
    renames it in the input, the output and every intermediate shape, and nothing else."""
    onnx_packages()
    import onnx
    from onnx import TensorProto, helper

    def value(name, dims):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "g",
        [value("x", ["s0", 3])], [value("y", ["s0", 3])],
        value_info=[value("h", ["s0", "s1"]), value("v", ["10*s0", "s01", "2*s10"])])
    model = export._name_batch_axis(helper.make_model(graph))
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in (*model.graph.input, *model.graph.output, *model.graph.value_info)}
    assert dims == {"x": ["batch", 3], "y": ["batch", 3], "h": ["batch", "s1"], "v": ["10*batch", "s01", "2*s10"]}
    onnx.checker.check_model(model)


def inputs(root, n: int = 3):
    """n validation images (256x256) and their centre crops, uint8 NHWC; n = 3 is not the batch
    size the exporters trace with (2), so the batch axis must be free."""
    images = torch.from_numpy(val_images(root)[:n].copy())
    return images, images[:, 16:240, 16:240].contiguous()


@torch.no_grad()
def model_outputs(run_dir, root, images, crops):
    """The project's own model as `./run.sh eval` runs it (the run's config and speed settings):
    centre-crop logits, 10-view probabilities, and the tolerance for probabilities computed by
    other kernels (tests/tolerance.py, softmax_atol of the ten views' logits)."""
    model, cfg = evaluate.load_run(run_dir)
    normalizer = data.make_normalizer(root, cfg, "cpu")
    logits = model(normalizer.views(crops[:, None], data.view_offsets("centre")))
    views = torch.from_numpy(augment.ten_view(images.numpy()))  # (B, 10, 224, 224, 3)
    view_logits = model(normalizer.views(views, data.view_offsets("ten")))
    return logits, evaluate.average_views(view_logits, 10), softmax_atol(view_logits)


def run_onnx_snippet(folder: Path, images, crops) -> dict:
    """export.ONNX_SNIPPET as it is, in a Python that cannot import this project."""
    np.save(folder / "images.npy", images.numpy())
    np.save(folder / "crops.npy", crops.numpy())
    script = ("import numpy as np\ncrops, images = np.load('crops.npy'), np.load('images.npy')\n"
              + export.ONNX_SNIPPET + textwrap.dedent("""
                  import sys
                  assert not any(m.split(".")[0] in ("repro", "data_prep") for m in sys.modules)
                  np.save("logits.npy", logits)
                  np.save("probs.npy", probs)
                  print(json.dumps(classes))
              """))
    # -I: isolated, so neither the repository nor PYTHONPATH is importable.
    r = subprocess.run([sys.executable, "-I", "-c", script], cwd=folder, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return {"logits": torch.from_numpy(np.load(folder / "logits.npy")),
            "probs": torch.from_numpy(np.load(folder / "probs.npy")),
            "classes": json.loads(r.stdout.splitlines()[-1])}


def run_safetensors_snippet(folder: Path, crops, monkeypatch) -> dict:
    """export.SAFETENSORS_SNIPPET as it is, in this process (same kernels, same threads)."""
    monkeypatch.chdir(folder)
    namespace = {"crops": crops}
    exec(export.SAFETENSORS_SNIPPET, namespace)
    return namespace


@torch.no_grad()
def run_model_on_crops(run_dir, crops, root):
    model, cfg = evaluate.load_run(run_dir)
    return model(data.make_normalizer(root, cfg, "cpu").views(crops[:, None], data.view_offsets("centre")))


def fake_run(run_dir: Path, root: Path, config: str) -> Path:
    """A run directory with an untrained small model of a paper config as its one checkpoint."""
    cfg = small_config(*SIGNAL, config=config)
    run_dir.mkdir(parents=True)
    rundir.write_config(run_dir, cfg)
    rundir.write_provenance(run_dir, cfg, root, {})
    checkpoint.save(run_dir, 1, AlexNet.from_config(cfg), None, {"step": 1, "epoch": 0}, keep=1)
    return run_dir


# ---------------------------------------------------------------------------- TorchScript

@pytest.mark.slow
def test_export_runs_without_this_project_and_gives_the_same_logits(tiny_run, tiny_shards, tmp_path, capsys):
    out = tmp_path / "alexnet"  # no suffix: TorchScript, the default, under exactly this name
    assert cli.main(["export", str(tiny_run), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith("MB): forward(uint8 crops (B, 224, 224, 3)) -> logits; "
                                                    "ten_view(uint8 images (B, 256, 256, 3)) -> probabilities")
    images = torch.from_numpy(val_images(tiny_shards)[:3].copy())  # 3: not the batch size traced with
    crops = images[:, 16:240, 16:240].contiguous()
    torch.save({"crops": crops, "images": images}, tmp_path / "inputs.pt")
    script = textwrap.dedent(f"""
        import json, sys, torch
        extra = {{"classes.json": "", "about.json": ""}}
        model = torch.jit.load({str(out)!r}, _extra_files=extra)
        inputs = torch.load({str(tmp_path / 'inputs.pt')!r})
        with torch.no_grad():
            torch.save({{"logits": model(inputs["crops"]), "probs": model.ten_view(inputs["images"])}},
                       {str(tmp_path / 'outputs.pt')!r})
        assert not any(m.split(".")[0] in ("repro", "data_prep") for m in sys.modules)
        print(json.dumps(json.loads(extra["classes.json"])))
    """)
    # -I: isolated, so neither the repository nor PYTHONPATH is importable.
    r = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == [list(c) for c in data.class_names(tiny_shards)]
    got = torch.load(tmp_path / "outputs.pt")
    model, cfg = evaluate.load_run(tiny_run)
    normalizer = data.make_normalizer(tiny_shards, cfg, "cpu")
    with torch.no_grad():
        logits = model(normalizer.views(crops[:, None], data.view_offsets("centre")))
    # the exported model runs the plain LRN and conv1 (other kernels): tests/tolerance.py, rule 2
    assert rel_err(got["logits"], logits) < FLOAT32_NET_TOL
    mean = shards.read_stats(tiny_shards).mean
    expected = explicit_ten_view(model, images.numpy(), mean)
    torch.testing.assert_close(got["probs"], expected, rtol=0, atol=views_atol(model, images.numpy(), mean))


# ----------------------------------------------------------------------------------- ONNX

@pytest.fixture(scope="module")
def onnx_files(tiny_run, tmp_path_factory):
    """tiny_run exported to ONNX once for this module: (folder, what the export printed on stderr)."""
    onnx_packages()
    folder = tmp_path_factory.mktemp("onnx")
    printed = io.StringIO()
    with contextlib.redirect_stderr(printed):
        assert cli.main(["export", str(tiny_run), "--format", "onnx", "--out", str(folder / "alexnet.onnx")]) == 0
    return folder, printed.getvalue()


@pytest.mark.slow
def test_onnx_snippet_gives_the_models_logits_and_ten_view_probabilities(onnx_files, tiny_run, tiny_shards, tmp_path):
    import onnx
    import onnx.numpy_helper

    folder, printed = onnx_files
    assert "checked with onnxruntime" in printed  # the export ran its own check
    for name in ("alexnet.onnx", "alexnet.ten_view.onnx"):
        (tmp_path / name).symlink_to(folder / name)
    images, crops = inputs(tiny_shards)
    got = run_onnx_snippet(tmp_path, images, crops)
    logits, probs, atol = model_outputs(tiny_run, tiny_shards, images, crops)
    # onnxruntime's kernels against the project's fast paths: tests/tolerance.py, rule 2
    assert rel_err(got["logits"], logits) < FLOAT32_NET_TOL
    torch.testing.assert_close(got["probs"], probs, rtol=0, atol=atol)
    assert got["classes"] == [list(c) for c in data.class_names(tiny_shards)]
    normalizer = data.make_normalizer(tiny_shards, rundir.read_config(tiny_run), "cpu")
    means = {"logits": normalizer.mean_centre,  # what evaluation subtracts, per view
             "probs": normalizer.mean_crops(torch.as_tensor(data.view_offsets("ten")))}
    for name, function in (("alexnet.onnx", "logits"), ("alexnet.ten_view.onnx", "probs")):
        model = onnx.load(folder / name)
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        assert model.graph.output[0].type.tensor_type.shape.dim[0].dim_param == "batch"
        g = model.graph  # every symbolic size is the batch or the ten views of it (torch 2.5 wrote "10*s0")
        assert {d.dim_param for v in (*g.input, *g.output, *g.value_info)
                for d in v.type.tensor_type.shape.dim if d.dim_param} <= {"batch", "10*batch"}
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["function"] == function
        held = meta["mean_image"].split(":")[0].removeprefix("initializer ")
        mean = next(onnx.numpy_helper.to_array(i) for i in model.graph.initializer if i.name == held)
        assert torch.equal(torch.from_numpy(mean.copy()), means[function])
        stored = from_dict(tomllib.loads(meta["config.toml"]), where=name)
        assert dumps_toml(stored) == dumps_toml(rundir.read_config(tiny_run))  # the run's config, whole


@pytest.mark.slow
def test_the_export_check_fails_when_onnxruntime_disagrees(onnx_files, tiny_run, monkeypatch):
    """check_onnx, which guards every ONNX export, rejects a graph of another function (here:
    the files of a model whose fc8 bias moved), and says when it cannot check at all."""
    folder, _ = onnx_files
    graphs = (folder / "alexnet.onnx", folder / "alexnet.ten_view.onnx")
    wrapper = export.load_source(tiny_run).wrapper
    assert export.check_onnx(wrapper, *graphs).startswith("checked with onnxruntime")
    with torch.no_grad():
        wrapper.model.towers["0"].fc8.bias += 1.0
    with pytest.raises(UserError, match="do not compute the model's function"):
        export.check_onnx(wrapper, *graphs)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what an absent package looks like
    assert export.check_onnx(wrapper, *graphs).startswith("not checked: onnxruntime is not installed")


@pytest.mark.slow
def test_all_formats_of_the_2012_code_config(tiny_shards, tmp_path, monkeypatch):
    """Code 145's network: fc8 all on tower 0 (tower 1's share is empty), the same-map norm after
    conv2, LRN before the ReLU, the centre of the mean image for every view. --format all with the
    default names, under the run directory."""
    onnx_packages()
    pytest.importorskip("safetensors", reason="safetensors is in setup.py's test extra")
    run = fake_run(tmp_path / "c145", tiny_shards, "alexnet_2gpu_code145.toml")
    assert cli.main(["export", str(run), "--format", "all"]) == 0
    names = sorted(p.name for p in (run / "export").iterdir())
    assert names == ["c145.onnx", "c145.pt", "c145.safetensors", "c145.ten_view.onnx"]
    images, crops = inputs(tiny_shards)
    for suffix in (".onnx", ".ten_view.onnx", ".safetensors"):
        (tmp_path / f"alexnet{suffix}").symlink_to(run / "export" / f"c145{suffix}")
    logits, probs, atol = model_outputs(run, tiny_shards, images, crops)
    got = run_onnx_snippet(tmp_path, images, crops)
    assert rel_err(got["logits"], logits) < FLOAT32_NET_TOL
    torch.testing.assert_close(got["probs"], probs, rtol=0, atol=atol)
    rebuilt = run_safetensors_snippet(tmp_path, crops, monkeypatch)
    assert rebuilt["weights"]["towers.1.fc8.weight"].numel() == 0  # code 145: no logits on tower 1
    assert torch.equal(rebuilt["logits"], logits)


# ---------------------------------------------------------------------------- safetensors

@pytest.mark.slow
def test_safetensors_snippet_rebuilds_the_run_model_exactly(tiny_run, tiny_shards, tmp_path, monkeypatch):
    pytest.importorskip("safetensors", reason="safetensors is in setup.py's test extra")
    from safetensors import safe_open

    out = tmp_path / "alexnet.safetensors"
    assert cli.main(["export", str(tiny_run), "--out", str(out)]) == 0  # the format from the name
    ckpt = checkpoint.latest(tiny_run)
    params = {}
    for tower in sorted(ckpt.glob("tower*.pt")):
        params.update(torch.load(tower, weights_only=True)["params"])
    with safe_open(out, "pt") as f:
        assert set(f.keys()) == set(params) | {"mean_image"}  # exactly the checkpoint's names
        for name, value in params.items():
            assert torch.equal(f.get_tensor(name), value), name
    _, crops = inputs(tiny_shards)
    rebuilt = run_safetensors_snippet(tmp_path, crops, monkeypatch)
    # The snippet builds the run's config, speed settings included: the same kernels on the same
    # inputs in this process, so the logits are those of `./run.sh eval`'s model, bit for bit.
    assert torch.equal(rebuilt["logits"], run_model_on_crops(tiny_run, crops, tiny_shards))
    assert dumps_toml(rebuilt["cfg"]) == dumps_toml(rundir.read_config(tiny_run))
    assert rebuilt["classes"] == [list(c) for c in data.class_names(tiny_shards)]
    mean = torch.from_numpy(shards.read_stats(tiny_shards).mean).float()
    assert torch.equal(rebuilt["mean"], mean)


# --------------------------------------------------------------------------------- errors

def test_output_names_and_format_follow_each_other(tmp_path):
    assert export.choose_format(None, None) == "torchscript"  # as before there was a choice
    assert export.choose_format(None, Path("a/b.onnx")) == "onnx"
    assert export.choose_format("safetensors", Path("weights.bin")) == "safetensors"
    assert export.choose_format("all", Path("x.pt")) == "all"
    with pytest.raises(UserError, match=r"named for torchscript, not --format onnx: name it x\.onnx"):
        export.choose_format("onnx", Path("x.pt"))
    assert export.ten_view_path(Path("d/alexnet.onnx")) == Path("d/alexnet.ten_view.onnx")
    assert export.ten_view_path(Path("d/alexnet")) == Path("d/alexnet.ten_view.onnx")
    assert export.outputs("all", Path("d/m.pt")) == {
        "torchscript": Path("d/m.pt"), "onnx": Path("d/m.onnx"), "safetensors": Path("d/m.safetensors")}
    assert export.all_files(export.outputs("all", Path("m"))) == [
        Path("m.pt"), Path("m.onnx"), Path("m.ten_view.onnx"), Path("m.safetensors")]


def test_bad_out_format_or_missing_package_is_one_line(tiny_run, tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir").mkdir()
    cases = [
        (["--out", str(tmp_path / "adir")], ["adir is a directory", "name a file in it"]),
        (["--format", "all", "--out", str(tmp_path / "adir")], ["is a directory", "each format adds its suffix"]),
        (["--out", str(tmp_path / "afile" / "m.pt")], ["afile is a file, not a directory"]),
        (["--format", "onnx", "--out", str(tmp_path / "m.safetensors")], ["named for safetensors", "m.onnx"]),
        (["--format", "tflite"], ["--format", "tflite"]),
        (["--data", str(tmp_path / "adir")], ["adir", "prepare"]),
        (["--format", "safetensors", "--out", str(tmp_path / "m.safetensors")],
         ["needs safetensors, not installed", "pip install safetensors", ".[export]"]),
        (["--format", "all", "--out", str(tmp_path / "m")], ["--format all needs", "onnxscript"]),
    ]
    for args, words in cases:
        if "needs" in words[0]:  # what an absent package looks like
            monkeypatch.setitem(sys.modules, "safetensors" if "safetensors" in args else "onnxscript", None)
        capsys.readouterr()
        assert cli.main(["export", str(tiny_run), *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error:"), (args, err)
        for w in words:
            assert w in err, (args, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir", "afile"]  # nothing written
    assert not list((tmp_path / "adir").iterdir())


def test_wrong_data_for_the_run_is_one_line(tiny_run, tmp_path, capsys):
    from tests.tiny_data import make_tiny_shards

    other = make_tiny_shards(tmp_path / "three", n_train=6, n_val=3, classes=3, train_shards=1)
    assert cli.main(["export", str(tiny_run), "--data", str(other), "--out", str(tmp_path / "m.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "3 classes" in err and "4" in err and "--data" in err
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.slow
def test_a_failure_halfway_leaves_the_earlier_export_and_no_partial_file(tiny_run, tmp_path, monkeypatch, capsys):
    """Every format is written under a temporary name and renamed into place only when all are
    written: a failure in the second format keeps the first format's old file as it was."""
    out = tmp_path / "m.pt"
    out.write_bytes(b"an earlier export")

    def fails_halfway(src, staging, path):
        staging.write(path, b"half a file")
        raise UserError("the disk is full")

    monkeypatch.setattr(export, "require", lambda fmt: None)
    monkeypatch.setitem(export.WRITERS, "onnx", fails_halfway)
    assert cli.main(["export", str(tiny_run), "--format", "all", "--out", str(out)]) == 2
    assert "the disk is full" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]  # no m.onnx, no .partial files
    assert out.read_bytes() == b"an earlier export"
    assert not files.tmp_name(out).exists()


def test_help_shows_the_tested_snippets(capsys):
    with pytest.raises(SystemExit):
        cli.main(["export", "--help"])
    out = capsys.readouterr().out
    for snippet in (export.ONNX_SNIPPET, export.SAFETENSORS_SNIPPET):
        for line in snippet.splitlines():
            assert line.strip() in out



def test_readme_shows_the_tested_snippets():
    readme = (REPO / "README.md").read_text()
    assert export.ONNX_SNIPPET.rstrip() in readme and export.SAFETENSORS_SNIPPET.rstrip() in readme
