"""Runs never overwrite each other (issue 17, points 5 and 6): a folder with another run's
checkpoints is refused without --resume or --overwrite, a folder a run is training into is locked,
--eval-only leaves a training run's config.yaml alone, files are written atomically with the
umask's permissions, a full disk is one line, and a killed write's temporary file is cleaned up."""

import argparse
import errno
import os
import stat

import pytest
import yaml

from kdreid.checkpoint import atomic_write, read_json, save_figure, write_json, write_text
from kdreid.engine import launch
from kdreid.engine.setup import LOCK_NAME, claim_output_dir, run_files, write_config
from kdreid.errors import OutputDirError, RecordError

from ..conftest import REPO

TINY = f"{REPO}/configs/Synthetic/tiny.yml"


def test_a_folder_with_another_run_s_checkpoints_is_refused_without_resume(tmp_path):
    (tmp_path / "model_final.pth").write_bytes(b"x")
    (tmp_path / "last_checkpoint").write_text("model_final.pth")
    assert run_files(tmp_path) == ["last_checkpoint", "model_final.pth"]
    with pytest.raises(OutputDirError) as exc, claim_output_dir(str(tmp_path)):
        pass
    message = str(exc.value)
    assert f"OUTPUT_DIR '{tmp_path}' holds another run's checkpoints" in message
    assert "(last_checkpoint, model_final.pth)" in message
    assert "--resume" in message and "--overwrite" in message and "another OUTPUT_DIR" in message
    assert (tmp_path / "model_final.pth").read_bytes() == b"x"  # nothing replaced
    for flags in ({"resume": True}, {"overwrite": True}):
        with claim_output_dir(str(tmp_path), **flags):
            pass


def test_a_folder_a_run_is_training_into_is_locked(tmp_path):
    (tmp_path / "log.txt").write_text("")  # what a fresh folder may hold is no reason to refuse
    with claim_output_dir(str(tmp_path)):
        assert (tmp_path / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        with pytest.raises(OutputDirError) as exc, claim_output_dir(str(tmp_path), resume=True):
            pass
        assert f"another run (pid {os.getpid()}) is training into it now" in str(exc.value)
    with claim_output_dir(str(tmp_path)):  # released when the run ends
        pass


def test_claiming_removes_what_a_killed_write_left(tmp_path):
    left = tmp_path / ".model_0004.pth.abc123.tmp"
    left.write_bytes(b"half a checkpoint")
    keep = tmp_path / "notes.tmp"  # not one of atomic_write's
    keep.write_text("mine")
    with claim_output_dir(str(tmp_path)):
        assert not left.exists() and keep.exists()


def test_atomic_write_gives_the_umask_s_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(str(tmp_path / "a.pth"), lambda f: f.write(b"1"))
        os.umask(0o002)
        atomic_write(str(tmp_path / "b.json"), lambda f: f.write("{}"), mode="w")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.pth").st_mode) == 0o644  # mkstemp: 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "b.json").st_mode) == 0o664


def test_a_full_disk_is_one_line_naming_the_folder_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "model_final.pth"
    path.write_bytes(b"the previous checkpoint")

    def full(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OutputDirError) as exc:
        atomic_write(str(path), full)
    assert str(exc.value) == (
        f"Cannot write 'model_final.pth' in '{tmp_path}': No space left on device (the previous "
        "file is intact). Free some space there, or write to another folder (OUTPUT_DIR)."
    )
    assert path.read_bytes() == b"the previous checkpoint"
    assert sorted(os.listdir(tmp_path)) == ["model_final.pth"]  # no temporary left


def test_eval_only_into_a_training_folder_leaves_its_config_yaml(tmp_path):
    from kdreid.config import get_cfg

    cfg = get_cfg()
    cfg.OUTPUT_DIR = str(tmp_path)
    cfg.MODEL.BACKBONE.DEPTH = "34x"
    (tmp_path / "config.yaml").write_text("the training run's\n")
    (tmp_path / "model_final.pth").write_bytes(b"x")
    write_config(cfg, eval_only=True)
    assert (tmp_path / "config.yaml").read_text() == "the training run's\n"
    assert (
        yaml.safe_load((tmp_path / "config_eval.yaml").read_text())["MODEL"]["BACKBONE"]["DEPTH"]
        == "34x"
    )
    os.remove(tmp_path / "model_final.pth")  # a folder of evaluations only: config.yaml
    write_config(cfg, eval_only=True)
    assert "34x" in (tmp_path / "config.yaml").read_text()


def test_the_parser_offers_overwrite():
    args = launch.default_argument_parser().parse_args(["--config-file", TINY, "--overwrite"])
    assert args.overwrite is True
    assert "--overwrite" in launch.default_argument_parser().format_help()


def _args(output_dir, **flags):
    base = dict(config_file=TINY, eval_only=False, resume=False, num_gpus=1, num_machines=1,
                machine_rank=0, dist_url="auto", overwrite=False,
                opts=["OUTPUT_DIR", str(output_dir), "KDREID.PROGRESS", "False",
                      "SOLVER.MAX_EPOCH", "1", "TEST.EVAL_PERIOD", "0"])  # fmt: skip
    base.update(flags)
    return argparse.Namespace(**base)


@pytest.mark.slow
def test_training_twice_into_one_folder_is_refused_then_resumed_or_overwritten(
    fastreid_root, tmp_path
):
    launch.main(_args(tmp_path))
    final = tmp_path / "model_final.pth"
    first = final.read_bytes()
    with pytest.raises(OutputDirError, match="holds another run's checkpoints"):
        launch.main(_args(tmp_path))
    assert final.read_bytes() == first
    launch.main(_args(tmp_path, resume=True))  # a finished run: nothing more to train
    assert final.read_bytes() == first
    launch.main(_args(tmp_path, overwrite=True))
    assert final.is_file()


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "is empty (a run stopped while writing it?)"),
        (b'{"seed": 1', "is not valid JSON (line 1, column 11: Expecting"),
        (b"\xff\xfe", "is not valid JSON ("),
    ],
)
def test_an_empty_or_corrupt_record_is_one_line_naming_it(tmp_path, content, words):
    path = tmp_path / "run.json"
    path.write_bytes(content)
    with pytest.raises(RecordError) as exc:
        read_json(str(path))
    message = str(exc.value)
    assert message.startswith(f"'{path}' {words}") and "\n" not in message
    assert "delete it, and the step that writes it runs again" in message


def test_records_markdown_and_pictures_are_written_atomically(tmp_path, monkeypatch):
    """A writer that dies half way leaves the previous file; a finished one the whole new one."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    write_json(str(tmp_path / "run.json"), {"seed": 1})
    write_text(str(tmp_path / "evidence.md"), "| a |\n")
    figure = Figure(figsize=(1, 1))
    figure.add_subplot().plot([0, 1])
    save_figure(figure, str(tmp_path / "plot.png"), dpi=20)
    save_figure(figure, str(tmp_path / "plot.pdf"))
    assert read_json(str(tmp_path / "run.json")) == {"seed": 1}
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "plot.pdf").read_bytes()[:5] == b"%PDF-"
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}

    real_fsync = os.fsync

    def die(fd):  # the content is in the temporary file; the process dies before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", die)
    for write in (
        lambda: write_json(str(tmp_path / "run.json"), {"seed": 2}),
        lambda: write_text(str(tmp_path / "evidence.md"), "| b |\n"),
        lambda: save_figure(figure, str(tmp_path / "plot.png"), dpi=40),
    ):
        with pytest.raises(KeyboardInterrupt):
            write()
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before


def test_the_harness_and_the_demo_report_an_empty_run_json_in_one_line(tmp_path, capsys):
    """The issue's case: an empty run.json beside a run's checkpoints (a writer killed before
    these writes were atomic) ended the demo in a JSONDecodeError traceback."""
    from harness.runs import check_reuse, main_of_runs

    run = tmp_path / "teacher"
    run.mkdir()
    (run / "model_final.pth").write_bytes(b"x")
    (run / "run.json").write_bytes(b"")
    with pytest.raises(SystemExit) as exc:
        main_of_runs(check_reuse, str(run), "configs/Synthetic/tiny.yml", 0, [])
    err = capsys.readouterr().err
    assert exc.value.code == 2
    assert err == (
        f"error: '{run / 'run.json'}' is empty (a run stopped while writing it?): delete it, "
        "and the step that writes it runs again.\n"
    )
