"""Config values that cannot work are refused before anything is built, naming the key."""

import pytest

from kdreid.config import get_cfg, merge_from_file, merge_from_list
from kdreid.engine.validation import check_config
from kdreid.engine.validation import config as checks
from kdreid.errors import ConfigError

from ...conftest import REPO

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
