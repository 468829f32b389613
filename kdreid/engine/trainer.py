"""The trainer every kdreid project uses: FastReID's ``DefaultTrainer`` with kdreid's guarantees.

Compared with ``DefaultTrainer`` it evaluates with kdreid's exact vectorised evaluator and shows
extraction progress, writes checkpoints atomically, refuses to start from ImageNet weights that are
not on disk, and reports how far ``--resume`` got.
"""

import logging
import os

from fastreid.data.build import (
    _test_loader_from_config,
    build_reid_test_loader,
    build_reid_train_loader,
)
from fastreid.data.transforms import build_transforms as fastreid_transforms
from fastreid.engine import DefaultTrainer, hooks
from fastreid.evaluation import inference_on_dataset, print_csv_format
from fastreid.utils import comm
from tqdm import tqdm

from kdreid.engine.checkpoint import AtomicCheckpointer
from kdreid.engine.hooks import DistillationWarmup
from kdreid.errors import ConfigError
from kdreid.evaluation import ReidEvaluator

__all__ = ["Trainer", "ProgressLoader", "check_batch_fits", "check_freeze_layers"]

logger = logging.getLogger(__name__)


class ProgressLoader:
    """Wraps a finite data loader so that iterating it draws a progress bar.

    Args:
        loader: an iterable with ``__len__`` and ``dataset``.
        desc (str): the bar's label.
        enabled (bool): draw the bar (on the main process only).
    """

    def __init__(self, loader, desc, enabled=True):
        self.loader = loader
        self.dataset = loader.dataset
        self.desc = desc
        self.enabled = enabled and comm.is_main_process()

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        return iter(
            tqdm(
                self.loader,
                desc=self.desc,
                total=len(self.loader),
                unit="batch",
                disable=not self.enabled,
                dynamic_ncols=True,
                leave=False,
            )
        )


def check_pretrain_weights(cfg):
    """FastReID downloads ImageNet weights when none are named; kdreid never downloads.

    Raises:
        ConfigError: ``MODEL.BACKBONE.PRETRAIN`` is on and ``PRETRAIN_PATH`` is not a file.
    """
    if not cfg.MODEL.BACKBONE.PRETRAIN:
        return
    path = cfg.MODEL.BACKBONE.PRETRAIN_PATH
    if not path or not os.path.isfile(path):
        raise ConfigError(
            f"MODEL.BACKBONE.PRETRAIN is on but MODEL.BACKBONE.PRETRAIN_PATH "
            f"('{path}') is not a file. kdreid downloads nothing: put the ImageNet weights on disk "
            "and name them with MODEL.BACKBONE.PRETRAIN_PATH, or train from scratch with "
            "MODEL.BACKBONE.PRETRAIN False."
        )


def check_freeze_layers(cfg, model):
    """FastReID freezes the top-level children named in ``MODEL.FREEZE_LAYERS`` and silently does
    nothing for a name that is not one (the official MDPR code names ``backbone``, which its model
    does not have at the top level).

    Raises:
        ConfigError: ``SOLVER.FREEZE_ITERS`` > 0 and a name is not a top-level child of ``model``.
    """
    if cfg.SOLVER.FREEZE_ITERS <= 0 or not cfg.MODEL.FREEZE_LAYERS:
        return
    model = getattr(model, "module", model)
    children = [name for name, _ in model.named_children()]
    unknown = [name for name in cfg.MODEL.FREEZE_LAYERS if name not in children]
    if unknown:
        raise ConfigError(
            f"MODEL.FREEZE_LAYERS names {unknown}, which {type(model).__name__} does not have; "
            f"its top-level modules are {children} (or set SOLVER.FREEZE_ITERS 0)."
        )


def check_batch_fits(cfg, dataset):
    """A training batch must be drawable from ``dataset``.

    Raises:
        ConfigError: ``SOLVER.IMS_PER_BATCH`` exceeds the training images, or an identity sampler
            needs more identities per batch (``IMS_PER_BATCH / DATALOADER.NUM_INSTANCE``) than the
            training set has.
    """
    batch = cfg.SOLVER.IMS_PER_BATCH
    images = len(dataset)
    if batch > images:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH {batch} is more than the {images} training images of "
            f"{', '.join(cfg.DATASETS.NAMES)}: use a smaller batch."
        )
    if "Identity" in cfg.DATALOADER.SAMPLER_TRAIN and hasattr(dataset, "pids"):
        per_batch = batch // cfg.DATALOADER.NUM_INSTANCE
        identities = len(set(dataset.pids))
        if per_batch > identities:
            raise ConfigError(
                f"{cfg.DATALOADER.SAMPLER_TRAIN} draws SOLVER.IMS_PER_BATCH / "
                f"DATALOADER.NUM_INSTANCE = {batch} / {cfg.DATALOADER.NUM_INSTANCE} = {per_batch} "
                f"identities per batch, but the training set has {identities}: use a smaller "
                "batch or more instances per identity."
            )


class Trainer(DefaultTrainer):
    """FastReID's default training loop, evaluated by :class:`kdreid.evaluation.ReidEvaluator`."""

    @classmethod
    def build_model(cls, cfg):
        check_pretrain_weights(cfg)
        return super().build_model(cfg)

    def build_hooks(self):
        # DefaultTrainer.__init__ made a plain Checkpointer just before calling this method.
        old = self.checkpointer
        self.checkpointer = AtomicCheckpointer(
            old.model, old.save_dir, save_to_disk=old.save_to_disk, **old.checkpointables
        )
        check_freeze_layers(self.cfg, self.model)
        ret = super().build_hooks()
        for hook in ret:
            if isinstance(hook, hooks.PeriodicWriter):
                hook._period = self.cfg.KDREID.LOG_PERIOD
            if isinstance(hook, hooks.EvalHook) and self.cfg.TEST.EVAL_PERIOD <= 0:
                # TEST.EVAL_PERIOD 0: evaluate once, after the last epoch (FastReID's hook divides
                # by the period and fails on 0).
                hook._period = self.max_epoch + 1
        warmup = self.cfg.KDREID.DISTILL.WARMUP_ITERS
        if warmup > 0 and hasattr(getattr(self.model, "module", self.model), "kd_scale"):
            ret.insert(0, DistillationWarmup(self.model, warmup))
        return ret

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        if resume and self.start_epoch > 0:
            logger.info(
                "Resumed from %s: continuing at epoch %d (iteration %d) of %d",
                self.checkpointer.get_checkpoint_file(),
                self.start_epoch,
                self.start_epoch * self.iters_per_epoch,
                self.max_epoch,
            )

    def train(self):
        if self.start_epoch >= self.max_epoch:
            logger.info(
                "Training already finished (epoch %d of %d): evaluating the final model.",
                self.start_epoch,
                self.max_epoch,
            )
            self._last_eval_results = self.test(self.cfg, self.model)
            return self._last_eval_results
        return super().train()

    @classmethod
    def build_train_loader(cls, cfg):
        """FastReID's training loader, refused when no batch can be drawn from the training set
        (FastReID's identity samplers would then loop forever without yielding)."""
        logger.info("Prepare training set")
        loader = build_reid_train_loader(
            cfg,
            transforms=cls.build_transforms(cfg, is_train=True),
            combineall=cfg.DATASETS.COMBINEALL,
        )
        check_batch_fits(cfg, loader.dataset)
        return loader

    @classmethod
    def build_transforms(cls, cfg, is_train):
        """The image transforms of the training (``is_train``) or test loader: FastReID's.
        Projects that change what the model sees (a view crop, say) override this alone."""
        return fastreid_transforms(cfg, is_train=is_train)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """FastReID's test loader, with ``DATALOADER.NUM_WORKERS`` workers (FastReID fixes 4)."""
        kwargs = _test_loader_from_config(
            cfg, dataset_name=dataset_name, transforms=cls.build_transforms(cfg, is_train=False)
        )
        return build_reid_test_loader(**kwargs, num_workers=cfg.DATALOADER.NUM_WORKERS)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_dir=None):
        data_loader, num_query = cls.build_test_loader(cfg, dataset_name)
        return data_loader, ReidEvaluator(cfg, num_query, output_dir)

    @classmethod
    def test(cls, cfg, model):
        """Evaluate ``model`` on every dataset in ``cfg.DATASETS.TESTS``.

        Returns:
            dict: metrics (percent) of the one test set, or a dict of them per test set.
        """
        results = {}
        for dataset_name in cfg.DATASETS.TESTS:
            data_loader, evaluator = cls.build_evaluator(cfg, dataset_name)
            loader = ProgressLoader(
                data_loader, f"Extracting {dataset_name}", enabled=cfg.KDREID.PROGRESS
            )
            results_i = inference_on_dataset(
                model, loader, evaluator, flip_test=cfg.TEST.FLIP.ENABLED
            )
            if comm.is_main_process():
                logger.info("Evaluation results for %s in csv format:", dataset_name)
                results_i["dataset"] = dataset_name
                print_csv_format(results_i)
            results[dataset_name] = results_i
        if len(results) == 1:
            results = next(iter(results.values()))
        return results
