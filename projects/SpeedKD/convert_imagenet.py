"""Convert published ImageNet MobileNet weights into the key layout of the backbone that reads them.

    python projects/SpeedKD/convert_imagenet.py IN OUT [--arch mobilenetv1|mobilenetv2] [--depth D]

IN is a weights file in a layout of :mod:`speed_kd.imagenet_weights`, recognised from its keys:
MobileNet v1 from timm (``mobilenetv1_100``) or marvis/pytorch-mobilenet
(``mobilenet_sgd_68.848.pth.tar``), MobileNet v2 from torchvision (``mobilenet_v2``), or either
in the backbone's own layout. A state dict bare or under ``"state_dict"`` / ``"model"``, with or
without ``module.``; read without executing pickled code. OUT receives the backbone's state dict
alone (the ImageNet classifier dropped), written atomically: train with
``MODEL.BACKBONE.PRETRAIN_PATH OUT`` and the ``MODEL.BACKBONE.NAME`` / ``DEPTH`` printed. Every
tensor of the backbone comes from IN with its shape and every tensor of IN is used or is the
classifier; otherwise nothing is written and the error names the keys and shapes.

The width (``MODEL.BACKBONE.DEPTH``) is the one whose shapes IN has; ``--depth`` insists on one.
The network is the one IN's layout holds; ``--arch`` insists on one.
"""

import argparse
import os
from dataclasses import dataclass

import torch

import speed_kd  # noqa: F401  (registration of the MobileNet v1 backbone; repairs fastreid first)

# isort: split
from fastreid.modeling.backbones import build_backbone

from kdreid.checkpoint import atomic_write, read_state_dict
from kdreid.cli import check_output_dir, report_user_errors
from kdreid.config import get_cfg
from kdreid.errors import ConfigError, OutputDirError, WeightsError
from speed_kd.imagenet_weights import NETWORKS, Network, convert_state_dict, layout_of, match_keys
from speed_kd.mobilenet_v1 import WIDTH_MULTIPLIERS

__all__ = ["DEPTHS", "Conversion", "backbone", "convert", "main"]

DEPTHS = {
    "mobilenetv1": tuple(WIDTH_MULTIPLIERS),
    # the widths FastReID's build_mobilenetv2_backbone builds
    "mobilenetv2": ("1.0x", "0.75x", "0.5x", "0.35x", "0.25x", "0.1x"),
}
"""The ``MODEL.BACKBONE.DEPTH`` values of each network, widest first."""


@dataclass(frozen=True)
class Conversion:
    """What :func:`convert` wrote.

    Attributes:
        layout: IN's layout, by name.
        network: the network OUT is for.
        depth: its ``MODEL.BACKBONE.DEPTH``.
        keys: tensors written.
        parameters: learnable numbers among them (buffers excluded).
        ignored: IN's classifier keys, not written.
        modules: each module of IN -> the backbone module it fills (in the backbone's order).
    """

    layout: str
    network: Network
    depth: str
    keys: int
    parameters: int
    ignored: list[str]
    modules: dict[str, str]


def backbone(network: str, depth: str) -> torch.nn.Module:
    """The backbone of ``network`` (a key of :data:`NETWORKS`) at ``depth``, without weights,
    built by its registered builder."""
    cfg = get_cfg()
    cfg.MODEL.BACKBONE.NAME = NETWORKS[network].backbone
    cfg.MODEL.BACKBONE.DEPTH = depth
    cfg.MODEL.BACKBONE.PRETRAIN = False
    cfg.MODEL.BACKBONE.LAST_STRIDE = 2
    return build_backbone(cfg)


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def convert(src: str, dst: str, arch: str | None = None, depth: str | None = None) -> Conversion:
    """Convert the ImageNet weights ``src`` for the backbone they fit; write ``dst``.

    Args:
        src: the published file (read without executing pickled code).
        dst: the file to write, the backbone's bare state dict; replaced atomically if it exists.
        arch: a key of :data:`NETWORKS` that ``src`` must hold (default: the one its layout holds).
        depth: the width ``src`` must have (default: the one its shapes have).

    Raises:
        WeightsError: ``dst`` is ``src``; ``src`` is unreadable, holds pickled code, is in no
            layout of the network, or fits no width (or not ``depth``): the message names the
            keys and shapes against the closest width.
        ConfigError: ``depth`` is not a width of the network.
        OutputDirError: ``dst`` is a folder, or its folder cannot be created or written (checked
            before ``src`` is read).
    """
    if _same_file(src, dst):
        raise WeightsError(f"OUT '{dst}' is IN: the converter never overwrites IN; name another.")
    if os.path.isdir(dst):
        raise OutputDirError(f"OUT '{dst}' is a folder; expected the path of the file to write")
    folder = os.path.dirname(os.path.abspath(dst))
    check_output_dir(folder, "OUT's folder")
    source = f"IN '{src}'"
    state = read_state_dict(src, "IN")
    layout = layout_of(state, arch, source=source)
    network = NETWORKS[layout.network]
    widths = DEPTHS[layout.network]
    if depth is not None and depth not in widths:
        raise ConfigError(
            f"--depth {depth} is not a width of {network.name}; use one of {', '.join(widths)}."
        )
    models = {d: backbone(layout.network, d) for d in ([depth] if depth else widths)}
    matches = {d: match_keys(state, m.state_dict(), layout) for d, m in models.items()}
    best = min(matches, key=lambda d: matches[d].problems)  # the first of the closest
    target = f"{network.name} {best}"
    if matches[best].problems and not depth:
        target += f" (of the widths {', '.join(widths)}, the closest to the file)"
    model = models[best]
    weights = convert_state_dict(state, model.state_dict(), layout, source=source, target=target)
    parameters = sum(p.numel() for p in model.parameters())
    os.makedirs(folder, exist_ok=True)
    atomic_write(dst, lambda f: torch.save(weights, f))
    return Conversion(
        layout=layout.name,
        network=network,
        depth=best,
        keys=len(weights),
        parameters=parameters,
        ignored=matches[best].ignored,
        modules=matches[best].modules(),
    )


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("src", metavar="IN", help="the published ImageNet weights")
    parser.add_argument("dst", metavar="OUT", help="the file to write (the backbone's state dict)")
    parser.add_argument(
        "--arch", choices=list(NETWORKS), help="the network IN must hold (default: IN's layout's)"
    )
    parser.add_argument(
        "--depth", metavar="D", help="the width IN must have, e.g. 1.0x (default: IN's shapes')"
    )
    return parser.parse_args(argv)


def main(argv=None):
    """Convert; print what was mapped, or one ``error:`` line and exit with status 2."""
    args = parse_args(argv)
    c = report_user_errors(convert, args.src, args.dst, args.arch, args.depth)
    ignored = f"; not written (the ImageNet classifier): {', '.join(c.ignored)}"
    print(f"IN '{args.src}': {c.layout} layout{ignored if c.ignored else ''}")
    renamed = {a: b for a, b in c.modules.items() if a != b}
    width = max(map(len, renamed), default=0)
    for a, b in renamed.items():
        print(f"  {a:<{width}} -> {b}")
    if not renamed:
        print("  (the backbone's own names: nothing renamed)")
    b = c.network.backbone
    print(
        f"Wrote '{args.dst}': {c.network.name} {c.depth}, {c.keys} tensors, {c.parameters:,} "
        f"parameters.\nTrain with MODEL.BACKBONE.NAME {b} MODEL.BACKBONE.DEPTH {c.depth} "
        f"MODEL.BACKBONE.PRETRAIN True MODEL.BACKBONE.PRETRAIN_PATH {args.dst}"
    )


if __name__ == "__main__":
    main()
