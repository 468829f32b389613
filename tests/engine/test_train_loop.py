"""TrainLoop: the losses reach the event storage in batches, with FastReID's values, iterations
and NaN check, and nothing is copied to the host between flushes."""

import contextlib

import pytest
import torch
from fastreid.engine.train_loop import SimpleTrainer
from fastreid.utils.events import EventStorage
from torch import nn

from kdreid.engine import Trainer
from kdreid.engine.trainer import TrainLoop

from .test_trainer import _tiny_cfg


class TwoLosses(nn.Module):
    """A model whose training forward returns two named losses; ``nan_at`` makes the second
    non-finite from that call on."""

    def __init__(self, nan_at=None):
        super().__init__()
        self.linear = nn.Linear(4, 3)
        self.calls = 0
        self.nan_at = nan_at

    def forward(self, batch):
        out = self.linear(batch)
        second = out.pow(2).mean()
        if self.nan_at is not None and self.calls >= self.nan_at:
            second = second * float("nan")
        self.calls += 1
        return {"loss_a": out.mean().abs(), "loss_b": second}


def _batches():
    generator = torch.Generator().manual_seed(0)
    return iter([torch.randn(5, 4, generator=generator) for _ in range(20)])


def _loop(cls, model):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return cls(model, _batches(), optimizer, None)


def _losses(storage):
    return {
        key: [(float(v), int(i)) for v, i in storage.history(key).values()]
        for key in ("total_loss", "loss_a", "loss_b")
    }


def test_every_iteration_stored_as_fastreid_stores_it():
    torch.manual_seed(0)
    theirs, ours = TwoLosses(), TwoLosses()
    ours.load_state_dict(theirs.state_dict())
    with EventStorage(0) as reference:
        loop = _loop(SimpleTrainer, theirs)
        for loop.iter in range(7):
            reference.iter = loop.iter
            loop.run_step()
    with EventStorage(0) as storage:
        loop = _loop(TrainLoop, ours)
        for loop.iter in range(7):
            storage.iter = loop.iter
            loop.run_step()
            if loop.iter == 2:
                assert "total_loss" not in storage.histories()  # not yet handed over
                loop.flush_metrics()
                assert storage.iter == 2  # the storage's own iteration is left as it was
        loop.flush_metrics()
    expected = _losses(reference)
    assert [i for _, i in expected["total_loss"]] == list(range(7))
    assert _losses(storage) == expected  # same values (float for float), same iterations
    assert [i for _, i in storage.history("data_time").values()] == list(range(7))


@contextlib.contextmanager
def _host_copies():
    """Counts the calls that copy a tensor to the host (each a device sync on CUDA)."""
    counts = {"n": 0}
    originals = {name: getattr(torch.Tensor, name) for name in ("item", "cpu", "tolist")}

    def counting(name):
        def call(self, *args, **kwargs):
            counts["n"] += 1
            return originals[name](self, *args, **kwargs)

        return call

    for name in originals:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def test_no_host_copy_between_flushes():
    with EventStorage(0):
        loop = _loop(TrainLoop, TwoLosses())
        with _host_copies() as copies:
            for loop.iter in range(5):
                loop.run_step()
        assert copies["n"] == 0
        with _host_copies() as copies:
            loop.flush_metrics()
        assert copies["n"] == 2  # one copy of all 5 x 2 losses, then its list
    with EventStorage(0):
        loop = _loop(SimpleTrainer, TwoLosses())
        with _host_copies() as copies:
            for loop.iter in range(5):
                loop.run_step()
        assert copies["n"] == 5 * 2 * 2  # FastReID's: .cpu().item() of each loss, every step


def test_a_nan_loss_names_the_iteration_it_appeared_at():
    with EventStorage(0) as storage:
        loop = _loop(TrainLoop, TwoLosses(nan_at=3))
        for storage.iter in range(6):  # as the trainer's before_step sets it
            loop.run_step()
        with pytest.raises(FloatingPointError, match="iteration=3!"):
            loop.flush_metrics()


def test_trainer_hands_every_iteration_over_before_writing(fastreid_root, tmp_path):
    # SynthReID-tiny: 96 images / 16 = 6 iterations an epoch, 2 epochs; the log period (4)
    # does not divide an epoch: the epoch ends flush too
    cfg = _tiny_cfg(tmp_path, **{"KDREID.LOG_PERIOD": 4})
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    flushed_at = []
    flush = trainer._trainer.flush_metrics

    def spy():
        flushed_at.append(trainer.iter)
        flush()

    trainer._trainer.flush_metrics = spy
    trainer.train()
    assert flushed_at == [3, 5, 7, 11]
    iterations = [i for _, i in trainer.storage.history("total_loss").values()]
    assert iterations == list(range(12))
    assert [i for _, i in trainer.storage.history("loss_cls").values()] == list(range(12))
    assert not trainer._trainer._pending
