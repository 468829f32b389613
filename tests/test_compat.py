"""kdreid.compat: every fastreid module imports, and each repair does what it says."""

import importlib
import pkgutil
import subprocess
import sys

import fastreid
import numpy as np
import pytest
import torch

from kdreid import compat

# rank_cylib's setup.py runs setuptools.setup() on import and test_cython.py needs the compiled
# extension: both are build scripts shipped inside the package, not library modules.
NOT_MODULES = ("fastreid.evaluation.rank_cylib.setup", "fastreid.evaluation.rank_cylib.test_cython")


def _fastreid_modules():
    errors = []
    names = [
        m.name
        for m in pkgutil.walk_packages(fastreid.__path__, "fastreid.", onerror=errors.append)
        if m.name not in NOT_MODULES
    ]
    assert not errors, errors
    return names


def test_every_fastreid_module_imports():
    names = _fastreid_modules()
    assert len(names) > 100  # the walk really descended into every subpackage
    failures = {}
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # collect all failures, not just the first
            failures[name] = repr(exc)
    assert not failures


@pytest.mark.slow
def test_fastreid_fails_to_import_without_compat():
    """Guards the test above: a fresh interpreter without kdreid cannot import fastreid.data."""
    code = "import fastreid.data"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "torch._six" in result.stderr or "Mapping" in result.stderr


def test_shims():
    import collections

    from torch._six import string_classes

    assert collections.Mapping is collections.abc.Mapping
    assert isinstance("x", string_classes)
    assert np.zeros(2, dtype=np.bool).dtype == np.bool_


def test_data_loader_on_cpu_never_touches_cuda(monkeypatch):
    from fastreid.data.build import fast_batch_collator
    from fastreid.data.data_utils import DataLoaderX

    def no_cuda(*args, **kwargs):
        raise AssertionError("CUDA was touched")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "Stream", no_cuda)
    monkeypatch.setattr(torch.cuda, "set_device", no_cuda)
    data = [{"images": torch.full((3,), float(i)), "targets": i} for i in range(10)]
    loader = DataLoaderX(
        0, dataset=data, batch_size=4, collate_fn=fast_batch_collator, pin_memory=True
    )
    batches = list(loader)
    assert [b["targets"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert all(b["images"].device.type == "cpu" for b in batches)
    assert not loader.pin_memory


def test_reid_evaluator_never_compiles(monkeypatch):
    from fastreid.config import get_cfg
    from fastreid.evaluation import rank_cylib
    from fastreid.evaluation.reid_evaluation import ReidEvaluator

    def refuse(*args, **kwargs):
        raise AssertionError("tried to compile or exit")

    monkeypatch.setattr(rank_cylib, "compile_helper", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)
    monkeypatch.setattr(sys, "exit", refuse)
    ReidEvaluator(get_cfg(), num_query=1)


def test_verify_results_raises_instead_of_exiting():
    from fastreid.config import get_cfg
    from fastreid.evaluation.testing import verify_results

    cfg = get_cfg()
    cfg.TEST.EXPECTED_RESULTS = [["Market1501", "mAP", 90.0, 0.1]]
    with pytest.raises(AssertionError, match="verification failed"):
        verify_results(cfg, {"Market1501": {"mAP": 10.0}})


class _Payload:
    """Unpickling this would create a file: the marker of code execution."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoints_load_without_running_pickled_code(tmp_path):
    from fastreid.utils.checkpoint import Checkpointer

    model = torch.nn.Linear(2, 2)
    good = tmp_path / "good.pth"
    torch.save({"model": {k: v + 1 for k, v in model.state_dict().items()}}, good)
    Checkpointer(model).load(str(good))
    assert torch.equal(model.weight, torch.load(good, weights_only=True)["model"]["weight"])

    marker = tmp_path / "executed"
    evil = tmp_path / "evil.pth"
    torch.save({"model": model.state_dict(), "x": _Payload(str(marker))}, evil)
    assert not marker.exists()
    with pytest.raises(compat.CheckpointLoadError, match="evil.pth"):
        Checkpointer(model).load(str(evil))
    assert not marker.exists()


def test_apply_is_idempotent():
    compat.apply()
    compat.apply()
    import fastreid.data.data_utils as du

    assert du.DataLoaderX.__init__.__module__ == "kdreid.compat"


class _Broken(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, index):
        if index == 5:
            raise OSError("image 5 is broken")
        return {"images": torch.zeros(2), "targets": index}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("num_workers", [0, 1])
def test_loader_errors_reach_the_consumer(num_workers):
    """Without the repair the prefetch thread dies and iteration blocks forever."""
    from fastreid.data.build import fast_batch_collator
    from fastreid.data.data_utils import DataLoaderX

    loader = DataLoaderX(
        0, dataset=_Broken(), batch_size=2, collate_fn=fast_batch_collator, num_workers=num_workers
    )
    with pytest.raises(OSError, match="image 5 is broken"):
        list(loader)


def test_fastreid_optimizer_keeps_learning_after_the_first_step():
    """torch >= 2 zero_grad(set_to_none=True) detached FastReID's flat gradient buffers."""
    from fastreid.solver import build_optimizer

    from kdreid.config import get_cfg

    cfg = get_cfg()
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.Linear(8, 2)
    )
    optimizer, _ = build_optimizer(cfg, model)
    x, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    for _ in range(2):  # the parameters must still move on the second step
        snapshot = [p.detach().clone() for p in model.parameters()]
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        moved = [not torch.equal(a, p) for a, p in zip(snapshot, model.parameters())]
        assert all(moved), moved


def test_fastreid_reports_the_installed_release():
    # fastreid 1.4.0's __version__ says "1.3", and so did every run's environment log
    import importlib.metadata

    import fastreid
    from fastreid.utils.collect_env import collect_env_info

    installed = importlib.metadata.version("fastreid")
    assert fastreid.__version__ == installed == "1.4.0"
    assert f"{installed} @" in collect_env_info()
