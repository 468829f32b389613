"""Config values that cannot work are refused before anything is built, naming the key."""

import argparse

import pytest
import torch

from kdreid.config import get_cfg, merge_from_file, merge_from_list
from kdreid.engine import checks
from kdreid.engine.checks import check_config
from kdreid.engine.defaults import launch_main, setup
from kdreid.errors import ConfigError, OutputDirError

from ..conftest import REPO

TINY = f"{REPO}/configs/Synthetic/tiny.yml"  # batch 16, NaiveIdentitySampler, 4 instances


def tiny(*opts):
    cfg = get_cfg()
    merge_from_file(cfg, TINY)
    merge_from_list(cfg, list(opts))
    return cfg


def test_the_shipped_tiny_config_passes():
    check_config(tiny())


@pytest.mark.parametrize(
    "opts,message",
    [
        # 16 images in batches of 7 per identity: FastReID's sampler never yields (a hang)
        (["DATALOADER.NUM_INSTANCE", "7"], "NUM_INSTANCE 7 .* does not divide the batch of 16"),
        (["DATALOADER.NUM_INSTANCE", "32"], "NUM_INSTANCE 32 .* does not divide the batch of 16"),
        (["DATALOADER.NUM_INSTANCE", "0"], "DATALOADER.NUM_INSTANCE must be a positive integer"),
        (["SOLVER.IMS_PER_BATCH", "0"], "SOLVER.IMS_PER_BATCH must be a positive integer, got 0"),
        (["SOLVER.IMS_PER_BATCH", "-16"], "SOLVER.IMS_PER_BATCH must be a positive integer"),
        (["TEST.IMS_PER_BATCH", "0"], "TEST.IMS_PER_BATCH must be a positive integer"),
        (["SOLVER.MAX_EPOCH", "0"], "SOLVER.MAX_EPOCH must be a positive integer, got 0"),
        (["DATASETS.NAMES", "('Nope',)"], "DATASETS.NAMES names 'Nope', which is not a regis"),
        (["DATASETS.TESTS", "('Nope',)"], "DATASETS.TESTS names 'Nope'.*SynthReIDTiny"),
        (["DATASETS.NAMES", "()"], "DATASETS.NAMES is empty"),
        (["DATALOADER.SAMPLER_TRAIN", "Foo"], "SAMPLER_TRAIN 'Foo' is not a training sampler"),
        (["TEST.METRIC", "jaccard"], "'jaccard' is the re-ranking distance: set TEST.RERANK"),
        (["TEST.METRIC", "l2"], "TEST.METRIC 'l2' is not one of cosine, euclidean"),
        # PIL's "height and width must be > 0" from a loader worker, mid-training, before
        (["INPUT.SIZE_TRAIN", "[64, 0]"], r"SIZE_TRAIN must be \[height, width\].*got \[64, 0\]"),
        (["INPUT.SIZE_TRAIN", "[64]"], r"INPUT.SIZE_TRAIN must be \[height, width\]"),
        (["INPUT.SIZE_TEST", "[64, 32, 3]"], r"INPUT.SIZE_TEST must be \[height, width\]"),
        (["INPUT.SIZE_TEST", "[64.0, 32]"], r"INPUT.SIZE_TEST must be \[height, width\]"),
        # each of these failed mid-run (first evaluation, first checkpoint, first step) before
        (
            ["TEST.RERANK.ENABLED", "True", "TEST.RERANK.K1", "0"],
            "RERANK.K1 must be a positive integer, got 0",
        ),
        (["TEST.RERANK.ENABLED", "True", "TEST.RERANK.LAMBDA", "2.0"], "at most 1.0, got 2.0"),
        (
            ["TEST.AQE.ENABLED", "True", "TEST.AQE.QE_K", "0"],
            "TEST.AQE.QE_K must be a positive integer",
        ),
        (["SOLVER.CHECKPOINT_PERIOD", "0"], "SOLVER.CHECKPOINT_PERIOD must be a positive integer"),
        (["DATALOADER.NUM_WORKERS", "-1"], "NUM_WORKERS must be an integer of at least 0, got -1"),
        (["SOLVER.BASE_LR", "-1.0"], "SOLVER.BASE_LR must be a number above 0.0, got -1.0"),
        (["SOLVER.WEIGHT_DECAY", "-1.0"], "SOLVER.WEIGHT_DECAY must be a number at least 0.0"),
        (["TEST.EVAL_PERIOD", "-1"], "TEST.EVAL_PERIOD must be an integer of at least 0"),
        (["MODEL.LOSSES.NAME", "('Foo',)"], "names 'Foo', which FastReID's Baseline does not"),
        (["MODEL.LOSSES.NAME", "()"], r"MODEL.LOSSES.NAME \(\) names no loss"),
        (["MODEL.META_ARCHITECTURE", "Foo"], "META_ARCHITECTURE 'Foo' is not a registered model"),
        (["MODEL.BACKBONE.NAME", "build_foo"], "'build_foo' is not a registered backbone"),
        (["SOLVER.OPT", "Foo"], "SOLVER.OPT 'Foo' is not an optimizer of torch.optim"),
        (["MODEL.DEVICE", "gpu"], "MODEL.DEVICE 'gpu' is not a device; use 'auto', 'cpu'"),
        (["SOLVER.SCHED", "Foo"], "SCHED 'Foo' is not one of FastReID's schedulers: MultiStepLR"),
    ],
)
def test_values_that_cannot_work_are_refused(opts, message):
    with pytest.raises(ConfigError, match=message):
        check_config(tiny(*opts))


def test_any_batch_goes_with_a_sampler_that_draws_no_identities():
    check_config(
        tiny("DATALOADER.SAMPLER_TRAIN", "TrainingSampler", "DATALOADER.NUM_INSTANCE", "7")
    )


def test_the_batch_is_split_over_processes_first(monkeypatch):
    monkeypatch.setattr(checks.comm, "get_world_size", lambda: 2)
    check_config(tiny())  # 8 per process, 4 per identity
    with pytest.raises(ConfigError, match=r"batch of 6 per process \(12 / 2\)"):
        check_config(tiny("SOLVER.IMS_PER_BATCH", "12"))
    with pytest.raises(ConfigError, match="does not split evenly over 2 processes"):
        check_config(tiny("SOLVER.IMS_PER_BATCH", "15", "DATALOADER.NUM_INSTANCE", "1"))


def test_evaluation_ignores_the_training_keys():
    check_config(
        tiny("SOLVER.MAX_EPOCH", "0", "DATALOADER.NUM_INSTANCE", "7", "INPUT.SIZE_TRAIN", "[0, 0]"),
        training=False,
    )
    with pytest.raises(ConfigError, match="DATASETS.TESTS"):
        check_config(tiny("DATASETS.TESTS", "('Nope',)"), training=False)


def args(tmp_path, *opts, eval_only=False):
    return argparse.Namespace(
        config_file=TINY, opts=["OUTPUT_DIR", str(tmp_path), *opts], eval_only=eval_only,
        resume=False, num_gpus=1, num_machines=1, machine_rank=0, dist_url="auto",
    )  # fmt: skip


@pytest.mark.parametrize(
    "opts, message",
    [(["DATALOADER.NUM_INSTANCE", "7"], "NUM_INSTANCE 7"), (["MODEL.DEVICE", "gpu"], "'gpu'")],
)
def test_setup_checks_before_it_writes_anything(tmp_path, opts, message):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=message):
        setup(args(out, *opts))
    assert not out.exists()  # nor a config.yaml over the one of the run already there


@pytest.mark.parametrize("make", ["file", "unwritable"])
def test_setup_refuses_an_output_dir_it_cannot_write(tmp_path, make):
    if make == "file":
        out = tmp_path / "a_file"
        out.write_text("not a folder")
    else:
        out = "/proc/kdreid-cannot-be-made"
    reason = "it is a file, not a folder" if make == "file" else "No such file or directory"
    with pytest.raises(OutputDirError, match=f"Cannot write the output folder '{out}': {reason}"):
        setup(args(out))


def test_a_flag_after_the_overrides_is_named(tmp_path):
    with pytest.raises(ConfigError, match="'--eval-only' comes after the KEY VALUE config options"):
        setup(args(tmp_path / "run", "MODEL.WEIGHTS", "w.pth", "--eval-only", "--resume"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without CUDA")
def test_several_machines_without_cuda_is_one_line(tmp_path, capsys):
    launch_args = args(tmp_path / "run")
    launch_args.num_machines = 2
    with pytest.raises(SystemExit) as info:
        launch_main(launch_args)
    assert info.value.code == 2
    assert capsys.readouterr().err.startswith("error: --num-machines 2 needs CUDA")


@pytest.mark.parametrize("value", [0, -1])
def test_the_log_names_the_seed_the_run_uses(tmp_path, value):
    """FastReID's setup seeds with a random value and logs it; with KDREID.SEED set, that value is
    replaced at once, and the log names only the one used."""
    setup(args(tmp_path, "KDREID.SEED", str(value)))
    log = (tmp_path / "log.txt").read_text()
    assert ("Using a generated random seed" in log) == (value < 0)
    assert ("Seeded the random generators with 0" in log) == (value == 0)


def test_the_parser_has_fastreid_flags_and_says_where_options_go():
    from kdreid.engine import default_argument_parser

    parser = default_argument_parser()
    args = parser.parse_args(["--config-file", "a.yml", "--eval-only", "MODEL.WEIGHTS", "w.pth"])
    assert (
        args.config_file == "a.yml" and args.eval_only and args.opts == ["MODEL.WEIGHTS", "w.pth"]
    )
    text = parser.format_help()
    assert "fastreid Training" not in text and "KEY VALUE config options come last" in text
