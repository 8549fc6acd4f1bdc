"""ILSVRC archives (or an extracted tree) -> HDF5 shards with mean-image and PCA statistics.

    shards       the on-disk schema (shards, stats.h5, manifest.json); the trainer reads it through repro.data
    prepare      `./run.sh prepare`: plan, run, resume, finish; prepare.prepare(Options(...)) from Python
    sources      the official archives and extracted trees -> a catalogue of images (indexed, never extracted)
    images       one image -> 256x256 RGB (decode, resize, centre crop)
    stats        exact sums -> mean image, RGB covariance, eigen-decomposition
    workers      one shard per task, on a pool of processes
    verify       `./run.sh prepare --verify DIR`
    fake_ilsvrc  small datasets written in the official layouts (tests, benchmark, demo)
"""
