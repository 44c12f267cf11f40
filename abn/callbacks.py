"""Lightning callbacks of the project."""

from __future__ import annotations

from typing import Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from .visualize import attention_grid, explanation_grid


class AttentionImageLogger(L.Callback):
    """Every ``every_n_epochs`` validation epochs, log one titled figure of a fixed set of validation images.

    ``val/attention``: a row per image; columns: the de-normalised input (with its ground-truth box where the data
    set has one), the ABN attention map on its own and over the input in dimmed grey (the sigmoid output as it is,
    not stretched: a flat map looks flat), and, where the network's head is GAP + linear, its class activation map
    for the predicted class, on its own and over the input (ReLU, divided by its maximum: CAM has no fixed range).
    A colour bar and a caption state the scales.

    ``methods`` (e.g. ``[abn, cam, gradcam, relevance_cam]``) also logs ``val/explanations``: the input, then one
    column per method of :func:`abn.explain.explain` that applies to the network, every map min-max scaled to
    [0, 1] (one colormap, one scale), for the predicted class.
    """

    def __init__(self, every_n_epochs: int = 1, num_images: int = 8, cmap: str = "jet", alpha: float = 0.5,
                 show_cam: bool = True, methods: Optional[Sequence[str]] = None):
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
        self._batch: Optional[tuple[Tensor, Optional[Tensor]]] = None

    def _fixed_images(self, trainer: L.Trainer) -> tuple[Tensor, Optional[Tensor]]:
        if self._batch is None:
            images, boxes = [], []
            for batch in trainer.datamodule.val_dataloader():
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
        grid = self.grid(trainer, pl_module)
        explanations = self.explanation_grid(trainer, pl_module) if self.methods else None
        for logger in loggers:
            logger.experiment.add_image("val/attention", grid, global_step=trainer.global_step)
            if explanations is not None:
                logger.experiment.add_image("val/explanations", explanations, global_step=trainer.global_step)

    def explanation_grid(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Tensor:
        """Input (with box) | one titled column per applicable method of ``methods``."""
        from .explain import applicable_methods, explain

        images, boxes = self._fixed_images(trainer)
        net = pl_module.net
        usable = [method for method in self.methods if method in applicable_methods(net)]
        x = images.to(pl_module.device)
        maps = [explain(net, x, method) for method in usable]  # leaves net as it was
        return explanation_grid(trainer.datamodule, images, boxes, maps, usable, self.cmap, self.alpha)
