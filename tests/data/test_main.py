"""``python -m kdreid.data``: bad input is one ``error:`` line with status 2, no traceback."""

import pytest

from kdreid.data.__main__ import main


def _refused(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    return err


def test_a_negative_seed_is_a_usage_error(tmp_path, capsys):
    """Not numpy's ValueError from the generation, and nothing is created."""
    err = _refused(["--size", "tiny", "--seed", "-1", "--root", str(tmp_path / "d")], capsys)
    assert "argument --seed: must be 0 or more, got -1" in err and not (tmp_path / "d").exists()


@pytest.mark.parametrize("sub", ["", "sub"])
def test_a_root_that_cannot_be_written_is_one_line(tmp_path, capsys, sub):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    err = _refused(["--size", "tiny", "--root", str(a_file / sub) if sub else str(a_file)], capsys)
    assert err.startswith("error: --root: Cannot write the output folder") and "a_file" in err
    assert len(err.splitlines()) == 1


def test_a_dataset_of_another_seed_is_one_line(tmp_path, capsys):
    main(["--size", "tiny", "--root", str(tmp_path)])
    assert "SynthReID-tiny: 192 images in" in capsys.readouterr().out
    err = _refused(["--size", "tiny", "--seed", "1", "--root", str(tmp_path)], capsys)
    assert err.startswith(f"error: {tmp_path / 'SynthReID-tiny'} holds SynthReID")
    assert "'seed': 0" in err and len(err.splitlines()) == 1
