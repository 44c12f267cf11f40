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
from typing import Any, Iterable, Optional

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch import Tensor, nn

from ..checkpoints import load_network, training_data_config
from ..config import config_dir
from ..visualize import explanation_grid, save_png
from .api import applicable_methods, explain
from .methods import METHOD_SPECS
from .metrics import METRIC_SPECS, Evidence, PointingGame

TABLE_COLUMNS = tuple(column for spec in METRIC_SPECS for column in spec.table_columns)


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
        if METHOD_SPECS[method].layer == "any" and layers:
            columns += [Column(method, layer) for layer in layers]
        else:
            columns.append(Column(method, None))
    return columns


class Scores:
    """Every metric of :data:`METRIC_SPECS` that applies, for one column: those that need boxes when the data has
    them, those that run the model again when ``metrics.faithfulness`` is on."""

    def __init__(self, settings: DictConfig, boxes: bool, device: torch.device):
        self.metrics = [(spec, spec.build(settings).to(device)) for spec in METRIC_SPECS
                        if (boxes or not spec.needs_boxes) and (settings.faithfulness or not spec.needs_model)]

    def update(self, evidence: Evidence) -> None:
        for spec, metric in self.metrics:
            spec.update(metric, evidence)

    def compute(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for spec, metric in self.metrics:
            values.update(spec.summary(metric.compute()))
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


@dataclass
class Prepared:
    """What :func:`prepare` sets up: the network, its data and the batches of the split, the columns to explain."""

    net: nn.Module
    datamodule: Any
    loader: Iterable
    columns: list[Column]
    device: torch.device


@dataclass
class GridBatch:
    """The first images of a batch (on the CPU) with their boxes and one map per column: one grid of the report."""

    index: int
    images: Tensor
    boxes: Optional[Tensor]
    maps: list[Tensor]


@dataclass
class Explained:
    """What :func:`explain_split` found: the images seen, the accuracy, a table row per column, the grids' maps."""

    seen: int
    accuracy: dict[str, float]
    rows: list[dict[str, Any]]
    grids: list[GridBatch]


def prepare(cfg: DictConfig) -> Prepared:
    """Check the settings, load the checkpoint's network, set up the data split and choose the columns (methods ×
    layers). Writes nothing."""
    from ..data.facts import adopt_data_facts

    if cfg.split not in ("val", "test"):
        raise ValueError(f"split must be val or test, got {cfg.split!r}")
    L.seed_everything(cfg.seed, workers=True)
    device = resolve_device(cfg.device)
    net = load_network(cfg.ckpt_path, device)
    with open_dict(cfg):
        if cfg.get("data") is None:
            cfg.data = training_data_config(cfg.ckpt_path)
        cfg.data.batch_size = cfg.batch_size
    datamodule = instantiate(cfg.data)
    facts = adopt_data_facts(cfg, datamodule)
    if facts.num_classes != net.num_classes or cfg.data.in_chans != net.in_chans:
        raise ValueError(f"the checkpoint's model has {net.num_classes} classes and {net.in_chans} input channels, "
                         f"the data {facts.num_classes} and {cfg.data.in_chans}; explain it on the data it was trained on")
    if facts.task != "multiclass":
        raise ValueError(f"abn-explain scores single-label classifiers; this data is {facts.task} (e.g. CelebA's 40 "
                         "attributes): choose one attribute (data.attribute=<name>) to explain a two-class model")
    datamodule.setup("test" if cfg.split == "test" else "validate")
    loader = datamodule.test_dataloader() if cfg.split == "test" else datamodule.val_dataloader()
    layers = list(cfg.layers) if cfg.layers else None
    methods = list(cfg.methods) if cfg.methods else None
    return Prepared(net, datamodule, loader, choose_columns(net, methods, layers), device)


def column_maps(net: nn.Module, images: Tensor, column: Column, preds: Tensor, labels: Tensor,
                seed: int) -> tuple[Tensor, Tensor]:
    """The column's maps for the predicted classes and for the true ones (the same maps where they agree or the
    method is class-agnostic)."""
    maps_pred = explain(net, images, column.method, targets=preds, layer=column.layer, seed=seed)
    if METHOD_SPECS[column.method].class_agnostic or bool((preds == labels).all()):
        return maps_pred, maps_pred
    return maps_pred, explain(net, images, column.method, targets=labels, layer=column.layer, seed=seed)


def explain_split(cfg: DictConfig, prepared: Prepared) -> Explained:
    """Explain every batch (up to ``num_batches``) with every column, score the maps and keep those of the first
    ``grid_batches`` batches for the grids."""
    net, device = prepared.net, prepared.device
    scores: dict[str, Scores] = {}
    grids: list[GridBatch] = []
    correct = correct_att = seen = 0
    for batch_index, batch in enumerate(prepared.loader):
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
        for column in prepared.columns:
            maps_pred, maps_label = column_maps(net, images, column, preds, labels, cfg.seed + batch_index)
            if column.name not in scores:
                scores[column.name] = Scores(cfg.metrics, boxes is not None, device)
            scores[column.name].update(Evidence(net, images, maps_pred, maps_label, preds, labels, boxes))
            shown.append(maps_pred[: cfg.grid_images].cpu())
        if batch_index < cfg.grid_batches:
            grids.append(GridBatch(batch_index, images[: cfg.grid_images].cpu(),
                                   None if boxes is None else boxes[: cfg.grid_images].cpu(), shown))
    if seen == 0:
        raise ValueError(f"the {cfg.split} split is empty; nothing to explain")

    accuracy = {"acc": correct / seen}
    if getattr(net, "attention_branch", None) is not None:
        accuracy["acc_att"] = correct_att / seen
    rows = [{"method": column.method, "layer": column.layer or "default", **scores[column.name].compute()}
            for column in prepared.columns]
    return Explained(seen, accuracy, rows, grids)


def report(cfg: DictConfig, prepared: Prepared, explained: Explained) -> dict[str, Any]:
    """Write the grids (PNGs), the table (``metrics.csv``, ``metrics.md``, ``summary.json``) and both to TensorBoard;
    returns ``{"accuracy": …, "rows": …, "output_dir": …}``."""
    output_dir = Path(cfg.paths.output_dir)
    (output_dir / "grids").mkdir(parents=True, exist_ok=True)
    writer = None
    if cfg.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(output_dir / "tensorboard"))
    try:
        titles = [column.name for column in prepared.columns]
        for batch in explained.grids:
            grid = explanation_grid(prepared.datamodule, batch.images, batch.boxes, batch.maps, titles, cfg.cmap, cfg.alpha)
            save_png(grid, output_dir / "grids" / f"{cfg.split}_batch_{batch.index:03d}.png")
            if writer is not None:
                writer.add_image(f"explain/{cfg.split}", grid, global_step=batch.index)
        write_tables(cfg, output_dir, explained, writer, prepared.net)
    finally:
        if writer is not None:
            writer.close()
    accuracy = explained.accuracy
    logging.getLogger("abn").info(f"\nExplained {explained.seen} {cfg.split} images; accuracy {100 * accuracy['acc']:.2f} %.\n"
                                  f"  table: {output_dir / 'metrics.md'}\n  grids: {output_dir / 'grids'}")
    return {"accuracy": accuracy, "rows": explained.rows, "output_dir": str(output_dir)}


def run_explain(cfg: DictConfig) -> dict[str, Any]:
    """Explain and score; returns ``{"accuracy": …, "rows": [one dict per method and layer], "output_dir": …}``."""
    prepared = prepare(cfg)
    return report(cfg, prepared, explain_split(cfg, prepared))


def write_tables(cfg: DictConfig, output_dir: Path, explained: Explained, writer: Any, net: nn.Module) -> None:
    rows, accuracy, seen = explained.rows, explained.accuracy, explained.seen
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


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="explain")
def main(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig

    from ..cli import reported_errors, route_library_logs_to_run_log

    route_library_logs_to_run_log()
    with reported_errors(Path(HydraConfig.get().runtime.output_dir), fresh_folder=True):
        run_explain(cfg)


if __name__ == "__main__":
    main()
