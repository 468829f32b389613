"""benchmarks/fkd_teachers.py: the command that trains FactorizedKD's partial teachers one after
another (a fake train_net.py here: it trains nothing, it logs its arguments) and writes the
ensemble config that puts them together."""

import json
import os

import pytest

from harness.runs import StaleRunError, main_of_runs
from kdreid.config import get_cfg, merge_from_file, merge_from_list

from ..conftest import REPO

CONFIGS = os.path.join(REPO, "configs", "FactorizedKD")
TINY_TEACHER = os.path.join(CONFIGS, "Synthetic", "tiny_teacher.yml")
TINY_ENSEMBLE = os.path.join(CONFIGS, "Synthetic", "tiny_ensemble.yml")

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
def train_teachers(load_script, tmp_path, monkeypatch):
    """The script as a module, its train_net.py replaced by the fake; ``calls()`` lists the
    commands it ran."""
    calls = tmp_path / "calls.jsonl"
    fake = tmp_path / "train_net.py"
    fake.write_text(FAKE_TRAIN_NET.format(calls=str(calls)))
    module = load_script("benchmarks/fkd_teachers.py")  # the __main__ guard keeps it from running
    monkeypatch.setattr(module, "TRAIN_NET", str(fake))

    def read_calls():
        return [json.loads(x) for x in calls.read_text().splitlines()]

    monkeypatch.setattr(module, "calls", read_calls, raising=False)
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
    assert cfg.KD.MODEL_CONFIG == [f"{out}/Mid1/config.yaml", f"{out}/Dn1/config.yaml"]
    assert cfg.KD.MODEL_WEIGHTS == [f"{out}/{v}/model_final.pth" for v in ("Mid1", "Dn1")]
    view_cfg = get_cfg()
    merge_from_file(view_cfg, cfg.KD.MODEL_CONFIG[1])  # each teacher's config holds its view
    assert view_cfg.MODEL.FKD.VIEW == "Dn1"
    # The options also work on the command line (when no ensemble config is at hand).
    options = train_teachers.ensemble_options(str(out), ["Mid1", "Dn1"])
    merge_from_list(cfg, options)
    assert cfg.KD.MODEL_CONFIG[0] == f"{out}/Mid1/config.yaml"
    assert train_teachers.main(argv) == 0 and len(train_teachers.calls()) == 4  # all done


def test_a_missing_ensemble_config_is_refused_before_training(train_teachers, tmp_path, capsys):
    """Given, but not there: a usage error now, not a note after every teacher trained."""
    out = tmp_path / "runs"
    argv = ["--config-file", TINY_TEACHER, "--output-dir", str(out), "--ensemble-config",
            str(tmp_path / "nope.yml"), "--views", "Up1"]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        train_teachers.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err  # argparse's wording: "argument --flag: <message>"
    assert f"argument --ensemble-config: '{tmp_path / 'nope.yml'}' does not exist" in err
    assert train_teachers.calls() == [] and not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--views", "Up1", "Dn1", "Up1"], "argument --views: Up1 named more than once"),
        (["--views", "Up3"], "argument --views: invalid choice: 'Up3'"),
    ],
)
def test_bad_views_are_usage_errors(train_teachers, tmp_path, capsys, argv, message):
    out = tmp_path / "runs"
    with pytest.raises(SystemExit) as exc:
        train_teachers.main(["--config-file", TINY_TEACHER, "--output-dir", str(out), *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err
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
    assert "--config-file '<ensemble config>' KD.MODEL_CONFIG" in printed


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
