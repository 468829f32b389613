"""SynthReID: a procedural, seed-deterministic pedestrian dataset in Market-1501's layout.

One module per stage, from what varies to the files on disk:

- `factors`: the factors of variation: identities (families sharing an outfit and differing in
  local marks) and camera styles.
- `figure`: the pedestrian figure drawn from an identity, and its pose in one image.
- `render`: image formation: the figure on a camera's background, the camera's effects, JPEG.
- `generate`: the dataset sizes, the plan of every image, and writing the dataset to disk.

This package exports the public API: `generate_synthreid`, the sizes, and the split folder names
FastReID's Market-1501 reader expects.
"""

from kdreid.data.synthreid.generate import (
    GALLERY_DIR,
    QUERY_DIR,
    SYNTHREID_SIZES,
    TRAIN_DIR,
    SynthReIDSize,
    generate_synthreid,
)

__all__ = [
    "GALLERY_DIR",
    "QUERY_DIR",
    "SYNTHREID_SIZES",
    "TRAIN_DIR",
    "SynthReIDSize",
    "generate_synthreid",
]
