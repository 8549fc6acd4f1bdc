"""The paper's update rule and schedules (section 5), and code 145's (docs/fidelity.md,
"Learning-rate schedule" and "Bias learning rate")."""
import dataclasses

import pytest
import torch

from repro.config import CONFIG_DIR, ScheduleConfig, Widths, load_config
from repro.errors import UserError
from repro.optim import PaperSGD, Schedule


def test_paper_rule_matches_hand_computation():
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = PaperSGD([w], lr=0.1, momentum=0.9, weight_decay=0.5)
    grads = [torch.tensor([0.5, 1.0]), torch.tensor([-1.0, 0.25])]
    v, expect = [0.0, 0.0], [1.0, -2.0]
    for g in grads:
        w.grad = g.clone()
        opt.step()
        for i in range(2):  # v <- 0.9 v - 0.5 * 0.1 * w - 0.1 * g ; w <- w + v
            v[i] = 0.9 * v[i] - 0.5 * 0.1 * expect[i] - 0.1 * g[i].item()
            expect[i] += v[i]
        assert w.tolist() == pytest.approx(expect, rel=1e-6)


def run_both(lrs, grads):
    wp = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    wt = torch.nn.Parameter(wp.detach().clone())
    paper = PaperSGD([wp], lr=lrs[0], momentum=0.9, weight_decay=0.0005)
    torch_sgd = torch.optim.SGD([wt], lr=lrs[0], momentum=0.9, weight_decay=0.0005)
    out = []
    for lr, g in zip(lrs, grads):
        paper.set_lr(lr)
        for group in torch_sgd.param_groups:
            group["lr"] = lr
        wp.grad, wt.grad = g.clone(), g.clone()
        paper.step()
        torch_sgd.step()
        out.append((wp.detach().clone(), wt.detach().clone()))
    return out


def test_agrees_with_torch_sgd_until_the_rate_changes():
    grads = [torch.randn(3, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    steps = run_both([0.01, 0.01, 0.01, 0.001, 0.001, 0.001], grads)
    for paper, torch_w in steps[:3]:  # constant rate: the same trajectory
        torch.testing.assert_close(paper, torch_w, rtol=1e-6, atol=1e-7)
    paper, torch_w = steps[3]  # right after eps / 10: the paper's velocity still holds the old eps
    assert (paper - torch_w).abs().max() > 1e-4
    # exactly: paper - torch = -0.9 (eps_old - eps_new) v_torch, with v_torch = -(last step) / eps_old
    last_step = steps[2][1] - steps[1][1]
    torch.testing.assert_close(paper - torch_w, 0.9 * (0.01 - 0.001) / 0.01 * last_step, rtol=1e-4, atol=1e-8)


def test_torch_rule_equals_torch_sgd():
    grads = [torch.randn(3, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    w1 = torch.nn.Parameter(torch.ones(3))
    w2 = torch.nn.Parameter(torch.ones(3))
    a = PaperSGD([w1], lr=0.01, rule="torch")
    b = torch.optim.SGD([w2], lr=0.01, momentum=0.9, weight_decay=0.0005)
    for i, g in enumerate(grads):
        lr = 0.01 if i < 2 else 0.001
        a.set_lr(lr)
        b.param_groups[0]["lr"] = lr
        w1.grad, w2.grad = g.clone(), g.clone()
        a.step()
        b.step()
    torch.testing.assert_close(w1, w2)


def test_lr_multiplier_and_freeze():
    w, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = PaperSGD([{"params": [w]}, {"params": [b], "lr_mult": 2.0, "layer_group": "conv1"}],
                   lr=0.1, weight_decay=0.0)
    w.grad, b.grad = torch.ones(1), torch.ones(1)
    opt.step()
    assert w.item() == pytest.approx(-0.1) and b.item() == pytest.approx(-0.2)
    opt.freeze("conv1")
    opt.step()
    assert b.item() == pytest.approx(-0.2) and w.item() == pytest.approx(-0.1 - 0.19)


def test_plateau_schedule_on_scripted_errors():
    cfg = ScheduleConfig(kind="plateau", patience=2, max_reductions=3, factor=10.0)
    s = Schedule(cfg, 0.01)
    errors = [0.9, 0.8, 0.7, 0.7, 0.71,   # no improvement for 2 epochs after 0.7 -> /10 after epoch 5
              0.6, 0.65, 0.6,             # 2 more without beating 0.6 -> /10 after epoch 8
              0.5, 0.5, 0.5,              # -> /10 after epoch 11 (third and last)
              0.5, 0.5, 0.5, 0.5]         # never a fourth time
    reduced_at = [e for e, err in enumerate(errors, start=1) if s.end_epoch(e, err)]
    assert reduced_at == [5, 8, 11]
    assert s.reductions == 3 and s.lr(20) == pytest.approx(1e-5)


def test_plateau_state_round_trip():
    cfg = ScheduleConfig(kind="plateau", patience=1)
    a = Schedule(cfg, 0.01)
    for e, err in enumerate([0.5, 0.6], start=1):
        a.end_epoch(e, err)
    b = Schedule(cfg, 0.01)
    b.load_state_dict(a.state_dict())
    assert b.lr(3) == a.lr(3) == pytest.approx(0.001) and b.end_epoch(3, 0.4) == a.end_epoch(3, 0.4)


def test_code145_epoch_schedule():
    cfg = ScheduleConfig(kind="epochs", drop_epochs=[25, 51, 79], freeze_conv1_epoch=72)
    s = Schedule(cfg, 0.01)
    assert [s.lr(e) for e in (0, 24, 25, 50, 51, 79, 90)] == pytest.approx(
        [0.01, 0.01, 0.001, 0.001, 1e-4, 1e-5, 1e-5])
    assert not s.conv1_frozen(71) and s.conv1_frozen(72)
    assert s.end_epoch(30, 0.1) is False  # validation error does not steer this schedule


def test_code145_biases_get_no_weight_decay():
    from repro.config import OptimConfig
    from repro.optim import param_groups

    model = torch.nn.Module()
    model.towers = torch.nn.ModuleDict({"0": torch.nn.ModuleDict({"conv1": torch.nn.Linear(2, 2),
                                                                  "fc6": torch.nn.Linear(2, 2)})})
    for bias_decay, expect in ((True, 0.0005), (False, 0.0)):
        groups = {g["name"]: g for g in param_groups(model, OptimConfig(bias_weight_decay=bias_decay, bias_lr_mult=2.0))}
        assert groups["rest.weight"]["weight_decay"] == groups["conv1.weight"]["weight_decay"] == 0.0005
        assert groups["rest.bias"]["weight_decay"] == groups["conv1.bias"]["weight_decay"] == expect
        assert groups["rest.bias"]["lr_mult"] == 2.0
        w = torch.nn.Parameter(torch.ones(1))
        opt = PaperSGD([{"params": [w], "weight_decay": groups["rest.bias"]["weight_decay"]}], lr=0.1)
        w.grad = torch.zeros(1)
        opt.step()
        assert w.item() == pytest.approx(1 - 0.1 * expect)


def effective_rates(cfg, epoch: int) -> dict[str, float]:
    """The rate each parameter group of a model of `cfg` is updated with while training epoch
    epoch + 1 (0 when frozen), as the trainer sets them."""
    from repro.model import AlexNet

    model = AlexNet.from_config(dataclasses.replace(cfg.model, num_classes=10,
                                                    widths=Widths(8, 16, 16, 16, 16, 16, 16)))
    opt = PaperSGD.from_config(model, cfg.optim)
    schedule = Schedule(cfg.schedule, cfg.optim.lr)
    opt.set_group_lrs(schedule.rates(epoch))
    opt.freeze("conv1", schedule.conv1_frozen(epoch))
    return {g["name"]: 0.0 if g["frozen"] else g["lr"] * g["lr_mult"] for g in opt.param_groups}


def test_code145_rates_follow_its_training_log():
    """layer-params-145.cfg's log: the weights' rate /10 at epochs 25, 51 and 79; conv1's weights
    also /10 at 67 ("on conv1") and frozen from 72; the biases at 0.02 throughout, so that the file
    ends with epsW 0.00001 and epsB 0.02 on conv2-fc8 and 0 on conv1."""
    cfg = load_config(CONFIG_DIR / "alexnet_2gpu_code145.toml")
    names = ("rest.weight", "conv1.weight", "rest.bias", "conv1.bias")
    expect = {0: (0.01, 0.01, 0.02, 0.02), 25: (1e-3, 1e-3, 0.02, 0.02), 51: (1e-4, 1e-4, 0.02, 0.02),
              66: (1e-4, 1e-4, 0.02, 0.02), 67: (1e-4, 1e-5, 0.02, 0.02), 71: (1e-4, 1e-5, 0.02, 0.02),
              72: (1e-4, 0.0, 0.02, 0.0), 79: (1e-5, 0.0, 0.02, 0.0), 90: (1e-5, 0.0, 0.02, 0.0)}
    for epoch, rates in expect.items():
        got = effective_rates(cfg, epoch)
        assert [got[n] for n in names] == pytest.approx(rates), epoch


def test_paper_rates_are_one_rate_for_every_parameter():
    cfg = load_config(CONFIG_DIR / "alexnet_2gpu.toml")
    cfg.schedule.kind, cfg.schedule.drop_epochs = "epochs", [3]  # a drop at a known epoch
    for epoch, rate in ((0, 0.01), (3, 0.001)):
        assert list(effective_rates(cfg, epoch).values()) == pytest.approx([rate] * 4)


def test_bias_rate_keys_are_checked():
    with pytest.raises(UserError, match="schedule.bias_lr"):
        load_config(CONFIG_DIR / "alexnet_2gpu.toml", ["schedule.bias_lr=fixed"])
    with pytest.raises(UserError, match="schedule.conv1_drop_epochs"):
        load_config(CONFIG_DIR / "alexnet_2gpu.toml", ["schedule.conv1_drop_epochs=[0]"])
