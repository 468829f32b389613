"""tools/gpu_check.sh, the GPU checks for an offline machine: which wheels it installs, and that
it refuses unknown steps before running any (its GPU steps themselves need a GPU)."""

import json
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


def test_script_parses_and_documents_its_steps_in_order():
    subprocess.run(["bash", "-n", SCRIPT], check=True)
    text = open(SCRIPT).read()
    known = text.split('STEPS_KNOWN="')[1].split('"')[0].split()
    assert known == ["install", "cuda-tests", "rerank-gpu", "mdpr", "train-speed", "inference",
                     "amp-train", "nccl", "eval", "rerank", "all-tests"]  # fmt: skip
    documented = [line.split()[1] for line in text.splitlines() if line.startswith("#   ")]
    assert [name for name in documented if name in known] == known
    for name in known:
        assert f"\n    {name})" in text, f"step {name} is not dispatched"


TRAIN_STUB = """#!{python}
# python3 of a GPU machine, as far as amp-train and nccl ask: each training run recorded, its
# output as a CUDA run's; STUB_FAULTS (comma-separated) breaks some: a config name makes that run
# fail, "cpu" makes runs fall back to the CPU, "gloo" gives torchrun the CPU's backend.
import json, os, sys
argv = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(json.dumps({{"argv": argv, "datasets": os.environ.get("FASTREID_DATASETS")}}) + "\\n")
faults = [f for f in os.environ.get("STUB_FAULTS", "").split(",") if f]
config = argv[argv.index("--config-file") + 1]
out = argv[argv.index("OUTPUT_DIR") + 1]
os.makedirs(out, exist_ok=True)
if any(f in config for f in faults):
    sys.exit("RuntimeError: CUDA error: an illegal memory access was encountered")
print("Running on cpu." if "cpu" in faults else "Running on cuda (NVIDIA H200).")
print("Mixed precision training: torch.float16 autocast with gradient scaling.")
if argv[:2] == ["-m", "torch.distributed.run"]:
    backend = "gloo" if "gloo" in faults else "nccl"
    print(f"Process group: backend {{backend}}, world size 1, rank 0 (local rank 0 of 1), 8 CPU")
print("epoch/iter: 0/5  loss_fkd_map: 0.5  loss_kd_logits: 0.5")
print("| Dataset       | Rank-1   | mAP   | mINP   |")
print("|:--------------|:---------|:------|:-------|")
print("| SynthReIDTiny | 25.00    | 12.34 | 5.00   |")
for name in ("model_final.pth", "config.yaml"):
    open(os.path.join(out, name), "w").close()
"""


def _run_training_steps(tmp_path, faults=""):
    log = tmp_path / "runs.jsonl"
    stub = tmp_path / "python3"
    stub.write_text(TRAIN_STUB.format(python=sys.executable, log=str(log)))
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    env = {k: v for k, v in os.environ.items() if k != "FASTREID_DATASETS"}
    env.update(PYTHON=str(stub), OUT=str(tmp_path / "out"), RUNS=str(tmp_path / "runs"),
               STUB_FAULTS=faults)  # fmt: skip
    done = subprocess.run(
        ["bash", SCRIPT, "amp-train", "nccl"], env=env, capture_output=True, text=True, timeout=120
    )
    runs = [json.loads(line) for line in log.read_text().splitlines()]
    return done, runs, tmp_path / "out"


def test_amp_train_and_nccl_run_the_tiny_configs_on_cuda(tmp_path):
    done, runs, out = _run_training_steps(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    report = (out / "amp-train.txt").read_text()
    names = ["amp-mdpr", "amp-fkd-teacher", "amp-fkd-student", "amp-speedkd-teacher",
             "amp-speedkd-student"]  # fmt: skip
    for name in names:
        assert f"PASS {name}: mAP 12.34 (SynthReIDTiny)" in report
        assert (out / f"{name}.log").exists()
    assert "amp-train: 0 of 5 runs failed" in report and "== amp-train: exit 0" in report
    assert "PASS nccl-mdpr: mAP 12.34" in (out / "nccl.txt").read_text()

    configs = [run["argv"][run["argv"].index("--config-file") + 1] for run in runs]
    assert configs == [
        "configs/MDPR/Synthetic/tiny.yml",
        "configs/FactorizedKD/Synthetic/tiny_teacher.yml",
        "configs/FactorizedKD/Synthetic/tiny_student.yml",
        "configs/Synthetic/tiny.yml",
        "configs/SpeedKD/Synthetic/tiny_kd.yml",
        "configs/MDPR/Synthetic/tiny.yml",
    ]
    scripts = [next(a for a in run["argv"] if a.endswith("train_net.py")) for run in runs]
    projects = [script.split("/")[1] for script in scripts]
    assert projects == ["MDPR", "FactorizedKD", "FactorizedKD", "SpeedKD", "SpeedKD", "MDPR"]
    one_epoch = "SOLVER.MAX_EPOCH 1 SOLVER.STEPS [1] TEST.EVAL_PERIOD 1 KDREID.PROGRESS False"
    for run in runs:
        line = " ".join(run["argv"])
        assert "MODEL.DEVICE cuda" in line and one_epoch in line
        assert run["datasets"] == str(tmp_path / "runs" / "datasets")
    for run, name in zip(runs, names):
        assert "SOLVER.AMP.ENABLED True" in " ".join(run["argv"])
        assert run["argv"][-2:] == ["OUTPUT_DIR", str(tmp_path / "runs" / name)]
    fkd_teacher, speedkd_teacher = tmp_path / "runs" / names[1], tmp_path / "runs" / names[3]
    student = runs[2]["argv"]
    assert student[student.index("KD.MODEL_WEIGHTS") + 1] == f"['{fkd_teacher}/model_final.pth']"
    assert student[student.index("KD.MODEL_CONFIG") + 1] == f"['{fkd_teacher}/config.yaml']"
    student = runs[4]["argv"]
    assert (
        student[student.index("KD.MODEL_WEIGHTS") + 1] == f"('{speedkd_teacher}/model_final.pth',)"
    )
    torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                "projects/MDPR/train_net.py"]  # fmt: skip
    assert runs[5]["argv"][:6] == torchrun


def test_failed_runs_are_named_and_counted(tmp_path):
    """A failing teacher skips its student, and the other runs still go; a run that fell back
    to the CPU, or a process group on gloo, fails its step."""
    done, runs, out = _run_training_steps(tmp_path, faults="tiny_teacher,gloo")
    assert done.returncode == 2, done.stdout + done.stderr  # amp-train and nccl
    report = (out / "amp-train.txt").read_text()
    assert "FAIL amp-fkd-teacher: exit 1, no results table" in report
    assert "illegal memory access" in report  # the run's last lines
    assert "FAIL amp-fkd-student: not run, its teacher failed" in report
    assert "PASS amp-mdpr" in report and "PASS amp-speedkd-student" in report
    assert "amp-train: 2 of 5 runs failed" in report
    assert len(runs) == 5  # no student run without its teacher
    nccl = (out / "nccl.txt").read_text()
    assert "FAIL nccl-mdpr: exit 0, mAP 12.34 (SynthReIDTiny), its log lacks 'backend nccl" in nccl

    (tmp_path / "cpu").mkdir()
    done, runs, out = _run_training_steps(tmp_path / "cpu", faults="cpu")
    assert done.returncode == 2
    assert "its log lacks 'Running on cuda'" in (out / "amp-train.txt").read_text()
    assert "amp-train: 5 of 5 runs failed" in (out / "amp-train.txt").read_text()
