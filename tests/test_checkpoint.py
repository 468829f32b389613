"""Atomic checkpoints and strict weight loading."""

import argparse
import os
import re

import pytest
import torch

from kdreid.checkpoint import AtomicCheckpointer, load_weights_strict
from kdreid.errors import WeightsError


def _model():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))


def test_crash_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = _model()
    ckpt = AtomicCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000", epoch=0)
    before = (tmp_path / "model_0000.pth").read_bytes()

    real_save = torch.save

    def crash_midway(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        f.truncate(100)  # half a file on disk, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_midway)
    with torch.no_grad():
        model[0].weight.add_(1)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000", epoch=1)  # overwrite in place
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0001", epoch=1)  # a new file
    monkeypatch.undo()

    assert (tmp_path / "model_0000.pth").read_bytes() == before
    assert not (tmp_path / "model_0001.pth").exists()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000.pth"]  # no temp files
    assert ckpt.load(ckpt.get_checkpoint_file())["epoch"] == 0


def test_save_then_resume_finds_the_latest(tmp_path):
    ckpt = AtomicCheckpointer(_model(), str(tmp_path))
    ckpt.save("model_0000", epoch=0)
    ckpt.save("model_0001", epoch=1)
    assert ckpt.has_checkpoint()
    assert ckpt.resume_or_load("", resume=True)["epoch"] == 1


def test_provenance_is_saved_and_read_back_weights_only(tmp_path):
    from kdreid.checkpoint import read_provenance

    ckpt = AtomicCheckpointer(_model(), str(tmp_path))
    ckpt.save("plain")
    assert read_provenance(str(tmp_path / "plain.pth")) is None  # trained before it was recorded
    ckpt.provenance = {"name": "kd_student", "config": "configs/kd.yml", "distilled": True}
    ckpt.save("model_final", epoch=3)
    assert read_provenance(str(tmp_path / "model_final.pth")) == ckpt.provenance
    content = torch.load(tmp_path / "model_final.pth", weights_only=True)
    assert content["kdreid"]["distilled"] is True and content["epoch"] == 3
    loaded = ckpt.resume_or_load("", resume=True)  # what FastReID hands back: the extra entries
    assert loaded["kdreid"]["name"] == "kd_student"


def test_strict_load_round_trip_and_module_prefix(tmp_path):
    src, dst = _model(), _model()
    path = tmp_path / "w.pth"
    torch.save({"model": {"module." + k: v for k, v in src.state_dict().items()}}, path)
    load_weights_strict(dst, str(path))
    assert torch.equal(src[0].weight, dst[0].weight)
    torch.save(src.state_dict(), path)  # a bare state dict works too
    load_weights_strict(_model(), str(path))


def test_strict_load_names_every_problem(tmp_path):
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Linear(2, 2))
    path = tmp_path / "other.pth"
    torch.save({"model": other.state_dict()}, path)
    with pytest.raises(WeightsError) as info:
        load_weights_strict(_model(), str(path))
    message = str(info.value)
    assert "other.pth" in message
    assert "1.running_mean" in message  # missing in the checkpoint
    assert "2.weight" in message  # not in the model
    assert "0.weight: checkpoint (8, 3, 3, 3) vs model (4, 3, 3, 3)" in message


@pytest.mark.parametrize("case", ["empty", "missing", "truncated", "not_a_state_dict"])
def test_strict_load_bad_files(tmp_path, case):
    path = tmp_path / "w.pth"
    if case == "truncated":
        torch.save({"model": _model().state_dict()}, path)
        path.write_bytes(path.read_bytes()[:200])
    elif case == "not_a_state_dict":
        torch.save({"model": [1, 2, 3]}, path)
    arg = "" if case == "empty" else str(path)
    with pytest.raises(WeightsError, match="MODEL.WEIGHTS" if case == "empty" else "w.pth"):
        load_weights_strict(_model(), arg)


def test_empty_classifier_is_not_an_error(tmp_path):
    """Evaluation builds the head with 0 classes; the trained classifier is not needed."""

    def head(num_classes):
        return torch.nn.ModuleDict(
            {"feat": torch.nn.Linear(4, 4), "cls": torch.nn.Linear(4, num_classes, bias=False)}
        )

    trained = head(16)
    path = tmp_path / "w.pth"
    torch.save({"model": trained.state_dict()}, path)
    evaluated = head(0)
    load_weights_strict(evaluated, str(path))
    assert torch.equal(evaluated["feat"].weight, trained["feat"].weight)
    assert evaluated["cls"].weight.shape == (0, 4)


@pytest.mark.parametrize(
    "case, words",
    [
        ("directory", "w.pth' is a directory, not a checkpoint file"),
        ("text", "w.pth' (MODEL.WEIGHTS): it is not a PyTorch checkpoint"),
        ("empty_file", "w.pth' (MODEL.WEIGHTS): it is empty"),
        ("objects", "holds pickled Python objects"),
    ],
)
def test_strict_load_says_what_is_wrong_with_the_file(tmp_path, case, words):
    """A directory is not "missing", a text file is not a checkpoint "with pickled objects"."""
    path = tmp_path / "w.pth"
    if case == "directory":
        path.mkdir()
    elif case == "text":
        path.write_text("epoch 3, mAP 80.1\n")
    elif case == "empty_file":
        path.write_bytes(b"")
    else:
        torch.save({"model": {"w": torch.zeros(1)}, "extra": argparse.Namespace(a=1)}, path)
    with pytest.raises(WeightsError, match=re.escape(words)) as info:
        load_weights_strict(_model(), str(path))
    if case != "objects":
        assert "pickled" not in str(info.value)


def test_training_weights_of_another_model_are_refused(tmp_path):
    """MODEL.WEIGHTS for training may fit in part (fine-tuning with another head), not at all."""
    model = _model()
    other = tmp_path / "other.pth"
    torch.save({"model": {"head.weight": torch.zeros(2, 3)}}, other)
    ckpt = AtomicCheckpointer(model, str(tmp_path / "out"))
    with pytest.raises(WeightsError, match=r"other.pth' holds none of the parameters.*head"):
        ckpt.resume_or_load(str(other), resume=False)
    partial = tmp_path / "partial.pth"
    source = _model()
    state = {"0.weight": source[0].weight.detach(), "head.weight": torch.zeros(2, 3)}
    torch.save({"model": state}, partial)
    ckpt.resume_or_load(str(partial), resume=False)
    assert torch.equal(model[0].weight, source[0].weight)
