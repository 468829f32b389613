"""Train or evaluate a FactorizedKD model (or any FastReID model) with the partial-view trainer.

    python projects/FactorizedKD/train_net.py --config-file configs/<file>.yml [--eval-only] \
        [--resume] [--num-gpus N] [KEY VALUE ...]

A partial teacher, e.g. the Up1 view of Market-1501, trained then evaluated on that view:

    python projects/FactorizedKD/train_net.py \
        --config-file configs/FactorizedKD/Market1501/teacher.yml MODEL.FKD.VIEW Up1
"""

from factorized_kd import FKDTrainer
from kdreid.engine import default_argument_parser, launch_main

if __name__ == "__main__":
    launch_main(default_argument_parser().parse_args(), trainer_cls=FKDTrainer)
