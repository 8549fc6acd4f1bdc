"""The model of section 3 (docs/architecture.md): sizes, shapes, initialisation, fidelity options."""
import dataclasses

import pytest
import torch

from repro.config import LAYERS, Config, ModelConfig, Widths, load_config
from repro.grouped import from_grouped_state, to_grouped_state
from repro.model import AlexNet, count_parameters

PAPER_LAYER_PARAMS = {"conv1": 34_944, "conv2": 307_456, "conv3": 885_120, "conv4": 663_936,
                      "conv5": 442_624, "fc6": 37_752_832, "fc7": 16_781_312, "fc8": 4_097_000}


def layer_params(model, layer):
    return sum(p.numel() for t in model.towers.values() for p in getattr(t, layer).parameters())


def expected_params(w: Widths, towers: int, classes: int = 1000) -> dict:
    """Parameter count per layer from the widths alone (the kernel sizes of section 3.5)."""
    t = towers
    per = {k: v // t for k, v in dataclasses.asdict(w).items()}
    conv = lambda n_in, n_out, k: t * (n_in * k * k * n_out + n_out)  # noqa: E731
    return {
        "conv1": conv(3, per["conv1"], 11),
        "conv2": conv(per["conv1"], per["conv2"], 5),
        "conv3": conv(w.conv2, per["conv3"], 3),  # reads every tower
        "conv4": conv(per["conv3"], per["conv4"], 3),
        "conv5": conv(per["conv4"], per["conv5"], 3),
        "fc6": t * (w.conv5 * 36 * per["fc6"] + per["fc6"]),
        "fc7": t * (w.fc6 * per["fc7"] + per["fc7"]),
        "fc8": w.fc7 * classes + classes,
    }


@pytest.fixture(scope="module")
def paper_model():
    return AlexNet.from_config(Config())


def test_parameter_count_is_the_papers(paper_model):
    assert count_parameters(paper_model) == 60_965_224
    for layer, n in PAPER_LAYER_PARAMS.items():
        assert layer_params(paper_model, layer) == n, layer


def test_half_model_count_matches_its_widths():
    cfg = load_config("paper_configs/alexnet_1gpu_half.toml")
    model = AlexNet(cfg.model)
    want = expected_params(cfg.model.widths, towers=1)
    for layer in LAYERS:
        assert layer_params(model, layer) == want[layer], layer
    total = count_parameters(model)
    print(f"one-tower half model: {total:,} parameters (two-tower: 60,965,224)")
    assert total == sum(want.values()) == 59_798_312


def test_per_tower_shapes_at_224(paper_model):
    seen = {}

    def hook(name):
        def record(mod, inp, out):
            seen.setdefault(name, tuple(out.shape[1:]))
        return record

    def record_pool(mod, inp, out):
        seen.setdefault("pools", []).append(tuple(out.shape[1:]))

    tower = paper_model.towers["0"]
    handles = [getattr(tower, n).register_forward_hook(hook(n)) for n in LAYERS]
    handles.append(tower.pool.register_forward_hook(record_pool))
    with torch.no_grad():
        logits = paper_model.eval()(torch.randn(2, 3, 224, 224))
    for h in handles:
        h.remove()
    assert logits.shape == (2, 1000)
    assert seen["conv1"] == (48, 55, 55)
    assert seen["conv2"] == (128, 27, 27)
    assert seen["conv3"] == (192, 13, 13)
    assert seen["conv4"] == (192, 13, 13)
    assert seen["conv5"] == (128, 13, 13)
    assert seen["fc6"] == (2048,) and seen["fc7"] == (2048,) and seen["fc8"] == (500,)
    assert seen["pools"] == [(48, 27, 27), (128, 13, 13), (128, 6, 6)]
    assert tower.conv3.in_channels == 256 and tower.fc6.in_features == 9216


@pytest.mark.parametrize("padding", ["ceil", "symmetric"])
@pytest.mark.parametrize("pool", ["overlap", "nonoverlap"])
def test_options_keep_the_output_sizes(padding, pool):
    """Both conv1 paddings give 55x55; 2/2 pooling gives 'output of equivalent dimensions' (s. 3.4)."""
    m = ModelConfig(conv1_padding=padding, pool=pool, num_classes=10)
    model = AlexNet.from_config(m).eval()
    out = {}

    def record(name):
        def hook(mod, inp, o):
            out[name] = o.shape
        return hook

    model.towers["0"].conv1.register_forward_hook(record("conv1"))
    model.towers["0"].conv5.register_forward_hook(record("conv5"))
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 10)
    assert out["conv1"][-2:] == (55, 55) and out["conv5"][-2:] == (13, 13)


@pytest.mark.parametrize("padding", ["ceil", "symmetric"])
def test_conv1_padding_as_the_model_applies_it(padding):
    """ceil (the 2012 code): no padding, the last window reads columns 220..230 of which
    224..226 are zeros (right and bottom only); symmetric: 2 zero pixels on every side."""
    model = AlexNet.from_config(ModelConfig(conv1_padding=padding, num_classes=10)).eval()
    conv1 = model.towers["0"].conv1
    seen = {}

    def record(mod, inp, out):
        seen["out"] = out.detach().clone()  # before the in-place ReLU

    conv1.register_forward_hook(record)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        model(x)
    pad = (0, 3, 0, 3) if padding == "ceil" else (2, 2, 2, 2)
    expected = torch.nn.functional.conv2d(torch.nn.functional.pad(x, pad), conv1.weight, conv1.bias, stride=4)
    assert seen["out"].shape[-2:] == (55, 55)
    torch.testing.assert_close(seen["out"], expected, rtol=1e-5, atol=1e-5)
    # the two alignments really differ: the other padding gives other outputs
    other = (2, 2, 2, 2) if padding == "ceil" else (0, 3, 0, 3)
    wrong = torch.nn.functional.conv2d(torch.nn.functional.pad(x, other), conv1.weight, conv1.bias, stride=4)
    assert not torch.allclose(seen["out"], wrong, atol=1e-3)


@pytest.mark.parametrize("config", ["alexnet_2gpu", "alexnet_2gpu_code145"])
def test_initialisation_layer_by_layer(config):
    cfg = load_config(f"paper_configs/{config}.toml")
    model = AlexNet.from_config(cfg)
    for key, tower in model.towers.items():
        for layer in LAYERS:
            mod = getattr(tower, layer)
            if mod.weight.numel() == 0:  # code 145: tower 1 holds no part of fc8
                continue
            std = getattr(cfg.init.weight_std, layer)
            assert abs(mod.weight.std().item() / std - 1) < 0.02, (key, layer)
            assert abs(mod.weight.mean().item()) < 0.05 * std, (key, layer)
            assert torch.all(mod.bias == getattr(cfg.init.bias, layer)), (key, layer)
    if config == "alexnet_2gpu_code145":
        assert abs(model.towers["0"].conv3.weight.std().item() - 0.03) < 0.0006
    # paper: biases 1 in conv2, conv4, conv5, fc6, fc7; 0 in conv1, conv3, fc8
    assert [getattr(cfg.init.bias, n) for n in LAYERS] == [0, 1, 0, 1, 1, 1, 1, 0]


@pytest.mark.slow
def test_initialisation_depends_on_seed_only():
    a = AlexNet.from_config(Config(), seed=3).state_dict()
    b = AlexNet.from_config(Config(), seed=3).state_dict()
    c = AlexNet.from_config(Config(), seed=4).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["towers.0.conv1.weight"], c["towers.0.conv1.weight"])
    assert not torch.equal(a["towers.0.conv1.weight"], a["towers.1.conv1.weight"])


def test_state_dict_keys_name_tower_and_layer(paper_model):
    keys = set(paper_model.state_dict())
    for t in ("0", "1"):
        for layer in LAYERS:
            assert f"towers.{t}.{layer}.weight" in keys and f"towers.{t}.{layer}.bias" in keys
    assert len(keys) == 2 * len(LAYERS) * 2


def test_fc8_split_or_on_tower0():
    split, tower0 = ModelConfig(), ModelConfig(fc8="tower0")
    assert [len(split.logit_range(i)) for i in (0, 1)] == [500, 500]
    assert [len(tower0.logit_range(i)) for i in (0, 1)] == [1000, 0]
    model = AlexNet.from_config(tower0)
    assert model.towers["0"].fc8.weight.shape == (1000, 4096)
    assert model.towers["1"].fc8.weight.shape == (0, 4096)
    assert count_parameters(model) == 60_965_224


@pytest.mark.parametrize("cross", [True, False])
def test_grouped_state_round_trip(cross):
    m = ModelConfig(cross_links=cross, num_classes=10)
    model = AlexNet.from_config(m)
    grouped = AlexNet.from_config(m, grouped=True)
    sd = model.state_dict()
    assert all(torch.equal(v, grouped.state_dict()[k]) for k, v in to_grouped_state(sd, m).items())
    back = from_grouped_state(to_grouped_state(sd, m), m)
    assert back.keys() == sd.keys() and all(torch.equal(back[k], sd[k]) for k in sd)


def test_no_cross_links_reads_own_tower_only():
    model = AlexNet.from_config(ModelConfig(cross_links=False))
    t = model.towers["0"]
    assert t.conv3.in_channels == 128 and t.fc6.in_features == 4608 and t.fc7.in_features == 2048
    assert t.fc8.in_features == 4096  # the towers still meet at the classifier


def test_paper_dropout_scales_at_test_time():
    from repro.model import Dropout

    d = Dropout(0.5, "test")
    x = torch.ones(1000, 100)
    d.train()
    y = d(x)
    assert set(y.unique().tolist()) <= {0.0, 1.0} and abs(y.mean().item() - 0.5) < 0.01
    d.eval()
    assert torch.equal(d(x), x * 0.5)
    inv = Dropout(0.5, "train").train()
    assert set(inv(x).unique().tolist()) <= {0.0, 2.0}
    d.train()
    d.reseed(7)
    a = d(x)
    d.reseed(7)
    assert torch.equal(a, d(x))
