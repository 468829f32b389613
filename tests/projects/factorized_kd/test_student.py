"""The FD-style student: factors, map rows, teacher crops, losses, gradients, checkpoint, bad input.

Teachers are random-init tiny ResNet-18s built here from ``tiny_teacher.yml`` (32x32 views, a 1x1
last map, 512 channels); the student is ``tiny_student.yml`` (64x32 images, a 4x2 last map of 512
channels, a 512-d feature). Nothing trains for more than three steps on one batch of four images.
"""

import logging
import os

import pytest
import torch
import torch.nn.functional as F
from fastreid.modeling import build_model
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from fastreid.utils.events import EventStorage

from factorized_kd import FKDStudent, crop_view, feature_factorization_loss, map_factorization_loss
from kdreid.checkpoint import fit_state_dict
from kdreid.config import get_cfg, merge_from_file, resolve_device
from kdreid.engine import inference_config
from kdreid.engine.validation import check_config
from kdreid.errors import ConfigError, WeightsError

from ...conftest import REPO

SYNTHETIC = os.path.join(REPO, "configs", "FactorizedKD", "Synthetic")
TINY_TEACHER = os.path.join(SYNTHETIC, "tiny_teacher.yml")
TINY_STUDENT = os.path.join(SYNTHETIC, "tiny_student.yml")


def _teacher_cfg(view, embedding_dim=0, **input_opts):
    cfg = get_cfg()
    merge_from_file(cfg, TINY_TEACHER)
    cfg.MODEL.FKD.VIEW = view
    cfg.MODEL.HEADS.NUM_CLASSES = 3  # its own label space: the student never uses its logits
    cfg.MODEL.HEADS.EMBEDDING_DIM = embedding_dim
    cfg.MODEL.DEVICE = "cpu"
    for key, value in input_opts.items():
        cfg.INPUT[key] = value
    return cfg


def _write_config(cfg, path):
    with open(path, "w") as f:
        f.write(cfg.dump())  # as a teacher's run writes OUTPUT_DIR/config.yaml
    return str(path)


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
    """``(view, embedding dim) -> (config file, checkpoint)`` for a few random-init teachers."""
    folder = tmp_path_factory.mktemp("fkd_teachers")
    out = {}
    for seed, (view, dim) in enumerate([("Up1", 0), ("Dn1", 0), ("Up1", 256), ("Dn1", 256)]):
        cfg = _teacher_cfg(view, dim)
        torch.manual_seed(seed)
        weights = folder / f"{view}_{dim}.pth"
        torch.save({"model": build_model(cfg).state_dict()}, weights)
        out[view, dim] = (_write_config(cfg, folder / f"{view}_{dim}.yaml"), str(weights))
    return out


def _cfg(teachers, keys=(("Up1", 0), ("Dn1", 0)), **fkd):
    cfg = get_cfg()
    merge_from_file(cfg, TINY_STUDENT)
    cfg.MODEL.HEADS.NUM_CLASSES = 4
    cfg.KD.MODEL_CONFIG = [teachers[k][0] for k in keys]
    cfg.KD.MODEL_WEIGHTS = [teachers[k][1] for k in keys]
    for key, value in fkd.items():
        cfg.MODEL.FKD[key] = value
    resolve_device(cfg)
    return cfg


def _plain(cfg):
    plain_cfg = cfg.clone()
    plain_cfg.MODEL.META_ARCHITECTURE = "Baseline"
    return build_model(plain_cfg)


def _batch(n=4, height=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "images": torch.rand(n, 3, height, 32, generator=g) * 255,
        "targets": torch.arange(n // 2).repeat_interleave(2),
    }


def _clone(batch):
    return {k: v.clone() for k, v in batch.items()}


def test_importing_the_package_registers_the_student():
    assert META_ARCH_REGISTRY.get("FKDStudent") is FKDStudent
    cfg = get_cfg()
    assert {"FEAT_WEIGHT", "MAP_WEIGHT", "FACTOR_MODE"} <= set(cfg.MODEL.FKD)
    # The teachers are named as every distiller's: FastReID's KD.MODEL_CONFIG / MODEL_WEIGHTS.
    assert {"MODEL_CONFIG", "MODEL_WEIGHTS"} <= set(cfg.KD) and "TEACHERS" not in cfg.MODEL.FKD


def test_linear_factors_and_adapters_have_the_teachers_shapes(teachers):
    """Linear mode: Linear(512 -> D_k) per teacher, here D = 512 (Up1) and 256 (Dn1, with an
    embedding layer); adapters 1x1 conv 512 -> 512 (both teachers' maps are ResNet-18's)."""
    model = build_model(_cfg(teachers, keys=(("Up1", 0), ("Dn1", 256))))
    assert model.views == ("Up1", "Dn1")
    assert [t.input_size for t in model.teachers] == [(32, 32), (32, 32)]
    heads = model.distill["feature_factors"]
    assert [(h.in_features, h.out_features, h.bias) for h in heads] == [
        (512, 512, None),
        (512, 256, None),
    ]
    adapters = model.distill["map_adapters"]
    assert [tuple(a.weight.shape) for a in adapters] == [(512, 512, 1, 1)] * 2
    factors = model.factors(torch.randn(3, 512))
    assert [tuple(f.shape) for f in factors] == [(3, 512), (3, 256)]


def test_split_factors_are_channel_groups(teachers):
    """Split mode: two 256-d teachers cut the 512-d feature into [0, 256) and [256, 512), with no
    parameters; dims that do not add up to 512 are refused."""
    model = build_model(_cfg(teachers, keys=(("Up1", 256), ("Dn1", 256)), FACTOR_MODE="split"))
    assert "feature_factors" not in model.distill
    features = torch.randn(3, 512)
    first, second = model.factors(features)
    assert torch.equal(first, features[:, :256]) and torch.equal(second, features[:, 256:])
    with pytest.raises(ConfigError, match=r"dims \[512, 256\], which add up to 768.*to 512"):
        check_config(_cfg(teachers, keys=(("Up1", 0), ("Dn1", 256)), FACTOR_MODE="split"))


def test_map_rows_and_adapted_maps(teachers):
    """On the student's 4-row map Up1 is rows [0, 2) and Dn1 rows [2, 4). With identity adapters
    and a map whose row y holds the value y, the 2x2 rows resampled bilinearly to the teachers'
    1x1 maps give the mean of their rows: (0 + 1) / 2 = 0.5 for Up1, (2 + 3) / 2 = 2.5 for Dn1; at
    the rows' own size (2x2) nothing is resampled."""
    model = build_model(_cfg(teachers))
    assert model.map_rows(4) == [(0, 2), (2, 4)]
    assert model.map_rows(8) == [(0, 4), (4, 8)]
    with torch.no_grad():
        for adapter in model.distill["map_adapters"]:
            adapter.weight.copy_(torch.eye(512)[..., None, None])
    rows = torch.arange(4.0).view(1, 1, 4, 1).expand(2, 512, 4, 2)
    up, down = model.adapted_maps(rows, [(1, 1), (1, 1)])
    assert up.shape == down.shape == (2, 512, 1, 1)
    assert torch.all(up == 0.5) and torch.all(down == 2.5)
    up, down = model.adapted_maps(rows, [(2, 2), (2, 2)])
    assert torch.equal(up, rows[:, :, :2]) and torch.equal(down, rows[:, :, 2:])


def test_a_map_too_short_for_the_views(teachers, caplog):
    """A 1-row map gives every view all of it: refused, in map_rows and in training; a 2-row map
    gives Mid1 ([1/4, 3/4)) all its rows too. Different views on identical rows: a warning."""
    model = build_model(_cfg(teachers))
    with pytest.raises(ConfigError, match=r"has 1 row\(s\): view Up1 \(rows \[0, 1/2\).*taller"):
        model.map_rows(1)
    with pytest.raises(ConfigError, match="has 1 row"), EventStorage():
        model.train()(_batch(height=16))  # a 16x32 image: a 1x2 map
    mid = FKDStudent(
        student=model.student,
        teachers=list(model.teachers),
        views=("Mid1", "Mid2"),
        teacher_map_channels=(512, 512),
        student_dim=512,
        student_map_channels=512,
        num_classes=4,
    )
    with pytest.raises(ConfigError, match="view Mid1"):
        mid.map_rows(2)
    with caplog.at_level(logging.WARNING, logger="factorized_kd.student"):
        assert mid.map_rows(8) == [(2, 6), (2, 6)]
    assert "Views Mid1 and Mid2 take the same rows (2, 6)" in caplog.text


def test_training_losses_recomputed_by_hand(teachers):
    """The student's own losses, plus FEAT_WEIGHT * L_feat and MAP_WEIGHT * L_map recomputed from
    the student's backbone and head, the factors and adapters, and each teacher run on
    crop_view of the batch (Up1: the top 32 rows, Dn1: the bottom 32, here at 32x32 as they are)."""
    model = build_model(_cfg(teachers, FEAT_WEIGHT=2.0, MAP_WEIGHT=0.5)).train()
    batch = _batch()
    with EventStorage():
        losses = model(_clone(batch))
    assert set(losses) == {"loss_cls", "loss_triplet", "loss_fkd_feature", "loss_fkd_map"}

    student = model.student
    images = batch["images"]
    with EventStorage():
        feature_map = student.backbone((images - student.pixel_mean) / student.pixel_std)
        outputs = student.heads(feature_map, batch["targets"])
        own = student.losses(outputs, batch["targets"])
    crops = [images[:, :, :32], images[:, :, 32:]]
    t_out = [teacher(crop) for teacher, crop in zip(model.teachers, crops)]
    factors = [head(outputs["features"]) for head in model.distill["feature_factors"]]
    feat = feature_factorization_loss(factors, [t.features for t in t_out])
    adapted = [
        adapter(feature_map[:, :, rows]).mean(dim=(2, 3), keepdim=True)  # 2x2 -> 1x1 bilinear
        for adapter, rows in zip(model.distill["map_adapters"], (slice(0, 2), slice(2, 4)))
    ]
    maps = sum(map_factorization_loss(a, t.feature_map) for a, t in zip(adapted, t_out))
    torch.testing.assert_close(losses["loss_cls"], own["loss_cls"])
    torch.testing.assert_close(losses["loss_triplet"], own["loss_triplet"])
    torch.testing.assert_close(losses["loss_fkd_feature"], 2.0 * feat)
    torch.testing.assert_close(losses["loss_fkd_map"], 0.5 * maps)
    assert 0 < losses["loss_fkd_feature"] < 2.0 * 2 * 2 and 0 < losses["loss_fkd_map"] < 0.5 * 4 * 2

    model.kd_scale = 0.5  # kdreid's warm-up scales every distillation term
    with EventStorage():
        halved = model(_clone(batch))
    torch.testing.assert_close(halved["loss_fkd_map"], 0.25 * maps)


def test_teachers_see_crops_of_the_very_batch(teachers):
    """Each teacher's input is exactly crop_view(batch images, its view, its size), taken before
    the student's preprocessing normalises the batch in place."""
    model = build_model(_cfg(teachers, keys=(("Dn1", 0), ("Up1", 0)))).train()
    seen = []
    for teacher in model.teachers:
        teacher.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].clone()))
    batch = _batch(seed=3)
    with EventStorage():
        model(_clone(batch))
    images = batch["images"]
    assert torch.equal(seen[0], crop_view(images, "Dn1", (32, 32)))
    assert torch.equal(seen[1], crop_view(images, "Up1", (32, 32)))
    assert torch.equal(seen[1], images[:, :, :32])  # the crop of a 64x32 image is 32x32 already


def test_gradients_reach_the_student_and_adapters_not_the_teachers(teachers):
    model = build_model(_cfg(teachers)).train()
    with EventStorage():
        losses = model(_batch())
    (losses["loss_fkd_feature"] + losses["loss_fkd_map"]).backward()
    for name in ("feature_factors", "map_adapters"):
        assert all(
            p.grad is not None and p.grad.abs().sum() > 0 for p in model.distill[name].parameters()
        )
    assert model.student.backbone.conv1.weight.grad.abs().sum() > 0
    for teacher in model.teachers:
        assert all(p.grad is None and not p.requires_grad for p in teacher.model.parameters())
        assert not teacher.model.training


def _head_hooks(model):
    return [hook.__name__ for hook in model.student.heads._forward_hooks.values()]


@pytest.mark.slow
def test_zero_weights_skip_their_modules_and_work(teachers):
    """MAP_WEIGHT 0: no adapters (nor map hook); FEAT_WEIGHT 0: no factor heads, no feature term;
    both 0: the student's own losses, and the teachers are not even run."""
    feature_only = build_model(_cfg(teachers, MAP_WEIGHT=0.0))
    assert set(feature_only.distill) == {"feature_factors"}
    assert "_keep_head_input" not in _head_hooks(feature_only)
    map_only = build_model(_cfg(teachers, FEAT_WEIGHT=0.0)).train()
    assert set(map_only.distill) == {"map_adapters"}
    assert "_keep_head_input" in _head_hooks(map_only)
    with EventStorage():
        assert set(map_only(_batch())) == {"loss_cls", "loss_triplet", "loss_fkd_map"}
    none = build_model(_cfg(teachers, FEAT_WEIGHT=0.0, MAP_WEIGHT=0.0)).train()
    calls = []
    none.teachers[0].register_forward_pre_hook(lambda *args: calls.append(1))
    with EventStorage():
        assert set(none(_batch())) == {"loss_cls", "loss_triplet"}
    assert not calls and len(none.distill) == 0


@pytest.mark.slow
def test_checkpoint_and_deployment_are_the_plain_students(teachers):
    """State-dict keys minus ``distill.`` are the plain Baseline's; the plain model loads the FD
    checkpoint (skipping the training-only keys) and then gives the same descriptors; the deployed
    model has the plain student's parameter count; teachers hold no parameters of the model."""
    cfg = _cfg(teachers)
    model = build_model(cfg)
    plain = _plain(cfg)
    keys = set(model.state_dict())
    training_only = {k for k in keys if k.startswith("distill.")}
    assert training_only == {
        "distill.feature_factors.0.weight",
        "distill.feature_factors.1.weight",
        "distill.map_adapters.0.weight",
        "distill.map_adapters.1.weight",
    }
    assert keys - training_only == set(plain.state_dict())

    skipped = fit_state_dict(plain, model.state_dict(), "FD student")
    assert set(skipped) == training_only
    images = _batch()["images"]
    torch.testing.assert_close(
        model.eval()({"images": images.clone()}), plain.eval()({"images": images.clone()})
    )

    def count(m):
        return sum(p.numel() for p in m.parameters())

    assert model.deployed_model() is model.student
    assert count(model.deployed_model()) == count(plain)
    assert count(model) == count(plain) + count(model.distill)
    resumed = build_model(cfg)
    resumed.load_state_dict(model.state_dict())  # strict: --resume restores the adapters too
    assert torch.equal(
        resumed.distill["map_adapters"][0].weight, model.distill["map_adapters"][0].weight
    )


@pytest.mark.slow
def test_three_training_steps(teachers):
    """Three SGD steps on one batch: finite losses, the factorization terms go down, the student
    and adapters change, the teachers do not."""
    torch.manual_seed(0)
    model = build_model(_cfg(teachers)).train()
    teacher_before = [p.clone() for p in model.teachers[0].model.parameters()]
    adapter_before = model.distill["map_adapters"][0].weight.clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.0)
    batch, history = _batch(), []
    for _ in range(3):
        with EventStorage():
            losses = model(_clone(batch))
        assert all(torch.isfinite(v) for v in losses.values())
        history.append((losses["loss_fkd_feature"] + losses["loss_fkd_map"]).item())
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
    assert history[-1] < history[0]
    assert not torch.equal(model.distill["map_adapters"][0].weight, adapter_before)
    assert all(
        torch.equal(a, b) for a, b in zip(teacher_before, model.teachers[0].model.parameters())
    )


def _teacher_file(tmp_path, name, view="Up1", **changes):
    cfg = _teacher_cfg(view)
    for key, value in changes.items():
        node, leaf = key.rsplit(".", 1)
        container = cfg
        for part in node.split("."):
            container = container[part]
        container[leaf] = value
    return _write_config(cfg, tmp_path / f"{name}.yaml")


def test_bad_input(teachers, tmp_path):
    weights = teachers["Up1", 0][1]

    def configured(configs, checkpoints, **fkd):
        cfg = _cfg(teachers, **fkd)
        cfg.KD.MODEL_CONFIG, cfg.KD.MODEL_WEIGHTS = configs, checkpoints
        return cfg

    def check(configs, checkpoints, **fkd):  # stage 1: the config, the teachers' configs read
        check_config(configured(configs, checkpoints, **fkd))

    def build(configs, checkpoints, **fkd):  # the loader: the checkpoints read
        return build_model(configured(configs, checkpoints, **fkd))

    with pytest.raises(ConfigError, match="no teacher.*KD.MODEL_CONFIG"):
        check([], [])
    config = teachers["Up1", 0][0]
    with pytest.raises(ConfigError, match=r"names 2 config\(s\) but KD.MODEL_WEIGHTS 1"):
        check([config, config], [weights])
    with pytest.raises(WeightsError, match="has no checkpoint"):
        build([config], [""])
    no_view = _teacher_file(tmp_path, "no_view", view="")
    with pytest.raises(ConfigError, match=r"no view \(its MODEL.FKD.VIEW is ''\).*Holistic"):
        check([no_view], [weights])
    wrong_size = _teacher_file(tmp_path, "size", **{"INPUT.SIZE_TEST": [48, 48]})
    with pytest.raises(
        ConfigError, match=r"size.yaml': MODEL.FKD.VIEW Up1.*INPUT.SIZE_TEST is \[48"
    ):
        check([wrong_size], [weights])
    reading = _teacher_file(tmp_path, "reading", **{"MODEL.FKD.VIEW_READING": "boundaries"})
    with pytest.raises(ConfigError, match="'boundaries' but the student reads views as 'stripes'"):
        check([reading], [weights])
    with pytest.raises(ConfigError, match="FEAT_WEIGHT must be >= 0"):
        check([config], [weights], FEAT_WEIGHT=-1.0)
    with pytest.raises(ConfigError, match="FACTOR_MODE 'pca' is not one of: linear, split"):
        check([config], [weights], FACTOR_MODE="pca")
    with pytest.raises(ConfigError, match="student is holistic.*'Up1'"):
        check([config], [weights], VIEW="Up1", VIEW_SIZE=[64, 32])
    check([config], [weights])  # and what the checks pass builds
    assert build([config], [weights]).views == ("Up1",)


def test_building_blocks_refuse_bad_arguments(teachers):
    """FKDStudent itself (no config): lengths, factor mode, weights, split dims."""
    model = build_model(_cfg(teachers, keys=(("Up1", 0), ("Dn1", 256))))
    args = dict(
        student=model.student,
        teachers=list(model.teachers),
        views=("Up1", "Dn1"),
        teacher_map_channels=(512, 512),
        student_dim=512,
        student_map_channels=512,
        num_classes=4,
    )
    for changes, message in [
        ({"views": ("Up1",)}, r"2 teacher\(s\), 1 view\(s\), 2 map width\(s\)"),
        ({"factor_mode": "pca"}, "factor_mode must be one of linear, split; got 'pca'"),
        ({"map_weight": -1.0}, "map_weight must be >= 0"),
        ({"factor_mode": "split"}, r"dims \[512, 256\], which add up to 768, not to student_dim"),
    ]:
        with pytest.raises(ValueError, match=message):
            FKDStudent(**{**args, **changes})


def test_eval_only_builds_the_student_alone_and_loads_an_fd_checkpoint(teachers):
    """--eval-only with the FD config: the core drops the training-only teachers (FKDStudent does
    not declare teachers_at_inference), so no teacher, factor head or adapter is built, and an FD
    checkpoint loads with its distill. keys skipped; the descriptor is the trained student's."""
    trained = build_model(_cfg(teachers))
    cfg = _cfg(teachers)
    check_config(cfg, training=False)
    inference_config(cfg)
    assert cfg.KD.MODEL_CONFIG == [] and cfg.KD.MODEL_WEIGHTS == []
    model = build_model(cfg)
    assert len(model.teachers) == 0
    assert not any(k.startswith("distill.") for k in model.state_dict())
    skipped = fit_state_dict(model, trained.state_dict(), "FD student")
    assert skipped and all(k.startswith("distill.") for k in skipped)
    images = _batch()["images"]
    torch.testing.assert_close(
        model.eval()({"images": images.clone()}), trained.eval()({"images": images.clone()})
    )
    with pytest.raises(ConfigError, match="no teacher to learn from"), EventStorage():
        model.train()(_batch())


def test_a_holistic_teacher_sees_the_whole_image(teachers, tmp_path):
    """MODEL.FKD.VIEW Holistic: the whole image resized to its input, all the map's rows."""
    holistic = _teacher_file(tmp_path, "holistic", view="Holistic")
    cfg = _cfg(teachers)
    cfg.KD.MODEL_CONFIG = [holistic, teachers["Dn1", 0][0]]
    model = build_model(cfg)
    assert model.views == ("Holistic", "Dn1")
    assert model.map_rows(4) == [(0, 4), (2, 4)]
    crops = model.teacher_inputs(_batch()["images"])
    torch.testing.assert_close(
        crops[0], F.interpolate(_batch()["images"], size=(32, 32), mode="bicubic", antialias=True)
    )
