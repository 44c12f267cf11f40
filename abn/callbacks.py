"""Lightning callbacks of the project."""

from __future__ import annotations

from typing import Optional, Sequence

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from .visualize import GridColumn, draw_boxes, render_columns, scale_by_max


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
        columns = [GridColumn("input + box" if boxes is not None else "input", images=draw_boxes(shown, boxes))]
        label, caption = [], []  # what the colour bar's 0..1 means, per kind of map
        if out.attention is not None:
            columns += [GridColumn("ABN map", maps=out.attention),
                        GridColumn("ABN map on input", images=shown, maps=out.attention)]
            label.append("ABN: sigmoid output as is")
            caption.append("ABN map: the attention branch's sigmoid output, 0 to 1, not stretched "
                           "(a flat map looks flat).")
        if cam is not None:
            cam = scale_by_max(cam)
            columns += [GridColumn("CAM (predicted class)", maps=cam),
                        GridColumn("CAM on input", images=shown, maps=cam)]
            label.append("CAM: fraction of the image's maximum")
            caption.append("CAM: ReLU, divided by each image's maximum (1 = its peak).")
        if caption:
            caption.append("Overlays: the map over the input in dimmed grey.")
        return render_columns(columns, self.cmap, self.alpha, " ".join(caption), " · ".join(label))

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
        from .explain.run import explanation_grid

        images, boxes = self._fixed_images(trainer)
        net = pl_module.net
        usable = [method for method in self.methods if method in applicable_methods(net)]
        x = images.to(pl_module.device)
        maps = [explain(net, x, method) for method in usable]  # leaves net as it was
        return explanation_grid(trainer.datamodule, images, boxes, maps, usable, self.cmap, self.alpha)
