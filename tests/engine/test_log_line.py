"""The training log line: many loss terms summed by kind; few left as FastReID prints them."""

import pytest

from kdreid.engine.trainer import compact_loss_line, loss_kind

MDPR_LINE = (
    " eta: 0:00:01  epoch/iter: 0/3  total_loss: 10.5  loss_hard_global_cls: 1  "
    "loss_hard_global_triplet: 0.5  loss_hard_part_0_cls: 2  loss_hard_part_0_triplet: 0.25  "
    "loss_attn_bap4_cls: 3  loss_diversity_loss_4: 0.75  loss_diversity_loss_reg_4: 0.125  "
    "loss_mutual_distillation: -0.01  time: 0.7897  data_time: 0.0022  lr: 1.00e-03  "
)


@pytest.mark.parametrize(
    "name, kind",
    [
        ("loss_hard_global_cls", "cls"),
        ("loss_hard_part_0_triplet", "triplet"),
        ("loss_attn_bap3_cls", "cls"),
        ("loss_diversity_loss_4", "diversity"),
        ("loss_diversity_loss_reg_4", "diversity"),
        ("loss_mutual_distillation", "distillation"),
        ("loss_kd", "kd"),
    ],
)
def test_loss_kind(name, kind):
    assert loss_kind(name) == kind


def test_many_terms_are_summed_by_kind():
    # cls 1 + 2 + 3 = 6, triplet 0.5 + 0.25 = 0.75, diversity 0.75 + 0.125 = 0.875
    line = compact_loss_line(MDPR_LINE)
    assert line == (
        " eta: 0:00:01  epoch/iter: 0/3  total_loss: 10.5  cls: 6 (sum of 3)  "
        "triplet: 0.75 (sum of 2)  diversity: 0.875 (sum of 2)  distillation: -0.01  "
        "time: 0.7897  data_time: 0.0022  lr: 1.00e-03  "
    )


def test_few_terms_are_left_alone():
    line = " epoch/iter: 0/3  total_loss: 3  loss_cls: 2  loss_triplet: 1  time: 0.1  lr: 1e-3"
    assert compact_loss_line(line) == line


def test_the_trainer_s_printer_compacts(fastreid_root, tmp_path):
    from fastreid.utils.events import CommonMetricPrinter

    from kdreid.config import get_cfg, merge_from_file, resolve_device
    from kdreid.engine import Trainer

    from ..conftest import REPO

    cfg = get_cfg()
    merge_from_file(cfg, f"{REPO}/configs/Synthetic/tiny.yml")
    cfg.OUTPUT_DIR = str(tmp_path)
    resolve_device(cfg)
    trainer = Trainer(cfg)
    (printer,) = [w for w in trainer.build_writers() if isinstance(w, CommonMetricPrinter)]
    printed = []
    printer.logger._logger = type("Logger", (), {"info": lambda self, m: printed.append(m)})()
    printer.logger.info(MDPR_LINE)
    trainer.close()
    assert printed == [compact_loss_line(MDPR_LINE)] and "cls: 6 (sum of 3)" in printed[0]
