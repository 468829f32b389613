"""SynthReID's factors of variation: family members share global colours, differ only locally."""

import itertools

import numpy as np

from kdreid.data import SYNTHREID_SIZES
from kdreid.data.synthreid.figure import PARTS, Pose, draw_labels, paint_figure
from kdreid.data.synthreid.generate import build_identities

TINY = SYNTHREID_SIZES["tiny"]


def _region_means(identity, pose):
    """Rendered figure and the mean colour of its upper and lower garments (canonical pose)."""
    color, _ = paint_figure(identity, pose)
    labels = draw_labels(identity, pose)[::2, ::2]
    means = {part: color[labels == PARTS.index(part)].mean(0) for part in ("upper", "lower")}
    return color, means


def test_families_share_global_colours_and_differ_only_locally():
    identities = list(build_identities(TINY, seed=0).values())
    pose = Pose(top=8.0, height=112.0, center=32.0, phase=0.3, front=True)
    rendered = {identity.pid: _region_means(identity, pose) for identity in identities}
    same_family, other_family = [], []
    for a, b in itertools.combinations(identities, 2):
        (image_a, means_a), (image_b, means_b) = rendered[a.pid], rendered[b.pid]
        garment_diff = max(np.abs(means_a[p] - means_b[p]).mean() for p in means_a)
        if a.family != b.family:
            other_family.append(garment_diff)
            continue
        assert a.outfit == b.outfit
        assert (a.logo_shape, a.logo_color) != (b.logo_shape, b.logo_color)
        blocks = np.abs(image_a - image_b).reshape(16, 8, 8, 8, 3).mean(axis=(1, 3, 4))
        same_family.append(garment_diff)
        assert blocks.max() > 0.1, f"pids {a.pid} and {b.pid} differ nowhere locally"
    assert len(same_family) >= 8
    assert max(same_family) < 0.04
    assert np.mean(other_family) > 0.15
