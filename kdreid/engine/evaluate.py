"""``--eval-only``: a model built for inference, its accuracy and, with ``KDREID.SPEED``, its speed.

:func:`inference_model` is also what the scripts build their models with
(:func:`kdreid.cli.build_inference_model`).
"""

import logging
import numbers
import os

import torch
from fastreid.modeling import build_model
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from fastreid.utils import comm
from torch import nn

from kdreid.benchmark import (
    OTHER_LOAD_WARNING,
    count_parameters,
    format_record,
    profile_model,
    write_record,
)
from kdreid.checkpoint import file_sha256, load_weights_strict, read_provenance
from kdreid.config import autocast_dtype
from kdreid.deploy import cast_weights_for_autocast, fold_batchnorm
from kdreid.engine.setup import write_config
from kdreid.engine.trainer import AutocastForward
from kdreid.errors import ConfigError
from kdreid.meta_arch import contract, deployed_model, record_extras

__all__ = [
    "deploy_model",
    "evaluate_only",
    "inference_config",
    "inference_model",
    "speed_accuracy_record",
]

logger = logging.getLogger(__name__)


def inference_config(cfg):
    """``cfg`` (mutable) made an inference config, in place: no ImageNet weights (every weight
    comes from ``MODEL.WEIGHTS``), and no training-only teachers (``KD.MODEL_CONFIG``), unless the
    model evaluates with them (:attr:`~kdreid.meta_arch.MetaArchitecture.teachers_at_inference`,
    an ensemble's members): a distiller is evaluated as its student."""
    cfg.MODEL.BACKBONE.PRETRAIN = False
    arch = contract(META_ARCH_REGISTRY.get(cfg.MODEL.META_ARCHITECTURE))
    if cfg.KD.MODEL_CONFIG and not arch.teachers_at_inference:
        logger.info("Teachers are training-only: evaluating the student alone.")
        cfg.KD.MODEL_CONFIG = []
        cfg.KD.MODEL_WEIGHTS = []
    return cfg


def inference_model(cfg, build=build_model, load_weights=True):
    """The model of ``cfg`` (an :func:`inference_config`), with ``MODEL.WEIGHTS`` loaded strictly.

    Args:
        cfg: the config.
        build: what builds the model from ``cfg`` (a trainer's ``build_model``).
        load_weights (bool): False leaves the weights as built (a tool that checks them itself).

    Raises:
        WeightsError: no ``MODEL.WEIGHTS``, or weights that do not fit the model (the keys named).
        ConfigError: ``MODEL.WEIGHTS`` given for a model built complete from its config
            (:attr:`~kdreid.meta_arch.MetaArchitecture.needs_weights`).
    """
    model = build(cfg)
    if not load_weights:
        return model
    if contract(model).needs_weights:
        load_weights_strict(model, cfg.MODEL.WEIGHTS)
    elif cfg.MODEL.WEIGHTS:
        raise ConfigError(
            f"MODEL.WEIGHTS '{cfg.MODEL.WEIGHTS}' is not used by {type(model).__name__}, which is "
            "built complete from its config: leave MODEL.WEIGHTS empty."
        )
    return model


def evaluate_only(cfg, trainer_cls, config_file=""):
    """``--eval-only``: accuracy of ``MODEL.WEIGHTS`` and, with ``KDREID.SPEED``, its speed.

    Teachers (``KD.MODEL_CONFIG``) are training-only and are not built: a distiller is evaluated
    as its student. The speed figures are those of the deployed model
    (:func:`kdreid.meta_arch.deployed_model`) on ``MODEL.DEVICE``; the record (accuracy, params,
    multiply-adds, latency, throughput) is printed and written to
    ``OUTPUT_DIR/speed_accuracy.json``. ``config.yaml`` is written once the weights fit.

    Returns:
        dict: the evaluation results.
    """
    cfg.defrost()
    inference_config(cfg)
    cfg.freeze()
    model = inference_model(cfg, trainer_cls.build_model)
    write_config(cfg, eval_only=True)
    params = count_parameters(deployed_model(model))  # the network's, BatchNorm included
    folded = deploy_model(cfg, model)
    results = trainer_cls.test(cfg, model)
    if cfg.KDREID.SPEED and comm.get_world_size() > 1:
        comm.synchronize()  # the other processes are done: rank 0 measures alone
        cpu = not str(cfg.MODEL.DEVICE).startswith("cuda")
        if comm.is_main_process() and cpu and "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(len(os.sched_getaffinity(0)))  # the cores the launcher shared
    if cfg.KDREID.SPEED and comm.is_main_process():
        deployed = deployed_model(model)
        if cfg.KDREID.EVAL_AUTOCAST:
            deployed = AutocastForward(deployed, cfg.MODEL.DEVICE)  # timed as it extracts
        record = speed_accuracy_record(cfg, deployed, results, config_file)
        dtype = autocast_dtype(cfg.MODEL.DEVICE) if cfg.KDREID.EVAL_AUTOCAST else torch.float32
        record["precision"] = str(dtype).removeprefix("torch.")
        record["params"] = params  # not the folded copy's (no BatchNorm, new biases)
        record["batchnorm_folded"] = folded
        record.update(record_extras(model))
        logger.info("Speed and accuracy:\n%s", format_record(record))
        path = os.path.join(cfg.OUTPUT_DIR, "speed_accuracy.json")
        if (record.get("other_cpu_load") or 0) >= OTHER_LOAD_WARNING:
            logger.warning(
                "Other processes kept %.1f CPUs busy while the speed was measured: the latency "
                "and throughput in %s are unreliable; measure again on an idle machine.",
                record["other_cpu_load"],
                path,
            )
        write_record(path, record)
        logger.info("Wrote %s", path)
    return results


def deploy_model(cfg, model):
    """``model`` (weights loaded) made the model ``--eval-only`` extracts with, in place: in eval
    mode, its BatchNorm layers folded into the convolutions before them (``KDREID.FOLD_BN``,
    :func:`kdreid.deploy.fold_batchnorm`), its weights channels-last (``KDREID.CHANNELS_LAST``)
    and, for extraction under autocast (``KDREID.EVAL_AUTOCAST``), cast once to autocast's type
    (:func:`kdreid.deploy.cast_weights_for_autocast`).

    Returns:
        int: the number of BatchNorm layers folded.
    """
    model.eval()
    height, width = cfg.INPUT.SIZE_TEST
    device = torch.device(cfg.MODEL.DEVICE)
    example = 255 * torch.rand(1, 3, height, width, device=device)
    folded = 0
    if cfg.KDREID.FOLD_BN:
        folded = len(fold_batchnorm(model, example))
        left = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        logger.info(
            "Folded %d BatchNorm layers into the convolutions before them (KDREID.FOLD_BN); %d "
            "read something else and stay.",
            folded,
            left,
        )
    if cfg.KDREID.CHANNELS_LAST:
        model.to(memory_format=torch.channels_last)
    if cfg.KDREID.EVAL_AUTOCAST:
        cast_weights_for_autocast(model, example, autocast_dtype(device.type))
    return folded


def speed_accuracy_record(cfg, model, results, config_file=""):
    """One model's accuracy and speed as a JSON-ready dict (the schema of
    :mod:`kdreid.benchmark`)."""
    tests = list(cfg.DATASETS.TESTS)
    per_dataset = results if len(tests) > 1 else {tests[0]: results}
    metrics = {
        name: {k: float(v) for k, v in res.items() if isinstance(v, numbers.Real)}
        for name, res in per_dataset.items()
    }
    weights = cfg.MODEL.WEIGHTS or None
    trained = read_provenance(weights) if weights else None
    # The name of the model is the one it was trained under: the plain and the distilled student
    # evaluated with one config are two models, not two runs of one.
    name = (
        cfg.KDREID.NAME
        or (trained or {}).get("name")
        or os.path.splitext(os.path.basename(config_file or "model"))[0]
    )
    record = {
        "name": name,
        "kind": "deep",
        "config": config_file or None,
        "weights": weights,
        "weights_sha256": file_sha256(weights) if weights else None,
        "trained": trained,  # None: trained elsewhere, or before kdreid recorded it
        # a model built complete from its config (an ensemble) is no distilled student
        "distilled": trained.get("distilled") if trained else (False if not weights else None),
        "dataset": tests[0],
    }
    record.update(
        profile_model(
            model,
            input_size=tuple(cfg.INPUT.SIZE_TEST),
            device=cfg.MODEL.DEVICE,
            batch_size=cfg.TEST.IMS_PER_BATCH,
            log=logger.info,
        )
    )
    record["metrics"] = metrics[tests[0]]
    if len(tests) > 1:
        record["metrics_by_dataset"] = metrics
    return record
