"""Install the two packages of this project: `repro` (model, training, evaluation) and
`data_prep` (ILSVRC archives -> HDF5 shards).

Python 3.11 or newer: the configs are read with the standard library's tomllib (3.11+), and
the oldest Python the test suite runs on in CI is Debian 12's 3.11.2. Every dependency, torch
too, is a floor only, and CI runs the suite with each at its floor. `./run.sh setup` installs a
CPU build of torch first where no GPU is present, so that this file never pulls a multi-GB CUDA
build onto a CPU machine.
"""
from setuptools import find_packages, setup

setup(
    name="alexnet-repro",
    version="0.1.0",
    description="A faithful reproduction of Krizhevsky, Sutskever and Hinton (NIPS 2012): "
    "the two-tower AlexNet, its data pipeline, training recipe and the paper's tables.",
    python_requires=">=3.11",
    packages=find_packages(include=["repro", "repro.*", "data_prep", "data_prep.*"]),
    install_requires=[
        # 2.5: the oldest the suite passes on (CI installs it, .ci/run). 2.3 lacks torch.amp.custom_fwd
        # (repro/fast); 2.4's torch.onnx.export lacks dynamic_shapes and external_data
        # (repro/export.py), and its torchrun ignores --local-addr (--nproc; pytorch/pytorch#135262).
        "torch>=2.5",
        # The floors are the oldest releases with wheels for Python 3.11 (scipy 1.9.0 and 1.9.1 and
        # pillow 9.1 have none, and building them from source fails without their compilers and
        # libraries); CI installs exactly these (uv's lowest-direct resolution) and runs the suite.
        "numpy>=1.24",
        "pillow>=9.2",
        "scipy>=1.9.2",
        "h5py>=3.8",
        "matplotlib>=3.6",
    ],
    extras_require={
        # prepare from Hugging Face's ILSVRC/imagenet-1k Parquet files (data_prep/hf_parquet.py)
        "hf": ["pyarrow>=12"],
        # train writes TensorBoard event files when this is installed (repro/watch.py)
        "watch": ["tensorboard>=2.12"],
        # ./run.sh export --format onnx | safetensors (repro/export.py). Floors tested with torch
        # 2.5.0 (CI's floors pass) and 2.13, whose exporter needs onnxscript 0.6+; onnxruntime 1.18
        # does not import with numpy 2, 1.19 does.
        "export": ["onnx>=1.17", "onnxscript>=0.6", "onnxruntime>=1.19", "safetensors>=0.4"],
        # the test suite runs the optional paths too, so CI (./run.sh setup installs .[test]) covers them
        # pytest 7.3: tmp_path_retention_policy (pytest.ini). pytest-timeout: a test that hangs (a
        # stuck process group, a lost worker) fails with every thread's stack instead of holding CI
        # until its limit (pytest.ini, timeout)
        "test": ["pytest>=7.3", "pytest-timeout>=2", "pyarrow>=12", "tensorboard>=2.12",
                 "onnx>=1.17", "onnxscript>=0.6", "onnxruntime>=1.19", "safetensors>=0.4"],
    },
    entry_points={"console_scripts": ["alexnet-repro=repro.cli:main"]},
)
