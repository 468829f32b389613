"""FactorizedKD teacher ensemble (one model made of frozen partial teachers) and the command that
trains the teachers one after another."""

import functools
import importlib.util
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
from kdreid.engine import defaults
from kdreid.errors import ConfigError, StaleRunError, WeightsError
from kdreid.runs import main_of_runs

from ...conftest import REPO

FKD = os.path.join(REPO, "projects", "FactorizedKD")
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
    merge_from_list(cfg, ["MODEL.FKD.TEACHERS", repr(configs),
                          "MODEL.FKD.TEACHER_WEIGHTS", repr(weights),
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
    deployed = defaults.deployed_model(ensemble)
    expected = sum(count_parameters(t.model) for t in ensemble.teachers)
    assert count_parameters(deployed) == expected > 0
    images = _images(2)
    torch.testing.assert_close(deployed(images), ensemble(images))


def test_training_is_refused(ensemble):
    with pytest.raises(ConfigError, match="evaluation model.*train_teachers.py"):
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
        ("none", ConfigError, "no member.*MODEL.FKD.TEACHERS"),
        ("fewer weights", ConfigError, "TEACHERS names 3 .*TEACHER_WEIGHTS 2"),
        ("empty weights", WeightsError, r"TEACHER_WEIGHTS\[1\] is empty.*config.yaml"),
        ("missing weights", WeightsError, "nowhere.pth' does not exist"),
        ("unknown view", ConfigError, "bad.yaml.*'Up3' is not a view"),
    ],
)
def test_bad_members_are_named(members, tmp_path, case, error, message):
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
    with pytest.raises(error, match=message):
        build_model(_ensemble_cfg(members, weights=weights))


def test_members_sharing_a_view_are_flagged(members, caplog):
    """The shared teacher.yml names one view (Up1): its runs' config.yaml files name theirs."""
    model = build_model(_ensemble_cfg([members[0], members[0]]))
    assert model.views == ["Up1", "Up1"]
    assert "Several ensemble members see the view(s) Up1" in caplog.text


@pytest.fixture
def fast_profile(monkeypatch):
    """The speed record with the fewest timed passes (3), not 2 s of timing per figure."""
    fast = functools.partial(profile_model, warmup=0, time_budget_s=0.0, batch_size=4)
    monkeypatch.setattr(defaults, "profile_model", fast)


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
        evaluate_ensemble(_ensemble_cfg(members, ["MODEL.WEIGHTS", "model.pth"]))
    cfg = _ensemble_cfg(members, ["MODEL.META_ARCHITECTURE", "Baseline"])
    with pytest.raises(ConfigError, match="'Baseline'.*FKDEnsemble configs"):
        evaluate_ensemble(cfg)


@pytest.mark.parametrize("dataset", ["Market1501", "DukeMTMC"])
def test_dataset_configs_evaluate_holistic_images(dataset):
    cfg = get_cfg()
    merge_from_file(cfg, os.path.join(CONFIGS, dataset, "ensemble.yml"))
    assert cfg.MODEL.META_ARCHITECTURE == "FKDEnsemble"
    assert list(cfg.INPUT.SIZE_TEST) == [256, 128] and cfg.DATASETS.TESTS == (dataset,)
    assert cfg.MODEL.FKD.TEACHERS == [] and cfg.MODEL.WEIGHTS == ""  # given on the command line


# --- train_teachers.py -------------------------------------------------------------------------

# A train_net.py that trains nothing: it logs its arguments, and writes what a run writes.
FAKE_TRAIN_NET = """\
import json, os, sys

args = sys.argv[1:]
opts = {{key: args[args.index(key) + 1] for key in args if key.isupper()}}
out = opts["OUTPUT_DIR"]
os.makedirs(out, exist_ok=True)
with open({calls!r}, "a") as f:
    f.write(json.dumps(args) + "\\n")
if "--eval-only" in args:
    record = {{"name": opts["KDREID.NAME"], "metrics": {{"mAP": 50.0, "Rank-1": 70.0}}}}
    with open(os.path.join(out, "speed_accuracy.json"), "w") as f:
        json.dump(record, f)
else:
    config = args[args.index("--config-file") + 1]
    with open(os.path.join(out, "config.yaml"), "w") as f:
        f.write(f"_BASE_: {{config}}\\nMODEL:\\n  FKD:\\n    VIEW: {{opts['MODEL.FKD.VIEW']}}\\n")
    open(os.path.join(out, "model_final.pth"), "wb").close()
"""


@pytest.fixture
def train_teachers(tmp_path, monkeypatch):
    """The script as a module, its train_net.py replaced by the fake; ``calls()`` lists the
    commands it ran."""
    calls = tmp_path / "calls.jsonl"
    fake = tmp_path / "train_net.py"
    fake.write_text(FAKE_TRAIN_NET.format(calls=str(calls)))
    spec = importlib.util.spec_from_file_location("fkd_train_teachers", f"{FKD}/train_teachers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # the __main__ guard keeps it from running
    monkeypatch.setattr(module, "TRAIN_NET", str(fake))
    module.calls = lambda: [json.loads(x) for x in calls.read_text().splitlines()]
    calls.write_text("")
    return module


def test_train_teachers_runs_each_view_once(train_teachers, tmp_path):
    out = str(tmp_path / "runs")
    runs = train_teachers.train_teachers(
        TINY_TEACHER, out, ("Up1", "Dn2"), seed=3, opts=["SOLVER.MAX_EPOCH", "1"], echo=None,
        train_net=train_teachers.TRAIN_NET,
    )  # fmt: skip
    calls = train_teachers.calls()
    common = ["KDREID.PROGRESS", "False", "KDREID.SEED", "3"]
    assert calls == [
        ["--config-file", TINY_TEACHER, "--resume", "OUTPUT_DIR", f"{out}/Up1", *common,
         "MODEL.FKD.VIEW", "Up1", "SOLVER.MAX_EPOCH", "1"],
        ["--config-file", TINY_TEACHER, "--eval-only", "MODEL.FKD.VIEW", "Up1",
         "SOLVER.MAX_EPOCH", "1", "MODEL.WEIGHTS", f"{out}/Up1/model_final.pth",
         "OUTPUT_DIR", f"{out}/Up1/eval", "KDREID.NAME", "fkd_teacher_Up1", *common],
        ["--config-file", TINY_TEACHER, "--resume", "OUTPUT_DIR", f"{out}/Dn2", *common,
         "MODEL.FKD.VIEW", "Dn2", "SOLVER.MAX_EPOCH", "1"],
        ["--config-file", TINY_TEACHER, "--eval-only", "MODEL.FKD.VIEW", "Dn2",
         "SOLVER.MAX_EPOCH", "1", "MODEL.WEIGHTS", f"{out}/Dn2/model_final.pth",
         "OUTPUT_DIR", f"{out}/Dn2/eval", "KDREID.NAME", "fkd_teacher_Dn2", *common],
    ]  # fmt: skip
    assert list(runs) == ["Up1", "Dn2"] and runs["Dn2"].record["metrics"]["mAP"] == 50.0
    # Again, after Dn2 was cut short (no model_final.pth, no record): only Dn2 runs, resuming.
    os.remove(f"{out}/Dn2/model_final.pth")
    os.remove(f"{out}/Dn2/eval/speed_accuracy.json")
    train_teachers.train_teachers(TINY_TEACHER, out, ("Up1", "Dn2"), seed=3,
                                  opts=["SOLVER.MAX_EPOCH", "1"], echo=None,
                                  train_net=train_teachers.TRAIN_NET)  # fmt: skip
    again = train_teachers.calls()[4:]
    assert [(c[c.index("MODEL.FKD.VIEW") + 1], "--resume" in c) for c in again] == [
        ("Dn2", True),
        ("Dn2", False),
    ]
    # With another seed, the folders are not theirs to reuse: refused, nothing runs.
    with pytest.raises(StaleRunError, match=r"Up1' holds a run made with other settings: seed 3"):
        train_teachers.train_teachers(TINY_TEACHER, out, ("Up1", "Dn2"), seed=0,
                                      opts=["SOLVER.MAX_EPOCH", "1"], echo=None,
                                      train_net=train_teachers.TRAIN_NET)  # fmt: skip
    assert len(train_teachers.calls()) == 6


@pytest.mark.parametrize("views", [("Up1", "Up3"), ("Up1", "Up1"), ("Holistic",)])
def test_train_teachers_refuses_bad_views(train_teachers, tmp_path, views):
    with pytest.raises(ValueError, match="distinct partial views"):
        train_teachers.train_teachers(TINY_TEACHER, str(tmp_path), views, echo=None)
    assert train_teachers.calls() == []


def test_train_teachers_command_writes_the_ensemble_config(train_teachers, tmp_path, capsys):
    out = tmp_path / "runs"
    argv = ["--config-file", TINY_TEACHER, "--output-dir", str(out), "--ensemble-config",
            TINY_ENSEMBLE, "--views", "Mid1", "Dn1", "SOLVER.MAX_EPOCH", "1"]  # fmt: skip
    assert train_teachers.main(argv) == 0  # the options after the views list are options
    assert len(train_teachers.calls()) == 4
    assert all(c[-2:] == ["SOLVER.MAX_EPOCH", "1"] for c in train_teachers.calls()[::2])
    printed = capsys.readouterr().out
    assert f"--config-file {out}/ensemble.yml OUTPUT_DIR {out}/ensemble" in printed
    cfg = get_cfg()
    merge_from_file(cfg, str(out / "ensemble.yml"))
    assert cfg.MODEL.META_ARCHITECTURE == "FKDEnsemble"
    assert cfg.MODEL.FKD.TEACHERS == [f"{out}/Mid1/config.yaml", f"{out}/Dn1/config.yaml"]
    assert cfg.MODEL.FKD.TEACHER_WEIGHTS == [f"{out}/{v}/model_final.pth" for v in ("Mid1", "Dn1")]
    view_cfg = get_cfg()
    merge_from_file(view_cfg, cfg.MODEL.FKD.TEACHERS[1])  # each teacher's config holds its view
    assert view_cfg.MODEL.FKD.VIEW == "Dn1"
    # The options also work on the command line (when no ensemble config is at hand).
    options = train_teachers.ensemble_options(str(out), ["Mid1", "Dn1"])
    merge_from_list(cfg, options)
    assert cfg.MODEL.FKD.TEACHERS[0] == f"{out}/Mid1/config.yaml"
    assert train_teachers.main(argv) == 0 and len(train_teachers.calls()) == 4  # all done


def test_a_missing_ensemble_config_is_refused_before_training(train_teachers, tmp_path, capsys):
    """Given, but not there: a usage error now, not a note after every teacher trained."""
    out = tmp_path / "runs"
    argv = ["--config-file", TINY_TEACHER, "--output-dir", str(out), "--ensemble-config",
            str(tmp_path / "nope.yml"), "--views", "Up1"]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        train_teachers.main(argv)
    assert exc.value.code == 2
    assert f"--ensemble-config '{tmp_path / 'nope.yml'}' does not exist" in capsys.readouterr().err
    assert train_teachers.calls() == [] and not out.exists()


def test_the_default_ensemble_config_is_the_teachers_own(train_teachers, tmp_path, capsys):
    """teacher.yml: ensemble.yml; teacher_small.yml: ensemble_small.yml; tiny_teacher.yml:
    tiny_ensemble.yml, each in the teacher's folder."""
    synthetic = os.path.join(CONFIGS, "Synthetic")
    for teacher, ensemble in [
        (os.path.join(CONFIGS, "Market1501", "teacher.yml"), "ensemble.yml"),
        (os.path.join(synthetic, "teacher_small.yml"), "ensemble_small.yml"),
        (TINY_TEACHER, "tiny_ensemble.yml"),
    ]:
        expected = os.path.join(os.path.dirname(teacher), ensemble)
        assert train_teachers.default_ensemble_config(teacher) == expected
        assert os.path.isfile(expected)
    out = tmp_path / "runs"
    argv = ["--config-file", TINY_TEACHER, "--output-dir", str(out), "--views", "Up1"]
    assert train_teachers.main(argv) == 0
    with open(out / "ensemble.yml") as f:
        assert f"_BASE_: {TINY_ENSEMBLE}\n" in f.read()
    # A teacher config with no ensemble config beside it: the ones that are there are named.
    own = tmp_path / "configs" / "my_teacher.yml"
    own.parent.mkdir()
    own.write_text(f"_BASE_: {TINY_TEACHER}\n")
    (own.parent / "other_ensemble.yml").write_text(f"_BASE_: {TINY_ENSEMBLE}\n")
    capsys.readouterr()
    argv = ["--config-file", str(own), "--output-dir", str(tmp_path / "own"), "--views", "Up1"]
    assert train_teachers.main(argv) == 0
    printed = capsys.readouterr().out
    note = f"No ensemble config at {own.parent / 'my_ensemble.yml'} (ensemble configs in "
    assert (
        printed.startswith(note)
        and "other_ensemble.yml): give one with --ensemble-config" in printed
    )
    assert "--config-file '<ensemble config>' MODEL.FKD.TEACHERS" in printed


@pytest.mark.parametrize("sub", ["", "sub"])
def test_an_output_dir_that_cannot_be_written_is_one_line(train_teachers, tmp_path, capsys, sub):
    """Refused before the first teacher trains (the folder: a file, or under one)."""
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    argv = [
        "--config-file",
        TINY_TEACHER,
        "--output-dir",
        str(a_file / sub) if sub else str(a_file),
    ]
    with pytest.raises(SystemExit) as exc:
        main_of_runs(train_teachers.main, argv)
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and err.startswith("error: --output-dir: Cannot write")
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert train_teachers.calls() == [] and out == ""


def test_ensemble_cli_builds_through_the_plugin_import():
    """The CLI imports the package (which registers FKDEnsemble) and guards its entry point."""
    spec = importlib.util.spec_from_file_location("fkd_eval", f"{FKD}/evaluate_ensemble.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.evaluate_ensemble is evaluate_ensemble
    assert sys.modules["factorized_kd"].FKDEnsemble is FKDEnsemble
