"""tools/visualize_ranks.py, the command line that draws ranked lists (kdreid.evaluation.visualize,
tested in tests/evaluation/test_visualize.py): end to end in a subprocess, and in-process with
re-ranking and query expansion."""

import os

import cv2
import pytest
import torch

from kdreid.config import get_cfg, merge_from_file, resolve_device
from kdreid.engine import Trainer

from ..conftest import REPO, run_script

TINY = os.path.join(REPO, "configs", "Synthetic", "tiny.yml")
TOOL = "tools/visualize_ranks.py"


@pytest.fixture(scope="module")
def random_checkpoint(tmp_path_factory):
    """A randomly initialised tiny model, saved as a FastReID checkpoint."""
    cfg = get_cfg()
    merge_from_file(cfg, TINY)
    cfg.MODEL.BACKBONE.PRETRAIN = False
    resolve_device(cfg)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "random.pth"
    torch.save({"model": Trainer.build_model(cfg).state_dict()}, path)
    return str(path)


def _tool(*argv, datasets_root):
    return run_script(TOOL, "--config-file", TINY, *argv, datasets_root=datasets_root)


@pytest.mark.slow
def test_tool_end_to_end(datasets_root, random_checkpoint, tmp_path):
    out = tmp_path / "pictures"
    weights = ["MODEL.WEIGHTS", random_checkpoint, "KDREID.PROGRESS", "False"]
    proc = _tool(
        "--num-queries",
        "2",
        "--topk",
        "5",
        "--output-dir",
        str(out),
        *weights,
        datasets_root=datasets_root,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    files = sorted(os.listdir(out))
    assert len(files) == 2 and files[0].startswith("000_query") and files[1].startswith("001_")
    for name in files:
        assert cv2.imread(str(out / name)).shape == (204, 490, 3)

    proc = _tool(
        "--output-dir",
        str(tmp_path / "not_made"),
        "MODEL.WEIGHTS",
        str(tmp_path / "missing.pth"),
        datasets_root=datasets_root,
    )
    assert proc.returncode == 2
    assert "error: MODEL.WEIGHTS" in proc.stderr and "missing.pth" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "not_made").exists()  # refused before anything was written

    (tmp_path / "a_file").write_text("")
    proc = _tool(
        "--output-dir", str(tmp_path / "a_file" / "sub"), *weights, datasets_root=datasets_root
    )
    assert proc.returncode == 2
    assert "error: Cannot write the output folder" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def tool(load_script):
    return load_script("tools/visualize_ranks.py")


def test_tool_rerank_row(tool, fastreid_root, random_checkpoint, tmp_path, monkeypatch):
    """--rerank calls re_ranking_features with the config's keys and draws a second row."""
    import kdreid.evaluation

    calls = []

    def fake_rerank(q_feat, g_feat, k1, k2, lambda_value, metric):
        calls.append((q_feat.shape, g_feat.shape, k1, k2, lambda_value, metric))
        return torch.cdist(q_feat, g_feat)

    monkeypatch.setattr(kdreid.evaluation, "re_ranking_features", fake_rerank, raising=False)
    out = tmp_path / "pictures"
    written = tool.run(
        tool.parse_args(
            [
                "--config-file",
                TINY,
                "--rerank",
                "--num-queries",
                "1",
                "--topk",
                "4",
                "--output-dir",
                str(out),
                "MODEL.WEIGHTS",
                random_checkpoint,
                "KDREID.PROGRESS",
                "False",
                "TEST.RERANK.K1",
                "7",
            ]
        )
    )
    assert calls == [((32, 512), (64, 512), 7, 6, 0.3, "cosine")]
    assert len(written) == 1
    assert cv2.imread(written[0]).shape == (402, 412, 3)


def test_tool_ranks_after_query_expansion_as_the_evaluator(
    tool, fastreid_root, random_checkpoint, tmp_path, monkeypatch
):
    """TEST.AQE.ENABLED: the pictures show the lists the evaluator scores (after AQE)."""
    calls = []

    def fake_aqe(q_feat, g_feat, qe_time, qe_k, alpha):
        calls.append((q_feat.shape, g_feat.shape, qe_time, qe_k, alpha))
        return q_feat, g_feat

    monkeypatch.setattr(tool, "aqe", fake_aqe)
    argv = ["--config-file", TINY, "--num-queries", "1", "--output-dir", str(tmp_path / "p"),
            "MODEL.WEIGHTS", random_checkpoint, "KDREID.PROGRESS", "False",
            "TEST.AQE.ENABLED", "True", "TEST.AQE.QE_K", "3"]  # fmt: skip
    assert len(tool.run(tool.parse_args(argv))) == 1
    assert calls == [((32, 512), (64, 512), 1, 3, 3.0)]
