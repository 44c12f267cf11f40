"""``abn-explain``: explain a trained checkpoint on a data split, save side-by-side grids and a metrics table.

    abn-explain ckpt_path=logs/train/runs/<date>/checkpoints/last.ckpt
    abn-explain ckpt_path=... split=val methods=[abn,cam,gradcam] layers=[features.layer2,last_stage]

Writes to ``logs/explain/runs/<date>/``: ``grids/<split>_batch_NNN.png`` (rows: images; columns: the input with its
ground-truth box, then one map per method, one colormap, one [0, 1] scale), ``metrics.csv`` and ``metrics.md``
(one row per method and layer), and the same grids and table to TensorBoard (``tensorboard/``).
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn

from ..config import config_dir
from ..visualize import GridColumn, draw_boxes, render_columns, save_png
from .api import LAYER_METHODS, applicable_methods, explain
from .metrics import (AverageDropIncrease, DeletionAUC, EnergyPointingGame, InsertionAUC, LocalizationError,
                      PointingGame)

CLASS_AGNOSTIC = ("abn", "random")
TABLE_COLUMNS = ("pointing_game", "energy_pointing_game", "localization_error", "deletion_auc", "insertion_auc",
                 "average_drop", "increase_in_confidence")


def load_checkpoint(path: str, device: torch.device) -> nn.Module:
    """The network of an ``abn-train`` checkpoint, in eval mode; a clear error for anything else."""
    from ..module import ABNModule

    if not Path(path).is_file():
        raise FileNotFoundError(f"ckpt_path={path} does not exist; give the .ckpt file written by abn-train, e.g. "
                                "logs/train/runs/<date>/checkpoints/last.ckpt")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"ckpt_path={path} is not a readable Lightning checkpoint ({type(error).__name__}: {error})") from error
    hparams = saved.get("hyper_parameters") if isinstance(saved, dict) else None
    if not hparams or "arch" not in hparams or "state_dict" not in saved:
        raise ValueError(f"ckpt_path={path} holds no abn model settings (hyper_parameters with arch, head, num_classes) "
                         "or no weights; explain a checkpoint written by abn-train")
    try:
        module = ABNModule.load_from_checkpoint(path, map_location=device, weights_only=True)
    except Exception as error:
        raise ValueError(f"ckpt_path={path}: its weights do not fit the model its settings describe "
                         f"(arch={hparams.get('arch')!r}, head={hparams.get('head')!r}): {error}") from error
    return module.net.to(device).eval()


def training_data_config(ckpt_path: str) -> DictConfig:
    """The ``data`` section of the run that wrote the checkpoint (``<run>/.hydra/config.yaml``)."""
    checkpoint = Path(ckpt_path).resolve()
    for run_dir in (checkpoint.parent.parent, checkpoint.parent):
        saved = run_dir / ".hydra" / "config.yaml"
        if saved.is_file():
            config = OmegaConf.load(saved)
            if "data" not in config:
                raise ValueError(f"{saved} has no data section; choose the data with data=<name>")
            return config.data
    raise FileNotFoundError(f"found no training config for {ckpt_path} (looked for .hydra/config.yaml in "
                            f"{checkpoint.parent.parent} and {checkpoint.parent}); choose the data with data=<name> "
                            "and its options, e.g. data=shapes")


@dataclass
class Column:
    """One method at one layer: a column of the grids and a row of the table."""

    method: str
    layer: Optional[str]

    @property
    def name(self) -> str:
        return self.method if self.layer is None else f"{self.method}@{self.layer}"


def choose_columns(net: nn.Module, methods: Optional[list[str]], layers: Optional[list[str]]) -> list[Column]:
    usable = applicable_methods(net)
    if methods is None:
        chosen = usable
    else:
        wrong = [method for method in methods if method not in usable]
        if wrong:
            raise ValueError(f"methods {', '.join(wrong)} do not apply to this model (head={getattr(net, 'head_name', '?')}); "
                             f"methods that apply: {', '.join(usable)}")
        chosen = list(methods)
    columns = []
    for method in chosen:
        if method in LAYER_METHODS and layers and method != "cam":
            columns += [Column(method, layer) for layer in layers]
        else:
            columns.append(Column(method, None))
    return columns


class Scores:
    """Every metric of one column."""

    def __init__(self, cfg: DictConfig, boxes: bool, device: torch.device):
        m = cfg.metrics
        self.localisation: dict[str, Any] = {}
        if boxes:
            self.localisation = {
                "pointing_game": PointingGame(tolerance=m.pointing_tolerance),
                "energy_pointing_game": EnergyPointingGame(),
                "localization_error": LocalizationError(threshold=m.loc_threshold, iou=m.loc_iou),
            }
        self.faithfulness: dict[str, Any] = {}
        if m.faithfulness:
            self.faithfulness = {
                "deletion_auc": DeletionAUC(steps=m.deletion_steps),
                "insertion_auc": InsertionAUC(steps=m.deletion_steps),
                "confidence": AverageDropIncrease(),
            }
        for metric in [*self.localisation.values(), *self.faithfulness.values()]:
            metric.to(device)

    def update(self, net: nn.Module, images: Tensor, maps_pred: Tensor, maps_label: Tensor, preds: Tensor,
               labels: Tensor, boxes: Optional[Tensor]) -> None:
        if self.localisation:
            self.localisation["pointing_game"].update(maps_label, boxes)
            self.localisation["energy_pointing_game"].update(maps_label, boxes)
            self.localisation["localization_error"].update(maps_pred, boxes, preds, labels)
        for name, metric in self.faithfulness.items():
            metric.update(net, images, maps_pred, preds)

    def compute(self) -> dict[str, float]:
        values = {name: float(metric.compute()) for name, metric in self.localisation.items()}
        if not self.faithfulness:
            return values
        values["deletion_auc"] = float(self.faithfulness["deletion_auc"].compute())
        values["insertion_auc"] = float(self.faithfulness["insertion_auc"].compute())
        confidence = self.faithfulness["confidence"].compute()
        values["average_drop"] = float(confidence["average_drop"])
        values["increase_in_confidence"] = float(confidence["increase_in_confidence"])
        return values


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "–" if math.isnan(value) else f"{value:.3f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(column, float("nan"))) for column in columns) + " |" for row in rows]
    return "\n".join(lines)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def run_explain(cfg: DictConfig) -> dict[str, Any]:
    """Explain and score; returns ``{"accuracy": …, "rows": [one dict per method and layer], "output_dir": …}``."""
    from ..train import adopt_data_facts

    if cfg.split not in ("val", "test"):
        raise ValueError(f"split must be val or test, got {cfg.split!r}")
    L.seed_everything(cfg.seed, workers=True)
    device = resolve_device(cfg.device)
    net = load_checkpoint(cfg.ckpt_path, device)
    with open_dict(cfg):
        if cfg.get("data") is None:
            cfg.data = training_data_config(cfg.ckpt_path)
        cfg.data.batch_size = cfg.batch_size
    datamodule = instantiate(cfg.data)
    adopt_data_facts(cfg, datamodule)
    if cfg.data.num_classes != net.num_classes or cfg.data.in_chans != net.in_chans:
        raise ValueError(f"the checkpoint's model has {net.num_classes} classes and {net.in_chans} input channels, "
                         f"the data {cfg.data.num_classes} and {cfg.data.in_chans}; explain it on the data it was trained on")
    if cfg.data.task != "multiclass":
        raise ValueError(f"abn-explain scores single-label classifiers; this data is {cfg.data.task} (e.g. CelebA's 40 "
                         "attributes): choose one attribute (data.attribute=<name>) to explain a two-class model")
    datamodule.setup("test" if cfg.split == "test" else "validate")
    loader = datamodule.test_dataloader() if cfg.split == "test" else datamodule.val_dataloader()
    layers = list(cfg.layers) if cfg.layers else None
    methods = list(cfg.methods) if cfg.methods else None
    columns = choose_columns(net, methods, layers)
    output_dir = Path(cfg.paths.output_dir)
    (output_dir / "grids").mkdir(parents=True, exist_ok=True)
    writer = None
    if cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(output_dir / "tensorboard"))

    scores: dict[str, Scores] = {}
    correct = correct_att = seen = 0
    for batch_index, batch in enumerate(loader):
        if cfg.num_batches is not None and batch_index >= cfg.num_batches:
            break
        images, labels = batch[0].to(device), batch[1].to(device)
        boxes = batch[2].to(device) if len(batch) > 2 else None
        with torch.no_grad():
            out = net(images)
        preds = out.logits.argmax(dim=1)
        correct += int((preds == labels).sum())
        correct_att += int((out.att_logits.argmax(dim=1) == labels).sum()) if out.att_logits is not None else 0
        seen += len(labels)
        shown = []
        for column in columns:
            maps_pred = explain(net, images, column.method, targets=preds, layer=column.layer, seed=cfg.seed + batch_index)
            same = column.method in CLASS_AGNOSTIC or bool((preds == labels).all())
            maps_label = maps_pred if same else explain(net, images, column.method, targets=labels, layer=column.layer,
                                                        seed=cfg.seed + batch_index)
            if column.name not in scores:
                scores[column.name] = Scores(cfg, boxes is not None, device)
            scores[column.name].update(net, images, maps_pred, maps_label, preds, labels, boxes)
            shown.append(maps_pred[: cfg.grid_images])
        if batch_index < cfg.grid_batches:
            grid = explanation_grid(datamodule, images[: cfg.grid_images], None if boxes is None else boxes[: cfg.grid_images],
                                    shown, [column.name for column in columns], cfg.cmap, cfg.alpha)
            save_png(grid, output_dir / "grids" / f"{cfg.split}_batch_{batch_index:03d}.png")
            if writer is not None:
                writer.add_image(f"explain/{cfg.split}", grid, global_step=batch_index)
    if seen == 0:
        raise ValueError(f"the {cfg.split} split is empty; nothing to explain")

    accuracy = {"acc": correct / seen}
    if getattr(net, "attention_branch", None) is not None:
        accuracy["acc_att"] = correct_att / seen
    rows = [{"method": column.method, "layer": column.layer or "default", **scores[column.name].compute()}
            for column in columns]
    write_tables(cfg, output_dir, rows, accuracy, seen, writer, net)
    if writer is not None:
        writer.close()
    logging.getLogger("abn").info(f"\nExplained {seen} {cfg.split} images; accuracy {100 * accuracy['acc']:.2f} %.\n"
                                  f"  table: {output_dir / 'metrics.md'}\n  grids: {output_dir / 'grids'}")
    return {"accuracy": accuracy, "rows": rows, "output_dir": str(output_dir)}


def write_tables(cfg: DictConfig, output_dir: Path, rows: list[dict[str, Any]], accuracy: dict[str, float],
                 seen: int, writer: Any, net: nn.Module) -> None:
    columns = ["method", "layer", *[name for name in TABLE_COLUMNS if any(name in row for row in rows)]]
    with open(output_dir / "metrics.csv", "w", newline="") as handle:
        table = csv.DictWriter(handle, fieldnames=columns)
        table.writeheader()
        table.writerows({key: row.get(key, "") for key in columns} for row in rows)
    size = getattr(cfg.data, "image_size", None) or getattr(cfg.data, "canvas_size", None)
    tolerance = f"{PointingGame.tolerance_for_size(size, size, cfg.metrics.pointing_tolerance):.1f}" if size else "scaled"
    header = (f"checkpoint `{cfg.ckpt_path}` ({getattr(net, 'head_name', type(net).__name__)} head), {cfg.split} split, "
              f"{seen} images; accuracy {100 * accuracy['acc']:.2f} %"
              + (f", attention branch {100 * accuracy['acc_att']:.2f} %" if "acc_att" in accuracy else "")
              + f". Pointing game tolerance {tolerance} px (15 px at 224 px); localisation threshold "
              f"{cfg.metrics.loc_threshold} of the map's maximum, IoU ≥ {cfg.metrics.loc_iou}; "
              f"{cfg.metrics.deletion_steps} deletion/insertion steps.\n\n")
    markdown = header + markdown_table(rows, columns) + "\n"
    (output_dir / "metrics.md").write_text(markdown)
    summary = {"ckpt_path": str(cfg.ckpt_path), "split": cfg.split, "images": seen, **accuracy, "rows": rows}
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    if writer is not None:
        writer.add_text("explain/metrics", markdown)
        for row in rows:
            name = row["method"] if row["layer"] == "default" else f"{row['method']}@{row['layer']}"
            for key in columns[2:]:
                writer.add_scalar(f"explain/{name}/{key}", row[key], 0)


def explanation_grid(datamodule: Any, images: Tensor, boxes: Optional[Tensor], maps: list[Tensor], titles: list[str],
                     cmap: str, alpha: float) -> Tensor:
    """The rendered figure (3×H×W in [0, 1]): input (with its box) | one titled overlay per map; every map is
    already min-max scaled to [0, 1] by :func:`abn.explain.explain`."""
    shown = datamodule.denormalize(images.cpu()) if hasattr(datamodule, "denormalize") else images.cpu().clamp(0, 1)
    columns = [GridColumn("input + box" if boxes is not None else "input",
                          images=draw_boxes(shown, None if boxes is None else boxes.cpu()))]
    columns += [GridColumn(title, images=shown, maps=column) for title, column in zip(titles, maps, strict=True)]
    caption = ("Each map min-max scaled per image (0 = its minimum, 1 = its maximum), over the input in dimmed grey; "
               "class-specific methods explain the predicted class.")
    return render_columns(columns, cmap, alpha, caption, "min-max scaled per image")


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="explain")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from ..cli import reported_errors, route_library_logs_to_run_log

    route_library_logs_to_run_log()
    with reported_errors(Path(HydraConfig.get().runtime.output_dir), fresh_folder=True):
        run_explain(cfg)


if __name__ == "__main__":
    main()
