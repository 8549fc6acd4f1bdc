"""ILSVRC archives (or an extracted tree) -> HDF5 shards with mean-image and PCA statistics.

The schema of what is written lives in data_prep.shards; the trainer reads it through repro.data.
"""
