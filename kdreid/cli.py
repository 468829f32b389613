"""What kdreid's command-line scripts share: bad input as one line, output folders checked before
any work, ``KEY VALUE`` config options after the flags, argparse types for ranges, and the model a
``--config-file``, its options and ``MODEL.WEIGHTS`` describe, built for inference.
"""

import argparse
import math
import os
import re
import sys

from kdreid.checkpoint import prepare_output_dir
from kdreid.config import get_cfg, merge_from_file, merge_from_list, resolve_device
from kdreid.engine.evaluate import inference_config, inference_model
from kdreid.engine.validation import check_config, check_opts
from kdreid.errors import OutputDirError, report_user_errors, user_message

__all__ = [
    "CONFIG_KEY",
    "at_least",
    "build_inference_model",
    "check_output_dir",
    "finite_above",
    "finite_at_least",
    "parse_with_opts",
    "report_user_errors",
    "user_message",
]


# --- output folders ----------------------------------------------------------------------------


def check_output_dir(path, flag="--output-dir"):
    """Refuse, before any work starts, an output folder that cannot be created or written.

    The check is :func:`kdreid.checkpoint.prepare_output_dir`'s (create the folder, write a file
    in it), but it leaves nothing behind: the folders it had to create are removed again, so bad
    input found later creates no folder. The folder is made when the first file is written.

    Args:
        path (str): the folder.
        flag (str): the flag or argument that named it, for the message.

    Raises:
        OutputDirError: naming ``flag`` and ``path``: a file, or a place that cannot be written.
    """
    created, folder = [], os.path.abspath(path)
    while not os.path.lexists(folder) and os.path.dirname(folder) != folder:
        created.append(folder)  # deepest first, the order to remove them in
        folder = os.path.dirname(folder)
    try:
        prepare_output_dir(path)
    except OutputDirError as exc:
        raise OutputDirError(f"{flag}: {exc}") from None
    finally:
        for folder in created:
            try:
                os.rmdir(folder)
            except OSError:
                break  # not created here after all (another process), or not empty


# --- the command line --------------------------------------------------------------------------

CONFIG_KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)+")
"""A FastReID config key (``SOLVER.MAX_EPOCH``), as no flag value or file name is written."""


def parse_with_opts(parser, argv=None, opts_help="KEY VALUE config options"):
    """``parser``'s arguments followed by ``KEY VALUE`` config options (``args.opts``).

    Adds the trailing ``opts`` argument. The options start at the first config key, even right
    after a list option (``--views Up1 Dn1 SOLVER.MAX_EPOCH 1``, which argparse alone would give
    to the list); a ``--`` before them is dropped. An odd number of options is a usage error, and
    ``args.output_dir`` (where the parser has one) is made absolute.
    """
    parser.add_argument("opts", nargs=argparse.REMAINDER, help=opts_help)
    argv = list(sys.argv[1:] if argv is None else argv)
    for i, item in enumerate(argv):
        if item == "--":
            break
        if CONFIG_KEY.fullmatch(item):
            argv.insert(i, "--")
            break
    args = parser.parse_args(argv)
    if args.opts[:1] == ["--"]:  # ends a list option
        args.opts = args.opts[1:]
    if len(args.opts) % 2:
        parser.error(f"options come in KEY VALUE pairs, got {args.opts}")
    if getattr(args, "output_dir", None):
        args.output_dir = os.path.abspath(args.output_dir)
    return args


def at_least(low):
    """An argparse ``type``: an integer ``>= low`` (a usage error names the flag otherwise)."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {low} or more, got {value}")
        return value

    parse.__name__ = f"integer >= {low}"
    return parse


def finite_at_least(low):
    """An argparse ``type``: a finite number ``>= low``."""
    return _finite(low, lambda value: value >= low, f"a finite number of {low:g} or more")


def finite_above(low):
    """An argparse ``type``: a finite number ``> low``."""
    return _finite(low, lambda value: value > low, f"a finite number above {low:g}")


def _finite(low, ok, what):
    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and ok(value)):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    parse.__name__ = what
    return parse


# --- models ------------------------------------------------------------------------------------


def build_inference_model(config_file, opts=(), *, device=None, load_weights=True, check=None):
    """The config and model that ``config_file`` and ``KEY VALUE`` options describe, for inference.

    The config is merged and checked as ``--eval-only`` checks it (stage 1 of
    :mod:`kdreid.engine.validation`, training keys ignored), made an inference config
    (:func:`kdreid.engine.inference_config`: no ImageNet weights, no training-only teachers), and
    the model is built with ``MODEL.WEIGHTS`` loaded strictly
    (:func:`kdreid.engine.inference_model`), in evaluation mode.

    Args:
        config_file (str): the config file.
        opts (Sequence[str]): ``KEY VALUE`` options.
        device (str | None): ``MODEL.DEVICE`` to use ("cpu", "cuda", "auto"); None: the config's.
        load_weights (bool): False builds the model without loading ``MODEL.WEIGHTS`` (for a tool
            that checks a checkpoint itself).
        check (callable | None): called with the merged config before anything is built; raises
            for a config the tool cannot use.

    Returns:
        (CfgNode, torch.nn.Module): the frozen config and the model, on its device.

    Raises:
        ConfigError: the file is missing, a key is unknown, a value cannot work, or ``check``
            refuses the config.
        WeightsError: no ``MODEL.WEIGHTS``, or weights that do not fit the model.
    """
    cfg = get_cfg()
    merge_from_file(cfg, config_file)
    check_opts(list(opts))
    merge_from_list(cfg, list(opts))
    check_config(cfg, training=False)
    if check is not None:
        check(cfg)
    inference_config(cfg)
    if device is not None:
        cfg.MODEL.DEVICE = device
    resolve_device(cfg)
    cfg.freeze()
    model = inference_model(cfg, load_weights=load_weights)
    return cfg, model.eval()
