"""Lightning callbacks of the project."""

from __future__ import annotations

from typing import Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from .visualize import draw_boxes, overlay, scale_by_max, side_by_side


class AttentionImageLogger(L.Callback):
    """Every ``every_n_epochs`` validation epochs, log one grid of a fixed set of validation images.

    Columns: the de-normalised input (with its ground-truth box where the data set has one), the ABN attention map
    overlaid as it is (the sigmoid output, not stretched: a flat map looks flat), and, where the network's head is
    GAP + linear, its class activation map for the predicted class (ReLU, divided by its maximum: CAM has no fixed
    range). Rows are images. The tag is ``val/attention``.

    ``methods`` (e.g. ``[abn, cam, gradcam, relevance_cam]``) also logs ``val/explanations``: the input, then one
    column per method of :func:`abn.explain.explain` that applies to the network, every map min-max scaled to
    [0, 1] (one colormap, one scale), for the predicted class.
    """

    def __init__(self, every_n_epochs: int = 1, num_images: int = 16, cmap: str = "jet", alpha: float = 0.5,
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
        images, boxes = self._fixed_images(trainer)
        net = pl_module.net
        was_training = net.training
        net.eval()
        try:
            with torch.no_grad():
                x = images.to(pl_module.device)
                out = net(x)
                cam = None
                if self.show_cam and hasattr(net, "class_activation_map") and hasattr(net.head, "class_activation_map"):
                    cam = net.class_activation_map(x, out.logits.argmax(1))
        finally:
            net.train(was_training)
        datamodule = trainer.datamodule
        shown = datamodule.denormalize(images) if hasattr(datamodule, "denormalize") else images.clamp(0, 1)
        columns = [draw_boxes(shown, boxes)]
        if out.attention is not None:
            columns.append(overlay(shown, out.attention.cpu(), self.cmap, self.alpha))
        if cam is not None:
            columns.append(overlay(shown, scale_by_max(cam.cpu()), self.cmap, self.alpha))
        return side_by_side(columns)

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
        """Input (with box) | one column per applicable method of ``methods``."""
        from .explain import applicable_methods, explain
        from .explain.run import explanation_grid

        images, boxes = self._fixed_images(trainer)
        net = pl_module.net
        usable = applicable_methods(net)
        x = images.to(pl_module.device)
        maps = [explain(net, x, method) for method in self.methods if method in usable]  # leaves net as it was
        return explanation_grid(trainer.datamodule, images, boxes, maps, self.cmap, self.alpha)
