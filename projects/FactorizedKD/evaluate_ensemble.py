"""Evaluate the FactorizedKD teacher ensemble as one model (accuracy, and speed with KDREID.SPEED).

    python projects/FactorizedKD/evaluate_ensemble.py \
        --config-file configs/FactorizedKD/<dataset>/ensemble.yml \
        KD.MODEL_CONFIG "['<dir>/Up1/config.yaml', ...]" \
        KD.MODEL_WEIGHTS "['<dir>/Up1/model_final.pth', ...]" OUTPUT_DIR <dir>/ensemble

``benchmarks/fkd_teachers.py`` prints this command for the teachers it trained. The ensemble has no
MODEL.WEIGHTS: its weights are its members' (``KD.MODEL_WEIGHTS``). The config, its members'
configs included, is checked before any member is built (:func:`kdreid.engine.setup`).
"""

import argparse

from fastreid.utils import comm
from fastreid.utils.logger import setup_logger

from factorized_kd import evaluate_ensemble
from kdreid.cli import report_user_errors
from kdreid.engine import setup


def main(args):
    args.eval_only = True  # what FastReID's default_setup reads
    cfg = setup(args)  # sets up the "fastreid" and "kdreid" loggers; the project's too:
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="factorized_kd")
    return evaluate_ensemble(cfg, config_file=args.config_file)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Evaluate the FactorizedKD teacher ensemble.")
    parser.add_argument("--config-file", required=True, metavar="FILE", help="an ensemble config")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE options")
    report_user_errors(main, parser.parse_args())
