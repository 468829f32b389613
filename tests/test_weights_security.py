"""No weights file runs code, whatever torch's environment, and weights with NaN or inf are refused
as they are read, naming the file and the tensors (issue 17, points 1 and 3)."""

import glob
import os
import re

import pytest
import torch

import kdreid  # noqa: F401
from kdreid import compat
from kdreid.checkpoint import read_checkpoint, read_state_dict
from kdreid.errors import WeightsError


class _Payload:
    """Unpickling it creates ``marker``: what a crafted checkpoint would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def payload(tmp_path, monkeypatch):
    """(zip-format payload, legacy-format payload, marker path), with torch told to unpickle
    everything that does not ask for ``weights_only`` explicitly."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "code_ran"
    state = {"conv1.weight": torch.zeros(1), "x": _Payload(str(marker))}
    zipped, legacy = tmp_path / "evil.pth", tmp_path / "evil_legacy.pth"
    torch.save(state, zipped)
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    assert not marker.exists()
    return str(zipped), str(legacy), marker


def test_the_environment_variable_would_run_the_payload_through_a_plain_torch_load(payload):
    """The attack is real: torch.load without weights_only runs it under this environment."""
    zipped, _, marker = payload
    with pytest.warns(UserWarning, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        torch.load(zipped)
    assert marker.exists()


def _fastreid_backbone_files():
    import fastreid.modeling.backbones as backbones

    root = os.path.dirname(backbones.__file__)
    for path in sorted(glob.glob(os.path.join(root, "**", "*.py"), recursive=True)):
        with open(path) as f:
            if re.search(r"\btorch\.load\(", f.read()):
                yield os.path.relpath(path, root)[: -len(".py")].replace(os.sep, ".")


def test_every_fastreid_backbone_module_that_loads_weights_is_repaired():
    assert sorted(_fastreid_backbone_files()) == sorted(compat.BACKBONE_MODULES)


@pytest.mark.parametrize("module_name", compat.BACKBONE_MODULES)
@pytest.mark.parametrize("which", ["zip", "legacy"])
def test_each_backbone_module_loads_weights_only(payload, module_name, which):
    import importlib

    module = importlib.import_module(f"fastreid.modeling.backbones.{module_name}")
    path = payload[0] if which == "zip" else payload[1]
    with pytest.raises(compat.CheckpointLoadError, match=re.escape(path)) as exc:
        module.torch.load(path, map_location=torch.device("cpu"))  # as the builders call it
    assert "pickled Python objects" in str(exc.value)
    assert not payload[2].exists()
    assert module.torch.nn is torch.nn and module.torch.Tensor is torch.Tensor  # torch otherwise


@pytest.mark.parametrize(
    "name, opts",
    [
        ("build_resnet_backbone", {"DEPTH": "18x"}),
        ("build_mobilenetv2_backbone", {"DEPTH": "1.0x"}),
        ("build_osnet_backbone", {"DEPTH": "x1_0"}),
    ],
)
def test_fastreid_builders_refuse_a_pickled_pretrain_path(payload, name, opts):
    """A user's script building FastReID's backbone itself (kdreid imported) runs no code."""
    from fastreid.modeling.backbones import build_backbone

    from kdreid.config import get_cfg

    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = name
    for key, value in opts.items():
        cfg.MODEL.BACKBONE[key] = value
    cfg.MODEL.BACKBONE.PRETRAIN = True
    cfg.MODEL.BACKBONE.PRETRAIN_PATH = payload[0]
    with pytest.raises(compat.CheckpointLoadError, match="pickled Python objects"):
        build_backbone(cfg)
    assert not payload[2].exists()


def test_model_weights_and_teachers_read_weights_only(payload):
    """MODEL.WEIGHTS, teachers' weights and the converter's SRC all go through read_checkpoint."""
    for read in (read_checkpoint, read_state_dict):
        with pytest.raises(WeightsError, match="pickled Python objects"):
            read(payload[0], "KDREID.TEACHER.WEIGHTS")
    assert not payload[2].exists()


def test_the_converter_reads_weights_only(payload, tmp_path, load_script):
    convert = load_script("projects/MDPR/convert_official.py")
    with pytest.raises(WeightsError, match="pickled Python objects"):
        convert.convert(payload[0], str(tmp_path / "out.pth"))
    assert not payload[2].exists() and not (tmp_path / "out.pth").exists()


# --- NaN and inf ---------------------------------------------------------------------------------


def test_non_finite_tensors_are_named_through_nested_containers():
    content = {
        "model": {"a": torch.ones(2), "bn.running_var": torch.tensor([1.0, float("inf")])},
        "optimizer": {"state": [torch.tensor([float("nan")])]},
        "iteration": 3,
        "ids": torch.arange(3),  # integers cannot hold NaN
        "empty": torch.zeros(0),
    }
    assert compat.non_finite_tensors(content) == ["model.bn.running_var", "optimizer.state.0"]
    assert compat.non_finite_tensors({"w": torch.full((2,), -float("inf"))}) == ["w"]
    assert compat.non_finite_tensors({"w": torch.ones(4, dtype=torch.bfloat16)}) == []


def test_a_checkpoint_with_inf_is_refused_naming_the_file_and_tensor(tmp_path):
    path = tmp_path / "model_final.pth"
    state = torch.nn.BatchNorm2d(4).state_dict()
    state["running_var"][2] = float("inf")
    torch.save({"model": state}, path)
    with pytest.raises(WeightsError) as exc:
        read_state_dict(str(path), "MODEL.WEIGHTS")
    message = str(exc.value)
    assert str(path) in message and "MODEL.WEIGHTS" in message
    assert "NaN or infinite values in 1 tensor (model.running_var)" in message
    # A mapped read (for the small entries: --resume's epoch) is not the weights' check.
    assert "model" in compat.load_checkpoint_file(str(path), mmap=True)


def test_fastreid_checkpointer_refuses_a_nan_checkpoint_on_resume(tmp_path):
    from fastreid.utils.checkpoint import Checkpointer

    model = torch.nn.Linear(2, 2)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["weight"][0, 0] = float("nan")
    path = tmp_path / "model_0001.pth"
    torch.save({"model": state, "iteration": 5}, path)
    with pytest.raises(compat.CheckpointLoadError, match=r"model\.weight"):
        Checkpointer(model).load(str(path))
    assert torch.isfinite(model.weight).all()  # the model is untouched


def test_a_nan_pretrained_trunk_is_refused_naming_the_option(tmp_path):
    from kdreid.config import get_cfg
    from kdreid.engine import Trainer

    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.BACKBONE.DEPTH = "18x"
    cfg.MODEL.BACKBONE.PRETRAIN = False
    cfg.MODEL.HEADS.NUM_CLASSES = 4
    cfg.MODEL.DEVICE = "cpu"
    state = Trainer.build_model(cfg).backbone.state_dict()
    state["layer1.0.bn1.weight"][0] = float("nan")
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    cfg.MODEL.BACKBONE.PRETRAIN = True
    cfg.MODEL.BACKBONE.PRETRAIN_PATH = str(path)
    with pytest.raises(WeightsError) as exc:
        Trainer.build_model(cfg)
    assert "MODEL.BACKBONE.PRETRAIN_PATH" in str(exc.value) and str(path) in str(exc.value)
    assert "(layer1.0.bn1.weight)" in str(exc.value)


def test_a_builder_s_own_read_of_a_bad_pretrain_path_is_a_weights_error(payload, monkeypatch):
    """Where the up-front check does not run, FastReID's builder reads the file itself (weights
    only): the refusal is still the one-line kind, naming the option."""
    from kdreid.config import get_cfg
    from kdreid.engine import Trainer, validation

    monkeypatch.setattr(validation, "check_pretrained", lambda cfg: cfg)
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = "build_resnet_backbone"
    cfg.MODEL.BACKBONE.DEPTH = "18x"
    cfg.MODEL.BACKBONE.PRETRAIN = True
    cfg.MODEL.BACKBONE.PRETRAIN_PATH = payload[0]
    cfg.MODEL.HEADS.NUM_CLASSES = 4
    cfg.MODEL.DEVICE = "cpu"
    with pytest.raises(WeightsError, match=r"\(MODEL\.BACKBONE\.PRETRAIN_PATH\): it holds pickled"):
        Trainer.build_model(cfg)
    assert not payload[2].exists()
