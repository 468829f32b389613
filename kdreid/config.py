"""Configuration: FastReID's defaults plus kdreid's keys plus every installed project's keys.

Every config in kdreid (the trainer's, a teacher's, a test's) comes from :func:`get_cfg`, so one
written by any project loads wherever kdreid runs. Each installed project adds its keys through its
:class:`kdreid.projects.Project` entry point; the core never imports a project by name.
"""

import difflib
import functools
import logging
import os
import stat

import torch
import yacs.config
import yaml
from fastreid.config import CfgNode
from fastreid.config import get_cfg as get_fastreid_cfg
from fastreid.config.config import BASE_KEY

from kdreid import projects
from kdreid.errors import ConfigError

__all__ = [
    "autocast_dtype",
    "check_device",
    "add_kdreid_config",
    "get_cfg",
    "merge_from_file",
    "merge_from_list",
    "mixed_precision_runs",
    "native_bfloat16",
    "resolve_device",
]

logger = logging.getLogger(__name__)


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
    # Training, inference (--eval-only) and frozen teachers with the model's 4-d weights
    # channels-last: convolutions run in oneDNN's (CPU) and cuDNN's (GPU) native layout; on a
    # 2-core CPU a ResNet-18 forward is 2x faster. Results are the same up to float rounding.
    cfg.KDREID.CHANNELS_LAST = True
    # With --eval-only: also measure the model's speed (params, multiply-adds, latency at batch 1,
    # throughput at TEST.IMS_PER_BATCH) and write it with the accuracy to
    # OUTPUT_DIR/speed_accuracy.json.
    cfg.KDREID.SPEED = True
    # Name of the model in that record and in trade-off tables; "" uses the name of the run that
    # trained MODEL.WEIGHTS (recorded in its checkpoint), else the config file's name.
    cfg.KDREID.NAME = ""
    # Extract evaluation features under autocast: bfloat16 on the CPU, float16 on CUDA (the
    # descriptors are then compared in float32). Training's mixed precision is SOLVER.AMP.ENABLED.
    cfg.KDREID.EVAL_AUTOCAST = False
    # With --eval-only: fold every BatchNorm that reads a convolution's output alone into that
    # convolution's weights and bias before extracting (kdreid.deploy.fold_batchnorm): the same
    # float32 descriptor up to rounding (~1e-7 relative), one pass over the activations fewer.
    cfg.KDREID.FOLD_BN = True
    # Mixed precision on the CPU (SOLVER.AMP.ENABLED, KDREID.EVAL_AUTOCAST) is bfloat16 autocast.
    # "native": where the CPU computes bfloat16 natively (AVX-512 BF16 or AMX, as oneDNN reports),
    # else float32 with a warning: elsewhere torch emulates bfloat16 convolutions, several times
    # slower than float32. "always": bfloat16 anyway (to check that a model runs in it).
    cfg.KDREID.CPU_AMP = "native"
    # On several processes, let DDP find at every step the parameters that get no gradient (an
    # MDPR trained without its cross-entropy, an ablation): without it such a run fails at its
    # second step. False saves a walk of the autograd graph per step where every parameter learns.
    cfg.KDREID.FIND_UNUSED_PARAMETERS = True

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


def get_cfg() -> CfgNode:
    """FastReID's default config with kdreid's and every installed project's keys added.

    Returns:
        A mutable config whose ``MODEL.DEVICE`` is ``"auto"`` (see :func:`resolve_device`).
    """
    cfg = get_fastreid_cfg()
    add_kdreid_config(cfg)
    for project in projects.installed():
        project.add_config(cfg)
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


# --- int where a float is expected --------------------------------------------------------------
# yacs refuses an int for a float key ("Type mismatch (<class 'float'> vs. <class 'int'>)"), so
# `KDREID.DISTILL.TEMPERATURE 2` fails where `2.0` works. Both CfgNode.merge_from_list and the
# file merge (yacs.config._merge_a_into_b) look up the module-level function
# yacs.config._check_and_coerce_cfg_value_type at call time, so one wrapper around it, installed
# once when this module is imported, covers the command line and every config file. It converts an
# int (a bool is not an int here) to float where the default is a float and leaves every other
# case to yacs; a mismatch yacs refuses is re-raised as _TypeMismatch, a ValueError with yacs's
# message that also carries the key and both values, so our callers can word the error.


class _TypeMismatch(ValueError):
    def __init__(self, message, full_key, original, replacement):
        super().__init__(message)
        self.full_key = full_key
        self.original = original
        self.replacement = replacement


def _install_int_to_float_coercion() -> None:
    if getattr(yacs.config._check_and_coerce_cfg_value_type, "_kdreid_wrapper", False):
        return
    check = yacs.config._check_and_coerce_cfg_value_type

    @functools.wraps(check)
    def check_and_coerce(replacement, original, key, full_key):
        if type(original) is float and type(replacement) is int:
            return float(replacement)
        try:
            return check(replacement, original, key, full_key)
        except ValueError as exc:
            raise _TypeMismatch(str(exc), full_key, original, replacement) from None

    check_and_coerce._kdreid_wrapper = True
    yacs.config._check_and_coerce_cfg_value_type = check_and_coerce


_install_int_to_float_coercion()


def _expected_type(value) -> str:
    if isinstance(value, CfgNode):
        return "a section of keys"
    if isinstance(value, list | tuple):
        return "a list"
    return {bool: "a bool", int: "an int", float: "a float", str: "a string"}.get(
        type(value), type(value).__name__
    )


def _type_mismatch(exc: _TypeMismatch, source: str) -> ConfigError:
    got = exc.replacement
    got = dict(got) if isinstance(got, CfgNode) else got
    return ConfigError(
        f"Config key {exc.full_key} in {source} expects {_expected_type(exc.original)} "
        f"(default {exc.original!r}), got {got!r} ({type(got).__name__})."
    )


# --- config files ------------------------------------------------------------------------------


def _is_url(name: str) -> bool:
    return name.startswith(("https://", "http://"))


def _special_file_kind(path: str) -> str:
    mode = os.stat(path).st_mode
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISFIFO(mode):
        return "a named pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a plain file"


def _read_yaml_mapping(path: str, what: str) -> dict:
    """Parse one config file; ``what`` names it in errors (the file, or the _BASE_ naming it)."""
    if os.path.isdir(path):
        raise ConfigError(f"{what} is a directory, not a YAML file.")
    if os.path.exists(path) and not os.path.isfile(path):
        # A device, a FIFO or a socket: reading one blocks (a FIFO) or never ends (/dev/zero).
        kind = _special_file_kind(path)
        raise ConfigError(f"{what} is not a regular file ({kind}); expected a YAML file.")
    if not os.path.isfile(path):
        raise ConfigError(f"{what} does not exist.")
    try:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.safe_load(f)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = exc.problem or exc.context or "syntax error"
        raise ConfigError(f"Config file '{path}' is not valid YAML: {problem}{where}.") from None
    except yaml.YAMLError as exc:
        message = " ".join(str(exc).split())
        raise ConfigError(f"Config file '{path}' is not valid YAML: {message}.") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"Config file '{path}' is not UTF-8 text: {exc.reason}.") from None
    except OSError as exc:
        raise ConfigError(f"Config file '{path}' cannot be read: {exc.strerror}.") from None
    # FastReID (like detectron2) would load an empty file as "no changes" only by accident: it
    # crashes on it. An empty config is almost always a mistake (a wrong or truncated file, a
    # redirect that failed), and a run on the defaults would silently train the wrong model, so it
    # is refused like any other file that is not a mapping.
    if loaded is None:
        raise ConfigError(
            f"Config file '{path}' is empty; expected a mapping of config keys (KEY: value)."
        )
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"Config file '{path}' must be a mapping of config keys (KEY: value), "
            f"not a {type(loaded).__name__}."
        )
    return loaded


def _read_config_chain(path: str) -> list:
    """The file and its ``_BASE_`` files, leaf first, as ``(path, mapping)`` pairs, each checked.

    Resolves ``_BASE_`` as FastReID's ``CfgNode.load_yaml_with_base`` does (``~`` expanded,
    relative to the naming file; a URL is refused), so errors name the file at fault.
    """
    chain = []
    seen = set()
    what = f"Config file '{path}'"
    while True:
        mapping = _read_yaml_mapping(path, what)
        chain.append((path, mapping))
        seen.add(os.path.realpath(path))
        if BASE_KEY not in mapping:
            return chain
        base = mapping[BASE_KEY]
        if not isinstance(base, str) or not base:
            raise ConfigError(
                f"Config file '{path}' has _BASE_ {base!r}; expected the name of a YAML file."
            )
        resolved = os.path.expanduser(base)
        if _is_url(resolved):
            # FastReID hands a URL to open() and fails with a FileNotFoundError traceback; a run
            # whose config depends on the network would not be reproducible anyway.
            raise ConfigError(
                f"Config file '{path}' has _BASE_ '{base}', a URL; config files are read from "
                "local files only: download it and name the file instead."
            )
        if not os.path.isabs(resolved):
            resolved = os.path.join(os.path.dirname(path), resolved)
        if os.path.realpath(resolved) in seen:
            raise ConfigError(
                f"Config file '{path}' names _BASE_ '{base}' ('{resolved}'), which is already in "
                "its chain of _BASE_ files (a loop)."
            )
        what = f"Config file '{path}' names _BASE_ '{base}' ('{resolved}'), which"
        path = resolved


def _file_setting(chain: list, key: str) -> str:
    """The file of ``chain`` whose value for ``key`` (dotted) is merged: the first that sets it."""
    for path, mapping in chain:
        node = mapping
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                break
            node = node[part]
        else:
            return path
    return chain[0][0]


def merge_from_file(cfg: CfgNode, path: str) -> None:
    """Merge a YAML file (with FastReID's ``_BASE_`` inheritance) into ``cfg``.

    An int is accepted for a float key (converted to float). Every file of the ``_BASE_`` chain is
    checked first, so an error names the file at fault.

    Raises:
        ConfigError: a file of the chain is missing, a directory, not valid YAML or not a mapping
            of keys; a ``_BASE_`` names no file; a key is unknown; a value has the wrong type.
    """
    chain = _read_config_chain(path)
    try:
        cfg.merge_from_file(path)
    except _TypeMismatch as exc:
        source = f"config file '{_file_setting(chain, exc.full_key)}'"
        raise _type_mismatch(exc, source) from None
    except KeyError as exc:
        message = str(exc.args[0]) if exc.args else str(exc)
        prefix = "Non-existent config key:"
        if not message.startswith(prefix):
            raise ConfigError(f"Config file '{path}': {message}") from None
        key = message[len(prefix) :].strip()
        raise _unknown_key(cfg, key, f"config file '{_file_setting(chain, key)}'") from None
    except (ValueError, AssertionError) as exc:
        raise ConfigError(f"Config file '{path}' cannot be merged: {exc}") from None


def merge_from_list(cfg: CfgNode, opts) -> None:
    """Merge ``KEY VALUE`` pairs from the command line into ``cfg``.

    An int is accepted for a float key (converted to float).

    Raises:
        ConfigError: an odd number of items, an unknown key, or a value of the wrong type.
    """
    if len(opts) % 2:
        raise ConfigError(f"Command-line options must be KEY VALUE pairs; got {list(opts)}.")
    for key in opts[0::2]:
        if not _key_exists(cfg, key):
            raise _unknown_key(cfg, key, "the command-line options")
    try:
        cfg.merge_from_list(list(opts))
    except _TypeMismatch as exc:
        raise _type_mismatch(exc, "the command-line options") from None
    except (ValueError, AssertionError) as exc:
        raise ConfigError(f"Invalid command-line option: {exc}") from None


def check_device(requested: str) -> str:
    """``MODEL.DEVICE`` other than ``"auto"`` as torch names it.

    Raises:
        ConfigError: not a device torch knows.
    """
    try:
        return str(torch.device(requested))
    except RuntimeError:
        raise ConfigError(
            f"MODEL.DEVICE '{requested}' is not a device; use 'auto', 'cpu' or 'cuda[:N]'."
        ) from None


def autocast_dtype(device) -> torch.dtype:
    """The mixed-precision type on ``device``: float16 on CUDA (with gradient scaling, as
    FastReID's AMP), bfloat16 on the CPU (float32's range: no scaling; AVX-512 BF16 and AMX
    units run it natively)."""
    return torch.float16 if str(device).startswith("cuda") else torch.bfloat16


def native_bfloat16() -> bool:
    """Whether this CPU computes bfloat16 natively (oneDNN's AVX-512 BF16 / AMX kernels)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def mixed_precision_runs(cfg: CfgNode, device) -> bool:
    """Whether mixed precision runs on ``device`` under ``KDREID.CPU_AMP``: always on CUDA; on the
    CPU where bfloat16 is native, or with ``KDREID.CPU_AMP always``."""
    if str(device).startswith("cuda"):
        return True
    return cfg.KDREID.CPU_AMP == "always" or native_bfloat16()


def resolve_device(cfg: CfgNode) -> str:
    """Turn ``MODEL.DEVICE`` into a device torch can use.

    ``"auto"`` becomes ``"cuda"`` when a GPU is visible, else ``"cpu"``; ``"cuda"`` without a GPU
    becomes ``"cpu"`` with a warning. Logs the choice once, and the precision that
    ``SOLVER.AMP.ENABLED`` trains in there (:func:`autocast_dtype`); on a CPU where it would not
    run natively (:func:`mixed_precision_runs`), ``SOLVER.AMP.ENABLED`` and
    ``KDREID.EVAL_AUTOCAST`` are switched off with a warning.

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
        device = check_device(requested)
    cfg.MODEL.DEVICE = device
    for key in ("SOLVER.AMP.ENABLED", "KDREID.EVAL_AUTOCAST"):
        section, name = key.rsplit(".", 1)
        node = cfg.SOLVER.AMP if section == "SOLVER.AMP" else cfg.KDREID
        if getattr(node, name) and not mixed_precision_runs(cfg, device):
            logger.warning(
                "%s ignored: this CPU (%s) has no native bfloat16 units (AVX-512 BF16 or AMX), "
                "and torch's emulated bfloat16 convolutions are several times slower than "
                "float32; running in float32. KDREID.CPU_AMP always forces bfloat16.",
                key,
                torch.backends.cpu.get_cpu_capability(),
            )
            setattr(node, name, False)
    if cfg.SOLVER.AMP.ENABLED:
        scaled = " with gradient scaling" if device.startswith("cuda") else ""
        logger.info("Mixed precision training: %s autocast%s.", autocast_dtype(device), scaled)
    logger.info(
        "Running on %s%s.",
        device,
        f" ({torch.cuda.get_device_name()})" if device.startswith("cuda") else "",
    )
    return device
