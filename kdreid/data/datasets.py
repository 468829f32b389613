"""SynthReID registered as FastReID datasets: `SynthReIDTiny`, `SynthReIDSmall`, `SynthReIDMarket`.

Each reads `<root>/SynthReID-<size>/` exactly as FastReID's `Market1501` reads Market-1501 (file
names parsed with the same pattern), after generating the folder there on first use.
"""

import glob
import os.path as osp
import re

from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.bases import ImageDataset

from kdreid.data.synthreid import GALLERY_DIR, QUERY_DIR, TRAIN_DIR, generate_synthreid

__all__ = ["SynthReIDMarket", "SynthReIDSmall", "SynthReIDTiny"]

_PATTERN = re.compile(r"([-\d]+)_c(\d)")


class _SynthReID(ImageDataset):
    """SynthReID of one size, generated under `root` on first use (seed 0).

    Args:
        root: FastReID's dataset root (`datasets/` or `$FASTREID_DATASETS`).
        **kwargs: passed to FastReID's `ImageDataset` (e.g. `combineall`).
    """

    _junk_pids = [0, -1]
    dataset_name = "synthreid"
    size = ""

    def __init__(self, root: str = "datasets", **kwargs) -> None:
        self.root = root
        self.dataset_dir = str(generate_synthreid(root, self.size))
        self.train_dir = osp.join(self.dataset_dir, TRAIN_DIR)
        self.query_dir = osp.join(self.dataset_dir, QUERY_DIR)
        self.gallery_dir = osp.join(self.dataset_dir, GALLERY_DIR)
        train = self.process_dir(self.train_dir)
        query = self.process_dir(self.query_dir, is_train=False)
        gallery = self.process_dir(self.gallery_dir, is_train=False)
        super().__init__(train, query, gallery, **kwargs)

    def process_dir(self, dir_path: str, is_train: bool = True) -> list[tuple]:
        """Lists (path, pid, camid) of a split folder, parsed from Market-1501 file names.

        Train items carry FastReID's dataset prefix (`"synthreid_12"`); camids are 0-based.
        """
        data = []
        for img_path in sorted(glob.glob(osp.join(dir_path, "*.jpg"))):
            pid, camid = map(int, _PATTERN.search(osp.basename(img_path)).groups())
            camid -= 1
            if is_train:
                pid, camid = f"{self.dataset_name}_{pid}", f"{self.dataset_name}_{camid}"
            data.append((img_path, pid, camid))
        return data


@DATASET_REGISTRY.register()
class SynthReIDTiny(_SynthReID):
    """SynthReID "tiny": 16 + 16 identities, 3 cameras, 192 images; for tests."""

    size = "tiny"


@DATASET_REGISTRY.register()
class SynthReIDSmall(_SynthReID):
    """SynthReID "small": 150 + 150 identities, 4 cameras, 3,300 images; the CPU demo."""

    size = "small"


@DATASET_REGISTRY.register()
class SynthReIDMarket(_SynthReID):
    """SynthReID "market": 751 + 750 identities, 6 cameras, Market-1501's image counts."""

    size = "market"
