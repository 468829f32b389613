"""Make fastreid 1.4.0 run on today's Python, torch and numpy, and on CPU.

fastreid 1.4.0 (the last release on PyPI) was written for Python 3.8, torch 1.13, numpy 1.23. Each
function below repairs exactly one incompatibility, names the version that broke it, and is applied
once by :func:`apply` (called when :mod:`kdreid` is imported). Nothing else in fastreid is changed.

=====================================  ======================================  ====================
repair                                 what breaks without it                  broken since
=====================================  ======================================  ====================
``collections.Mapping``                ``fastreid.data``, ``.evaluation``      Python 3.10
``torch._six``                         ``fastreid.data.build``                 torch 2.0
``np.bool``                            ``evaluation.rank.eval_cuhk03``         numpy 1.24 (to 2.0)
``TypedStorage`` warning               a warning per loader process            torch 2.0
CPU data loader                        ``DataLoaderX`` always makes CUDA       (any CPU machine)
                                       streams and calls ``set_device``;
                                       its prefetch thread swallows errors     (always)
in-place ``zero_grad`` for the         the optimizer stops updating after      torch 2.0
optimizer's flat buffers               its first step: nothing is learned
no run-time Cython                     ``ReidEvaluator`` runs ``make`` and     (any machine without
                                       calls ``sys.exit(1)`` if it fails       a compiler/Cython)
no ``sys.exit`` in ``verify_results``  a failed check kills the process        (always)
weights-only checkpoint loading        ``Checkpointer`` unpickles arbitrary    (always; torch < 2.6
                                       objects                                 by default)
weights-only backbone weights          the backbone builders' ``torch.load``   (always; torch < 2.6
                                       of ``PRETRAIN_PATH`` unpickles          by default, or with
                                       arbitrary objects                       ``TORCH_FORCE_NO_
                                                                               WEIGHTS_ONLY_LOAD``)
``fastreid.__version__``               the environment log says "fastreid      (1.4.0 says 1.3)
                                       1.3" for the installed 1.4.0
=====================================  ======================================  ====================
"""

import collections
import collections.abc
import functools
import importlib.util
import logging
import math
import os
import pickle
import sys
import types
import warnings
import zipfile

import numpy as np
import torch

__all__ = ["apply", "CheckpointLoadError"]

logger = logging.getLogger(__name__)

_applied = False


class CheckpointLoadError(RuntimeError):
    """A checkpoint file could not be read as plain tensors.

    Attributes:
        path (str): the file.
        problem (str): what is wrong with it, as a predicate ("is not a PyTorch checkpoint ...").
    """

    def __init__(self, path, problem):
        super().__init__(f"Cannot load checkpoint '{path}': it {problem}")
        self.path = path
        self.problem = problem


def restore_collections_aliases():
    """Python 3.10 removed the ABC aliases from :mod:`collections`; fastreid imports ``Mapping``."""
    for name in ("Mapping", "MutableMapping", "Sequence", "Iterable"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))


def provide_torch_six():
    """torch 2.0 removed ``torch._six``; fastreid's collate function imports ``string_classes``."""
    if importlib.util.find_spec("torch._six") is None:
        six = types.ModuleType("torch._six")
        six.string_classes = (str, bytes)
        six.inf = math.inf
        sys.modules["torch._six"] = six
        torch._six = six


def quiet_typed_storage_warning():
    """fastreid's ``to_tensor`` builds every image through ``torch.ByteStorage.from_buffer``.

    torch 2.0 deprecated ``TypedStorage`` and warns once per loader process; the call still works
    and gives the same tensor, so only the warning from that one module is silenced.
    """
    warnings.filterwarnings(
        "ignore", message="TypedStorage is deprecated", module="fastreid.data.transforms.functional"
    )


def restore_numpy_bool():
    """numpy 1.24 removed ``np.bool`` (numpy 2.0 brought it back as ``np.bool_``)."""
    if "bool" not in np.__dict__:
        np.bool = np.bool_


class _RaisedInPrefetch:
    """Carries an exception from ``BackgroundGenerator``'s thread to the consumer."""

    def __init__(self, exc):
        self.exc = exc


def cpu_safe_data_loader():
    """Let ``DataLoaderX`` run without CUDA, and let its errors reach the training loop.

    fastreid's ``DataLoaderX`` makes a CUDA stream in ``__init__``, calls ``torch.cuda.set_device``
    in its prefetch thread and copies every batch to ``cuda:<local_rank>``. Without a GPU the loader
    now prefetches in the same background thread but leaves batches on the CPU (the model moves
    them to its own device) and does not pin memory. With a GPU the original behaviour is kept.

    Its prefetch thread (``BackgroundGenerator``) also dies silently when loading a batch raises
    (an unreadable image, say), leaving the training loop blocked forever on an empty queue; the
    exception is now handed to the consumer and raised there.
    """
    from fastreid.data import data_utils

    loader_cls = data_utils.DataLoaderX
    generator_cls = data_utils.BackgroundGenerator
    original_init = loader_cls.__init__
    original_preload = loader_cls.preload
    original_next = loader_cls.__next__

    def __init__(self, local_rank, **kwargs):
        if torch.cuda.is_available():
            original_init(self, local_rank, **kwargs)
            return
        kwargs["pin_memory"] = False
        torch.utils.data.DataLoader.__init__(self, **kwargs)
        self.stream = None
        self.local_rank = local_rank

    def preload(self):
        if self.stream is not None:
            return original_preload(self)
        self.batch = next(self.iter, None)
        return None

    def __next__(self):
        if self.stream is not None:
            return original_next(self)
        batch = self.batch
        if batch is None:
            raise StopIteration
        self.preload()
        return batch

    def run(self):
        try:
            if torch.cuda.is_available():
                torch.cuda.set_device(self.local_rank)
            for item in self.generator:
                if self.exit_event.is_set():
                    break
                self.queue.put(item)
        except BaseException as exc:
            self.queue.put(_RaisedInPrefetch(exc))
        self.queue.put(None)

    def next_item(self):
        item = self.queue.get()
        if item is None:
            raise StopIteration
        if isinstance(item, _RaisedInPrefetch):
            raise item.exc
        return item

    loader_cls.__init__ = __init__
    loader_cls.preload = preload
    loader_cls.__next__ = __next__
    generator_cls.run = run
    generator_cls.next = next_item


def zero_contiguous_grads_in_place():
    """Keep FastReID's optimizer learning: zero its flat gradient buffers in place.

    ``build_optimizer`` packs all parameters into flat buffers (``ContiguousParams``): each
    parameter's ``.grad`` is a view into one buffer, the optimizer steps the buffer. Since torch 2.0
    ``Optimizer.zero_grad()`` sets gradients to ``None`` by default, which detaches the buffer's
    gradient from the views backward writes into; from the second step on the optimizer sees no
    gradient and the model stops learning, silently (FastReID's buffer check compares each pointer
    with itself). The optimizer built over those buffers now zeroes them in place.
    """
    from fastreid import solver
    from fastreid.engine import defaults as engine_defaults
    from fastreid.solver import build as solver_build

    original = solver_build.build_optimizer

    def build_optimizer(cfg, model, contiguous=True):
        optimizer, params = original(cfg, model, contiguous)
        if contiguous:
            optimizer.zero_grad = functools.partial(optimizer.zero_grad, set_to_none=False)
        return optimizer, params

    for module in (solver_build, solver, engine_defaults):
        module.build_optimizer = build_optimizer


def no_runtime_cython():
    """Never compile Cython at run time, never exit the process from the evaluator.

    ``ReidEvaluator.__init__`` runs ``make`` in site-packages when the compiled ranker is absent and
    calls ``sys.exit(1)`` if that fails. kdreid's evaluator ranks in vectorised torch and needs no
    compiled code; FastReID's own ``evaluate_rank`` falls back to its Python ranker by itself.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Cython rank evaluation")
        from fastreid.evaluation import rank, reid_evaluation  # noqa: F401

    def _compile_dependencies(self):
        logger.debug("kdreid.compat: skipping fastreid's run-time Cython compilation")

    reid_evaluation.ReidEvaluator._compile_dependencies = _compile_dependencies


def verify_results_raises():
    """``fastreid.evaluation.testing.verify_results`` calls ``sys.exit(1)``; raise instead."""
    from fastreid.evaluation import testing

    original = testing.verify_results

    def verify_results(cfg, results):
        try:
            return original(cfg, results)
        except SystemExit as exc:
            raise AssertionError(
                "Result verification failed (see the log for expected and actual results)"
            ) from exc

    testing.verify_results = verify_results


# The first bytes of a file written by ``torch.save``: a zip archive (torch >= 1.6) or a pickle
# (the legacy format, protocol 2 or later).
_TORCH_SAVE_MAGIC = (b"PK\x03\x04", b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05")


def checkpoint_format_problem(path):
    """What makes ``path`` unreadable as a ``torch.save`` file, judged from its first bytes.

    Args:
        path (str): a local path.

    Returns:
        str or None: ``"does not exist"``, ``"is a directory, not a checkpoint file"``, ``"is
        empty"`` or ``"is not a PyTorch checkpoint (...)"``; None when it starts like one.
    """
    if os.path.isdir(path):
        return "is a directory, not a checkpoint file"
    if not os.path.exists(path):
        return "does not exist"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if not head:
        return "is empty"
    if not head.startswith(_TORCH_SAVE_MAGIC):
        return (
            "is not a PyTorch checkpoint (a file written by torch.save starts as a zip archive "
            f"or a pickle; this one starts with {head!r})"
        )
    return None


def load_checkpoint_file(path, mmap=False):
    """Load a checkpoint without executing pickled code (``torch.load(weights_only=True)``).

    Args:
        path (str): a local file.
        mmap (bool): map the tensors of a zip-format file (what ``torch.save`` writes) instead of
            reading them: for a caller that needs only the checkpoint's small entries.

    Returns:
        dict: the checkpoint's content (tensors, numbers, strings and containers of them).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointLoadError: ``path`` is a directory, empty, not a torch checkpoint, truncated,
            holds pickled objects other than tensors and plain containers, or (read whole, not
            mapped) a tensor with NaN or inf (:func:`check_finite`; a mapped read is for the
            small entries only and is not checked).
    """
    if not os.path.exists(path):
        raise FileNotFoundError(2, "No such file or directory", path)
    problem = checkpoint_format_problem(path)
    if problem:
        raise CheckpointLoadError(path, f"{problem}.")
    try:
        if mmap and zipfile.is_zipfile(path):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        with open(path, "rb") as f:
            content = torch.load(f, map_location=torch.device("cpu"), weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower():
            raise CheckpointLoadError(path, f"is truncated or corrupt ({exc}).") from exc
        raise CheckpointLoadError(
            path,
            "holds pickled Python objects, which kdreid does not load: it reads checkpoints with "
            "torch.load(weights_only=True), so the file must hold only tensors, numbers, strings "
            "and containers of them."
            + "".join(f" {line.strip()}" for line in str(exc).splitlines() if "global" in line),
        ) from exc
    except Exception as exc:
        raise CheckpointLoadError(
            path,
            f"is truncated or corrupt ({type(exc).__name__}: {str(exc).split('. ')[0]}).",
        ) from exc
    check_finite(path, content)
    return content


def _finite(value):
    """Whether every number of a floating tensor is finite (min and max propagate NaN; no copy)."""
    if not value.is_floating_point() or value.numel() == 0:
        return True
    return all(bool(torch.isfinite(x)) for x in torch.aminmax(value))


def non_finite_tensors(content, prefix=""):
    """The keys (dotted, through nested dicts, lists and tuples) of the floating tensors of
    ``content`` that hold a NaN or an infinity, in the file's order."""
    if torch.is_tensor(content):
        return [] if _finite(content) else [prefix or "(the tensor)"]
    if isinstance(content, dict):
        items = content.items()
    elif isinstance(content, list | tuple):
        items = enumerate(content)
    else:
        return []
    bad = []
    for key, value in items:
        bad += non_finite_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    return bad


def check_finite(path, content):
    """Refuse weights holding NaN or inf: they evaluate to meaningless metrics or train silently.

    Args:
        path (str): the file, for the message.
        content: what :func:`load_checkpoint_file` read from it.

    Raises:
        CheckpointLoadError: naming the tensors with a NaN or inf (the first ten) and how many.
    """
    bad = non_finite_tensors(content)
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise CheckpointLoadError(
            path,
            f"has NaN or infinite values in {len(bad)} tensor{'s' if len(bad) > 1 else ''} "
            f"({shown}): the run that wrote it diverged; use an earlier checkpoint.",
        )


def weights_only_checkpoints():
    """fastreid's ``Checkpointer._load_file`` calls ``torch.load`` with full unpickling."""
    from fastreid.utils.checkpoint import Checkpointer

    def _load_file(self, f):
        return load_checkpoint_file(f)

    Checkpointer._load_file = _load_file


BACKBONE_MODULES = (
    "resnet", "mobilenet", "mobilenetv3", "osnet", "resnest", "resnext", "regnet.regnet",
    "regnet.effnet", "repvgg", "vision_transformer", "shufflenet",
)  # fmt: skip
"""The ``fastreid.modeling.backbones`` modules whose builders ``torch.load`` weights."""


class _TorchWithWeightsOnlyLoad(types.ModuleType):
    """:mod:`torch` as a backbone module sees it: every attribute is torch's, but ``load`` reads
    the file with :func:`load_checkpoint_file` (``weights_only=True``, stated explicitly, which
    no environment variable overrides), whatever the caller passes."""

    def __init__(self):
        super().__init__("torch")

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def load(f, map_location=None, *args, **kwargs):
        return load_checkpoint_file(os.fspath(f))


def weights_only_backbone_weights():
    """FastReID's backbone builders read ``MODEL.BACKBONE.PRETRAIN_PATH`` (and their download
    cache) with ``torch.load(path, map_location=...)``, no ``weights_only``: full unpickling on
    torch < 2.6, and on any torch with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in the environment.
    Each of those modules now sees a ``torch`` whose ``load`` is weights-only; nothing else of
    torch changes, for them or anyone. A bad file raises :class:`CheckpointLoadError`."""
    safe_torch = _TorchWithWeightsOnlyLoad()
    for name in BACKBONE_MODULES:
        module = importlib.import_module(f"fastreid.modeling.backbones.{name}")
        if getattr(module, "torch", None) is torch:
            module.torch = safe_torch


def short_run_metric_printer():
    """FastReID's ``CommonMetricPrinter`` divides by zero when it writes twice at one iteration
    before any step time is recorded (a run of one or two iterations: the last step and the end
    of training both write). The second write of an iteration is skipped."""
    from fastreid.utils.events import CommonMetricPrinter

    write = CommonMetricPrinter.write

    def _write(self):
        from fastreid.utils.events import get_event_storage

        last = getattr(self, "_last_write", None)
        if last is not None and last[0] == get_event_storage().iter:
            return
        write(self)

    CommonMetricPrinter.write = _write


def installed_fastreid_version():
    """fastreid 1.4.0's ``__version__`` is still "1.3", so FastReID's environment report (the top
    of every run's log) names the wrong release: it becomes the installed distribution's."""
    import importlib.metadata

    import fastreid

    try:
        fastreid.__version__ = importlib.metadata.version("fastreid")
    except importlib.metadata.PackageNotFoundError:  # a source checkout on sys.path
        pass


_REPAIRS = (
    restore_collections_aliases,
    provide_torch_six,
    restore_numpy_bool,
    quiet_typed_storage_warning,
    cpu_safe_data_loader,
    zero_contiguous_grads_in_place,
    no_runtime_cython,
    verify_results_raises,
    weights_only_checkpoints,
    weights_only_backbone_weights,
    short_run_metric_printer,
    installed_fastreid_version,
)


def apply():
    """Apply every repair once; later calls do nothing."""
    global _applied
    if _applied:
        return
    # The first three must run before any fastreid module is imported.
    for repair in _REPAIRS:
        repair()
    _applied = True
