"""Shared fixtures: every test runs on the CPU on data it makes itself, never in the repo."""

import os

import pytest
import torch

import kdreid  # noqa: F401  (repairs fastreid before any test imports it)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

torch.set_num_threads(min(2, os.cpu_count() or 1))


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
