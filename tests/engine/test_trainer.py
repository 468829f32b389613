"""The trainer end to end on SynthReID-tiny: train, checkpoint, evaluate, resume, bad input."""

import argparse
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from kdreid.config import get_cfg, merge_from_file, resolve_device
from kdreid.engine import Trainer, main
from kdreid.errors import ConfigError, WeightsError

from ..conftest import REPO, set_keys

TINY = os.path.join(REPO, "configs", "Synthetic", "tiny.yml")
PROJECTS = ("MDPR", "FactorizedKD", "SpeedKD")


def _tiny_cfg(output_dir, **overrides):
    cfg = get_cfg()
    merge_from_file(cfg, TINY)
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.KDREID.PROGRESS = False
    set_keys(cfg, **overrides)
    resolve_device(cfg)
    return cfg


def _args(**kwargs):
    base = dict(
        config_file=TINY,
        eval_only=False,
        resume=False,
        num_gpus=1,
        num_machines=1,
        machine_rank=0,
        dist_url="tcp://127.0.0.1:1",
        opts=[],
    )
    base.update(kwargs)
    return argparse.Namespace(**base)


@pytest.mark.slow
def test_train_checkpoint_and_eval_only_agree(fastreid_root, tmp_path):
    cfg = _tiny_cfg(tmp_path)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    results = trainer.train()

    for key in ("mAP", "Rank-1", "Rank-5", "Rank-10", "mINP"):
        assert 0.0 <= results[key] <= 100.0, key
    frozen = [
        k
        for k, v in trainer.model.named_parameters()
        if v.requires_grad and torch.equal(v, before[k])
    ]
    assert not frozen  # every parameter was updated (not just BN statistics)
    with open(tmp_path / "metrics.json") as f:
        logged = [json.loads(line) for line in f]
    assert any("loss_cls" in entry for entry in logged)
    assert all(torch.isfinite(torch.tensor(e["total_loss"])) for e in logged if "total_loss" in e)

    final = tmp_path / "model_final.pth"
    assert final.is_file()
    evaluated = main(
        _args(
            eval_only=True,
            opts=[
                "MODEL.WEIGHTS",
                str(final),
                "OUTPUT_DIR",
                str(tmp_path / "eval"),
                "KDREID.PROGRESS",
                "False",
            ],
        )
    )
    # --eval-only folds the BatchNorms (KDREID.FOLD_BN): the same ranking as the in-run one
    assert evaluated["mAP"] == pytest.approx(results["mAP"], abs=1e-6)
    assert evaluated["Rank-1"] == pytest.approx(results["Rank-1"], abs=1e-6)
    with open(tmp_path / "eval" / "speed_accuracy.json") as f:
        record = json.load(f)
    assert record["batchnorm_folded"] == 20  # every one of the ResNet-18's; not the head's
    assert record["precision"] == "float32"


def test_eval_only_without_weights(fastreid_root, tmp_path):
    with pytest.raises(WeightsError, match="MODEL.WEIGHTS"):
        main(_args(eval_only=True, opts=["OUTPUT_DIR", str(tmp_path)]))
    with pytest.raises(WeightsError, match="nothing.pth"):
        main(
            _args(
                eval_only=True,
                opts=["OUTPUT_DIR", str(tmp_path), "MODEL.WEIGHTS", str(tmp_path / "nothing.pth")],
            )
        )


def test_eval_only_with_weights_of_another_model(fastreid_root, tmp_path):
    other = _tiny_cfg(tmp_path, **{"MODEL.BACKBONE.DEPTH": "34x", "MODEL.HEADS.NUM_CLASSES": 16})
    path = tmp_path / "r34.pth"
    torch.save({"model": Trainer.build_model(other).state_dict()}, path)
    with pytest.raises(WeightsError, match="backbone.layer1.2"):
        main(_args(eval_only=True, opts=["OUTPUT_DIR", str(tmp_path), "MODEL.WEIGHTS", str(path)]))


def test_imagenet_weights_that_are_not_on_disk(tmp_path):
    cfg = _tiny_cfg(
        tmp_path,
        **{"MODEL.BACKBONE.PRETRAIN": True, "MODEL.BACKBONE.PRETRAIN_PATH": "/nowhere/r18.pth"},
    )
    with pytest.raises(ConfigError, match="/nowhere/r18.pth"):
        Trainer.build_model(cfg)


def test_freeze_layers_that_the_model_does_not_have(fastreid_root, tmp_path):
    """FastReID would silently freeze nothing; the trainer names the modules it could freeze."""
    cfg = _tiny_cfg(tmp_path, **{"MODEL.FREEZE_LAYERS": ["trunk"], "SOLVER.FREEZE_ITERS": 5})
    with pytest.raises(ConfigError, match=r"\['trunk'\].*\['backbone', 'heads'\]"):
        Trainer(cfg)
    cfg = _tiny_cfg(tmp_path, **{"MODEL.FREEZE_LAYERS": ["backbone"], "SOLVER.FREEZE_ITERS": 5})
    Trainer(cfg)  # a real top-level module: accepted


def test_batches_that_cannot_be_drawn_are_refused(fastreid_root, tmp_path):
    """FastReID's identity sampler loops forever, yielding nothing, when a batch needs more
    identities than the training set has; the trainer says so before starting."""
    with pytest.raises(ConfigError, match=r"SOLVER.IMS_PER_BATCH 100000 is more than the \d+"):
        Trainer(_tiny_cfg(tmp_path, **{"SOLVER.IMS_PER_BATCH": 100000}))
    cfg = _tiny_cfg(tmp_path, **{"SOLVER.IMS_PER_BATCH": 17, "DATALOADER.NUM_INSTANCE": 1})
    with pytest.raises(ConfigError, match="17 identities per batch, but the training set has 16"):
        Trainer(cfg)


@pytest.mark.slow
def test_a_run_of_one_iteration(fastreid_root, tmp_path):
    """One iteration per epoch, one epoch: FastReID's metric printer writes twice at that
    iteration before any step time exists, and divided by zero."""
    cfg = _tiny_cfg(tmp_path, **{"SOLVER.IMS_PER_BATCH": 64, "SOLVER.MAX_EPOCH": 1})
    trainer = Trainer(cfg)
    assert trainer.iters_per_epoch == 1
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert os.path.isfile(tmp_path / "model_final.pth")


def test_evaluation_only_architectures_are_not_trained(fastreid_root, tmp_path):
    """A meta-architecture with ``trainable = False`` (FactorizedKD's teacher ensemble) is refused
    for training before anything is built."""
    from fastreid.modeling.meta_arch import META_ARCH_REGISTRY

    from kdreid.meta_arch import MetaArchitecture

    name = "KdreidTestEvaluationOnly"
    try:
        META_ARCH_REGISTRY.get(name)
    except KeyError:
        META_ARCH_REGISTRY.register(type(name, (MetaArchitecture,), {"trainable": False}))
    args = _args(opts=["MODEL.META_ARCHITECTURE", name, "OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(ConfigError, match=f"{name} is an evaluation-only model"):
        main(args)


@pytest.mark.slow
def test_eval_period_zero_evaluates_once_at_the_end(fastreid_root, tmp_path):
    cfg = _tiny_cfg(tmp_path, **{"TEST.EVAL_PERIOD": 0, "SOLVER.MAX_EPOCH": 2})
    trainer = Trainer(cfg)
    calls = []
    for hook in trainer._hooks:
        if type(hook).__name__ == "EvalHook":
            evaluate = hook._func
            hook._func = lambda evaluate=evaluate: calls.append(trainer.epoch) or evaluate()
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert calls == [1]  # once, after the last (second) epoch


def test_resuming_a_finished_run_says_so(fastreid_root, tmp_path, caplog):
    # it said "continuing at epoch 2 of 2" (FastReID's count from 0 against a count of epochs)
    cfg = _tiny_cfg(tmp_path, **{"SOLVER.MAX_EPOCH": 1})
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    with caplog.at_level(logging.INFO, logger="kdreid.engine.trainer"):
        again = Trainer(cfg)
        again.resume_or_load(resume=True)
        again.close()
    said = " ".join(r.getMessage() for r in caplog.records if "Resumed from" in r.getMessage())
    assert said.endswith("model_final.pth, saved after all 1 epochs") and "continu" not in said


def _metric_lines(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        return [json.loads(line) for line in f]


def _tensorboard_scalars(output_dir, tag):
    import glob

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = glob.glob(os.path.join(output_dir, "events.out.tfevents.*"))
    accumulator = EventAccumulator(events)
    accumulator.Reload()
    if tag not in accumulator.Tags()["scalars"]:
        return []
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


@pytest.mark.parametrize("period", [0, 1])
def test_every_evaluation_reaches_metrics_json_and_tensorboard(fastreid_root, tmp_path, period):
    # the final evaluation's metrics were only in the log: FastReID's writers skip the scalars of
    # an iteration they have written, and after training they only close
    cfg = _tiny_cfg(tmp_path, **{"TEST.EVAL_PERIOD": period, "SOLVER.MAX_EPOCH": 2})
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    evaluations = [line for line in _metric_lines(tmp_path) if "mAP" in line]
    assert len(evaluations) == (1 if period == 0 else 2)
    assert evaluations[-1]["mAP"] == pytest.approx(results["mAP"])
    assert evaluations[-1]["Rank-1"] == pytest.approx(results["Rank-1"])
    iterations = [line["iteration"] for line in _metric_lines(tmp_path)]
    assert len(iterations) == len(set(iterations)) + (1 if period else 0)  # none written twice
    board = _tensorboard_scalars(tmp_path, "mAP")
    assert [step for step, _ in board] == [line["iteration"] for line in evaluations]
    assert board[-1][1] == pytest.approx(results["mAP"], rel=1e-6)


def _run(project, *argv, env, **kwargs):
    cmd = [sys.executable, os.path.join(REPO, "projects", project, "train_net.py"), *argv]
    return subprocess.Popen(
        cmd,
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        **kwargs,
    )


def _env(datasets_root):
    return {**os.environ, "FASTREID_DATASETS": str(datasets_root)}


@pytest.mark.slow
@pytest.mark.parametrize("project", PROJECTS)
def test_every_train_net_trains_a_fastreid_config(project, datasets_root, tmp_path):
    proc = _run(
        project,
        "--config-file",
        TINY,
        "SOLVER.MAX_EPOCH",
        "1",
        "OUTPUT_DIR",
        str(tmp_path),
        "KDREID.PROGRESS",
        "False",
        env=_env(datasets_root),
    )
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert "Evaluation results" in out
    assert (tmp_path / "model_final.pth").is_file()


@pytest.mark.slow
def test_cli_unknown_key_is_named(datasets_root):
    proc = _run(
        "MDPR", "--config-file", TINY, "MODEL.BACKBONE.DEPHT", "18x", env=_env(datasets_root)
    )
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    assert "error: Unknown config key 'MODEL.BACKBONE.DEPHT'" in out
    assert "Traceback" not in out


@pytest.mark.slow
def test_bad_input_after_logging_started_is_one_line(datasets_root, tmp_path):
    """An error found while building the model (logging is set up by then) prints one line; the
    traceback goes to the run's log file only."""
    mdpr_tiny = os.path.join(REPO, "configs", "MDPR", "Synthetic", "tiny.yml")
    missing = str(tmp_path / "missing.pth")
    proc = _run(
        "MDPR", "--config-file", mdpr_tiny, "MODEL.BACKBONE.PRETRAIN", "True",
        "MODEL.BACKBONE.PRETRAIN_PATH", missing, "OUTPUT_DIR", str(tmp_path),
        env=_env(datasets_root),
    )  # fmt: skip
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2
    last = out.rstrip().splitlines()[-1]
    assert last.startswith(
        f"error: MODEL.BACKBONE.PRETRAIN is on but MODEL.BACKBONE.PRETRAIN_PATH ('{missing}') is "
        "not a file: put the ImageNet weights there"
    )
    assert "Traceback" not in out
    with open(tmp_path / "log.txt") as f:
        assert "Traceback" in f.read()


@pytest.mark.slow
def test_resume_after_a_killed_run(datasets_root, tmp_path):
    """SIGKILL a run after its second checkpoint; --resume continues from that epoch to the end."""
    opts = [
        "--config-file",
        TINY,
        "SOLVER.MAX_EPOCH",
        "6",
        "TEST.EVAL_PERIOD",
        "100",
        "OUTPUT_DIR",
        str(tmp_path),
        "KDREID.PROGRESS",
        "False",
    ]
    proc = _run("SpeedKD", *opts, env=_env(datasets_root))
    tag = tmp_path / "last_checkpoint"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if tag.exists() and tag.read_text() not in ("", "model_0000.pth"):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    out, _ = proc.communicate(timeout=60)
    assert (
        proc.returncode == -signal.SIGKILL
    ), f"the run finished before it was killed:\n{out[-2000:]}"
    last = tag.read_text()
    saved_epoch = torch.load(tmp_path / last, weights_only=True)["epoch"]
    assert not (tmp_path / "model_final.pth").exists()

    proc = _run("SpeedKD", "--resume", *opts, env=_env(datasets_root))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    assert f"saved after {saved_epoch + 1} of 6 epochs: training continues from" in out
    assert f"Resuming at epoch {saved_epoch + 1}: seeded the random generators with" in out
    assert f"Starting training from epoch {saved_epoch + 1}" in out
    assert (tmp_path / "model_final.pth").is_file()
    assert torch.load(tmp_path / "model_final.pth", weights_only=True)["epoch"] == 5


def _prefetch_threads():
    return {t for t in threading.enumerate() if type(t).__name__ == "BackgroundGenerator"}


def _train_args(tmp_path, *opts, **kwargs):
    base = ["OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_EPOCH", "1", "KDREID.PROGRESS", "False"]
    return _args(opts=[*base, *opts], **kwargs)


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing", "MODEL.WEIGHTS '{}' does not exist."),
        ("text", "Cannot load checkpoint '{}' (MODEL.WEIGHTS): it is not a PyTorch checkpoint"),
        ("directory", "MODEL.WEIGHTS '{}' is a directory, not a checkpoint file."),
    ],
)
def test_training_from_weights_that_are_not_a_checkpoint(fastreid_root, tmp_path, case, words):
    """FastReID asserted (missing) or failed deep in torch.load (text, directory)."""
    path = tmp_path / "weights.pth"
    if case == "text":
        path.write_text("not weights\n")
    elif case == "directory":
        path.mkdir()
    before = _prefetch_threads()
    with pytest.raises(WeightsError, match=re.escape(words.format(path))):
        main(_train_args(tmp_path / "out", "MODEL.WEIGHTS", str(path)))
    # the training loader's prefetch thread was stopped (alive at exit, it aborts the process)
    assert not {t for t in _prefetch_threads() - before if t.is_alive()}


def test_resume_from_a_corrupt_checkpoint(fastreid_root, tmp_path):
    (tmp_path / "model_final.pth").write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    with pytest.raises(WeightsError) as info:
        main(_train_args(tmp_path, resume=True))
    message = str(info.value)
    assert f"Cannot resume from '{tmp_path / 'model_final.pth'}'" in message
    assert "the file is truncated or corrupt" in message
    assert "Delete it or write the name of an older checkpoint into" in message


def test_resume_refuses_the_checkpoint_of_another_model(fastreid_root, tmp_path):
    """FastReID loaded what fitted, logged the rest, and crashed in the optimizer's first step."""
    cfg = _tiny_cfg(tmp_path, **{"MODEL.BACKBONE.DEPTH": "34x", "MODEL.HEADS.NUM_CLASSES": 16})
    torch.save({"model": Trainer.build_model(cfg).state_dict(), "epoch": 0}, tmp_path / "m.pth")
    (tmp_path / "last_checkpoint").write_text("m.pth")
    with pytest.raises(WeightsError) as info:
        main(_train_args(tmp_path, "SOLVER.MAX_EPOCH", "2", resume=True))
    message = str(info.value)
    assert "m.pth' (named by" in message and "do not fit the model Baseline" in message
    assert "not in the model (" in message and "backbone.layer1.2.conv1.weight" in message
    assert "more" in message  # a few keys, then a count
    assert "--resume continues the run saved in" in message

    # The same model's checkpoint (here with a training-only key) resumes.
    cfg = _tiny_cfg(tmp_path, **{"MODEL.HEADS.NUM_CLASSES": 16})
    state = {**Trainer.build_model(cfg).state_dict(), "distill.adapter.weight": torch.zeros(2)}
    torch.save({"model": state, "epoch": 0}, tmp_path / "m.pth")
    trainer = Trainer(_tiny_cfg(tmp_path, **{"SOLVER.MAX_EPOCH": 2}))
    trainer.resume_or_load(resume=True)
    assert trainer.start_epoch == 1
    trainer.close()


def _backbone_state(**overrides):
    from fastreid.modeling.backbones import build_backbone

    cfg = _tiny_cfg("/tmp", **overrides)
    return build_backbone(cfg).state_dict()


def test_pretrain_path_that_is_not_imagenet_weights(tmp_path):
    """FastReID loaded with strict=False, logged every key as missing and trained from random
    weights (wrong model), or raised a bare KeyError (text file)."""
    options = {"MODEL.BACKBONE.PRETRAIN": True, "MODEL.HEADS.NUM_CLASSES": 4}
    text = tmp_path / "r18.pth"
    text.write_text("resnet18 weights\n")
    cfg = _tiny_cfg(tmp_path, **options, **{"MODEL.BACKBONE.PRETRAIN_PATH": str(text)})
    with pytest.raises(WeightsError, match=r"r18.pth' is not a PyTorch checkpoint"):
        Trainer.build_model(cfg)

    reid = tmp_path / "reid.pth"  # a whole FastReID model: keys prefixed with "backbone."
    torch.save(
        {
            "model": Trainer.build_model(
                _tiny_cfg(tmp_path, **{"MODEL.HEADS.NUM_CLASSES": 4})
            ).state_dict()
        },
        reid,
    )
    cfg = _tiny_cfg(tmp_path, **options, **{"MODEL.BACKBONE.PRETRAIN_PATH": str(reid)})
    with pytest.raises(WeightsError) as info:
        Trainer.build_model(cfg)
    message = str(info.value)
    assert re.search(r"reid.pth' provides 0 of the \d+ parameters of the backbone ResNet", message)
    assert "the backbone has e.g. 'conv1.weight', the file has e.g. 'model'" in message
    assert "Expected ImageNet weights for MODEL.BACKBONE.NAME build_resnet_backbone" in message

    shapes = tmp_path / "shapes.pth"
    state = _backbone_state()
    state["conv1.weight"] = torch.zeros(3, 3, 3, 3)
    torch.save(state, shapes)
    cfg = _tiny_cfg(tmp_path, **options, **{"MODEL.BACKBONE.PRETRAIN_PATH": str(shapes)})
    with pytest.raises(WeightsError, match=r"shapes.pth' does not fit the backbone ResNet"):
        Trainer.build_model(cfg)

    imagenet = tmp_path / "imagenet.pth"  # the backbone's weights and a classifier: accepted
    state = {**_backbone_state(), "fc.weight": torch.zeros(10, 512), "fc.bias": torch.zeros(10)}
    torch.save(state, imagenet)
    cfg = _tiny_cfg(tmp_path, **options, **{"MODEL.BACKBONE.PRETRAIN_PATH": str(imagenet)})
    model = Trainer.build_model(cfg)
    assert torch.equal(model.backbone.conv1.weight, state["conv1.weight"])
    assert torch.nn.Module.load_state_dict.__qualname__ == "Module.load_state_dict"


def test_unreadable_training_image_stops_training(fastreid_root, tmp_path, monkeypatch):
    """FastReID evaluated the untrained model after the failure (and a final checkpoint could be
    written); the error now ends training at once."""
    from fastreid.data import common

    from kdreid.errors import UnreadableImageError

    read_image = common.read_image
    reads = []

    def broken_training_images(path, *args, **kwargs):
        if "bounding_box_train" in path:
            reads.append(path)
            if len(reads) > 40:  # the third batch, loaded while training
                raise UnreadableImageError(f"Cannot read image '{path}'")
        return read_image(path, *args, **kwargs)

    monkeypatch.setattr(common, "read_image", broken_training_images)
    evaluated = []
    monkeypatch.setattr(Trainer, "test", classmethod(lambda cls, cfg, model: evaluated.append(1)))
    trainer = Trainer(_tiny_cfg(tmp_path, **{"SOLVER.MAX_EPOCH": 1}))
    assert trainer.iters_per_epoch > 3
    trainer.resume_or_load(resume=False)
    with pytest.raises(UnreadableImageError, match="bounding_box_train"):
        trainer.train()
    assert 0 < trainer.iter < trainer.iters_per_epoch
    assert not evaluated
    assert not (tmp_path / "model_final.pth").exists()
    assert not trainer.data_loader.iter.is_alive()


@pytest.mark.slow
def test_cli_training_with_missing_weights_is_one_line(datasets_root, tmp_path):
    """It was an AssertionError traceback, then "terminate called without an active exception"
    (the loader's prefetch thread alive at exit) and exit status 134."""
    weights = tmp_path / "nothere.pth"
    script = os.path.join(REPO, "projects", "MDPR", "train_net.py")
    opts = ["SOLVER.MAX_EPOCH", "1", "OUTPUT_DIR", str(tmp_path), "MODEL.WEIGHTS", str(weights)]
    proc = subprocess.Popen(
        [sys.executable, script, "--config-file", TINY, *opts],
        env=_env(datasets_root),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, out[-2000:] + err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: MODEL.WEIGHTS '{weights}' does not exist."]
    assert "terminate called" not in out + err and "Traceback" not in out + err


def test_a_refused_run_leaves_the_folders_config_as_it_was(fastreid_root, tmp_path):
    """--eval-only with a truncated checkpoint in a trained run's folder: refused, and the folder's
    config.yaml (which names the run's model) is not overwritten by the refused run's."""
    (tmp_path / "config.yaml").write_text("MODEL:\n  META_ARCHITECTURE: TheTrainedOne\n")
    bad = tmp_path / "truncated.pth"
    torch.save({"model": {"w": torch.zeros(100)}}, bad)
    bad.write_bytes(bad.read_bytes()[:50])
    args = _args(opts=["MODEL.WEIGHTS", str(bad), "OUTPUT_DIR", str(tmp_path)])
    args.eval_only = True
    with pytest.raises(WeightsError, match="truncated.pth"):
        main(args)
    assert (tmp_path / "config.yaml").read_text() == "MODEL:\n  META_ARCHITECTURE: TheTrainedOne\n"
    # a folder that had none keeps none
    fresh = tmp_path / "fresh"
    args = _args(opts=["MODEL.WEIGHTS", str(bad), "OUTPUT_DIR", str(fresh)])
    args.eval_only = True
    with pytest.raises(WeightsError):
        main(args)
    assert not (fresh / "config.yaml").exists()


@pytest.mark.slow
def test_ctrl_c_says_how_to_continue(datasets_root, tmp_path):
    """Ctrl-C (SIGINT) during training: one line on how to continue, no traceback, status 130."""
    opts = ["--config-file", TINY, "SOLVER.MAX_EPOCH", "50", "TEST.EVAL_PERIOD", "100",
            "OUTPUT_DIR", str(tmp_path), "KDREID.PROGRESS", "False"]  # fmt: skip
    proc = _run("SpeedKD", *opts, env=_env(datasets_root))
    deadline = time.time() + 300
    while time.time() < deadline and not (tmp_path / "last_checkpoint").exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert "interrupted: run the same command again, adding --resume" in out
    assert "Traceback" not in out
