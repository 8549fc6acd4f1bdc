"""The grouped emulation's parameter layout, and its conversion to and from the two towers'.

On one device the trainer runs both towers as ONE module with grouped convolutions
(AlexNet(grouped=True); speed.grouped): the same function as two towers side by side (the LRN
window and every own-tower layer stay inside each group; tests/test_parallel.py), computed in
fewer, larger operations. Its parameters are the towers' parameters stacked along dim 0:

    towers.grouped.conv2.weight  [256, 48, 5, 5]  =  cat(towers.0.conv2.weight, towers.1.conv2.weight)

and so for every layer (fc8: each tower's share of the logits, which for code 145 is all 1000 on
tower 0 and none on tower 1). Checkpoints always hold the two-tower form, so a run trained
grouped resumes, evaluates and exports in any placement.
"""
from __future__ import annotations

import torch

from repro.config import LAYERS, ModelConfig


def param_names() -> list[str]:
    """conv1.weight, conv1.bias, ..., fc8.bias."""
    return [f"{layer}.{kind}" for layer in LAYERS for kind in ("weight", "bias")]


def pieces(m: ModelConfig, layer: str, shape) -> list[tuple[int, tuple]]:
    """(tower, shape) of each tower's slice of a grouped layer's weight or bias, along dim 0."""
    if layer == "fc8":
        return [(i, (len(m.logit_range(i)),) + tuple(shape[1:])) for i in range(m.towers)]
    return [(i, (shape[0] // m.towers,) + tuple(shape[1:])) for i in range(m.towers)]


def to_grouped_state(state: dict, m: ModelConfig) -> dict:
    """Two-tower state_dict -> the grouped emulation's: every layer's towers stacked along dim 0."""
    return {f"towers.grouped.{name}": torch.cat([state[f"towers.{i}.{name}"] for i in range(m.towers)])
            for name in param_names()}


def from_grouped_state(state: dict, m: ModelConfig) -> dict:
    """The grouped emulation's state_dict -> two-tower keys."""
    out = {}
    for name in param_names():
        full = state[f"towers.grouped.{name}"]
        sizes = [shape[0] for _, shape in pieces(m, name.split(".")[0], full.shape)]
        for i, piece in enumerate(torch.split(full, sizes)):
            out[f"towers.{i}.{name}"] = piece.clone()
    return out
