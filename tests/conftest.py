"""Shared fixtures: every test runs on the CPU on data it makes itself, never in the repo."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch

import kdreid  # noqa: F401  (repairs fastreid before any test imports it)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

torch.set_num_threads(min(2, os.cpu_count() or 1))


def load_script_module(path):
    """A script of the repository (its path relative to the repository root) loaded as a fresh
    module, without running its ``__main__`` block. The scripts of ``benchmarks/`` import their
    harness as a sibling package, which pytest's ``pythonpath`` setting makes importable."""
    name = os.path.splitext(path.replace(os.sep, "_"))[0]
    spec = importlib.util.spec_from_file_location(f"script_{name}", os.path.join(REPO, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def set_keys(cfg, **values):
    """Set config keys given as ``**{"MODEL.HEADS.NUM_CLASSES": 4}``; returns ``cfg``."""
    for key, value in values.items():
        node = cfg
        *path, leaf = key.split(".")
        for part in path:
            node = node[part]
        node[leaf] = value
    return cfg


def run_script(path, *argv, datasets_root, timeout=600):
    """Run the repository's script ``path`` (relative to the root) in its own process, from the
    root, on the datasets under ``datasets_root``; its output captured as text."""
    return subprocess.run(
        [sys.executable, os.path.join(REPO, path), *argv],
        cwd=REPO,
        env={**os.environ, "FASTREID_DATASETS": str(datasets_root)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def load_script():
    """``load_script(path)``: the script at ``path`` (relative to the repository root) as a
    module, loaded once per session (:func:`load_script_module`; tests that change a module's
    attributes do so with ``monkeypatch``, which puts them back)."""
    loaded = {}

    def load(path):
        if path not in loaded:
            loaded[path] = load_script_module(path)
        return loaded[path]

    return load


@pytest.fixture(scope="session")
def datasets_root(tmp_path_factory):
    """A session-wide datasets folder (SynthReID sets are generated there once)."""
    return tmp_path_factory.mktemp("datasets")


@pytest.fixture
def fastreid_root(datasets_root, monkeypatch):
    """Point FastReID's loaders at ``datasets_root`` (it reads $FASTREID_DATASETS at import)."""
    from fastreid.data import build

    monkeypatch.setattr(build, "_root", str(datasets_root))
    monkeypatch.setenv("FASTREID_DATASETS", str(datasets_root))
    return datasets_root


@pytest.fixture(scope="session")
def tiny_teacher(datasets_root, tmp_path_factory):
    """A ResNet-18 teacher trained for 2 epochs on SynthReID-tiny: ``(config file, checkpoint)``.

    Weak, but a real FastReID checkpoint with a classifier over SynthReID-tiny's identities, as
    distillation needs.
    """
    from fastreid.data import build

    from kdreid.config import get_cfg, merge_from_file, resolve_device
    from kdreid.engine import Trainer

    config = os.path.join(REPO, "configs", "Synthetic", "tiny.yml")
    output_dir = tmp_path_factory.mktemp("tiny_teacher")
    cfg = get_cfg()
    merge_from_file(cfg, config)
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.KDREID.PROGRESS = False
    cfg.KDREID.SEED = 0
    resolve_device(cfg)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(build, "_root", str(datasets_root))
        mp.setenv("FASTREID_DATASETS", str(datasets_root))
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
    return config, str(output_dir / "model_final.pth")


def assert_output_dir_refused(main, tmp_path, capsys, sub=""):
    """``main(["--output-dir", X])`` of a script of runs, X a file (or a folder under one): one
    ``error:`` line naming the flag, status 2, nothing printed on stdout."""
    from harness.runs import main_of_runs

    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(SystemExit) as exc:
        main_of_runs(main, ["--output-dir", str(a_file / sub) if sub else str(a_file)])
    out, err = capsys.readouterr()
    assert exc.value.code == 2 and err.startswith("error: --output-dir: Cannot write")
    assert "Traceback" not in err and len(err.splitlines()) == 1 and out == ""
