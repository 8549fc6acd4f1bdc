"""The paper's optimiser and learning-rate schedules (section 5; docs/fidelity.md, "Learning-rate
schedule" and "Bias learning rate", for code 145's).

The update rule of the paper, for every parameter w with learning rate eps:
    v <- 0.9 v - 0.0005 eps w - eps dL/dw
    w <- w + v
torch.optim.SGD keeps eps outside the velocity (v <- 0.9 v + g + wd w; w <- w - eps v). The two
agree while eps is constant; right after eps changes the paper's velocity still carries the old
eps and torch's does not. `rule = "torch"` gives torch's form for comparison.
"""
from __future__ import annotations

import torch

from repro.config import OptimConfig, ScheduleConfig


def param_groups(model, optim: OptimConfig) -> list[dict]:
    """Weights and biases (code 145 trains biases at twice the rate and without weight decay),
    conv1 apart so it can be frozen."""
    groups = {}
    for name, p in model.named_parameters():
        layer = name.split(".")[2]  # towers.<tower>.<layer>.<weight|bias>
        kind = "bias" if name.endswith("bias") else "weight"
        key = (layer == "conv1", kind)
        decay = optim.weight_decay if kind == "weight" or optim.bias_weight_decay else 0.0
        groups.setdefault(key, {"params": [], "name": f"{'conv1' if layer == 'conv1' else 'rest'}.{kind}",
                                "lr_mult": optim.bias_lr_mult if kind == "bias" else 1.0,
                                "weight_decay": decay,
                                "layer_group": "conv1" if layer == "conv1" else "rest"})
        groups[key]["params"].append(p)
    return list(groups.values())


class PaperSGD(torch.optim.Optimizer):
    """SGD with momentum and weight decay in the paper's form (or torch's, for comparison).

    Each group's learning rate is `lr * lr_mult`; `set_lr` changes the base rate; a group with
    `frozen = True` is not updated at all (code 145 froze conv1 for its last epochs).
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0005,
                 rule: str = "paper"):
        if rule not in ("paper", "torch"):
            raise ValueError(f"rule must be 'paper' or 'torch', got {rule!r}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay,
                                      lr_mult=1.0, frozen=False))
        self.rule = rule

    @classmethod
    def from_config(cls, model, optim: OptimConfig) -> "PaperSGD":
        return cls(param_groups(model, optim), optim.lr, optim.momentum, optim.weight_decay, optim.rule)

    def set_lr(self, lr: float) -> None:
        """One base rate for every group."""
        for group in self.param_groups:
            group["lr"] = lr

    def set_group_lrs(self, rates: dict[str, float]) -> None:
        """A base rate per group name (`Schedule.rates`); each group still applies its lr_mult."""
        for group in self.param_groups:
            group["lr"] = rates[group["name"]]

    def freeze(self, layer_group: str, frozen: bool = True) -> None:
        for group in self.param_groups:
            if group.get("layer_group") == layer_group:
                group["frozen"] = frozen

    @torch.no_grad()
    def step(self, closure=None):
        assert closure is None, "PaperSGD takes no closure"
        for group in self.param_groups:
            if group["frozen"]:
                continue
            eps, mom, wd = group["lr"] * group["lr_mult"], group["momentum"], group["weight_decay"]
            for w in group["params"]:
                if w.grad is None:
                    continue
                state = self.state[w]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(w)
                v = state["velocity"]
                if self.rule == "paper":  # v <- m v - wd eps w - eps g ; w <- w + v
                    v.mul_(mom).add_(w, alpha=-wd * eps).add_(w.grad, alpha=-eps)
                    w.add_(v)
                else:  # torch.optim.SGD: v <- m v + (g + wd w) ; w <- w - eps v
                    v.mul_(mom).add_(w.grad).add_(w, alpha=wd)
                    w.add_(v, alpha=-eps)


# ------------------------------------------------------------------------------ schedules

class Schedule:
    """Learning rate per epoch. Epochs are counted as epochs completed: the rate returned for
    `epoch = e` is the one used while training epoch e + 1."""

    def __init__(self, cfg: ScheduleConfig, base_lr: float):
        self.cfg, self.base_lr = cfg, base_lr
        self.reductions = 0
        self.best = float("inf")
        self.bad_epochs = 0
        self.history: list[dict] = []  # one entry per reduction: epoch and the error that caused it

    def lr(self, epoch: int) -> float:
        if self.cfg.kind == "epochs":
            drops = sum(1 for d in self.cfg.drop_epochs if epoch >= d)
            return self.base_lr / self.cfg.factor ** drops
        return self.base_lr / self.cfg.factor ** self.reductions

    def rates(self, epoch: int) -> dict[str, float]:
        """The base rate of each parameter group (repro.optim.param_groups) while training epoch
        epoch + 1: the weights' rate `lr(epoch)`, conv1's weights divided further at
        schedule.conv1_drop_epochs, and the biases' rate either following the weights'
        (bias_lr = "scheduled") or fixed at the starting rate ("constant", code 145). Each group
        multiplies its base rate by its own lr_mult (optim.bias_lr_mult for biases)."""
        weights = self.lr(epoch)
        conv1_drops = sum(1 for d in self.cfg.conv1_drop_epochs if epoch >= d)
        biases = weights if self.cfg.bias_lr == "scheduled" else self.base_lr
        return {"rest.weight": weights, "conv1.weight": weights / self.cfg.factor ** conv1_drops,
                "rest.bias": biases, "conv1.bias": biases}

    def conv1_frozen(self, epoch: int) -> bool:
        return 0 < self.cfg.freeze_conv1_epoch <= epoch

    def end_epoch(self, epoch: int, val_error: float) -> bool:
        """Feed the validation error after `epoch` epochs; True if the rate was divided now.

        Plateau: divide when the error has not improved on its best for `patience` epochs, at
        most `max_reductions` times; the count of bad epochs starts again after each division.
        """
        if self.cfg.kind != "plateau":
            return False
        if val_error < self.best:
            self.best, self.bad_epochs = val_error, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs >= self.cfg.patience and self.reductions < self.cfg.max_reductions:
            self.reductions += 1
            self.bad_epochs = 0
            self.history.append({"epoch": epoch, "val_error": val_error, "lr": self.lr(epoch)})
            return True
        return False

    def state_dict(self) -> dict:
        return {"reductions": self.reductions, "best": self.best, "bad_epochs": self.bad_epochs,
                "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.reductions, self.best = state["reductions"], state["best"]
        self.bad_epochs, self.history = state["bad_epochs"], list(state["history"])
