"""The demo's generated dataset goes through the real prepare path (the newcomer's path)."""
import hashlib
import time

import numpy as np
import pytest

from data_prep import demo_data, shards
from data_prep import prepare as prep
from repro import data


@pytest.mark.slow
def test_generated_archives_are_deterministic_and_prepare_labels_them(tmp_path):
    a = demo_data.generate(tmp_path / "a", train_per_class=3, val_per_class=2, classes=3, seed=5)
    time.sleep(1.1)  # anything that writes the time into a file (a MAT-file header did) shows up
    b = demo_data.generate(tmp_path / "b", train_per_class=3, val_per_class=2, classes=3, seed=5)
    digest = lambda ds: {k: hashlib.sha256(p.read_bytes()).hexdigest() for k, p in ds.files.items()}  # noqa: E731
    assert digest(a) == digest(b)
    summary = prep.prepare(prep.Options(a.root, tmp_path / "shards", workers=1, quiet=True))
    assert summary.complete and summary.counts == {"train": 9, "val": 6}
    names = data.class_names(tmp_path / "shards")
    assert [w for w, _ in names] == [c[0] for c in demo_data.CLASSES[:3]]
    assert [words for _, words in names] == ["disc", "square", "triangle"]
    val = shards.list_shards(tmp_path / "shards", "val")
    assert shards.read_labels(val[0]).tolist() == [0, 1, 2, 0, 1, 2]  # interleaved, as generated


def test_every_class_draws_an_rgb_image_of_the_asked_size():
    rng = np.random.default_rng(0)
    for c in range(len(demo_data.CLASSES)):
        img = demo_data.draw(c, rng, (500, 375))
        assert img.size == (500, 375) and img.mode == "RGB"
        assert np.asarray(img).std() > 10  # a shape or texture on the background, not a flat image
