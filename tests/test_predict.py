"""`./run.sh predict`: any image file prepared as the shards were, ten views averaged."""
import json

import numpy as np
import pytest
from PIL import Image

from data_prep import shards
from repro import cli, data, evaluate
from repro.predict import prepare_image
from tests.pixels import assert_as_resize_then_crop, resize_two_pass
from tests.views import explicit_ten_view, views_atol


def test_predict_reads_any_image_and_averages_ten_views(tiny_run, tiny_shards, tmp_path, capsys):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (300, 512, 3), dtype=np.uint8)
    files = {"wide.png": Image.fromarray(rgb), "grey.jpg": Image.fromarray(rgb[:, :200, 0]),
             "cmyk.jpg": Image.fromarray(rgb[:, :280]).convert("CMYK"),
             "rgba.png": Image.fromarray(rgb[:260, :256]).convert("RGBA"),
             "exact.png": Image.fromarray(rgb[:256, :256])}
    for name, im in files.items():
        im.save(tmp_path / name)
    (tmp_path / "notes.jpg").write_text("not an image")
    prepared = {name: prepare_image(tmp_path / name) for name in files}
    assert all(p.shape == (256, 256, 3) and p.dtype == np.uint8 for p in prepared.values())
    np.testing.assert_array_equal(prepared["exact.png"], rgb[:256, :256])  # no resize: untouched
    resized = resize_two_pass(Image.fromarray(rgb), (int(512 * 256 / 300 + 0.5), 256))
    left = (resized.width - 256) // 2
    assert_as_resize_then_crop(prepared["wide.png"], np.asarray(resized)[:, left:left + 256], "wide.png")

    assert cli.main(["predict", str(tiny_run), *(str(tmp_path / n) for n in files), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    model, _ = evaluate.load_run(tiny_run)
    mean = shards.read_stats(tiny_shards).mean
    expected = explicit_ten_view(model, np.stack(list(prepared.values())), mean)
    atol = views_atol(model, np.stack(list(prepared.values())), mean)  # predict batches the views otherwise
    names = data.class_names(tiny_shards)
    for result, p in zip(out, expected):
        assert len(result["top"]) == 4  # 4 classes: all of them
        top = p.topk(4)
        assert [t["class"] for t in result["top"]] == top.indices.tolist()
        assert [t["prob"] for t in result["top"]] == pytest.approx(top.values.tolist(), abs=atol)
        assert [t["words"] for t in result["top"]] == [names[c][1] for c in top.indices.tolist()]
    assert cli.main(["predict", str(tiny_run), str(tmp_path / "notes.jpg")]) == 2
    assert "cannot read image" in capsys.readouterr().err
    assert cli.main(["predict", str(tiny_run), str(tmp_path)]) == 2
    assert f"error: {tmp_path} is a folder: give the image files in it" in capsys.readouterr().err


def test_an_unreadable_file_is_named_and_skipped(tiny_run, tmp_path, capsys):
    """Among several files, one that is not an image is named on stderr (in words, not Pillow's
    object text) and skipped; the others get their classes; the exit status is 1."""
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(tmp_path / "good.png")
    (tmp_path / "notes.jpg").write_text("not an image")
    capsys.readouterr()
    assert cli.main(["predict", str(tiny_run), str(tmp_path / "notes.jpg"), str(tmp_path / "good.png"), "--json"]) == 1
    out, err = capsys.readouterr()
    assert [r["image"] for r in json.loads(out)] == [str(tmp_path / "good.png")]
    assert f"skipped: cannot read image {tmp_path / 'notes.jpg'}: not an image file Pillow can read" in err
    assert "BytesIO" not in err and "1 of 2 files skipped" in err
