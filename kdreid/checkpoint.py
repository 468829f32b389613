"""Checkpoints that survive a crash mid-write, and strict loading of weights for evaluation."""

import contextlib
import errno
import hashlib
import io
import json
import logging
import os
import tempfile

import torch
from fastreid.utils.checkpoint import Checkpointer

from kdreid.compat import CheckpointLoadError, checkpoint_format_problem, load_checkpoint_file
from kdreid.errors import OutputDirError, RecordError, WeightsError

__all__ = [
    "prepare_output_dir",
    "AtomicCheckpointer",
    "TRAINING_ONLY_PREFIX",
    "atomic_write",
    "PROVENANCE_KEY",
    "file_sha256",
    "fit_state_dict",
    "load_weights_strict",
    "model_state",
    "read_checkpoint",
    "read_json",
    "read_provenance",
    "read_state_dict",
    "remove_stale_temporaries",
    "save_figure",
    "write_json",
    "write_text",
]

logger = logging.getLogger(__name__)


def prepare_output_dir(path):
    """Create ``path`` (before any slow work) and check that files can be written in it.

    Raises:
        OutputDirError: it cannot be created or written.
    """
    if os.path.exists(path) and not os.path.isdir(path):
        raise OutputDirError(f"Cannot write the output folder '{path}': it is a file, not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_test.{os.getpid()}")  # one per process
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as exc:
        raise OutputDirError(
            f"Cannot write the output folder '{path}': {exc.strerror or exc}"
        ) from exc


TEMP_SUFFIX = ".tmp"
"""What :func:`atomic_write`'s temporary files end with (``.<name>.<random>.tmp``)."""

# Errors of the file system rather than of the writer: a full disk, a quota, a read-only mount.
_FOLDER_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _umask():
    """The process's umask, read without changing it where Linux says it (``/proc``)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore at once
    os.umask(mask)
    return mask


def atomic_write(path, write_fn, mode="wb"):
    """Write a file so that readers see either the old content or the complete new one.

    The content goes to a temporary file in the same folder, is flushed to disk, gets the
    permissions a plain ``open`` would give it (``0o666`` less the umask; ``mkstemp`` makes it
    ``0o600``, unreadable to a team sharing the folder), and replaces ``path`` with one
    ``os.replace``. A crash at any point leaves the previous file intact; a temporary file left
    by a killed process is removed by the next run that claims the folder
    (:func:`remove_stale_temporaries`).

    Args:
        path (str): the destination.
        write_fn (Callable[[IO], None]): writes the content to the open temporary file.
        mode (str): ``"wb"`` or ``"w"``.

    Raises:
        OutputDirError: the folder's file system refused the write (full, over quota,
            read-only, no permission); the previous file is intact.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(
            prefix=f".{os.path.basename(path)}.", suffix=TEMP_SUFFIX, dir=folder
        )
    except OSError as exc:
        raise _folder_error(path, folder, exc) from exc
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.remove(tmp)
        if isinstance(exc, OSError) and exc.errno in _FOLDER_ERRNOS:
            raise _folder_error(path, folder, exc) from exc
        raise


def write_text(path, text):
    """Write ``text`` (UTF-8) to ``path`` with :func:`atomic_write`."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path, obj, indent=1):
    """Write ``obj`` as JSON to ``path`` with :func:`atomic_write`."""
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def read_json(path):
    """The JSON content of ``path``, a file one of our scripts wrote.

    Raises:
        RecordError: the file is empty or not valid JSON (a writer killed before atomic writes,
            a hand edit); the message names it and says what to do.
    """
    with open(path, "rb") as f:
        data = f.read()
    if not data.strip():
        raise RecordError(
            f"'{path}' is empty (a run stopped while writing it?): delete it, and the step "
            "that writes it runs again."
        )
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        where = f"line {exc.lineno}, column {exc.colno}: " if hasattr(exc, "lineno") else ""
        raise RecordError(
            f"'{path}' is not valid JSON ({where}{getattr(exc, 'msg', exc)}): delete it, and "
            "the step that writes it runs again."
        ) from exc


def save_figure(figure, path, **kwargs):
    """``figure.savefig(path, **kwargs)`` through :func:`atomic_write`: a plot being replaced is
    never seen half written. The format is the one the file name says (``.png``, ``.pdf``...)."""
    fmt = kwargs.pop("format", None) or os.path.splitext(path)[1].lstrip(".") or "png"
    buffer = io.BytesIO()
    figure.savefig(buffer, format=fmt, **kwargs)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def _folder_error(path, folder, exc):
    kept = " (the previous file is intact)" if os.path.exists(path) else ""
    return OutputDirError(
        f"Cannot write '{os.path.basename(path)}' in '{folder}': {exc.strerror or exc}{kept}. "
        "Free some space there, or write to another folder (OUTPUT_DIR)."
    )


def remove_stale_temporaries(folder):
    """Remove the temporary files of :func:`atomic_write` that a killed writer left in
    ``folder``; call it only while holding the folder (no other writer there). Returns their
    names."""
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    stale = [n for n in names if n.startswith(".") and n.endswith(TEMP_SUFFIX)]
    for name in stale:
        with contextlib.suppress(OSError):
            os.remove(os.path.join(folder, name))
    return stale


PROVENANCE_KEY = "kdreid"
"""The checkpoint entry that says which run trained the weights: ``name`` (``KDREID.NAME`` or the
training config's file name), ``config`` (that file) and ``distilled`` (whether the model was
trained with distillation terms). Plain strings and a bool: read weights-only."""


class AtomicCheckpointer(Checkpointer):
    """FastReID's ``Checkpointer``, writing the checkpoint and ``last_checkpoint`` tag atomically.

    The tag is updated only after the checkpoint file is complete, so ``--resume`` after a crash
    always finds a loadable checkpoint. :attr:`provenance`, when set, is saved under
    :data:`PROVENANCE_KEY`, so an evaluation of the file knows which model it is.
    """

    provenance = None

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        if self.provenance:
            data[PROVENANCE_KEY] = dict(self.provenance)
        save_file = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(os.path.basename(save_file))

    def tag_last_checkpoint(self, last_filename_basename):
        atomic_write(
            os.path.join(self.save_dir, "last_checkpoint"),
            lambda f: f.write(last_filename_basename),
            mode="w",
        )

    # Loading. ``resume_or_load`` reads ``MODEL.WEIGHTS`` (fine-tuning: FastReID's lenient loading,
    # a classifier of another size is re-initialised) or, with ``--resume``, the checkpoint that
    # ``last_checkpoint`` names: that one must fit the model exactly (the optimizer state that
    # comes with it is only valid for the same parameters). Unreadable files are WeightsErrors.

    _resuming = False
    _loading = ""

    def resume_or_load(self, path, *, resume=True):
        self._resuming = bool(resume and self.has_checkpoint())
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._resuming = False

    def _tag(self):
        return os.path.join(self.save_dir, "last_checkpoint")

    def _resume_error(self, path, problem):
        return WeightsError(
            f"Cannot resume from '{path}' (named by {self._tag()}): the file {problem}\n"
            f"Delete it or write the name of an older checkpoint into {self._tag()} (or train "
            "without --resume)."
        )

    def load(self, path, checkpointables=None):
        if path and not os.path.isfile(path):  # FastReID asserts
            problem = f"{checkpoint_format_problem(path)}."
            if self._resuming:
                raise self._resume_error(path, problem)
            raise WeightsError(f"MODEL.WEIGHTS '{path}' {problem}")
        self._loading = path
        return super().load(path, checkpointables=checkpointables)

    def _load_file(self, f):
        if not self._resuming:
            checkpoint = read_checkpoint(f, "MODEL.WEIGHTS")
        else:
            try:
                checkpoint = load_checkpoint_file(f)
            except CheckpointLoadError as exc:
                raise self._resume_error(f, exc.problem) from exc
        if not isinstance(checkpoint, dict):
            checkpoint = {"model": checkpoint}
        # FastReID's _load_model expects the state dict under "model".
        checkpoint["model"] = model_state(checkpoint, f)
        return checkpoint

    def _load_model(self, checkpoint):
        if not self._resuming:
            # FastReID loads what fits and warns about the rest; a file of which nothing fits
            # (another model's checkpoint) would leave the model as initialised, silently.
            own = self.model.state_dict()
            fitting = [
                k
                for k, v in checkpoint["model"].items()
                if k in own and tuple(own[k].shape) == tuple(v.shape)
            ]
            if own and not fitting:
                raise WeightsError(
                    f"MODEL.WEIGHTS '{self._loading}' holds none of the parameters of the model "
                    f"being trained ({type(self.model).__name__}; the file has "
                    f"{', '.join(sorted(checkpoint['model'])[:3])}, ..., the model "
                    f"{', '.join(sorted(own)[:3])}, ...): it is another model's checkpoint."
                )
            return super()._load_model(checkpoint)
        path = self._loading
        try:
            unused = fit_state_dict(
                self.model, checkpoint.pop("model"), f"'{path}' (named by {self._tag()})"
            )
        except WeightsError as exc:
            raise WeightsError(
                f"{exc}\n--resume continues the run saved in {self.save_dir}, which trained "
                "another model: resume with that run's config, or train this one in another "
                "OUTPUT_DIR (or delete the old checkpoints)."
            ) from None
        if unused:
            self.logger.info("Not loaded (training-only or unused): %s", ", ".join(unused))
        return None


def _format_keys(keys, limit=20):
    shown = "\n".join(f"    {k}" for k in keys[:limit])
    more = f"\n    ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return shown + more


# Keys of training-only modules (distillation adapters, projections): saved so that ``--resume``
# restores them, never part of the deployed model, so a model without them skips them on load.
TRAINING_ONLY_PREFIX = "distill."


def read_state_dict(path, option="MODEL.WEIGHTS"):
    """Read the model state dict of a checkpoint file without executing pickled code.

    Accepts a FastReID checkpoint (state dict under ``"model"``), a state dict under
    ``"state_dict"`` (common for ImageNet weights) or a bare state dict; strips a ``module.`` prefix
    left by (Distributed)DataParallel.

    Args:
        path (str): a checkpoint file.
        option (str): the config key or flag that named ``path``, for error messages.

    Returns:
        dict[str, Tensor]: the state dict.

    Raises:
        WeightsError: ``path`` is empty, missing, a directory, not a PyTorch checkpoint,
            unreadable, or holds no state dict.
    """
    return model_state(read_checkpoint(path, option), path)


def read_checkpoint(path, option="MODEL.WEIGHTS", mmap=False):
    """Read a checkpoint file without executing pickled code.

    Args:
        path (str): a checkpoint file.
        option (str): the config key or flag that named ``path``, for error messages.
        mmap (bool): map the tensors instead of reading them
            (:func:`kdreid.compat.load_checkpoint_file`).

    Returns:
        the file's content (a dict, for every checkpoint kdreid and FastReID write).

    Raises:
        WeightsError: ``path`` is empty, missing, a directory, not a PyTorch checkpoint, or
            unreadable (the message says which).
    """
    if not path:
        raise WeightsError(
            f"No weights given: name the checkpoint with {option} path/to/model.pth."
        )
    if os.path.isdir(path) or not os.path.exists(path):
        raise WeightsError(f"{option} '{path}' {checkpoint_format_problem(path)}.")
    try:
        return load_checkpoint_file(path, mmap=mmap)
    except CheckpointLoadError as exc:
        raise WeightsError(f"Cannot load checkpoint '{path}' ({option}): it {exc.problem}") from exc


def read_provenance(path):
    """The :data:`PROVENANCE_KEY` entry of the checkpoint ``path`` (tensors mapped, not read), or
    None for a file that has none (trained elsewhere, or before kdreid recorded it)."""
    checkpoint = read_checkpoint(path, mmap=True)
    entry = checkpoint.get(PROVENANCE_KEY) if isinstance(checkpoint, dict) else None
    return dict(entry) if isinstance(entry, dict) else None


def file_sha256(path, chunk=1 << 20):
    """The SHA-256 of a file, in hex (identifies the weights a record evaluated)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def model_state(checkpoint, path):
    """The model state dict in a checkpoint's content (:func:`read_checkpoint`'s), as
    :func:`read_state_dict` finds it."""
    state = checkpoint if isinstance(checkpoint, dict) else None
    for key in ("model", "state_dict"):  # FastReID's checkpoints; ImageNet ones
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise WeightsError(
            f"'{path}' holds no state dict (expected a dict of tensors, or one "
            "under the key 'model')."
        )
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


def fit_state_dict(model, state, source):
    """Check that ``state`` fits ``model`` exactly and load it.

    Parameters the model holds as empty tensors (a classifier built with
    ``MODEL.HEADS.NUM_CLASSES 0``) keep their empty value; training-only keys
    (:data:`TRAINING_ONLY_PREFIX`) that the model does not have are skipped.

    Args:
        model (torch.nn.Module): the model to fill.
        state (dict[str, Tensor]): its weights.
        source (str): where ``state`` comes from, for messages.

    Returns:
        list[str]: the checkpoint keys that were not loaded (unused at inference).

    Raises:
        WeightsError: keys or shapes differ from the model's (the message lists them).
    """
    state = dict(state)
    expected = model.state_dict()
    # A classifier built without a class count (MODEL.HEADS.NUM_CLASSES 0, as for evaluation) is
    # empty; the checkpoint's classifier is training-only and is not loaded into it.
    unused = sorted(k for k in set(state) & set(expected) if expected[k].numel() == 0)
    for key in unused:
        state[key] = expected[key]
    training_only = sorted(
        k for k in set(state) - set(expected) if k.startswith(TRAINING_ONLY_PREFIX)
    )
    for key in training_only:
        del state[key]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"  missing in the checkpoint ({len(missing)}):\n{_format_keys(missing)}")
    if unexpected:
        problems.append(f"  not in the model ({len(unexpected)}):\n{_format_keys(unexpected)}")
    if shapes:
        problems.append(f"  different shapes ({len(shapes)}):\n{_format_keys(shapes)}")
    if problems:
        raise WeightsError(
            f"Weights {source} do not fit the model {type(model).__name__}:\n" + "\n".join(problems)
        )
    model.load_state_dict(state, strict=True)
    return unused + training_only


def load_weights_strict(model, path):
    """Load ``path``'s model weights into ``model``; anything that does not fit is an error.

    See :func:`read_state_dict` for the accepted files and :func:`fit_state_dict` for what
    "fits" means.

    Args:
        model (torch.nn.Module): the model to fill.
        path (str): a checkpoint file.

    Raises:
        WeightsError: ``path`` is empty, missing or unreadable, or its keys or shapes differ from
            the model's (the message lists them).
    """
    unused = fit_state_dict(model, read_state_dict(path), f"'{path}'")
    logger.info(
        "Loaded weights from %s%s",
        path,
        f" (not loaded, unused at inference: {', '.join(unused)})" if unused else "",
    )
