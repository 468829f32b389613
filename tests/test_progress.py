"""Progress bars on a terminal, plain log lines (no carriage returns) anywhere else."""

import io
import logging

import pytest
from tqdm import tqdm

from kdreid import progress as progress_module
from kdreid.progress import progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_on_a_terminal(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    bar = progress(range(3), desc="Extracting", unit="batch")
    assert isinstance(bar, tqdm)
    assert list(bar) == [0, 1, 2]


def test_log_lines_without_carriage_returns_elsewhere(monkeypatch, caplog, capsys):
    monkeypatch.setattr(progress_module, "LOG_EVERY_S", 0.0)  # a line at every step
    with caplog.at_level(logging.INFO, logger="kdreid.progress"):
        assert list(progress(range(4), desc="Extracting", unit="batch")) == [0, 1, 2, 3]
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("Extracting: 1/4 batch") and lines[-1].startswith("Extracting: 4/4")
    assert len(lines) == 5  # one per step, and the last once more when the loop ends
    captured = capsys.readouterr()
    assert "\r" not in captured.err + captured.out


def test_update_in_a_with_block_and_disabled(caplog):
    with caplog.at_level(logging.INFO, logger="kdreid.progress"):
        with progress(total=10, desc="Maps", unit="image", log_every_s=3600) as bar:
            bar.update(4)
            bar.update(6)
        assert [r.getMessage().split(" (")[0] for r in caplog.records][-1].startswith(
            "Maps: 10/10 image"
        )
        caplog.clear()
        assert list(progress([1, 2], desc="quiet", enabled=False)) == [1, 2]
        assert caplog.records == []


@pytest.mark.parametrize("broken", [None, "closed"])
def test_a_replaced_stderr_is_no_terminal(monkeypatch, broken):
    stream = io.StringIO()
    if broken == "closed":
        stream.close()
        monkeypatch.setattr("sys.stderr", stream)
    else:
        monkeypatch.setattr("sys.stderr", object())
    assert not progress_module.is_terminal(__import__("sys").stderr)


def test_the_evaluation_loader_writes_no_carriage_returns_to_a_pipe(capfd, caplog):
    # what a log file of `train_net.py ... 2>&1 | tee run.log` got: tqdm's redraws
    from kdreid.engine.trainer import ProgressLoader

    class Loader(list):
        dataset = None

    with caplog.at_level(logging.INFO, logger="kdreid.progress"):
        assert list(ProgressLoader(Loader([1, 2, 3]), "Extracting features")) == [1, 2, 3]
    captured = capfd.readouterr()
    assert "\r" not in captured.err + captured.out
    assert caplog.records[-1].getMessage().startswith("Extracting features: 3/3 batch")
