"""kdreid's setup step: the config is checked before anything is written, the folder must be
writable (by default one per config), the log names the seed the run uses, seeding is repeatable;
and the parser train_net.py uses."""

import argparse
import os
import random

import pytest
import torch

from kdreid.config import get_cfg, merge_from_file, merge_from_list, resolve_device
from kdreid.engine import Trainer, seed, setup
from kdreid.errors import ConfigError, OutputDirError

from ..conftest import REPO

TINY = f"{REPO}/configs/Synthetic/tiny.yml"


def args(output_dir, *opts, eval_only=False, config_file=TINY):
    """train_net.py's arguments: ``output_dir`` as OUTPUT_DIR (None: left unset), then ``opts``."""
    output = [] if output_dir is None else ["OUTPUT_DIR", str(output_dir)]
    return argparse.Namespace(
        config_file=config_file, opts=[*output, *opts], eval_only=eval_only,
        resume=False, num_gpus=1, num_machines=1, machine_rank=0, dist_url="auto",
    )  # fmt: skip


def tiny_cfg(*opts):
    """The tiny config with ``KEY VALUE`` options, as setup resolves it (no progress bars)."""
    cfg = get_cfg()
    merge_from_file(cfg, TINY)
    merge_from_list(cfg, ["KDREID.PROGRESS", "False", *opts])
    resolve_device(cfg)
    return cfg


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


@pytest.mark.parametrize("value", [0, -1])
def test_the_log_names_the_seed_the_run_uses(tmp_path, value):
    """FastReID's setup seeds with a random value and logs it; with KDREID.SEED set, that value is
    replaced at once, and the log names only the one used."""
    setup(args(tmp_path, "KDREID.SEED", str(value)))
    log = (tmp_path / "log.txt").read_text()
    assert ("Using a generated random seed" in log) == (value < 0)
    assert ("Seeded the random generators with 0" in log) == (value == 0)


def test_output_dir_defaults_to_one_folder_per_config(fastreid_root, tmp_path, monkeypatch):
    """FastReID's default OUTPUT_DIR, logs/, is shared by every run; unset, it is the config's own
    folder (its --eval-only runs in eval/ below it), so runs of two configs keep their files."""
    monkeypatch.chdir(tmp_path)
    cfg = setup(args(None, "SOLVER.MAX_EPOCH", "1"))
    assert cfg.OUTPUT_DIR == os.path.join("logs", "Synthetic", "tiny")
    assert (tmp_path / "logs" / "Synthetic" / "tiny").is_dir()
    # written by main once the model, the data and the weights pass their checks, not by setup
    assert not (tmp_path / "logs" / "Synthetic" / "tiny" / "config.yaml").exists()
    assert setup(args(None, eval_only=True)).OUTPUT_DIR == os.path.join(cfg.OUTPUT_DIR, "eval")
    other = tmp_path / "mine.yml"
    other.write_text(f"_BASE_: {TINY}\n")
    assert setup(args(None, config_file=str(other))).OUTPUT_DIR == os.path.join("logs", "mine")
    assert setup(args("runs/a")).OUTPUT_DIR == "runs/a"  # set: kept


def test_seed_makes_initialisation_repeatable():
    cfg = tiny_cfg("KDREID.SEED", "3", "MODEL.HEADS.NUM_CLASSES", "4")
    states = []
    for _ in range(2):
        seed(cfg)
        states.append(Trainer.build_model(cfg).state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    cfg.KDREID.SEED = 4
    seed(cfg)
    other = Trainer.build_model(cfg).state_dict()
    assert not torch.equal(other["backbone.conv1.weight"], states[0]["backbone.conv1.weight"])


def test_a_resumed_run_draws_new_batches():
    """Seeded at its start, a resumed run would replay its first epochs' batches: it is seeded
    from (seed, epoch) instead, the same way each time."""
    cfg = tiny_cfg("KDREID.SEED", "3")
    draws = {}
    for epoch in (0, 2, 2, 3):
        seed(cfg, epoch)
        draws.setdefault(epoch, []).append((random.random(), torch.rand(1).item()))
    assert draws[2][0] == draws[2][1]  # repeatable
    assert len({d[0] for d in (draws[0][0], draws[2][0], draws[3][0])}) == 3
    cfg.KDREID.SEED = 4
    seed(cfg, 2)
    assert random.random() != draws[2][0][0]


def test_the_parser_has_fastreid_flags_and_says_where_options_go():
    from kdreid.engine import default_argument_parser

    parser = default_argument_parser()
    args = parser.parse_args(["--config-file", "a.yml", "--eval-only", "MODEL.WEIGHTS", "w.pth"])
    assert (
        args.config_file == "a.yml" and args.eval_only and args.opts == ["MODEL.WEIGHTS", "w.pth"]
    )
    text = parser.format_help()
    assert "fastreid Training" not in text and "KEY VALUE config options come last" in text
