"""SynthReID registered as FastReID datasets: generated on first use, read as Market-1501."""

from fastreid.data.datasets import DATASET_REGISTRY

import kdreid.data
from kdreid.data import SYNTHREID_SIZES
from kdreid.data.synthreid.generate import MARKER

TINY = SYNTHREID_SIZES["tiny"]


def test_registered_dataset_generates_on_first_use(tmp_path):
    assert kdreid.data.datasets.SynthReIDTiny is DATASET_REGISTRY.get("SynthReIDTiny")
    for name in ("SynthReIDTiny", "SynthReIDSmall", "SynthReIDMarket"):
        assert DATASET_REGISTRY.get(name) is not None
    dataset = DATASET_REGISTRY.get("SynthReIDTiny")(root=str(tmp_path))
    assert (tmp_path / "SynthReID-tiny" / MARKER).is_file()
    assert (len(dataset.train), len(dataset.query), len(dataset.gallery)) == (96, 32, 64)
    path, pid, camid = dataset.train[0]
    assert pid.startswith("synthreid_") and camid.startswith("synthreid_")
    assert all(isinstance(pid, int) and 0 <= cam < TINY.num_cams for _, pid, cam in dataset.query)
    assert dataset.get_num_pids(dataset.train) == TINY.num_train_ids
    reloaded = DATASET_REGISTRY.get("SynthReIDTiny")(root=str(tmp_path))
    assert reloaded.gallery == dataset.gallery
