"""Configuration: FastReID's defaults plus kdreid's keys plus every installed project's keys.

Every config in kdreid (the trainer's, a teacher's, a test's) comes from :func:`get_cfg`, so one
written by any project loads wherever kdreid runs. Projects declare their ``add_<method>_config``
function as a ``kdreid.config_extensions`` entry point in ``setup.py``; the core never imports a
project by name.
"""

import difflib
import logging
import os
from importlib.metadata import entry_points

import torch
from fastreid.config import CfgNode
from fastreid.config import get_cfg as get_fastreid_cfg

from kdreid.errors import ConfigError

__all__ = [
    "add_kdreid_config",
    "get_cfg",
    "merge_from_file",
    "merge_from_list",
    "resolve_device",
    "ENTRY_POINT_GROUP",
]

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "kdreid.config_extensions"


def add_kdreid_config(cfg: CfgNode) -> None:
    """Add the core's keys (under ``KDREID``) and kdreid's defaults for FastReID keys.

    Args:
        cfg: a FastReID config, modified in place.
    """
    # "auto": CUDA when torch sees a GPU, else CPU. "cuda" on a machine without one falls back to
    # the CPU with a warning, so FastReID configs run unchanged anywhere.
    cfg.MODEL.DEVICE = "auto"

    cfg.KDREID = CfgNode()
    # Seed of Python's, numpy's and torch's generators; negative: a different seed every run.
    cfg.KDREID.SEED = -1
    # Print training metrics (losses, lr, ETA) every this many iterations.
    cfg.KDREID.LOG_PERIOD = 20
    # Show a progress bar while features are extracted for evaluation.
    cfg.KDREID.PROGRESS = True
    # Queries ranked at once by the evaluator; 0 picks the largest chunk within a memory budget.
    cfg.KDREID.RANK_CHUNK = 0
    # Inference (--eval-only, frozen teachers) with the model's 4-d weights channels-last:
    # convolutions run in oneDNN's (CPU) and cuDNN's (GPU) native layout; on a 2-core CPU a
    # ResNet-18 forward is 2x faster. Results are the same up to float rounding. (Training keeps
    # FastReID's layout: its optimizer packs the parameters into flat contiguous buffers.)
    cfg.KDREID.CHANNELS_LAST = True
    # With --eval-only: also measure the model's speed (params, multiply-adds, latency at batch 1,
    # throughput at TEST.IMS_PER_BATCH) and write it with the accuracy to
    # OUTPUT_DIR/speed_accuracy.json.
    cfg.KDREID.SPEED = True
    # Name of the model in that record and in trade-off tables; "" uses the config file's name.
    cfg.KDREID.NAME = ""

    # The generic distiller (MODEL.META_ARCHITECTURE: KDReIDDistiller). Its teachers are FastReID's
    # KD.MODEL_CONFIG (config files) and KD.MODEL_WEIGHTS (one checkpoint per config).
    cfg.KDREID.DISTILL = CfgNode()
    # Meta-architecture of the student (any registered one whose head returns FastReID's outputs).
    cfg.KDREID.DISTILL.STUDENT = "Baseline"
    # The student's submodule whose training outputs (pred_class_logits, features) are distilled.
    cfg.KDREID.DISTILL.HEAD = "heads"
    # Factor on the student's own cross-entropy loss (1 - lambda in Hinton's formulation).
    cfg.KDREID.DISTILL.CE_WEIGHT = 1.0
    # Logit distillation: "kl" (Hinton), "skl" (FastReID's symmetric KL), "js" (Jensen-Shannon),
    # "none". Needs teachers trained on the student's identities.
    cfg.KDREID.DISTILL.LOGIT_LOSS = "kl"
    # Temperature T of the logit loss (> 0); the loss is scaled by T^2.
    cfg.KDREID.DISTILL.TEMPERATURE = 4.0
    # Weight of the logit term (lambda).
    cfg.KDREID.DISTILL.LOGIT_WEIGHT = 1.0
    # Feature mimicking between a linear projection of the student's feature and each teacher's
    # retrieval feature: "l2", "cosine" or "none".
    cfg.KDREID.DISTILL.FEATURE_LOSS = "none"
    # Weight of the feature term.
    cfg.KDREID.DISTILL.FEATURE_WEIGHT = 0.0
    # Weight of the relation term (pairwise similarity matrices of the batch); 0 turns it off.
    cfg.KDREID.DISTILL.RELATION_WEIGHT = 0.0
    # Ramp every distillation term linearly from 0 to its weight over this many iterations.
    cfg.KDREID.DISTILL.WARMUP_ITERS = 0


def _extensions():
    return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def get_cfg() -> CfgNode:
    """FastReID's default config with kdreid's and every installed project's keys added.

    Returns:
        A mutable config whose ``MODEL.DEVICE`` is ``"auto"`` (see :func:`resolve_device`).
    """
    cfg = get_fastreid_cfg()
    add_kdreid_config(cfg)
    for ep in _extensions():
        ep.load()(cfg)
    return cfg


def _all_keys(node: CfgNode, prefix: str = ""):
    for key, value in node.items():
        full = prefix + key
        yield full
        if isinstance(value, CfgNode):
            yield from _all_keys(value, full + ".")


def _unknown_key(cfg: CfgNode, key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(_all_keys(cfg)), n=3, cutoff=0.6)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    return ConfigError(f"Unknown config key '{key}' in {source}.{hint}")


def _key_exists(cfg: CfgNode, key: str) -> bool:
    node = cfg
    for part in key.split("."):
        if not isinstance(node, CfgNode) or part not in node:
            return False
        node = node[part]
    return True


def merge_from_file(cfg: CfgNode, path: str) -> None:
    """Merge a YAML file (with FastReID's ``_BASE_`` inheritance) into ``cfg``.

    Raises:
        ConfigError: the file does not exist, or names a key that no loaded extension defines.
    """
    if not os.path.isfile(path):
        raise ConfigError(f"Config file '{path}' does not exist.")
    try:
        cfg.merge_from_file(path)
    except KeyError as exc:
        message = str(exc.args[0]) if exc.args else str(exc)
        key = message.split(":", 1)[-1].strip()
        raise _unknown_key(cfg, key, f"config file '{path}'") from None


def merge_from_list(cfg: CfgNode, opts) -> None:
    """Merge ``KEY VALUE`` pairs from the command line into ``cfg``.

    Raises:
        ConfigError: an odd number of items, or an unknown key.
    """
    if len(opts) % 2:
        raise ConfigError(f"Command-line options must be KEY VALUE pairs; got {list(opts)}.")
    for key in opts[0::2]:
        if not _key_exists(cfg, key):
            raise _unknown_key(cfg, key, "the command-line options")
    try:
        cfg.merge_from_list(list(opts))
    except (ValueError, AssertionError) as exc:
        raise ConfigError(f"Invalid command-line option: {exc}") from None


def resolve_device(cfg: CfgNode) -> str:
    """Turn ``MODEL.DEVICE`` into a device torch can use, and AMP off where it cannot run.

    ``"auto"`` becomes ``"cuda"`` when a GPU is visible, else ``"cpu"``; ``"cuda"`` without a GPU
    becomes ``"cpu"`` with a warning. ``SOLVER.AMP.ENABLED`` is switched off on the CPU (FastReID's
    AMP trainer is CUDA-only). Logs the choice once.

    Args:
        cfg: a mutable config, modified in place.

    Returns:
        The resolved device string.
    """
    requested = str(cfg.MODEL.DEVICE)
    has_cuda = torch.cuda.is_available()
    if requested == "auto":
        device = "cuda" if has_cuda else "cpu"
    elif requested.startswith("cuda") and not has_cuda:
        logger.warning("MODEL.DEVICE is '%s' but torch sees no GPU: using the CPU.", requested)
        device = "cpu"
    else:
        try:
            device = str(torch.device(requested))
        except RuntimeError:
            raise ConfigError(
                f"MODEL.DEVICE '{requested}' is not a device; use 'auto', 'cpu' or 'cuda[:N]'."
            ) from None
    cfg.MODEL.DEVICE = device
    if device == "cpu" and cfg.SOLVER.AMP.ENABLED:
        logger.info("SOLVER.AMP.ENABLED ignored: mixed precision training needs CUDA.")
        cfg.SOLVER.AMP.ENABLED = False
    logger.info(
        "Running on %s%s.",
        device,
        f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else "",
    )
    return device
