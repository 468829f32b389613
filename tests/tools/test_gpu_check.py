"""tools/gpu_check.sh, the GPU checks for an offline machine: which wheels it installs, and that
it refuses unknown steps before running any (its GPU steps themselves need a GPU)."""

import os
import stat
import subprocess
import sys

import pytest

from tests.conftest import REPO

SCRIPT = os.path.join(REPO, "tools", "gpu_check.sh")

STUB = """#!/usr/bin/env bash
# python3 of an offline GPU machine, as far as the install step asks: pip calls are recorded
if [ "$1" = "-m" ] && [ "$2" = "pip" ]; then echo "$*" >> "{log}"; exit 0; fi
exec "{python}" "$@"
"""


@pytest.mark.slow
def test_install_takes_only_the_missing_wheels_from_the_bundle(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "yacs-0.1.8-py3-none-any.whl").touch()  # installed here: left alone
    (bundle / "not_installed_pkg-1.0-py3-none-any.whl").touch()
    log = tmp_path / "pip.log"
    stub = tmp_path / "python3"
    stub.write_text(STUB.format(log=log, python=sys.executable))
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=str(stub), BUNDLE=str(bundle), OUT=str(out))
    done = subprocess.run(
        ["bash", SCRIPT, "install"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    first, second = log.read_text().splitlines()
    assert first.startswith("-m pip install --no-index --no-deps ")
    assert first.endswith("not_installed_pkg-1.0-py3-none-any.whl") and "yacs" not in first
    assert second == "-m pip install --no-index --no-deps --no-build-isolation -e ."
    report = (out / "install.txt").read_text()
    assert "torch " in report and "GPU: " in report and "== install: exit 0" in report


def test_unknown_step_is_refused_before_anything_runs(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"), PYTHON="/nonexistent/python3")
    done = subprocess.run(
        ["bash", SCRIPT, "cuda-tests", "benchmark"], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "unknown step 'benchmark'" in done.stderr
    assert not (tmp_path / "out").exists()
