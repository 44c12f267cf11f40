"""Lightning callbacks of the project."""

from __future__ import annotations

import atexit
import logging
from typing import Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from .data.facts import check_attribute_names
from .visualize import attention_grid, attribute_grid, explanation_grid

log = logging.getLogger("abn")


class DestroyProcessGroupAtExit(L.Callback):
    """Under DDP, destroy the process group when the process exits, while Python is still whole.

    Lightning does this for NCCL only. A gloo process (``trainer=ddp`` on CPUs) left with its group could abort at
    exit (``terminate called without an active exception``, SIGABRT) when the group's C++ threads were torn down
    during interpreter shutdown: the run's last ``trainer.test`` then failed after all its work was done."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            atexit.unregister(destroy_process_group)  # once per process, though fit and test both set up
            atexit.register(destroy_process_group)


def destroy_process_group() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


class AttentionImageLogger(L.Callback):
    """Every ``every_n_epochs`` validation epochs, log one titled figure of a fixed set of validation images.

    ``val/attention``: a row per image; columns: the de-normalised input (with its ground-truth box where the data
    set has one), the ABN attention map on its own and over the input in dimmed grey (the sigmoid output as it is,
    not stretched: a flat map looks flat), and, where the network's head is GAP + linear, its class activation map
    for the predicted class, on its own and over the input (ReLU, divided by its maximum: CAM has no fixed range).
    A colour bar and a caption state the scales.

    ``methods`` (e.g. ``[abn, cam, gradcam, relevance_cam]``) also logs ``val/explanations``: the input, then one
    column per method of :func:`abn.explain.explain` that applies to the network, every map min-max scaled to
    [0, 1] (one colormap, one scale), for the predicted class (single-label models).

    A multi-task ABN (one map per attribute) logs ``val/attribute_maps`` instead of ``val/attention``: the input with
    the boxes of its objects, then one column per attribute named in ``attributes`` (None: all), titled with its name.

    A network whose outputs are nan or inf for any of these images (its weights diverged) gets no figures that epoch,
    only a warning.
    """

    def __init__(self, every_n_epochs: int = 1, num_images: int = 8, cmap: str = "jet", alpha: float = 0.5,
                 show_cam: bool = True, methods: Optional[Sequence[str]] = None,
                 attributes: Optional[Sequence[str]] = None):
        super().__init__()
        if every_n_epochs < 1 or num_images < 1:
            raise ValueError("every_n_epochs and num_images must be at least 1")
        from .explain import METHODS

        unknown = [method for method in methods or () if method not in METHODS]
        if unknown:
            raise ValueError(f"unknown explanation method(s) {', '.join(unknown)}; methods: {', '.join(METHODS)}")
        self.every_n_epochs, self.num_images = every_n_epochs, num_images
        self.cmap, self.alpha, self.show_cam = cmap, alpha, show_cam
        self.methods = list(methods or [])
        self.attributes = None if attributes is None else [str(name) for name in attributes]
        self._batch: Optional[tuple[Tensor, Optional[Tensor]]] = None

    def _fixed_images(self, trainer: L.Trainer) -> tuple[Tensor, Optional[Tensor]]:
        if self._batch is None:
            images, boxes = [], []
            for batch in trainer.datamodule.val_dataloader():
                if len(batch) == 0:  # no image of it could be read
                    continue
                images.append(batch[0])
                boxes.append(batch[2] if len(batch) > 2 else None)
                if sum(len(x) for x in images) >= self.num_images:
                    break
            all_boxes = None if any(b is None for b in boxes) else torch.cat(boxes)[: self.num_images]
            self._batch = (torch.cat(images)[: self.num_images], all_boxes)
        return self._batch

    def grid(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Tensor:
        """Input (with box) | ABN map | on input | CAM of the predicted class | on input, as far as they apply."""
        from .explain import applicable_methods, explain

        images, boxes = self._fixed_images(trainer)
        net = pl_module.net
        usable = applicable_methods(net)
        x = images.to(pl_module.device)
        attention = explain(net, x, "abn", raw=True) if "abn" in usable else None  # leaves net as it was
        cam = explain(net, x, "cam", raw=True) if self.show_cam and "cam" in usable else None
        return attention_grid(trainer.datamodule, images, boxes, attention, cam, self.cmap, self.alpha)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch + 1
        if epoch % self.every_n_epochs and epoch != trainer.max_epochs:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            return
        diverged = self.non_finite_images(trainer, pl_module)
        if diverged:
            log.warning("callbacks.attention_images: no figures for epoch %d: the network's outputs are nan or inf for "
                        "%d of its %d fixed validation images (its weights have diverged)", trainer.current_epoch,
                        diverged, len(self._fixed_images(trainer)[0]))
            return
        multitask = getattr(pl_module.net, "head_name", None) == "multitask"
        tag, grid = ("val/attribute_maps", self.attribute_grid(trainer, pl_module)) if multitask else \
            ("val/attention", self.grid(trainer, pl_module))
        explanations = None
        if self.methods and getattr(pl_module.hparams, "task", "multiclass") == "multilabel":
            log.warning("callbacks.attention_images.methods: the explanation grid explains the predicted class of "
                        "single-label models; for a multi-label model run abn-explain, which explains each attribute")
            self.methods = []
        elif self.methods:
            explanations = self.explanation_grid(trainer, pl_module)
        for logger in loggers:
            logger.experiment.add_image(tag, grid, global_step=trainer.global_step)
            if explanations is not None:
                logger.experiment.add_image("val/explanations", explanations, global_step=trainer.global_step)

    def non_finite_images(self, trainer: L.Trainer, pl_module: L.LightningModule) -> int:
        """How many of the fixed images get a nan or inf logit or map: nothing worth drawing (a diverged network)."""
        images, _ = self._fixed_images(trainer)
        net = pl_module.net
        was_training = net.training
        net.eval()
        with torch.no_grad():
            out = net(images.to(pl_module.device))
        net.train(was_training)
        outputs = [value.flatten(1) for value in (out.logits, out.att_logits, out.attention) if value is not None]
        return int((~torch.cat(outputs, 1).isfinite().all(1)).sum())

    def explanation_grid(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Tensor:
        """Input (with box) | one titled column per applicable method of ``methods``."""
        from .explain import applicable_methods, explain

        images, boxes = self._fixed_images(trainer)
        net = pl_module.net
        usable = [method for method in self.methods if method in applicable_methods(net)]
        x = images.to(pl_module.device)
        maps = [explain(net, x, method) for method in usable]  # leaves net as it was
        return explanation_grid(trainer.datamodule, images, boxes, maps, usable, self.cmap, self.alpha)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if getattr(pl_module.net, "head_name", None) == "multitask":
            self.chosen_attributes(pl_module)  # a wrong name stops the run before its first step, not after an epoch

    def chosen_attributes(self, pl_module: L.LightningModule) -> list[str]:
        names = list(pl_module.attribute_names)
        chosen = self.attributes if self.attributes is not None else names
        check_attribute_names(chosen, names, "callbacks.attention_images.attributes")
        return chosen

    def attribute_grid(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Tensor:
        """Input (with its objects' boxes) | the map of each chosen attribute, titled with its name."""
        images, boxes = self._fixed_images(trainer)
        names = list(pl_module.attribute_names)
        chosen = self.chosen_attributes(pl_module)
        net = pl_module.net
        was_training = net.training
        net.eval()
        with torch.no_grad():
            maps = net(images.to(pl_module.device)).attention
        net.train(was_training)
        indices = [names.index(name) for name in chosen]
        return attribute_grid(trainer.datamodule, images, boxes, maps[:, indices].cpu(), chosen, self.cmap, self.alpha)
