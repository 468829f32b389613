"""Train or evaluate a MDPR model (or any FastReID model) with kdreid's trainer.

    python projects/MDPR/train_net.py --config-file configs/<file>.yml [--eval-only] [--resume] \
        [--num-gpus N] [KEY VALUE ...]
"""

import mdpr  # noqa: F401  (imported for registration of the project's models and config keys)
from kdreid.engine import default_argument_parser, launch_main

if __name__ == "__main__":
    launch_main(default_argument_parser().parse_args())
