"""`./run.sh export`: a file plain PyTorch runs without this project, with the same function."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from data_prep import shards
from repro import cli, data, evaluate
from tests.tolerance import FLOAT32_NET_TOL, rel_err
from tests.views import explicit_ten_view, val_images, views_atol


@pytest.mark.slow
def test_export_runs_without_this_project_and_gives_the_same_logits(tiny_run, tiny_shards, tmp_path):
    out = tmp_path / "alexnet.pt"
    assert cli.main(["export", str(tiny_run), "--out", str(out)]) == 0
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
