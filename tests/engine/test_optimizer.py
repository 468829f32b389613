"""Trainer.build_optimizer: FastReID's update rule and parameter groups, torch's foreach steps,
parameters in their own (channels-last) storage."""

import copy

import pytest
import torch
from fastreid.solver import build_optimizer as fastreid_build_optimizer
from torch import nn

from kdreid.config import get_cfg
from kdreid.engine import Trainer


class Small(nn.Module):
    """A backbone (convolution, BatchNorm) and ``heads`` (FastReID's heads learning-rate factor
    matches the module name)."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3)
        )
        self.heads = nn.Linear(8, 5)

    def forward(self, x):
        return self.heads(self.backbone(x).mean(dim=(2, 3)))


def solver_cfg(opt):
    cfg = get_cfg()
    cfg.SOLVER.OPT = opt
    cfg.SOLVER.BASE_LR = 0.05 if opt == "SGD" else 1e-3
    cfg.SOLVER.MOMENTUM = 0.9
    cfg.SOLVER.NESTEROV = True
    cfg.SOLVER.WEIGHT_DECAY = 5e-4
    cfg.SOLVER.WEIGHT_DECAY_NORM = 0.0
    cfg.SOLVER.BIAS_LR_FACTOR = 2.0
    cfg.SOLVER.HEADS_LR_FACTOR = 10.0
    return cfg


def train(model, optimizer, steps=6):
    generator = torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(6, 3, 9, 7, generator=generator)
        y = torch.randint(0, 5, (6,), generator=generator)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize("opt", ["SGD", "Adam"])
def test_steps_equal_fastreids_contiguous_optimizer(opt):
    cfg = solver_cfg(opt)
    torch.manual_seed(0)
    theirs = Small()
    ours = copy.deepcopy(theirs)
    reference, _ = fastreid_build_optimizer(cfg, theirs)  # ContiguousParams: flat buffers
    optimizer, wrapper = Trainer.build_optimizer(cfg, ours)
    assert wrapper is None
    assert all(group["foreach"] for group in optimizer.param_groups)
    # FastReID's groups, one per parameter: the same learning rates and weight decays
    assert sorted((g["lr"], g["weight_decay"]) for g in optimizer.param_groups) == sorted(
        (g["lr"], g["weight_decay"])
        for g in fastreid_build_optimizer(cfg, Small(), False)[0].param_groups
    )
    train(theirs, reference)
    train(ours, optimizer)
    moved = False
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
        moved |= not torch.equal(a, Small().state_dict()[name])
    assert moved


def test_channels_last_weights_stay_channels_last():
    """FastReID's flat buffers cannot hold channels-last weights; ours keep the layout, and
    train to FastReID's numbers up to the layout's rounding."""
    cfg = solver_cfg("SGD")
    torch.manual_seed(0)
    theirs = Small()
    ours = copy.deepcopy(theirs).to(memory_format=torch.channels_last)
    train(theirs, fastreid_build_optimizer(cfg, theirs)[0])
    train(ours, Trainer.build_optimizer(cfg, ours)[0])
    conv = ours.backbone[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        fastreid_build_optimizer(cfg, copy.deepcopy(ours))
