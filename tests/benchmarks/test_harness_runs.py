"""harness.runs: train-then-benchmark runs in their own processes (what the demo and the evidence
benchmarks are made of)."""

import os
import sys

import pytest

from harness.runs import (
    RunFailedError,
    StaleRunError,
    check_reuse,
    main_of_runs,
    run_logged,
    train_and_record,
    training_images,
)
from kdreid.cli import check_output_dir
from kdreid.errors import OutputDirError

from ..conftest import REPO

TINY = os.path.join(REPO, "configs", "Synthetic", "tiny.yml")

TRAIN_NET = """\
from kdreid.engine import default_argument_parser, launch_main

launch_main(default_argument_parser().parse_args())
"""


@pytest.mark.slow
def test_a_run_trains_once_and_records(datasets_root, tmp_path, monkeypatch):
    """SynthReID-tiny has 96 training images: 96 // 16 = 6 iterations of 16 in the one epoch."""
    monkeypatch.setenv("FASTREID_DATASETS", str(datasets_root))
    train_net = tmp_path / "train_net.py"  # the core's own: plain FastReID models only
    train_net.write_text(TRAIN_NET)
    lines = []
    opts = ["SOLVER.MAX_EPOCH", "1", "TEST.EVAL_PERIOD", "1", "KDREID.LOG_PERIOD", "2"]
    run = train_and_record(
        "tiny", TINY, str(tmp_path / "run"), seed=3, opts=opts, echo=lines.append,
        train_net=str(train_net),
    )  # fmt: skip
    assert run.record["name"] == "tiny" and run.record["macs"] > 0
    assert run.train_seconds > 0 and os.path.isfile(run.weights)
    assert run.train_images == 96
    assert run.train_throughput == pytest.approx(96 / run.train_seconds)
    assert len(lines) > 1 and all("eta:" in line for line in lines[:-1])
    assert lines[-1] == "evaluating: accuracy, then speed (--eval-only)"
    stamp = os.path.getmtime(run.weights)
    again = train_and_record("tiny", TINY, str(tmp_path / "run"), 3, opts, train_net=str(train_net))
    assert again == run
    assert os.path.getmtime(run.weights) == stamp  # not trained again
    relative = os.path.relpath(TINY, REPO)  # the same config, named from the repository root
    assert train_and_record("tiny", relative, str(tmp_path / "run"), 3, opts,
                            train_net=str(train_net)) == run  # fmt: skip
    with pytest.raises(StaleRunError, match=r"config 'configs/Synthetic/tiny.yml' \(now 'a.yml'\)"):
        check_reuse(str(tmp_path / "run"), "a.yml", 3, opts)
    # the same folder asked for with another seed or schedule is refused, not silently reused
    with pytest.raises(StaleRunError, match=r"seed 3 \(now 4\)"):
        train_and_record("tiny", TINY, str(tmp_path / "run"), 4, opts, train_net=str(train_net))
    with pytest.raises(StaleRunError, match=r"opts \[.*'1'.*\] \(now \[.*'2'.*\]\)"):
        train_and_record("tiny", TINY, str(tmp_path / "run"), 3, [*opts[:1], "2", *opts[2:]],
                         train_net=str(train_net))  # fmt: skip
    assert os.path.getmtime(run.weights) == stamp


def test_a_folder_of_runs_these_scripts_did_not_start_is_refused(tmp_path):
    """Checkpoints without ``run.json``: nothing tells with what settings they were trained."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "model_final.pth").write_bytes(b"")
    with pytest.raises(StaleRunError) as info:
        check_reuse(str(folder), "a.yml", 0, [])
    message = str(info.value)
    assert "did not start (it has no run.json)" in message and "delete that folder" in message


def test_a_new_folder_is_no_stale_run(tmp_path):
    check_reuse(str(tmp_path / "nothing_here"), "a.yml", 0, ["SOLVER.MAX_EPOCH", "1"])
    # a run that failed before its first checkpoint (bad options) leaves nothing to protect
    (tmp_path / "failed").mkdir()
    (tmp_path / "failed" / "run.json").write_text('{"config": "a.yml", "seed": 0, "opts": ["X"]}')
    check_reuse(str(tmp_path / "failed"), "a.yml", 1, [])
    (tmp_path / "failed" / "last_checkpoint").write_text("model_0000.pth")
    with pytest.raises(StaleRunError, match="seed 0 \\(now 1\\)"):
        check_reuse(str(tmp_path / "failed"), "a.yml", 1, [])


def _log(tmp_path, lines, batch=16):
    log = tmp_path / "train.out"
    log.write_text("".join(f"[11/21 09:11:29 x]: {line}\n" for line in lines))
    config = tmp_path / "config.yaml"
    config.write_text(f"SOLVER:\n  IMS_PER_BATCH: {batch}\nTEST:\n  IMS_PER_BATCH: 128\n")
    return str(log), str(config)


def test_training_images_counts_this_process_only(tmp_path):
    """Resumed at epoch 2, last line epoch 4 iteration 19: 20 iterations in 5 epochs, 4 each; this
    process ran epochs 2, 3, 4: 12 iterations of 16 images."""
    log, config = _log(
        tmp_path,
        [
            "Resumed from model_0001.pth, saved after 2 of 5 epochs: training continues from "
            "iteration 8 (FastReID's epoch 2, counted from 0)",
            "Starting training from epoch 2",
            " eta: 0:00:09  epoch/iter: 2/9  total_loss: 6.7",
            " eta: 0:00:07  epoch/iter: 2/11  total_loss: 6.7",
            " eta: 0:00:00  epoch/iter: 4/19  total_loss: 6.1",
            "Overall training speed: 10 iterations in 0:00:10 (1.0000 s / it)",
        ],
    )
    assert training_images(log, config) == 192


def test_training_images_unknown(tmp_path):
    cut, config = _log(tmp_path, ["Starting training from epoch 0", "epoch/iter: 1/6  loss: 1"])
    assert training_images(cut, config) is None  # 7 iterations in 2 epochs: not an epoch's end
    finished, _ = _log(tmp_path, ["Training already finished (epoch 5 of 5)"])
    assert training_images(finished, config) is None
    assert training_images(str(tmp_path / "missing.out"), config) is None


def test_a_failed_command_names_its_log(tmp_path):
    log = tmp_path / "out" / "fail.log"
    with pytest.raises(RunFailedError, match=r"exit 3.*fail\.log:\n    boom"):
        run_logged([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], str(log))
    assert log.read_text() == "boom\n"


def test_a_failed_run_repeats_its_error_not_what_it_printed_before(tmp_path):
    """The lines from the first ``error:`` / ``Traceback`` line on, not the end of a model dump."""
    child = "print('  (head): Linear()'); print(')'); print('error: bad --x'); raise SystemExit(2)"
    with pytest.raises(RunFailedError) as info:
        run_logged([sys.executable, "-c", child], str(tmp_path / "run.log"))
    assert str(info.value).endswith("run.log:\n    error: bad --x")
    child = "print(')'); " + "print('x'); " * 3 + "raise ValueError('boom')"
    with pytest.raises(RunFailedError) as info:
        run_logged([sys.executable, "-c", child], str(tmp_path / "run.log"))
    lines = str(info.value).splitlines()[1:]
    assert lines[0] == "    Traceback (most recent call last):"
    assert lines[-1] == "    ValueError: boom" and "    )" not in lines
    long = "import sys; print('error: first'); " + "print('x'); " * 20 + "sys.exit(1)"
    with pytest.raises(RunFailedError) as info:
        run_logged([sys.executable, "-c", long], str(tmp_path / "run.log"))
    assert (
        str(info.value).splitlines()[1:]
        == ["    error: first", "    ... (12 lines)"] + ["    x"] * 8
    )


def test_output_dirs_that_cannot_be_written_are_refused_leaving_nothing(tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(OutputDirError, match=r"^--output-dir: .*'.*a_file'.*it is a file"):
        check_output_dir(str(a_file))
    with pytest.raises(OutputDirError, match=r"^--root: .*a_file/sub"):
        check_output_dir(str(a_file / "sub"), "--root")
    check_output_dir(str(tmp_path / "new" / "deeper"))
    assert sorted(os.listdir(tmp_path)) == ["a_file"]  # checked, nothing created
    check_output_dir(str(tmp_path))  # an existing folder is left as it was
    assert sorted(os.listdir(tmp_path)) == ["a_file"]
    with pytest.raises(OutputDirError, match="Cannot write the log"):
        run_logged([sys.executable, "-c", "pass"], str(a_file / "run.log"))


def _run_into_a_file(folder):
    a_file = os.path.join(folder, "a_file")
    open(a_file, "w").close()
    train_and_record("tiny", TINY, a_file, 0, train_net="unused")


def test_a_run_into_a_file_is_one_line(tmp_path, capsys):
    """Not the traceback of the ``run.json`` it could not write."""
    with pytest.raises(SystemExit) as exc:
        main_of_runs(_run_into_a_file, str(tmp_path))
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Cannot write the output folder") and "it is a file" in err
    assert "Traceback" not in err and len(err.splitlines()) == 1


def test_an_interrupted_run_leaves_no_process_behind(tmp_path):
    """Ctrl-C while a run's output is read: the run is stopped, not left training unseen."""
    pid_file = tmp_path / "pid"
    child = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); "
    child += "print('eta: 1:00', flush=True); time.sleep(120)"

    def interrupt(line):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_logged([sys.executable, "-c", child], str(tmp_path / "run.log"), echo=interrupt)
    with pytest.raises(ProcessLookupError):  # stopped and reaped
        os.kill(int(pid_file.read_text()), 0)


def _fail_run():
    run_logged([sys.executable, "-c", "print('boom'); raise SystemExit(3)"], "/dev/null")


def _interrupt():
    raise KeyboardInterrupt


def _stale():
    raise StaleRunError("'logs/x' holds a run made with other settings: seed 1 (now 0).")


@pytest.mark.parametrize(
    "fn, status, message",
    [
        (_fail_run, 1, "error: a run failed (exit 3), see /dev/null:\n    boom\n"),
        (_interrupt, 130, "\ninterrupted: run the same command again to continue (finished "),
        (_stale, 2, "error: 'logs/x' holds a run made with other settings: seed 1 (now 0).\n"),
    ],
)
def test_scripts_of_runs_end_with_one_line(fn, status, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main_of_runs(fn)
    assert exc.value.code == status
    err = capsys.readouterr().err
    assert err.startswith(message) and "Traceback" not in err
