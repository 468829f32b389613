"""Mixed precision on the CPU: each project's tiny config takes training steps under bfloat16
autocast (``SOLVER.AMP.ENABLED``, forced with ``KDREID.CPU_AMP always`` on a CPU without native
bfloat16), and evaluation extracts under autocast with ``KDREID.EVAL_AUTOCAST``."""

import json
import os

import pytest
import torch
from fastreid.utils.events import EventStorage

import mdpr  # noqa: F401  (registers MDPR)
import speed_kd  # noqa: F401
from factorized_kd import FKDTrainer
from kdreid.config import get_cfg, merge_from_file, merge_from_list, resolve_device
from kdreid.engine import Trainer
from kdreid.engine.trainer import MixedPrecisionLoop
from kdreid.meta_arch import unwrap

from ..conftest import REPO

FORCED = ("KDREID.CPU_AMP", "always", "SOLVER.AMP.ENABLED", "True", "MODEL.DEVICE", "cpu")


def _cfg(config, tmp_path, *opts):
    cfg = get_cfg()
    merge_from_file(cfg, os.path.join(REPO, config))
    merge_from_list(cfg, ["KDREID.PROGRESS", "False", "KDREID.SEED", "0", *FORCED, *opts])
    cfg.OUTPUT_DIR = str(tmp_path)
    resolve_device(cfg)
    return cfg


def _conv_dtypes(model):
    """The output types of the model's trainable convolutions, as they run."""
    seen = set()
    for module in unwrap(model).modules():
        if isinstance(module, torch.nn.Conv2d) and module.weight.requires_grad:
            module.register_forward_hook(lambda m, i, out: seen.add(out.dtype))
    return seen


def _cases(tiny_teacher):
    return {
        "MDPR": (Trainer, "configs/MDPR/Synthetic/tiny.yml", ()),
        "SpeedKD": (
            Trainer,
            "configs/SpeedKD/Synthetic/tiny_kd.yml",
            ("KD.MODEL_WEIGHTS", f"('{tiny_teacher[1]}',)"),
        ),
        "FactorizedKD": (
            FKDTrainer,
            "configs/FactorizedKD/Synthetic/tiny_teacher.yml",
            ("MODEL.FKD.VIEW", "Dn1"),
        ),
    }


@pytest.mark.slow
@pytest.mark.parametrize("project", ["MDPR", "SpeedKD", "FactorizedKD"])
def test_each_project_trains_in_bfloat16_on_the_cpu(project, tiny_teacher, fastreid_root, tmp_path):
    trainer_cls, config, opts = _cases(tiny_teacher)[project]
    trainer = trainer_cls(_cfg(config, tmp_path, *opts))
    try:
        loop = trainer._trainer
        assert isinstance(loop, MixedPrecisionLoop) and loop.grad_scaler is None  # bf16: none
        dtypes = _conv_dtypes(loop.model)
        before = {n: p.detach().clone() for n, p in loop.model.named_parameters()}
        with EventStorage(0) as storage:
            loop.storage = storage
            for loop.iter in range(2):
                loop.run_step()
            loop.flush_metrics()
        assert dtypes == {torch.bfloat16}
        assert torch.isfinite(torch.tensor(storage.history("total_loss").values()[-1][0]))
        after = dict(loop.model.named_parameters())
        assert all(p.dtype == torch.float32 for p in after.values())  # master weights stay fp32
        assert any(not torch.equal(before[n], after[n]) for n in before)
    finally:
        trainer.close()


@pytest.mark.slow
def test_evaluation_under_autocast_extracts_in_bfloat16(fastreid_root, tmp_path):
    cfg = _cfg("configs/Synthetic/tiny.yml", tmp_path, "MODEL.HEADS.NUM_CLASSES", "16")
    model = Trainer.build_model(cfg)
    dtypes = _conv_dtypes(model)
    plain = Trainer.test(cfg, model)
    assert dtypes == {torch.float32}
    cfg.defrost()
    cfg.KDREID.EVAL_AUTOCAST = True
    dtypes.clear()
    mixed = Trainer.test(cfg, model)
    assert dtypes == {torch.bfloat16}
    assert abs(mixed["mAP"] - plain["mAP"]) < 5.0  # bfloat16 descriptors rank almost alike


def test_eval_only_times_the_model_as_it_extracts(tiny_teacher, fastreid_root, tmp_path):
    from kdreid.engine import main

    from .test_trainer import _args

    config, weights = tiny_teacher
    opts = ["MODEL.WEIGHTS", weights, "KDREID.PROGRESS", "False", "KDREID.EVAL_AUTOCAST", "True"]
    opts += ["KDREID.CPU_AMP", "always"]
    main(_args(config_file=config, eval_only=True, opts=[*opts, "OUTPUT_DIR", str(tmp_path)]))
    with open(tmp_path / "speed_accuracy.json") as f:
        record = json.load(f)
    assert record["precision"] == "bfloat16" and record["batchnorm_folded"] == 20
