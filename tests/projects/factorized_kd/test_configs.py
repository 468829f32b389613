"""Every FactorizedKD config loads and checks; every student's last map tells its views apart; an FD
student and its plain config are the same network; teachers and ensembles fit their students.

No model is built: a ResNet's last-map size is computed (:func:`resnet_map_size`, checked against
hand-derived sizes), so the file runs in about a second.
"""

import glob
import math
import os

import pytest

from factorized_kd.config import check_fkd_keys
from factorized_kd.views import FIGURE_1, PARTIAL_VIEWS, view_rows
from kdreid.config import get_cfg, merge_from_file

from ...conftest import REPO

FKD = os.path.join(REPO, "configs", "FactorizedKD")
CONFIGS = sorted(glob.glob(os.path.join(FKD, "**", "*.yml"), recursive=True))
# FD student -> (its plain config, a teacher config, the ensemble config), per folder.
STUDENTS = {
    "Market1501/student.yml": (
        "Market1501/plain_student.yml", "Market1501/teacher.yml", "Market1501/ensemble.yml"
    ),
    "DukeMTMC/student.yml": (
        "DukeMTMC/plain_student.yml", "DukeMTMC/teacher.yml", "DukeMTMC/ensemble.yml"
    ),
    "Synthetic/student_small.yml": (
        "Synthetic/plain_student_small.yml", "Synthetic/teacher_small.yml",
        "Synthetic/ensemble_small.yml",
    ),
    "Synthetic/tiny_student.yml": (
        None, "Synthetic/tiny_teacher.yml", "Synthetic/tiny_ensemble.yml"
    ),
}  # fmt: skip
GROUPS = [[v for v in PARTIAL_VIEWS if FIGURE_1[v][2] == n] for n in (4, 7)]  # Figure 1's groups


def _cfg(relpath):
    cfg = get_cfg()
    merge_from_file(cfg, os.path.join(FKD, relpath))
    return cfg


def _conv_out(size, kernel, stride, padding, ceil_mode=False):
    rounding = math.ceil if ceil_mode else math.floor
    return rounding((size + 2 * padding - kernel) / stride) + 1


def resnet_map_size(size, last_stride):
    """Rows (or columns) of the last map of FastReID's ResNet for ``size`` input rows (columns).

    conv1 7x7 stride 2 padding 3; max-pool 3x3 stride 2, no padding, ``ceil_mode``; layer2 and
    layer3 stride 2 and layer4 ``last_stride``, each by a 3x3 convolution with padding 1 (its 1x1
    shortcut gives the same size).
    """
    size = _conv_out(size, 7, 2, 3)
    size = _conv_out(size, 3, 2, 0, ceil_mode=True)
    for stride in (2, 2, last_stride):
        size = _conv_out(size, 3, stride, 1)
    return size


@pytest.mark.parametrize(
    "size, last_stride, expected",
    # 256 -> 128 -> 64 -> 32 -> 16 -> 16; 97 -> 49 -> 24 (ceil) -> 12 -> 6 -> 3 (checked once
    # against a ResNet-18 forward, as were 64, 100 and 128 with both strides).
    [(256, 1, 16), (128, 1, 8), (128, 2, 4), (64, 1, 4), (64, 2, 2), (100, 1, 7), (97, 2, 3)],
)
def test_resnet_map_size(size, last_stride, expected):
    assert resnet_map_size(size, last_stride) == expected


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, FKD))
def test_config_loads_and_passes_the_view_checks(path):
    cfg = _cfg(path)
    check_fkd_keys(cfg)  # a partial view with sizes other than its VIEW_SIZE fails here
    assert cfg.MODEL.META_ARCHITECTURE in ("Baseline", "FKDStudent", "FKDEnsemble")
    assert not (cfg.MODEL.WEIGHTS or cfg.KD.MODEL_CONFIG or cfg.KD.MODEL_WEIGHTS)


def test_every_config_is_listed():
    listed = {p for pair in STUDENTS.items() for p in (pair[0], *pair[1]) if p}
    assert {os.path.relpath(p, FKD) for p in CONFIGS} == listed


@pytest.mark.parametrize("student", STUDENTS)
def test_student_map_gives_each_view_its_own_rows(student):
    """What FKDStudent.map_rows refuses (a partial view taking every row) cannot happen, and the
    three views of each of Figure 1's groups take three different row ranges."""
    cfg = _cfg(student)
    assert cfg.MODEL.META_ARCHITECTURE == "FKDStudent"
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_backbone"  # what resnet_map_size computes
    height = resnet_map_size(cfg.INPUT.SIZE_TRAIN[0], cfg.MODEL.BACKBONE.LAST_STRIDE)
    rows = {v: view_rows(v, height, cfg.MODEL.FKD.VIEW_READING) for v in PARTIAL_VIEWS}
    for view, (start, stop) in rows.items():
        assert 0 <= start < stop <= height and (start, stop) != (0, height), (view, height)
    for group in GROUPS:
        assert len({rows[v] for v in group}) == len(group), (group, height, rows)


@pytest.mark.parametrize("student", [s for s, (plain, *_) in STUDENTS.items() if plain])
def test_fd_student_is_its_plain_config_plus_fd(student):
    """The FD student deploys as its plain config: same network, inputs, data and schedule."""
    fd, plain = _cfg(student), _cfg(STUDENTS[student][0])
    assert plain.MODEL.META_ARCHITECTURE == fd.KDREID.DISTILL.STUDENT == "Baseline"
    fd.MODEL.META_ARCHITECTURE = "Baseline"
    assert fd == plain  # every other key, MODEL.FKD's defaults included


@pytest.mark.parametrize("student", STUDENTS)
def test_teacher_and_ensemble_fit_the_student(student):
    """Teachers train on the student's data with its schedule; the ensemble is evaluated on the
    student's test images."""
    _, teacher_path, ensemble_path = STUDENTS[student]
    fd, teacher, ensemble = _cfg(student), _cfg(teacher_path), _cfg(ensemble_path)
    assert teacher.MODEL.FKD.VIEW in PARTIAL_VIEWS
    assert teacher.MODEL.FKD.VIEW_READING == fd.MODEL.FKD.VIEW_READING
    assert teacher.DATASETS == fd.DATASETS and teacher.SOLVER.MAX_EPOCH == fd.SOLVER.MAX_EPOCH
    assert ensemble.MODEL.META_ARCHITECTURE == "FKDEnsemble"
    assert ensemble.INPUT.SIZE_TEST == fd.INPUT.SIZE_TEST and ensemble.DATASETS == fd.DATASETS


def test_evidence_teacher_map_matches_the_student_view_block():
    """On SynthReID-small a teacher's last map (32x32 view) is the size of the student's block of
    a group-1 view (2 of 4 rows, 2 columns), so the map term needs no resampling there."""
    fd, teacher = _cfg("Synthetic/student_small.yml"), _cfg("Synthetic/teacher_small.yml")
    h, w = (resnet_map_size(s, fd.MODEL.BACKBONE.LAST_STRIDE) for s in fd.INPUT.SIZE_TRAIN)
    t = [resnet_map_size(s, teacher.MODEL.BACKBONE.LAST_STRIDE) for s in teacher.INPUT.SIZE_TRAIN]
    for view in GROUPS[0]:
        start, stop = view_rows(view, h)
        assert [stop - start, w] == t, view
