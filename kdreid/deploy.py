"""The deployed model made cheaper without changing what it computes: BatchNorm folded into the
convolutions before it, and, for extraction under autocast, weights cast once instead of at every
call.

In evaluation a BatchNorm is a fixed per-channel affine map, ``y = (x - mean) / sqrt(var + eps) *
gamma + beta``: when ``x`` is a convolution's output and nothing else reads it, the map moves into
the convolution's weights and bias (``torch.nn.utils.fusion.fuse_conv_bn_weights``) and the
BatchNorm's pass over the activations disappears. The float32 descriptor changes only by rounding.

Which BatchNorm follows which convolution is read from one traced forward pass, not from module
names: a pair is folded only where the BatchNorm's input *is* the convolution's output tensor, each
module runs once, and the autograd graph shows no other reader of that tensor (a residual branch
taken before the BatchNorm, say). FastReID's models cannot be traced by ``torch.fx`` (their
forwards branch on the input), which is why ``torch.fx.experimental.optimization.fuse`` does not
serve here.
"""

import logging
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

__all__ = ["FoldedPair", "cast_weights_for_autocast", "fold_batchnorm", "foldable_pairs"]

logger = logging.getLogger(__name__)

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class FoldedPair:
    """A convolution and the BatchNorm that reads its output, by their module names."""

    conv: str
    norm: str


def _is_norm(module: nn.Module) -> bool:
    """A BatchNorm whose evaluation is a fixed affine map: torch's (with running statistics) or
    FastReID's ``FrozenBatchNorm``."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.track_running_stats and module.running_mean is not None
    return type(module).__name__ == "FrozenBatchNorm" and hasattr(module, "running_var")


def _readers(roots) -> dict:
    """How many edges of the autograd graph reaching ``roots`` start at each node."""
    counts, seen, stack = {}, set(), [r for r in roots if r is not None]
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None:
                counts[child] = counts.get(child, 0) + 1
                stack.append(child)
    return counts


def _outputs(value):
    """Every tensor in a model's output (a tensor, or a dict / list / tuple of them)."""
    if torch.is_tensor(value):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _outputs(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _outputs(item)


def foldable_pairs(model: nn.Module, example: torch.Tensor) -> list[FoldedPair]:
    """The (convolution, BatchNorm) pairs of ``model`` (in eval mode) that can be folded.

    Args:
        model: the model, in eval mode.
        example: an input batch it takes, e.g. (N, 3, H, W) images.

    Returns:
        The pairs in the order the forward pass met them.
    """
    names = {module: name for name, module in model.named_modules(remove_duplicate=False)}
    calls, produced, candidates = {}, {}, []

    def after_conv(module, _inputs, output):
        calls[module] = calls.get(module, 0) + 1
        produced[id(output)] = (module, output, output._version, output.grad_fn)

    def before_norm(module, inputs):
        calls[module] = calls.get(module, 0) + 1
        source = produced.get(id(inputs[0]))
        # the very tensor the convolution returned, not changed in place since (a ReLU_)
        if source is not None and source[1] is inputs[0] and source[2] == inputs[0]._version:
            candidates.append((source[0], module, source[3]))

    handles = []
    for module in names:
        if isinstance(module, _CONV):
            handles.append(module.register_forward_hook(after_conv))
        elif _is_norm(module):
            handles.append(module.register_forward_pre_hook(before_norm))
    try:
        with torch.enable_grad():
            # an input that requires grad gives every convolution's output a node in the graph,
            # frozen weights or not (a non-leaf: FastReID normalises its input in place)
            outputs = model(example.detach().float().requires_grad_() + 0)
    finally:
        for handle in handles:
            handle.remove()
    readers = _readers(t.grad_fn for t in _outputs(outputs))
    pairs = []
    for conv, norm, node in candidates:
        if calls[conv] != 1 or calls[norm] != 1:
            continue  # a module run twice: folding would change its other uses
        if node is None or readers.get(node, 0) != 1:
            continue  # the convolution's output is read by something else too
        pairs.append(FoldedPair(names[conv], names[norm]))
    return pairs


def _parents(model: nn.Module, target: nn.Module):
    """Every (parent, attribute) through which ``model`` holds ``target``."""
    for parent in model.modules():
        for key, child in parent._modules.items():
            if child is target:
                yield parent, key


@torch.no_grad()
def fold_batchnorm(model: nn.Module, example: torch.Tensor, rtol: float = 1e-4) -> list[FoldedPair]:
    """Fold every foldable BatchNorm of ``model`` (in eval mode) into the convolution before it,
    in place: the convolution takes the folded weights and bias, the BatchNorm becomes
    ``nn.Identity``. The model is for inference from then on (training would need the BatchNorm).

    Args:
        model: the model, in eval mode.
        example: an input batch it takes; the outputs on it are compared before and after.
        rtol: largest relative change of the output allowed (float32 rounding is ~1e-6).

    Returns:
        The pairs folded.

    Raises:
        ValueError: ``model`` is in training mode.
        RuntimeError: the folded model's output differs from the original's by more than ``rtol``
            (a bug: nothing here should change the output).
    """
    if model.training:
        raise ValueError("fold_batchnorm: the model is in training mode; fold an eval-mode model")
    before = [t.float().clone() for t in _outputs(model(example.clone()))]
    pairs = foldable_pairs(model, example)
    modules = dict(model.named_modules(remove_duplicate=False))
    for pair in pairs:
        conv, norm = modules[pair.conv], modules[pair.norm]
        channels_last = conv.weight.is_contiguous(memory_format=torch.channels_last)
        weight, bias = fuse_conv_bn_weights(
            conv.weight, conv.bias, norm.running_mean, norm.running_var, norm.eps,
            norm.weight, norm.bias,
        )  # fmt: skip
        conv.weight = weight
        conv.bias = bias
        if channels_last and weight.dim() == 4:
            conv.weight.data = weight.data.contiguous(memory_format=torch.channels_last)
        for parent, key in list(_parents(model, norm)):
            setattr(parent, key, nn.Identity())
    after = [t.float() for t in _outputs(model(example.clone()))]
    for old, new in zip(before, after, strict=True):
        change = (new - old).norm() / old.norm().clamp_min(1e-12)
        if change > rtol:
            raise RuntimeError(
                f"fold_batchnorm: folding {len(pairs)} BatchNorm layers changed the model's output "
                f"by {float(change):.2e} (relative), more than {rtol:g}"
            )
    return pairs


_AUTOCAST_WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
"""Modules whose operation autocast runs in its lower precision (on the CPU and on CUDA), casting
their float32 weight and bias at every call."""


@torch.no_grad()
def cast_weights_for_autocast(model: nn.Module, example: torch.Tensor, dtype: torch.dtype) -> int:
    """Cast, once and in place, the weights and biases that autocast would cast to ``dtype`` at
    every call (convolutions and linear layers): extraction under autocast then computes the same
    numbers without copying every weight at every batch (about 5% of a ResNet-101's bfloat16 pass
    on a CPU). The model is for autocast inference from then on.

    The outputs on ``example`` under autocast are compared before and after; where they differ at
    all (a weight also read by an operation autocast leaves in float32) the weights are restored.

    Args:
        model: the model, in eval mode.
        example: an input batch it takes.
        dtype: autocast's type on the example's device (bfloat16 on the CPU, float16 on CUDA).

    Returns:
        The number of modules cast (0 where the outputs would change).
    """
    device_type = example.device.type

    def outputs():
        with torch.autocast(device_type, dtype=dtype):
            return [t.float().clone() for t in _outputs(model(example.clone()))]

    before = outputs()
    originals = {}
    for module in model.modules():
        if isinstance(module, _AUTOCAST_WEIGHTED) and module.weight.dtype == torch.float32:
            originals[module] = (module.weight.data, getattr(module.bias, "data", None))
            module.weight.data = module.weight.data.to(dtype)  # keeps channels-last
            if module.bias is not None:
                module.bias.data = module.bias.data.to(dtype)
    after = outputs()
    if all(torch.equal(a, b) for a, b in zip(before, after, strict=True)):
        return len(originals)
    for module, (weight, bias) in originals.items():
        module.weight.data = weight
        if bias is not None:
            module.bias.data = bias
    logger.info("Weights left in float32: casting them before autocast changes the outputs.")
    return 0
