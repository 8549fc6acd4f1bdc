"""The arithmetic under `./run.sh bench --model` (repro/estimate.py) against the model itself and
the paper. The estimated img/s depend on assumed utilisations and are not tested; only that the
estimate is consistent arithmetic (scaling, units)."""
import dataclasses

import pytest
import torch

from repro import bench, estimate
from repro.config import LAYERS, ModelConfig, Widths
from repro.model import AlexNet, count_parameters
from repro.parallel import OneDevice

CONFIGS = {
    "paper": ModelConfig(),
    "no_cross_links": ModelConfig(cross_links=False),
    "half": ModelConfig(towers=1, widths=Widths(48, 128, 192, 192, 256, 4096, 4096)),
    "nonoverlap_symmetric": ModelConfig(pool="nonoverlap", conv1_padding="symmetric"),
}


def test_forward_cost_is_the_papers_072_g_multiply_adds():
    macs = estimate.forward_macs(ModelConfig())
    assert abs(macs / 0.72e9 - 1) < 0.02  # about 0.72 G per 224x224 image (docs/architecture.md)
    rule = sum(2 * layer.macs * 3 for layer in estimate.layers(ModelConfig()))
    conv1 = estimate.layers(ModelConfig())[0]
    assert estimate.train_flops(ModelConfig()) == rule - 2 * conv1.macs  # no input gradient


@pytest.mark.parametrize("name", list(CONFIGS))
def test_layers_match_the_model(name):
    """Parameters per layer and every layer's output size, against a real forward pass."""
    m = CONFIGS[name]
    model = AlexNet.from_config(m).eval()
    layers = {layer.name: layer for layer in estimate.layers(m)}
    assert list(layers) == list(LAYERS)
    assert sum(layer.params for layer in layers.values()) == count_parameters(model)
    outputs = {}
    for tower in model.towers.values():
        for name_ in LAYERS:
            def record(mod, inp, out, name_=name_):
                outputs[name_] = outputs.get(name_, 0) + out[0].numel()  # one image, summed over towers
            getattr(tower, name_).register_forward_hook(record)
        for name_ in LAYERS:
            assert sum(p.numel() for p in getattr(tower, name_).parameters()) <= layers[name_].params
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    for name_, layer in layers.items():
        assert outputs[name_] == layer.out_maps * layer.out_size ** 2, name_
    if name == "paper":
        assert estimate.train_flops(m) * 128 == pytest.approx(529.4e9, rel=1e-3)


@pytest.mark.parametrize("name", ["paper", "no_cross_links"])
def test_exchange_bytes_match_the_placements_log(name):
    m = CONFIGS[name]
    place = OneDevice()
    model = AlexNet.from_config(m, placement=place).eval()
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    assert estimate.exchange_bytes(m) == place.log.bytes


def test_update_and_activation_bytes_follow_the_sizes():
    m = ModelConfig()
    assert estimate.update_bytes(m) == 5 * 4 * 60_965_224
    no_lrn = dataclasses.replace(m, lrn="none")
    conv1_2 = 4 * (96 * 55 * 55 + 256 * 27 * 27)
    assert estimate.activation_bytes(m) - estimate.activation_bytes(no_lrn) == 8 * conv1_2


def _setup(**changes):
    return dataclasses.replace(estimate.SETUPS[1], **changes)  # one current GPU


def test_halving_the_work_per_gpu_doubles_throughput_when_links_are_free():
    m = ModelConfig()
    free = estimate.Link("free", float("inf"), "")
    one = estimate.estimate(_setup(), m)["img_per_s"]
    two = estimate.estimate(_setup(gpus_per_model=2, link=free), m)["img_per_s"]
    assert two == pytest.approx(2 * one)
    real = estimate.estimate(_setup(gpus_per_model=2, link=estimate.NVLINK3), m)["img_per_s"]
    assert one < real < 2 * one  # exchanges cost something, not everything
    pair = estimate.estimate(_setup(gpus_per_model=2, link=free), m)
    pairs = estimate.estimate(_setup(gpus_per_model=2, replicas=4, link=free, dp_link=free), m)
    assert pairs["step_ms"]["compute"] == pytest.approx(pair["step_ms"]["compute"] / 4)
    assert pairs["step_ms"]["allreduce"] == 0  # free links; the update is still done by every pair
    assert 3.5 * pair["img_per_s"] < pairs["img_per_s"] < 4 * pair["img_per_s"]
    slow = estimate.estimate(_setup(gpus_per_model=2, link=estimate.PCIE2), m)["step_ms"]
    fast = estimate.estimate(_setup(gpus_per_model=2, link=estimate.NVLINK3), m)["step_ms"]
    assert slow["exchange"] / fast["exchange"] == pytest.approx(estimate.NVLINK3.bandwidth / estimate.PCIE2.bandwidth)


def test_wall_time_is_ninety_epochs_of_imagenet():
    e = estimate.estimate(estimate.SETUPS[0], ModelConfig())
    assert e["days_90_epochs"] * 86400 * e["img_per_s"] == pytest.approx(1_281_167 * 90)
    assert e["img_per_s"] == pytest.approx(128 / (sum(e["step_ms"].values()) / 1000))


def test_bench_model_prints_the_labelled_estimate(capsys):
    assert bench.main(["--model"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ESTIMATE") and "Assumptions:" in out and "five to six days" in out
    for setup in estimate.SETUPS:
        assert setup.name in out
    assert bench.main(["--model", "--json"]) == 0
    import json
    rows = json.loads(capsys.readouterr().out)
    assert [r["gpus"] for r in rows] == [2, 1, 2, 8, 1, 1] and all(r["estimate"] for r in rows)
    for d in (estimate.H100, estimate.H200):  # the devices the GPU check compares with are stated
        assert f"{d.name}: {d.fp32 / 1e12:.2f} TFLOP/s fp32, {d.memory / 1e9:.0f} GB/s" in out


@pytest.mark.parametrize("name, device", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H200", "H200 SXM"),
    ("NVIDIA A100-SXM4-80GB", "A100 SXM"), ("NVIDIA GeForce RTX 4090", None)])
def test_one_gpu_setup_by_the_name_torch_reports(name, device):
    setup = estimate.one_gpu_setup(name)
    assert (setup.device.name if setup else None) == device
    if setup:
        assert setup.gpus == 1 and setup.gpus_per_model == 1 and device in setup.name
