"""ImageNet weights (``MODEL.BACKBONE.PRETRAIN_PATH``): on disk, a checkpoint, the backbone's.

FastReID's backbone builders load the file with ``load_state_dict(strict=False)`` and only log
what did not fit, so a wrong file trains from random weights without a word; with no file named,
its ResNet builder downloads the weights with ``gdown`` (no hash check) into a cache of its own.
:meth:`kdreid.engine.Trainer.build_model` first calls :func:`resolve_pretrained`, which finds the
weights FastReID would download in the torch hub cache or downloads them there through
``torch.hub`` (progress bar, SHA-256 check), then :func:`check_pretrained` right before FastReID
builds the model, and turns a failed load into :func:`load_error`'s message.
"""

import contextlib
import fcntl
import logging
import os
import sys
import urllib.error
import urllib.parse

import torch.hub
from fastreid.modeling.backbones import build_backbone

from kdreid.checkpoint import read_checkpoint
from kdreid.compat import checkpoint_format_problem
from kdreid.errors import ConfigError, WeightsError
from kdreid.progress import is_terminal
from kdreid.projects import installed

__all__ = ["check_pretrained", "load_error", "pretrained_url", "resolve_pretrained", "MIN_PROVIDED"]

logger = logging.getLogger(__name__)

MIN_PROVIDED = 0.5
"""The least share of the backbone's parameters the file must provide, under the backbone's own
names and shapes (the rest keep their initialisation, as FastReID does)."""

_OPTION = "MODEL.BACKBONE.PRETRAIN_PATH"


def _expected(cfg):
    expected = f"ImageNet weights for MODEL.BACKBONE.NAME {cfg.MODEL.BACKBONE.NAME}"
    if "resnet" in cfg.MODEL.BACKBONE.NAME:
        expected += f" (DEPTH {cfg.MODEL.BACKBONE.DEPTH})"
    return expected


def _resnet_url(cfg):
    from fastreid.modeling.backbones import resnet

    b = cfg.MODEL.BACKBONE
    key = ("se_" if b.WITH_SE else "") + ("ibn_" if b.WITH_IBN else "") + b.DEPTH
    return resnet.model_urls.get(key)


PRETRAINED_SOURCES = {"build_resnet_backbone": _resnet_url}
"""For each backbone builder that FastReID downloads ImageNet weights for, the URL it would use
for a config (None: none for this depth and variant)."""


def pretrained_url(cfg):
    """The URL of the ImageNet weights FastReID would download for ``MODEL.BACKBONE``, or None."""
    source = PRETRAINED_SOURCES.get(cfg.MODEL.BACKBONE.NAME)
    return source(cfg) if source else None


def _cache_candidates(filename):
    """Where the file may already be: torch.hub's cache (where torchvision puts it), then the
    folder FastReID's own download uses (``$TORCH_HOME/checkpoints``)."""
    hub = os.path.join(torch.hub.get_dir(), "checkpoints", filename)
    fastreid = os.path.join(os.path.dirname(torch.hub.get_dir()), "checkpoints", filename)
    return [hub, fastreid]


@contextlib.contextmanager
def _download_lock(path):
    """One process of a machine downloads (the others of a torchrun launch wait, then find it)."""
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _fetch(url, what):
    """The cached file for ``url``, downloaded into torch.hub's cache if it is in neither cache."""
    filename = os.path.basename(urllib.parse.urlparse(url).path)
    candidates = _cache_candidates(filename)
    found = next((path for path in candidates if os.path.isfile(path)), None)
    if found:
        return found
    destination = candidates[0]
    where = (
        f"download it from {url} to {destination}, or name a file with {_OPTION}, or train from "
        "scratch with MODEL.BACKBONE.PRETRAIN False"
    )
    try:
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        with _download_lock(destination):
            if os.path.isfile(destination):  # another process fetched it meanwhile
                return destination
            match = torch.hub.HASH_REGEX.search(filename)
            logger.info(f"Downloading {what} from {url} to {destination}")
            torch.hub.download_url_to_file(  # its bar only on a terminal: no \r in log files
                url,
                destination,
                hash_prefix=match.group(1) if match else None,
                progress=is_terminal(sys.stderr),
            )
            logger.info(f"Downloaded {destination}")
    except urllib.error.URLError as exc:
        reason = getattr(exc, "reason", exc)
        reason = (
            f"HTTP {exc.code} {exc.reason}" if isinstance(exc, urllib.error.HTTPError) else reason
        )
        raise ConfigError(
            f"{_OPTION} is empty and {what} cannot be downloaded from {url} ({reason}): {where}."
        ) from None
    except OSError as exc:  # the cache folder cannot be written, the connection broke
        raise ConfigError(
            f"{_OPTION} is empty and {what} cannot be downloaded from {url} to {destination} "
            f"({exc.strerror or exc}): {where}."
        ) from None
    except RuntimeError as exc:
        if "invalid hash value" not in str(exc):
            raise
        raise WeightsError(
            f"{what} downloaded from {url} is not the published file ({exc}); nothing was kept. "
            f"Try again, or {where}."
        ) from None
    return destination


def resolve_pretrained(cfg):
    """``cfg``, or with ``MODEL.BACKBONE.PRETRAIN`` on and no ``PRETRAIN_PATH``, a copy whose
    ``PRETRAIN_PATH`` is the file of the weights FastReID would download for the backbone: found
    in the torch hub cache, else downloaded there (progress on stderr, SHA-256 checked against the
    prefix in the file name, as torchvision's weights are).

    Raises:
        ConfigError: no URL is known for this backbone, or the download failed (offline: the
            message names the URL and where to put the file).
        WeightsError: the downloaded file does not have the published hash.
    """
    b = cfg.MODEL.BACKBONE
    if not b.PRETRAIN or b.PRETRAIN_PATH:
        return cfg
    what = _expected(cfg)
    url = pretrained_url(cfg)
    if url is None:
        raise ConfigError(
            f"MODEL.BACKBONE.PRETRAIN is on but {_OPTION} is empty, and no published file of "
            f"{what} is known to download: put the weights on disk and name them with "
            f"{_OPTION}, or train from scratch with MODEL.BACKBONE.PRETRAIN False."
        )
    path = _fetch(url, what)
    logger.info(f"{_OPTION} is empty: {what} from {path}")
    resolved = cfg.clone()
    frozen = resolved.is_frozen()
    resolved.defrost()
    resolved.MODEL.BACKBONE.PRETRAIN_PATH = path
    if frozen:
        resolved.freeze()
    return resolved


def check_pretrained(cfg):
    """The config to build the model with: with ``MODEL.BACKBONE.PRETRAIN`` on, the weights file
    (:func:`resolve_pretrained`'s, for an empty ``PRETRAIN_PATH``) must be the backbone's.

    Reads the file as FastReID's builder does (its top-level dict, no code executed) and compares
    it with the backbone built from ``MODEL.BACKBONE`` without weights: the file must provide at
    least :data:`MIN_PROVIDED` of the backbone's parameters, under their names and shapes (after
    a project's renaming of a published layout its builder reads:
    :attr:`kdreid.projects.Project.pretrained_state`).

    Raises:
        ConfigError: ``PRETRAIN_PATH`` is not a file (see :func:`resolve_pretrained` for an
            empty one).
        WeightsError: it is not a PyTorch checkpoint, or it provides too few of the backbone's
            parameters (the message gives an example name of each).
    """
    if not cfg.MODEL.BACKBONE.PRETRAIN:
        return cfg
    cfg = resolve_pretrained(cfg)
    path = cfg.MODEL.BACKBONE.PRETRAIN_PATH
    if not path or not os.path.isfile(path):
        raise ConfigError(
            f"MODEL.BACKBONE.PRETRAIN is on but {_OPTION} ('{path}') is not a file: put the "
            f"ImageNet weights there, leave {_OPTION} empty to use (and download) those FastReID "
            "publishes for the backbone, or train from scratch with MODEL.BACKBONE.PRETRAIN False."
        )
    problem = checkpoint_format_problem(path)
    if problem:
        raise WeightsError(f"{_OPTION} '{path}' {problem}: it should hold {_expected(cfg)}.")
    content = read_checkpoint(path, _OPTION)
    keys = list(content) if isinstance(content, dict) else []
    probe_cfg = cfg.clone()
    probe_cfg.defrost()
    probe_cfg.MODEL.BACKBONE.PRETRAIN = False
    backbone = build_backbone(probe_cfg)
    if isinstance(content, dict):
        content = _in_backbone_layout(cfg, content, backbone)
    shapes = {name: tuple(p.shape) for name, p in backbone.named_parameters()}
    provided = [
        name
        for name, shape in shapes.items()
        if name in content and getattr(content[name], "shape", None) == shape
    ]
    if shapes and len(provided) >= MIN_PROVIDED * len(shapes):
        return cfg
    example_model = next((name for name in shapes if name not in provided), "(none)")
    example_file = next((k for k in keys if k not in shapes), keys[0] if keys else None)
    raise WeightsError(
        f"{_OPTION} '{path}' provides {len(provided)} of the {len(shapes)} parameters of the "
        f"backbone {type(backbone).__name__} (the backbone has e.g. '{example_model}', the file "
        f"has e.g. '{example_file or '(none: the file is empty)'}'). Expected {_expected(cfg)}, "
        "or MODEL.BACKBONE.PRETRAIN False to train from scratch."
    )


def _in_backbone_layout(cfg, content, backbone):
    """``content`` under the backbone's own names where a project converts the layout of its
    published files (:attr:`kdreid.projects.Project.pretrained_state`), else as it is."""
    for project in installed():
        if project.pretrained_state is not None:
            converted = project.pretrained_state(cfg, content, backbone)
            if converted is not None:
                return converted
    return content


def load_error(cfg, exc):
    """The :class:`WeightsError` for ``exc``, a ``RuntimeError`` raised while FastReID built the
    model, when it is the backbone builder's load of ``PRETRAIN_PATH`` failing (weights of other
    shapes); else None."""
    message = str(exc).strip()
    if not (cfg.MODEL.BACKBONE.PRETRAIN and message.startswith("Error(s) in loading state_dict")):
        return None
    module = message.split(" for ", 1)[1].split(":", 1)[0] if " for " in message else "model"
    return WeightsError(
        f"{_OPTION} '{cfg.MODEL.BACKBONE.PRETRAIN_PATH}' does not fit the backbone {module}: "
        f"{message}\nExpected {_expected(cfg)}."
    )
