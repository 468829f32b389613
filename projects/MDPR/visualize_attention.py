"""Draw a trained MDPR model's stripes and attention maps over the images it sees.

    python projects/MDPR/visualize_attention.py --config-file CFG --output DIR \
        [--input IMAGE_OR_FOLDER ...] [--num-images N] [--device DEV] [--scale K] \
        [--no-background] MODEL.WEIGHTS path/to/model_final.pth [KEY VALUE ...]

Replaces the ``.npy`` files that the official code writes from inside its forward. The model of
the config is built, ``MODEL.WEIGHTS`` is loaded strictly (as ``--eval-only`` does; a classifier
built with ``MODEL.HEADS.NUM_CLASSES 0`` is not needed) and run in evaluation mode, batched
(``TEST.IMS_PER_BATCH``), on ``--device`` (default ``MODEL.DEVICE``, "auto": CUDA when torch sees
a GPU). The images are the ``--input`` files and folders (a folder: its .jpg/.jpeg/.png/.bmp
files, not recursively, in name order), or else the first ``--num-images`` query images of
``DATASETS.TESTS[0]`` (read from ``$FASTREID_DATASETS``, default ``datasets/``). Each is
preprocessed as evaluation does it (FastReID's test transforms: resize to ``INPUT.SIZE_TEST``,
0-255 tensor), after conversion to RGB (so that RGBA, palette and CMYK files work too).

For every image, ``DIR/<stem>.png`` (``<stem>_2.png`` ... when names repeat) is a row of panels,
each the input image at the model's input resolution, magnified ``--scale`` times without
interpolation:

1. the image with the boundaries of the P horizontal stripes of the hard branch, labelled;
2. for level 4, then level 3, and each attention part i: the image under the part's foreground
   attention map, upsampled bilinearly to the image size (:func:`overlay`), titled
   "level 4, part 1" and so on; unless ``--no-background``, each level ends with its background
   map, 1 minus the sum of the parts.

Drawn on matplotlib's Agg canvas (no display, no pyplot state). A colour bar under the panels
gives the colour of an attention value, on the fixed scale 0 to 1 (the maps are probabilities, so
levels, parts and images compare). Bad input (a missing path, an
unreadable image, a folder without images, a config that is not MDPR, weights that do not fit)
ends with one ``error: ...`` line and exit status 2.
"""

import argparse
import logging
import math
import os
from collections.abc import Sequence

import torch

import mdpr  # noqa: F401  (imported for registration of MDPR; it repairs fastreid first)

# isort: split
from fastreid.data import build as fastreid_data
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.transforms import build_transforms

from kdreid.checkpoint import prepare_output_dir
from kdreid.cli import at_least, build_inference_model, parse_with_opts, report_user_errors
from kdreid.engine.validation.datasets import read_image
from kdreid.errors import ConfigError, OutputDirError, UserInputError
from kdreid.progress import progress, show_progress_lines
from mdpr.visualize import (
    MIN_PANEL_WIDTH,
    attention_panels,
    pixel_boundaries,
    render,
    upsample,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImagePathError",
    "build_mdpr",
    "collect_images",
    "output_names",
    "visualize",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
"""Files of a folder given with ``--input`` that are read (case-insensitive)."""


class ImagePathError(UserInputError, FileNotFoundError):
    """An ``--input`` path that does not exist, or a folder with no images in it."""


# --- Inputs -----------------------------------------------------------------------------------


def collect_images(inputs: Sequence[str]) -> list[str]:
    """The image files named by ``--input``: files as given, folders' images in name order.

    Raises:
        ImagePathError: a path does not exist, or a folder holds no image.
    """
    paths = []
    for item in inputs:
        if os.path.isfile(item):
            paths.append(item)
        elif os.path.isdir(item):
            found = sorted(
                os.path.join(item, name)
                for name in os.listdir(item)
                if name.lower().endswith(IMAGE_EXTENSIONS)
                and os.path.isfile(os.path.join(item, name))
            )
            if not found:
                raise ImagePathError(
                    f"--input folder '{item}' holds no image ({', '.join(IMAGE_EXTENSIONS)})."
                )
            paths += found
        else:
            raise ImagePathError(f"--input '{item}' does not exist.")
    return paths


def dataset_queries(cfg, count: int) -> list[str]:
    """The first ``count`` query images of ``DATASETS.TESTS[0]``.

    Raises:
        ConfigError: no test set, or one that is not registered.
        DatasetNotFoundError: the dataset is not under the datasets root.
    """
    if not cfg.DATASETS.TESTS:
        raise ConfigError("DATASETS.TESTS is empty: name a test set, or pass images with --input.")
    name = cfg.DATASETS.TESTS[0]
    try:
        dataset_cls = DATASET_REGISTRY.get(name)
    except KeyError:
        raise ConfigError(f"DATASETS.TESTS[0] '{name}' is not a registered dataset.") from None
    dataset = dataset_cls(root=fastreid_data._root)
    if not dataset.query:
        raise ImagePathError(f"Dataset {name} has no query image.")
    return [item[0] for item in dataset.query[:count]]


def output_names(paths: Sequence[str]) -> list[str]:
    """PNG file names for the images: ``<stem>.png``, then ``<stem>_2.png``... for repeats."""
    seen: dict[str, int] = {}
    names = []
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        seen[stem] = seen.get(stem, 0) + 1
        names.append(f"{stem}.png" if seen[stem] == 1 else f"{stem}_{seen[stem]}.png")
    return names


# --- Command line -----------------------------------------------------------------------------


def build_mdpr(config_file: str, opts: Sequence[str], device: str | None = None):
    """The config and the MDPR model of ``config_file`` plus ``KEY VALUE`` options, for inference
    on ``device`` (None: ``MODEL.DEVICE``), ``MODEL.WEIGHTS`` loaded strictly.

    Raises:
        ConfigError: an unknown key, or a model that is not MDPR.
        WeightsError: no weights, or weights that do not fit.
    """

    def mdpr_only(cfg):
        arch = cfg.MODEL.META_ARCHITECTURE
        if arch != "MDPR":
            raise ConfigError(
                f"MODEL.META_ARCHITECTURE is '{arch}' in '{config_file}': this tool draws the "
                "attention of MDPR models only (MODEL.META_ARCHITECTURE MDPR)."
            )

    return build_inference_model(config_file, opts, device=device, check=mdpr_only)


def load_batch(paths: Sequence[str], transform) -> torch.Tensor:
    """(B, 3, H, W) float 0-255 images, preprocessed as evaluation does.

    Raises:
        UnreadableImageError: a file cannot be read as an image (the message names it).
    """
    return torch.stack([transform(read_image(path, "RGB")) for path in paths])


def visualize(
    cfg,
    model,
    paths: Sequence[str],
    output: str,
    scale: int | None = None,
    with_background: bool = True,
) -> list[str]:
    """Write one picture of ``model``'s stripes and attention maps per image.

    Args:
        cfg: the model's config (:func:`build_mdpr`).
        model: the MDPR model, in evaluation mode.
        paths: image files.
        output: folder for the pictures (created).
        scale: panel magnification; None picks the smallest that makes panels at least
            ``MIN_PANEL_WIDTH`` pixels wide.
        with_background: add each level's background map.

    Returns:
        The PNG files written, in the order of ``paths``.
    """
    prepare_output_dir(output)
    transform = build_transforms(cfg, is_train=False)
    names = output_names(paths)
    written = []
    batch_size = max(1, cfg.TEST.IMS_PER_BATCH)
    with progress(
        total=len(paths), desc="Attention maps", unit="image", enabled=cfg.KDREID.PROGRESS
    ) as bar:
        for start in range(0, len(paths), batch_size):
            chunk = slice(start, start + batch_size)
            images = load_batch(paths[chunk], transform)
            size = tuple(images.shape[-2:])
            if scale is None:
                scale = max(1, math.ceil(MIN_PANEL_WIDTH / size[1]))
            branches = model.attention_maps(images)
            levels = [
                (4, upsample(branches.attention4, size).cpu().numpy()),
                (3, upsample(branches.attention3, size).cpu().numpy()),
            ]
            boundaries = pixel_boundaries([p.shape[2] for p in branches.hard_parts], size[0])
            pictures = images.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8).numpy()
            for i, name in enumerate(names[chunk]):
                panels = attention_panels([(k, a[i]) for k, a in levels], with_background)
                path = os.path.join(output, name)
                try:
                    render(
                        pictures[i], boundaries, panels, path, scale=scale,
                        name=os.path.basename(paths[start + i]),
                    )  # fmt: skip
                except OSError as exc:
                    raise OutputDirError(f"Cannot write '{path}': {exc}") from exc
                written.append(path)
                bar.update()
    return written


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the PNGs")
    parser.add_argument(
        "--input",
        nargs="+",
        default=[],
        metavar="PATH",
        help="image files or folders (default: query images of DATASETS.TESTS[0])",
    )
    parser.add_argument(
        "--num-images", type=at_least(1), default=8, help="query images drawn without --input (8)"
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:N or auto (default: MODEL.DEVICE)")
    parser.add_argument(
        "--scale", type=at_least(1), help="panel magnification (default: automatic)"
    )
    parser.add_argument(
        "--no-background", action="store_true", help="leave out the background maps"
    )
    # "--input a.jpg MODEL.WEIGHTS m.pth": the config options start at the first key, not in
    # --input; "--input MODEL.WEIGHTS m.pth" leaves --input empty, a usage error.
    return parse_with_opts(parser, argv, "config overrides: KEY VALUE ...")


def run(args) -> list[str]:
    paths = collect_images(args.input) if args.input else None
    cfg, model = build_mdpr(args.config_file, args.opts, args.device)
    if paths is None:
        paths = dataset_queries(cfg, args.num_images)
    written = visualize(cfg, model, paths, args.output, args.scale, not args.no_background)
    print(f"Wrote {len(written)} picture(s) to {args.output} (model on {cfg.MODEL.DEVICE})")
    return written


def main(argv=None) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    show_progress_lines()
    report_user_errors(run, parse_args(argv))


if __name__ == "__main__":
    main()
