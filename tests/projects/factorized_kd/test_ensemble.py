"""FactorizedKD teacher ensemble (one model made of frozen partial teachers) and its command line
(projects/FactorizedKD/evaluate_ensemble.py; benchmarks/fkd_teachers.py, which trains the teachers,
is tested in tests/benchmarks/test_fkd_teachers.py)."""

import functools
import json
import os
import sys

import pytest
import torch
import torch.nn.functional as F
from fastreid.modeling import build_model
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY

from factorized_kd import FKDEnsemble, evaluate_ensemble
from kdreid.benchmark import count_parameters, profile_model
from kdreid.config import get_cfg, merge_from_file, merge_from_list
from kdreid.engine import evaluate, inference_config
from kdreid.engine.validation import check_config
from kdreid.errors import ConfigError, WeightsError
from kdreid.meta_arch import MetaArchitecture, deployed_model

from ...conftest import REPO

CONFIGS = os.path.join(REPO, "configs", "FactorizedKD")
TINY_TEACHER = os.path.join(CONFIGS, "Synthetic", "tiny_teacher.yml")
TINY_ENSEMBLE = os.path.join(CONFIGS, "Synthetic", "tiny_ensemble.yml")
TINY = os.path.join(REPO, "configs", "Synthetic", "tiny.yml")

# The members: (name, base config, view, side of the square view, embedding dim; 0 = 512).
# A holistic member (a plain FastReID config, MODEL.FKD.VIEW "") sees the whole 64x32 image.
MEMBERS = (
    ("Up1", TINY_TEACHER, "Up1", 32, 0),
    ("Dn1", TINY_TEACHER, "Dn1", 24, 64),
    ("Holistic", TINY, "", 0, 0),
)
# Rows of each member's view in a 64-row image, by hand: Up1 [0, 1/2), Dn1 [1/2, 1), all.
ROWS = {"Up1": (0, 32), "Dn1": (32, 64), "Holistic": (0, 64)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One thread: on a busy 2-core machine a second one makes these tiny forwards 5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _member_cfg(base, view, side, dim):
    cfg = get_cfg()
    merge_from_file(cfg, base)
    if view:
        size = [side, side]
        opts = ["MODEL.FKD.VIEW", view, "MODEL.FKD.VIEW_SIZE", str(size)]
        merge_from_list(cfg, [*opts, "INPUT.SIZE_TRAIN", str(size), "INPUT.SIZE_TEST", str(size)])
    cfg.MODEL.HEADS.EMBEDDING_DIM = dim
    cfg.MODEL.HEADS.NUM_CLASSES = 5
    cfg.MODEL.DEVICE = "cpu"
    return cfg


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """Random-init tiny teachers saved as a run saves them: ``[(config.yaml, model_final.pth)]``."""
    root = tmp_path_factory.mktemp("fkd_members")
    files = []
    for seed, (name, base, view, side, dim) in enumerate(MEMBERS):
        torch.manual_seed(seed)
        cfg = _member_cfg(base, view, side, dim)
        model = build_model(cfg)
        # Non-trivial BN statistics, so that the eval-mode forward is not a plain identity.
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.BatchNorm1d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
        (root / name).mkdir()
        config, weights = root / name / "config.yaml", root / name / "model_final.pth"
        config.write_text(cfg.dump())  # as FastReID's default_setup saves a run's config
        torch.save({"model": model.state_dict()}, weights)
        files.append((str(config), str(weights)))
    return files


def _ensemble_cfg(members, opts=(), weights=None):
    """The tiny ensemble of ``members``' configs, with their weights or ``weights``."""
    configs = [c for c, _ in members]
    weights = [w for _, w in members] if weights is None else weights
    cfg = get_cfg()
    merge_from_file(cfg, TINY_ENSEMBLE)
    merge_from_list(cfg, ["KD.MODEL_CONFIG", repr(configs),
                          "KD.MODEL_WEIGHTS", repr(weights),
                          "MODEL.DEVICE", "cpu", *opts])  # fmt: skip
    return cfg


@pytest.fixture(scope="module")
def ensemble(members):
    return build_model(_ensemble_cfg(members))


def _images(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 255 * torch.rand(n, 3, 64, 32, generator=g)


def _reference(members, images):
    """Each member rebuilt from its files as a plain FastReID model, fed its rows of ``images``
    resized by hand (antialiased bicubic) to its input size; features normalised, concatenated."""
    blocks = []
    for (name, *_), (config, weights) in zip(MEMBERS, members):
        cfg = get_cfg()
        merge_from_file(cfg, config)
        model = build_model(cfg)
        model.load_state_dict(torch.load(weights, weights_only=True)["model"])
        model.eval()
        start, stop = ROWS[name]
        crop = images[:, :, start:stop]
        size = tuple(cfg.INPUT.SIZE_TEST)
        if crop.shape[-2:] != size:
            crop = F.interpolate(crop, size=size, mode="bicubic", antialias=True)
        with torch.no_grad():
            blocks.append(F.normalize(model(crop.clone()), dim=1))
    return torch.cat(blocks, dim=1)


def test_importing_registers_the_ensemble():
    assert META_ARCH_REGISTRY.get("FKDEnsemble") is FKDEnsemble


def test_the_contract_keeps_the_members_for_evaluation(members):
    """Evaluation only, no MODEL.WEIGHTS, and its KD.MODEL_CONFIG models are the model: the
    inference config keeps them (a distiller's are dropped)."""
    assert issubclass(FKDEnsemble, MetaArchitecture)
    assert not FKDEnsemble.trainable and not FKDEnsemble.needs_weights
    assert FKDEnsemble.teachers_at_inference and FKDEnsemble.kd_scale is None
    cfg = _ensemble_cfg(members)
    check_config(cfg, training=False)
    assert inference_config(cfg).KD.MODEL_CONFIG == [c for c, _ in members]
    with pytest.raises(ConfigError, match="evaluation-only model: run it with --eval-only"):
        check_config(_ensemble_cfg(members))


def test_descriptor_is_the_concatenation_of_normalised_member_features(members, ensemble):
    """Descriptor = [n(t_Up1(rows 0-31 -> 32x32)), n(t_Dn1(rows 32-63 -> 24x24)), n(t_H(all))]."""
    images = _images()
    before = images.clone()
    out = ensemble({"images": images, "targets": torch.zeros(4)})
    assert torch.equal(images, before)  # the loader's batch is not modified
    assert ensemble.views == ["Up1", "Dn1", "Holistic"]
    assert ensemble.feature_dims == [512, 64, 512]
    assert out.shape == (4, 512 + 64 + 512)
    torch.testing.assert_close(out, _reference(members, images), atol=1e-4, rtol=1e-4)
    for block in out.split(ensemble.feature_dims, dim=1):
        torch.testing.assert_close(block.norm(dim=1), torch.ones(4))
    torch.testing.assert_close(ensemble(images), out)  # a bare tensor works too


def test_cosine_is_the_mean_of_member_cosines(ensemble):
    """|e| = sqrt(K) and e.e' = sum_k cos_k, so cos(e, e') = mean_k cos_k (K = 3)."""
    out = ensemble(_images(2, seed=1))
    blocks = out.split(ensemble.feature_dims, dim=1)
    member_cosines = torch.stack([F.cosine_similarity(b[0], b[1], dim=0) for b in blocks])
    assert out.norm(dim=1).allclose(torch.full((2,), 3**0.5))
    assert F.cosine_similarity(out[0], out[1], dim=0).item() == pytest.approx(
        member_cosines.mean().item(), abs=1e-5
    )


def test_no_weights_of_its_own_and_the_deployed_model_counts_the_members(members, ensemble):
    assert ensemble.state_dict() == {} and list(ensemble.parameters()) == []
    deployed = deployed_model(ensemble)
    expected = sum(count_parameters(t.model) for t in ensemble.teachers)
    assert count_parameters(deployed) == expected > 0
    images = _images(2)
    torch.testing.assert_close(deployed(images), ensemble(images))


def test_training_is_refused(ensemble):
    with pytest.raises(ConfigError, match="evaluation model.*fkd_teachers.py"):
        ensemble.train()
    assert not ensemble.training
    ensemble.eval()  # what inference_on_dataset does, before and after
    ensemble.train(False)


def _bad_member(members, tmp_path, view):
    config = tmp_path / "bad.yaml"
    config.write_text(open(members[0][0]).read().replace("VIEW: Up1", f"VIEW: {view}"))
    return str(config)


@pytest.mark.parametrize(
    "case, error, message",
    [
        ("none", ConfigError, "no member.*KD.MODEL_CONFIG"),
        ("fewer weights", ConfigError, "KD.MODEL_CONFIG names 3 .*KD.MODEL_WEIGHTS 2"),
        ("empty weights", WeightsError, r"KD.MODEL_WEIGHTS\[1\] is empty.*config.yaml"),
        ("missing weights", WeightsError, "nowhere.pth' does not exist"),
        ("unknown view", ConfigError, "bad.yaml.*'Up3' is not a view"),
    ],
)
def test_bad_members_are_named(members, tmp_path, case, error, message):
    """The config's faults before anything is built (stage 1, the members' configs read); the
    checkpoints' when the members are built."""
    weights = [w for _, w in members]
    if case == "none":
        members, weights = [], []
    elif case == "fewer weights":
        weights = weights[:2]
    elif case == "empty weights":
        weights[1] = ""
    elif case == "missing weights":
        weights[2] = str(tmp_path / "nowhere.pth")
    else:
        members = [(_bad_member(members, tmp_path, "Up3"), None), *members[1:]]
    cfg = _ensemble_cfg(members, weights=weights)
    if error is ConfigError:
        with pytest.raises(error, match=message):
            check_config(cfg, training=False)
        return
    check_config(cfg, training=False)  # the config itself is sound
    with pytest.raises(error, match=message):
        build_model(cfg)


def test_members_sharing_a_view_are_flagged(members, caplog):
    """The shared teacher.yml names one view (Up1): its runs' config.yaml files name theirs."""
    model = build_model(_ensemble_cfg([members[0], members[0]]))
    assert model.views == ["Up1", "Up1"]
    assert "Several ensemble members see the view(s) Up1" in caplog.text


@pytest.fixture
def fast_profile(monkeypatch):
    """The speed record with the fewest timed passes (3), not 2 s of timing per figure."""
    fast = functools.partial(profile_model, warmup=0, time_budget_s=0.0, batch_size=4)
    monkeypatch.setattr(evaluate, "profile_model", fast)


@pytest.mark.slow
def test_evaluate_ensemble_on_synthreid_tiny(members, fastreid_root, fast_profile, tmp_path):
    cfg = _ensemble_cfg(members, ["OUTPUT_DIR", str(tmp_path), "KDREID.PROGRESS", "False"])
    cfg.freeze()
    results = evaluate_ensemble(cfg, config_file=TINY_ENSEMBLE)
    assert 0 <= results["mAP"] <= 100 and 0 <= results["Rank-1"] <= 100
    with open(tmp_path / "speed_accuracy.json") as f:
        record = json.load(f)
    assert record["name"] == "tiny_ensemble" and record["weights"] is None
    assert record["feature_dim"] == 512 + 64 + 512 and record["params"] > 3 * 10**6
    assert record["metrics"]["mAP"] == pytest.approx(results["mAP"])
    assert [t["view"] for t in record["teachers"]] == ["Up1", "Dn1", "Holistic"]
    assert [t["weights"] for t in record["teachers"]] == [w for _, w in members]


def test_evaluate_ensemble_refuses_other_models_and_model_weights(members):
    with pytest.raises(ConfigError, match="not used by FKDEnsemble"):
        check_config(_ensemble_cfg(members, ["MODEL.WEIGHTS", "model.pth"]), training=False)
    cfg = _ensemble_cfg(members, ["MODEL.META_ARCHITECTURE", "Baseline"])
    with pytest.raises(ConfigError, match="'Baseline'.*FKDEnsemble configs"):
        evaluate_ensemble(cfg)


@pytest.mark.parametrize("dataset", ["Market1501", "DukeMTMC"])
def test_dataset_configs_evaluate_holistic_images(dataset):
    cfg = get_cfg()
    merge_from_file(cfg, os.path.join(CONFIGS, dataset, "ensemble.yml"))
    assert cfg.MODEL.META_ARCHITECTURE == "FKDEnsemble"
    assert list(cfg.INPUT.SIZE_TEST) == [256, 128] and cfg.DATASETS.TESTS == (dataset,)
    assert cfg.KD.MODEL_CONFIG == [] and cfg.MODEL.WEIGHTS == ""  # given on the command line


def test_ensemble_cli_builds_through_the_plugin_import(load_script):
    """The CLI imports the package (which registers FKDEnsemble) and guards its entry point."""
    module = load_script("projects/FactorizedKD/evaluate_ensemble.py")
    assert module.evaluate_ensemble is evaluate_ensemble
    assert sys.modules["factorized_kd"].FKDEnsemble is FKDEnsemble
