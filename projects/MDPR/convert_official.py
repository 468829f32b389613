"""Convert a checkpoint of the official MDPR code into one kdreid's MDPR loads strictly.

    python projects/MDPR/convert_official.py SRC DST [--config-file CFG] [KEY VALUE ...]

SRC is a FastReID checkpoint written by the official code (KuilongCui/MDPR): the state dict under
``"model"`` beside ``"optimizer"``, ``"scheduler"``, ``"iteration"`` and so on, keys possibly
prefixed with ``module.``. DST receives ``{"model": state_dict}`` for the model that ``CFG``
(default ``configs/MDPR/DukeMTMC.yml``) plus the ``KEY VALUE`` options builds; evaluate it with
``MODEL.WEIGHTS DST``.

The official parameter names are ours, so nothing is renamed and nothing is cast: the converter
reads SRC without executing pickled code, drops everything but the model, strips ``module.``,
and checks that every key and shape fits the model before writing DST atomically. When they do
not fit, the error names the keys and, where the checkpoint shows which setting differs (stripes,
attention parts, trunk depth, IBN, SE, embedding width, fusion, distillation, guidance, head
pooling or BN-neck), the config key to change. Settings that leave no trace in the weights (last
stride, input size, ``MODEL.HEADS.NECK_FEAT``, a pooling without parameters) cannot be checked:
they are taken from the config, which must match the one the official model was trained with.
The class count (``MODEL.HEADS.NUM_CLASSES``) is read from the checkpoint.
"""

import argparse
import os
import re
from dataclasses import dataclass

import torch

import mdpr  # noqa: F401  (imported for registration of the MDPR meta-architecture and its keys)
from kdreid.checkpoint import atomic_write, fit_state_dict, read_state_dict
from kdreid.cli import build_inference_model, check_output_dir, report_user_errors
from kdreid.errors import ConfigError, OutputDirError, WeightsError

__all__ = ["Conversion", "Hint", "build_mdpr", "config_hints", "convert", "main"]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_CONFIG = os.path.join(REPO, "configs", "MDPR", "DukeMTMC.yml")
CLASSIFIER = "hard_global_head.weight"  # (NUM_CLASSES, E): the class count comes from here
# Depth of a FastReID ResNet from its layer3: (Bottleneck blocks?, number of blocks).
DEPTHS = {(False, 2): "18x", (False, 6): "34x", (True, 6): "50x", (True, 23): "101x"}
LAYER3 = "generate.backbone_part.0"  # the hard branch's copy of layer3


@dataclass(frozen=True)
class Hint:
    """A setting the checkpoint shows to differ from the config.

    Attributes:
        message: what differs, naming the checkpoint keys that show it.
        key: the config key to change.
        value: the value that fits the checkpoint, as written on the command line.
    """

    message: str
    key: str
    value: str


@dataclass(frozen=True)
class Conversion:
    """What :func:`convert` wrote.

    Attributes:
        keys: state-dict entries.
        parameters: learnable numbers (buffers excluded).
        feature_dim: length of the evaluation descriptor.
        num_classes: identities of the classifiers.
        dtypes: the tensors' dtypes, as written (nothing is cast).
    """

    keys: int
    parameters: int
    feature_dim: int
    num_classes: int
    dtypes: tuple[str, ...]


def build_mdpr(config_file: str, opts, num_classes: int):
    """The config and the MDPR model of ``config_file`` plus ``KEY VALUE`` options, on the CPU,
    without weights (the converter checks the checkpoint against it itself).

    Args:
        config_file: a kdreid config file.
        opts: ``KEY VALUE`` options (list of str).
        num_classes: ``MODEL.HEADS.NUM_CLASSES``, from the checkpoint.

    Raises:
        ConfigError: the file is missing, a key is unknown, or the config is not an MDPR one.
    """

    def mdpr_only(cfg):
        if cfg.MODEL.META_ARCHITECTURE != "MDPR":
            raise ConfigError(
                f"{config_file} builds a {cfg.MODEL.META_ARCHITECTURE}, not an MDPR model: pass "
                "an MDPR config with --config-file (configs/MDPR/*.yml)."
            )

    opts = [*opts, "MODEL.HEADS.NUM_CLASSES", str(num_classes)]
    return build_inference_model(
        config_file, opts, device="cpu", load_weights=False, check=mdpr_only
    )


def _indices(state: dict, prefix: str) -> list[int]:
    """The distinct ``N`` of the keys ``<prefix>.N.*``, sorted."""
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    return sorted({int(m.group(1)) for k in state if (m := pattern.match(k))})


def _span(prefix: str, indices: list[int]) -> str:
    """``prefix.0-2.*`` for indices 0, 1, 2 (``prefix.0.*`` for one)."""
    if not indices:
        return f"{prefix}.*"
    last = f"-{indices[-1]}" if len(indices) > 1 else ""
    return f"{prefix}.{indices[0]}{last}.*"


def _has(state: dict, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in state)


def _count_hint(state, found, built, what, prefixes, key, extra=""):
    """A :class:`Hint` when the checkpoint has ``found`` modules per prefix and the config builds
    ``built``; ``None`` if they agree (or the checkpoint's prefixes disagree among themselves,
    which the generic key listing reports)."""
    counts = {len(_indices(state, p)) for p in prefixes}
    if counts != {found} or found in (0, built):
        return None
    names = ", ".join(_span(p, _indices(state, p)) for p in prefixes)
    return Hint(
        f"the checkpoint has {found} {what} ({names}{extra}), the config builds {built}: "
        f"set {key} {found}",
        key,
        str(found),
    )


def _switch_hint(present: bool, wanted: bool, what: str, evidence: str, key: str):
    """A :class:`Hint` when the checkpoint has (or lacks) an optional module the config does not
    (or does) build."""
    if present == bool(wanted):
        return None
    if present:
        message = f"the checkpoint has {what} ({evidence}), the config builds none"
    else:
        message = f"the checkpoint has no {what} (no {evidence} keys), the config builds them"
    return Hint(f"{message}: set {key} {present}", key, str(present))


def _trunk_hints(state: dict, cfg) -> list[Hint]:
    """Depth, IBN and SE of the trunk, read from the hard branch's layer3 and the block norms."""
    b = cfg.MODEL.BACKBONE
    hints = []
    blocks = _indices(state, LAYER3)
    bottleneck = f"{LAYER3}.0.conv3.weight" in state
    depth = DEPTHS.get((bottleneck, len(blocks)))
    if blocks and depth is not None and depth != b.DEPTH:
        kind = "Bottleneck" if bottleneck else "BasicBlock"
        built = {d: n for (_, n), d in DEPTHS.items()}.get(b.DEPTH, "?")
        hints.append(
            Hint(
                f"the checkpoint trunk is ResNet-{depth[:-1]} ({len(blocks)} {kind} blocks in "
                f"layer3: {_span(LAYER3, blocks)}), the config builds {b.DEPTH} ({built} blocks): "
                f"set MODEL.BACKBONE.DEPTH {depth}",
                "MODEL.BACKBONE.DEPTH",
                depth,
            )
        )
    for what, marker, option in (
        ("IBN layers", ".bn1.IN.", "WITH_IBN"),
        ("squeeze-excitation layers", ".se.", "WITH_SE"),
    ):
        found = sorted(k for k in state if marker in k)
        evidence = f"{len(found)} keys such as {found[0]}" if found else f"*{marker}*"
        key = f"MODEL.BACKBONE.{option}"
        hints.append(_switch_hint(bool(found), b[option], what, evidence, key))
    return hints


def _head_hints(state: dict, cfg) -> list[Hint]:
    """Pooling and BN-neck of the heads, from the hard-global head."""
    h = cfg.MODEL.HEADS
    hints = []
    gem_p = "hard_global_head.pool_layer.p" in state
    if gem_p and h.POOL_LAYER != "GeneralizedMeanPoolingP":
        hints.append(
            Hint(
                "the checkpoint's heads pool with a learned GeM exponent "
                f"(hard_global_head.pool_layer.p), the config uses {h.POOL_LAYER}: set "
                "MODEL.HEADS.POOL_LAYER GeneralizedMeanPoolingP",
                "MODEL.HEADS.POOL_LAYER",
                "GeneralizedMeanPoolingP",
            )
        )
    elif not gem_p and h.POOL_LAYER == "GeneralizedMeanPoolingP":
        hints.append(
            Hint(
                "the checkpoint's heads have no learned GeM exponent (no "
                "hard_global_head.pool_layer.p), the config uses GeneralizedMeanPoolingP: set "
                "MODEL.HEADS.POOL_LAYER to the pooling the model was trained with",
                "MODEL.HEADS.POOL_LAYER",
                "<pooling>",
            )
        )
    hints.append(
        _switch_hint(
            _has(state, "hard_global_head.bottleneck."),
            h.WITH_BNNECK,
            "BN-necks",
            "hard_global_head.bottleneck.*",
            "MODEL.HEADS.WITH_BNNECK",
        )
    )
    return hints


def config_hints(state: dict, cfg) -> list[Hint]:
    """Settings of ``cfg`` that the checkpoint shows to be different, each with the fix.

    Only what the weights reveal is compared: numbers of stripes and attention parts, trunk depth,
    IBN, SE, embedding width, fusion, predictors, attention guidance, head pooling and BN-neck.

    Args:
        state: the checkpoint's state dict, ``module.`` stripped.
        cfg: the config the model will be built from.

    Returns:
        list[Hint]: empty when nothing visible differs.
    """
    m = cfg.MODEL.MDPR
    hints = [
        _count_hint(
            state,
            len(_indices(state, "generate.embedding_hard_part")),
            m.NUM_STRIPES,
            "stripes",
            ("generate.embedding_hard_part", "hard_part_head"),
            "MODEL.MDPR.NUM_STRIPES",
        )
    ]
    maker = state.get("generate.attention_maker4.conv.weight")
    parts = len(_indices(state, "generate.attn_bap4.embedding_layer"))
    if maker is not None and maker.ndim == 4 and maker.shape[0] == parts + 1:
        hints.append(
            _count_hint(
                state,
                parts,
                m.NUM_PARTS,
                "attention parts",
                ("generate.attn_bap4.embedding_layer", "generate.attn_bap3.embedding_layer"),
                "MODEL.MDPR.NUM_PARTS",
                f"; generate.attention_maker4.conv.weight {tuple(maker.shape)}: M + 1 = "
                f"{parts + 1} maps",
            )
        )
    hints += _trunk_hints(state, cfg)
    embedding = state.get("generate.embedding_hard_global.embedding.weight")
    if embedding is not None and embedding.ndim == 4 and embedding.shape[0] != m.EMBEDDING_DIM:
        e = embedding.shape[0]
        hints.append(
            Hint(
                f"the checkpoint's embeddings are {e}-d (generate.embedding_hard_global.embedding"
                f".weight {tuple(embedding.shape)}), the config builds {m.EMBEDDING_DIM}-d: set "
                f"MODEL.MDPR.EMBEDDING_DIM {e}",
                "MODEL.MDPR.EMBEDDING_DIM",
                str(e),
            )
        )
    hints.append(
        _switch_hint(
            _has(state, "fusion.") or _has(state, "fusion_feat_head."),
            m.FUSION,
            "a fusion module",
            "fusion.*, fusion_feat_head.*",
            "MODEL.MDPR.FUSION",
        )
    )
    hints.append(
        _switch_hint(
            _has(state, "predictor1.") or _has(state, "predictor2."),
            m.DISTILLATION,
            "distillation predictors",
            "predictor1.*, predictor2.*",
            "MODEL.MDPR.DISTILLATION",
        )
    )
    hints.append(
        _switch_hint(
            _has(state, "generate.up_attn_4_3."),
            m.GUIDANCE,
            "attention guidance",
            "generate.up_attn_4_3.*",
            "MODEL.MDPR.GUIDANCE",
        )
    )
    hints += _head_hints(state, cfg)
    return [h for h in hints if h is not None]


def _drop_pixel_stats(state: dict, cfg, src: str) -> dict:
    """Drop ``pixel_mean``/``pixel_std`` (persistent buffers in some FastReID versions; ours are
    not saved) when they equal the config's; a different normalisation is an error."""
    state = dict(state)
    for name, key in (("pixel_mean", "MODEL.PIXEL_MEAN"), ("pixel_std", "MODEL.PIXEL_STD")):
        if name not in state:
            continue
        saved = state.pop(name).flatten().double()
        wanted = torch.tensor(cfg.MODEL[name.upper()], dtype=torch.float64)
        if saved.shape != wanted.shape or not torch.allclose(saved, wanted):
            values = " ".join(f"{v:g}" for v in saved.tolist())
            raise WeightsError(
                f"'{src}' normalises images with {name} ({values}), the config with "
                f"{list(cfg.MODEL[name.upper()])}: set {key} \"[{values.replace(' ', ', ')}]\""
            )
    return state


def _num_classes(state: dict, src: str) -> int:
    weight = state.get(CLASSIFIER)
    if weight is None or weight.ndim != 2:
        first = ", ".join(sorted(state)[:5])
        raise WeightsError(
            f"'{src}' is not a checkpoint of the MDPR model: it has no {CLASSIFIER} "
            f"(its first keys: {first or 'none'})."
        )
    return int(weight.shape[0])


def _same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def convert(src: str, dst: str, config_file: str = DEFAULT_CONFIG, opts=()) -> Conversion:
    """Check an official MDPR checkpoint against the model ``config_file`` builds; write DST.

    Args:
        src: the official checkpoint (read without executing pickled code).
        dst: the file to write, ``{"model": state_dict}``; replaced atomically if it exists.
        config_file: the kdreid config of the model that will load ``dst``.
        opts: ``KEY VALUE`` options merged after ``config_file`` (list of str).

    Returns:
        :class:`Conversion`.

    Raises:
        WeightsError: ``dst`` is ``src``; ``src`` is unreadable, holds no state dict, or does not
            fit the model (the message names the keys and, where it can, the config key to set);
            ``src`` has non-finite values.
        ConfigError: ``config_file`` or an option is invalid, or the config is not an MDPR one.
        OutputDirError: ``dst`` is a folder, or its folder cannot be created or written (checked
            before anything is read; the folder is created only to write ``dst``).
    """
    if _same_file(src, dst):
        raise WeightsError(
            f"DST '{dst}' is SRC: the converter never overwrites the official checkpoint; name "
            "another file."
        )
    if os.path.isdir(dst):
        raise OutputDirError(f"DST '{dst}' is a folder; expected the path of the file to write")
    folder = os.path.dirname(os.path.abspath(dst))
    check_output_dir(folder, "DST's folder")
    state = read_state_dict(src, "SRC")  # the model only; "module." stripped
    cfg, model = build_mdpr(config_file, opts, _num_classes(state, src))
    state = _drop_pixel_stats(state, cfg, src)
    hints = config_hints(state, cfg)
    if hints:
        options = " ".join(f"{h.key} {h.value}" for h in hints)
        raise WeightsError(
            f"'{src}' is an MDPR checkpoint of another configuration than {config_file}:\n"
            + "\n".join(f"  - {h.message}" for h in hints)
            + f"\nConvert with these options: {options}"
        )
    try:
        fit_state_dict(model, state, f"'{src}'")
    except WeightsError as exc:
        raise WeightsError(
            f"{exc}\nNone of the settings the converter recognises (stripes, attention parts, "
            "trunk depth, IBN, SE, embedding width, fusion, distillation, guidance, head pooling, "
            f"BN-neck) explains this: is '{src}' a checkpoint of the official MDPR model built "
            f"as {config_file} describes?"
        ) from None
    expected = model.state_dict()
    out = {k: state[k] for k in expected}  # the checkpoint's tensors, in the model's order
    conversion = Conversion(
        keys=len(out),
        parameters=sum(p.numel() for p in model.parameters()),
        feature_dim=model.feature_dim,
        num_classes=cfg.MODEL.HEADS.NUM_CLASSES,
        dtypes=tuple(sorted({str(v.dtype).removeprefix("torch.") for v in out.values()})),
    )
    del model, expected
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as exc:  # checked above; changed since
        raise OutputDirError(f"Cannot create DST's folder '{folder}': {exc.strerror}") from exc
    atomic_write(dst, lambda f: torch.save({"model": out}, f))
    return conversion


def parse_args(argv=None):
    """The command line: SRC, DST, ``--config-file`` and ``KEY VALUE`` options, in any order."""
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("src", metavar="SRC", help="checkpoint of the official MDPR code")
    parser.add_argument("dst", metavar="DST", help="file to write ({'model': state_dict})")
    parser.add_argument(
        "--config-file",
        default=DEFAULT_CONFIG,
        metavar="FILE",
        help="config of the model that will load DST (default: configs/MDPR/DukeMTMC.yml)",
    )
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE", help="config options to change")
    # Intermixed: the options may come after SRC DST, as in the usage line.
    return parser.parse_intermixed_args(argv)


def main(argv=None):
    """Convert; print a one-line summary, or one ``error:`` line and exit with status 2."""
    args = parse_args(argv)
    c = report_user_errors(convert, args.src, args.dst, args.config_file, args.opts)
    print(
        f"Wrote {args.dst}: {c.keys} keys, {c.parameters:,} parameters "
        f"({'/'.join(c.dtypes)}), {c.num_classes} classes, {c.feature_dim}-d descriptor."
    )


if __name__ == "__main__":
    main()
