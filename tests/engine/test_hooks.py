"""kdreid.engine.hooks: the distillation warm-up's schedule (its effect on a training run: the
distiller's tests, tests/distill/test_distiller.py)."""

import pytest
import torch

from kdreid.engine import DistillationWarmup


def test_warmup_schedule():
    hook = DistillationWarmup(torch.nn.Linear(1, 1), 4)
    assert [hook.scale(i) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="warmup_iters must be > 0"):
        DistillationWarmup(torch.nn.Linear(1, 1), 0)
