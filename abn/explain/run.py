"""``abn-explain``: explain a trained checkpoint on a data split, save side-by-side grids and a metrics table.

    abn-explain ckpt_path=logs/train/runs/<date>/checkpoints/last.ckpt
    abn-explain ckpt_path=... split=val methods=[abn,cam,gradcam] layers=[features.layer2,last_stage]

Writes to ``logs/explain/runs/<date>/``: ``grids/<split>_batch_NNN.png`` (rows: images; columns: the input with its
ground-truth box, then one map per method, one colormap, one [0, 1] scale), ``metrics.csv`` and ``metrics.md``
(one row per method and layer), and the same grids and table to TensorBoard (``tensorboard/``).

A multi-label checkpoint (``data=celeba``, ``data=multishapes``) is explained attribute by attribute (``attributes``:
null for all, or a list of names): a table row per method and attribute plus a ``mean`` row per method, and a grid per
method, ``grids/<split>_batch_NNN_<method>.png``, with one column per attribute.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch import Tensor, nn

from ..checkpoints import EXPLAIN_FIX, load_network, read_checkpoint, training_data_config
from ..config import config_dir
from ..data.facts import check_attribute_names
from ..models.network import MultiTaskNetwork
from ..visualize import attribute_explanation_grid, explanation_grid, save_png
from .api import applicable_methods, explain
from .layers import AttributeView
from .methods import METHOD_SPECS
from .metrics import METRIC_SPECS, Evidence, PointingGame

# the metric columns of the table, per task of the data; TABLE_COLUMNS: the single-label table's
METRIC_COLUMNS = {task: tuple(column for spec in METRIC_SPECS if task in spec.tasks for column in spec.table_columns)
                  for task in ("multiclass", "multilabel")}
TABLE_COLUMNS = METRIC_COLUMNS["multiclass"]
# the columns before the metrics: which row it is (and, per attribute, on how many images its metrics are scored)
ROW_COLUMNS = {"multiclass": ("method", "layer"), "multilabel": ("method", "layer", "attribute", "present", "predicted")}


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
    """Every metric of :data:`METRIC_SPECS` that applies, for one column (one attribute of it on multi-label data):
    those of the data's task, those that need boxes when the data has them, those that run the model again when
    ``metrics.faithfulness`` is on. A metric that saw no image scores NaN (shown as –)."""

    def __init__(self, settings: DictConfig, boxes: bool, device: torch.device, task: str = "multiclass"):
        self.metrics = [(spec, spec.build(settings, task).to(device)) for spec in METRIC_SPECS
                        if task in spec.tasks and (boxes or not spec.needs_boxes)
                        and (settings.faithfulness or not spec.needs_model)]

    def update(self, evidence: Evidence, needs_model: Optional[bool] = None) -> None:
        """Update every metric, or only those that run the model (``needs_model=True``) or only the others."""
        for spec, metric in self.metrics:
            if needs_model is None or spec.needs_model == needs_model:
                spec.update(metric, evidence)

    def compute(self) -> dict[str, float]:
        values: dict[str, float] = {}
        for spec, metric in self.metrics:
            if metric.update_called:
                values.update(spec.summary(metric.compute()))
            else:
                values.update({column: float("nan") for column in spec.table_columns})
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
    """What :func:`prepare` sets up: the network, its data and the batches of the split, the columns to explain;
    for multi-label data the name of every attribute and the indices of those to explain."""

    net: nn.Module
    datamodule: Any
    loader: Iterable
    columns: list[Column]
    device: torch.device
    task: str = "multiclass"
    attribute_names: list[str] = field(default_factory=list)
    attributes: list[int] = field(default_factory=list)


@dataclass
class GridBatch:
    """The first images of a batch (on the CPU) with their boxes and one map per column: one grid of the report.
    Multi-label: the grid of one column (``column``), one map per chosen attribute."""

    index: int
    images: Tensor
    boxes: Optional[Tensor]
    maps: list[Tensor]
    column: Optional[str] = None


@dataclass
class Explained:
    """What :func:`explain_split` found: the images seen, the accuracy, a table row per column, the grids' maps."""

    seen: int
    accuracy: dict[str, float]
    rows: list[dict[str, Any]]
    grids: list[GridBatch]
    attribute_accuracy: dict[str, float] = field(default_factory=dict)  # multi-label: per chosen attribute


def prepare(cfg: DictConfig) -> Prepared:
    """Check the settings, load the checkpoint's network, set up the data split and choose the columns (methods ×
    layers) and, for multi-label data, the attributes. Writes nothing."""
    from ..data.facts import adopt_data_facts

    if cfg.split not in ("val", "test"):
        raise ValueError(f"split must be val or test, got {cfg.split!r}")
    L.seed_everything(cfg.seed, workers=True)
    device = resolve_device(cfg.device)
    net = load_network(cfg.ckpt_path, device)
    trained = read_checkpoint(cfg.ckpt_path, EXPLAIN_FIX).get("hyper_parameters") or {}
    with open_dict(cfg):
        if cfg.get("data") is None:
            cfg.data = training_data_config(cfg.ckpt_path)
        cfg.data.batch_size = cfg.batch_size
    datamodule = instantiate(cfg.data)
    facts = adopt_data_facts(cfg, datamodule)
    check_model_fits_data(cfg, net, trained, facts)
    names = list(facts.attribute_names or [str(t) for t in range(net.num_classes)]) if facts.task == "multilabel" else []
    attributes = choose_attributes(cfg.get("attributes"), names, net)
    datamodule.setup("test" if cfg.split == "test" else "validate")
    loader = datamodule.test_dataloader() if cfg.split == "test" else datamodule.val_dataloader()
    layers = list(cfg.layers) if cfg.layers else None
    methods = list(cfg.methods) if cfg.methods else None
    return Prepared(net, datamodule, loader, choose_columns(net, methods, layers), device, facts.task, names, attributes)


def check_model_fits_data(cfg: DictConfig, net: nn.Module, trained: dict[str, Any], facts: Any) -> None:
    """The checkpoint's model and the data agree on the task, the number of classes or attributes (and their names)
    and the input channels; otherwise one message naming both sides and the fix."""
    same_data = "explain it on the data it was trained on (leave out data= to use its training run's data settings)"
    trained_task = trained.get("task") or "multiclass"
    if trained_task != facts.task:
        kinds = {"multiclass": "single-label (one class per image)", "multilabel": "multi-label (attributes)"}
        raise ValueError(f"the checkpoint's model is {kinds[trained_task]} with {net.num_classes} outputs, but this "
                         f"data is {kinds[facts.task]} with {facts.num_classes}; {same_data}")
    saved_names = list(trained.get("attribute_names") or [])
    data_names = list(facts.attribute_names or [])
    if facts.task == "multilabel" and facts.num_classes != net.num_classes:
        shown = f" ({', '.join(saved_names[:6])}{', …' if len(saved_names) > 6 else ''})" if saved_names else ""
        common = min(len(saved_names), len(data_names))
        same_kind = not saved_names or saved_names[:common] == data_names[:common]  # the same data, other count
        hint = f", or set data.num_attributes={net.num_classes}" if "num_attributes" in cfg.data and same_kind else ""
        raise ValueError(f"the checkpoint's model has {net.num_classes} attributes{shown}, the data "
                         f"{facts.num_classes}: {same_data}{hint}")
    if facts.num_classes != net.num_classes or cfg.data.in_chans != net.in_chans:
        raise ValueError(f"the checkpoint's model has {net.num_classes} classes and {net.in_chans} input channels, "
                         f"the data {facts.num_classes} and {cfg.data.in_chans}; explain it on the data it was trained on")
    if facts.task == "multilabel" and saved_names and data_names and saved_names != data_names:
        raise ValueError(f"the checkpoint's attributes ({', '.join(saved_names)}) are not the data's "
                         f"({', '.join(data_names)}); {same_data}")


def choose_attributes(requested: Any, names: list[str], net: nn.Module) -> list[int]:
    """The indices of the attributes to explain: all for ``attributes: null``, else those named (in that order)."""
    if requested is None:
        return list(range(len(names)))
    if not names:
        raise ValueError(f"attributes= chooses attributes of a multi-label model; this checkpoint is a single-label "
                         f"classifier ({net.num_classes} classes): leave attributes out (null)")
    requested = [str(name) for name in (requested if isinstance(requested, Sequence) and not isinstance(requested, str)
                                        else [requested])]
    if not requested:
        raise ValueError("attributes is an empty list; name at least one attribute, or null for all")
    check_attribute_names(requested, names, "attributes")
    return [names.index(name) for name in dict.fromkeys(requested)]


def column_maps(net: nn.Module, images: Tensor, column: Column, preds: Tensor, labels: Tensor,
                seed: int) -> tuple[Tensor, Tensor]:
    """The column's maps for the predicted classes and for the true ones (the same maps where they agree or the
    method is class-agnostic)."""
    maps_pred = explain(net, images, column.method, targets=preds, layer=column.layer, seed=seed)
    if METHOD_SPECS[column.method].is_class_agnostic(net) or bool((preds == labels).all()):
        return maps_pred, maps_pred
    return maps_pred, explain(net, images, column.method, targets=labels, layer=column.layer, seed=seed)


class Progress:
    """Logs, from the second batch on, how many batches are done and about how long the rest will take: every
    method on every image (and, on multi-label data, every attribute) with the faithfulness metrics runs the model
    dozens of times per image, so a whole split can take long; ``num_batches`` limits it."""

    def __init__(self, cfg: DictConfig, loader: Any):
        total = len(loader)
        self.total = total if cfg.num_batches is None else min(total, cfg.num_batches)
        self.start = time.monotonic()

    def started(self, batch_index: int) -> None:
        if batch_index == 0:
            return
        elapsed = time.monotonic() - self.start
        left = elapsed / batch_index * (self.total - batch_index)
        logging.getLogger("abn").info(f"explained {batch_index}/{self.total} batches in {elapsed:.0f} s; about "
                                      f"{left / 60:.1f} min left (num_batches=<n> explains fewer)")


def explain_split(cfg: DictConfig, prepared: Prepared) -> Explained:
    """Explain every batch (up to ``num_batches``) with every column, score the maps and keep those of the first
    ``grid_batches`` batches for the grids."""
    net, device = prepared.net, prepared.device
    scores: dict[str, Scores] = {}
    grids: list[GridBatch] = []
    correct = correct_att = seen = 0
    progress = Progress(cfg, prepared.loader)
    for batch_index, batch in enumerate(prepared.loader):
        if cfg.num_batches is not None and batch_index >= cfg.num_batches:
            break
        progress.started(batch_index)
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


def explain_attributes(cfg: DictConfig, prepared: Prepared) -> Explained:
    """:func:`explain_split` for multi-label data: every column explains each chosen attribute's logit on every image.

    Per attribute, the localisation metrics score its maps on the images where it is present, against its own box
    (and ``energy_other_objects`` against the other objects' boxes); the faithfulness metrics on the images where
    the model predicts it (logit > 0), on σ(logit). A method whose map does not depend on the target (``random``,
    the single map of the ``abn`` head) runs once per batch."""
    net, device, chosen = prepared.net, prepared.device, prepared.attributes
    names = prepared.attribute_names
    scores: dict[tuple[str, int], Scores] = {}
    grids: list[GridBatch] = []
    present_count = torch.zeros(len(names), dtype=torch.long)
    predicted_count = torch.zeros(len(names), dtype=torch.long)
    correct = torch.zeros(len(names), dtype=torch.long)
    correct_att = torch.zeros(len(names), dtype=torch.long)
    seen = 0
    progress = Progress(cfg, prepared.loader)
    for batch_index, batch in enumerate(prepared.loader):
        if cfg.num_batches is not None and batch_index >= cfg.num_batches:
            break
        progress.started(batch_index)
        images, labels = batch[0].to(device), batch[1].to(device) > 0.5
        boxes = batch[2].to(device) if len(batch) > 2 else None
        with torch.no_grad():
            out = net(images)
        predicted = out.logits > 0
        correct += (predicted == labels).sum(dim=0).cpu()
        if out.att_logits is not None:
            correct_att += ((out.att_logits > 0) == labels).sum(dim=0).cpu()
        present_count += labels.sum(dim=0).cpu()
        predicted_count += predicted.sum(dim=0).cpu()
        seen += len(images)
        for column in prepared.columns:
            agnostic = METHOD_SPECS[column.method].is_class_agnostic(net)
            shared = explain(net, images, column.method, targets=0, layer=column.layer, seed=cfg.seed + batch_index,
                             multilabel=True) if agnostic else None
            shown = []
            for t in chosen:
                maps = shared if agnostic else explain(net, images, column.method, targets=t, layer=column.layer,
                                                       seed=cfg.seed + batch_index, multilabel=True)
                if (column.name, t) not in scores:
                    scores[column.name, t] = Scores(cfg.metrics, boxes is not None, device, "multilabel")
                score_attribute(scores[column.name, t], net, images, maps, t, labels, predicted, boxes)
                shown.append(maps[: cfg.grid_images].cpu())
            if batch_index < cfg.grid_batches:
                grids.append(GridBatch(batch_index, images[: cfg.grid_images].cpu(),
                                       None if boxes is None else boxes[: cfg.grid_images].cpu(), shown, column.name))
    if seen == 0:
        raise ValueError(f"the {cfg.split} split is empty; nothing to explain")

    accuracy = {"acc": float(correct.sum()) / (seen * len(names))}  # the mean of the attributes' accuracies
    if getattr(net, "attention_branch", None) is not None:
        accuracy["acc_att"] = float(correct_att.sum()) / (seen * len(names))
    rows = []
    for column in prepared.columns:
        attribute_rows = [{"method": column.method, "layer": column.layer or "default", "attribute": names[t],
                           "present": int(present_count[t]), "predicted": int(predicted_count[t]),
                           **scores[column.name, t].compute()} for t in chosen]
        rows += attribute_rows + [mean_row(attribute_rows)]
    attribute_accuracy = {names[t]: float(correct[t]) / seen for t in chosen}
    return Explained(seen, accuracy, rows, grids, attribute_accuracy)


def score_attribute(scores: Scores, net: nn.Module, images: Tensor, maps: Tensor, attribute: int, labels: Tensor,
                    predicted: Tensor, boxes: Optional[Tensor]) -> None:
    """Feed one attribute's maps of a batch to its metrics: localisation on the images that have the attribute,
    faithfulness on those where the model predicts it."""
    present, predicted_here = labels[:, attribute], predicted[:, attribute]
    if boxes is not None and present.any():
        own = boxes[present, attribute]
        others = boxes[present].clone()
        others[:, attribute] = float("nan")
        found = predicted_here[present].long()
        evidence = Evidence(net, images[present], maps[present], maps[present], found, torch.ones_like(found), own,
                            others)
        scores.update(evidence, needs_model=False)
    if predicted_here.any():
        if isinstance(net, MultiTaskNetwork):  # the attribute's own path only: its logit is the view's one output
            with torch.no_grad():
                model, target = AttributeView(net, attribute), 0
        else:
            model, target = net, attribute
        targets = torch.full((int(predicted_here.sum()),), target, dtype=torch.long, device=images.device)
        evidence = Evidence(model, images[predicted_here], maps[predicted_here], maps[predicted_here], targets, targets,
                            None)
        scores.update(evidence, needs_model=True)


def mean_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``mean`` row of one column: each metric averaged over the attributes that have a value (NaN if none), the
    image counts summed."""
    row: dict[str, Any] = {"method": rows[0]["method"], "layer": rows[0]["layer"], "attribute": "mean",
                           "present": sum(r["present"] for r in rows), "predicted": sum(r["predicted"] for r in rows)}
    for key in rows[0]:
        if key in METRIC_COLUMNS["multilabel"]:
            values = [r[key] for r in rows if not math.isnan(r[key])]
            row[key] = sum(values) / len(values) if values else float("nan")
    return row


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
        attribute_titles = [prepared.attribute_names[t] for t in prepared.attributes]
        for batch in explained.grids:
            name = f"{cfg.split}_batch_{batch.index:03d}"
            if batch.column is None:
                grid = explanation_grid(prepared.datamodule, batch.images, batch.boxes, batch.maps, titles, cfg.cmap,
                                        cfg.alpha)
                tag = f"explain/{cfg.split}"
            else:
                grid = attribute_explanation_grid(prepared.datamodule, batch.images, batch.boxes, batch.maps,
                                                  attribute_titles, batch.column, cfg.cmap, cfg.alpha)
                name, tag = f"{name}_{batch.column}", f"explain/{cfg.split}/{batch.column}"
            save_png(grid, output_dir / "grids" / f"{name}.png")
            if writer is not None:
                writer.add_image(tag, grid, global_step=batch.index)
        write_tables(cfg, output_dir, explained, writer, prepared)
    finally:
        if writer is not None:
            writer.close()
    accuracy = explained.accuracy
    logging.getLogger("abn").info(f"\nExplained {explained.seen} {cfg.split} images; accuracy {100 * accuracy['acc']:.2f} %.\n"
                                  f"  table: {output_dir / 'metrics.md'}\n  grids: {output_dir / 'grids'}")
    return {"accuracy": accuracy, "rows": explained.rows, "output_dir": str(output_dir)}


def run_explain(cfg: DictConfig) -> dict[str, Any]:
    """Explain and score; returns ``{"accuracy": …, "rows": [one dict per method and layer (and attribute)],
    "output_dir": …}``."""
    prepared = prepare(cfg)
    explained = explain_attributes(cfg, prepared) if prepared.task == "multilabel" else explain_split(cfg, prepared)
    return report(cfg, prepared, explained)


def write_tables(cfg: DictConfig, output_dir: Path, explained: Explained, writer: Any, prepared: Prepared) -> None:
    rows, accuracy, seen, net = explained.rows, explained.accuracy, explained.seen, prepared.net
    lead = list(ROW_COLUMNS[prepared.task])
    columns = [*lead, *[name for name in METRIC_COLUMNS[prepared.task] if any(name in row for row in rows)]]
    with open(output_dir / "metrics.csv", "w", newline="") as handle:
        table = csv.DictWriter(handle, fieldnames=columns)
        table.writeheader()
        table.writerows({key: row.get(key, "") for key in columns} for row in rows)
    size = getattr(cfg.data, "image_size", None) or getattr(cfg.data, "canvas_size", None)
    tolerance = f"{PointingGame.tolerance_for_size(size, size, cfg.metrics.pointing_tolerance):.1f}" if size else "scaled"
    multilabel = prepared.task == "multilabel"
    header = (f"checkpoint `{cfg.ckpt_path}` ({getattr(net, 'head_name', type(net).__name__)} head), {cfg.split} split, "
              f"{seen} images; {'mean attribute ' if multilabel else ''}accuracy {100 * accuracy['acc']:.2f} %"
              + (f", attention branch {100 * accuracy['acc_att']:.2f} %" if "acc_att" in accuracy else "")
              + f". Pointing game tolerance {tolerance} px (15 px at 224 px); localisation threshold "
              f"{cfg.metrics.loc_threshold} of the map's maximum, IoU ≥ {cfg.metrics.loc_iou}; "
              f"{cfg.metrics.deletion_steps} deletion/insertion steps.\n\n")
    if multilabel:
        header += ("Each map explains its attribute's logit. `present`: images with the attribute, on which its "
                   "localisation metrics are scored against its own box (`energy_other_objects`: the share of the map "
                   "on the other objects' boxes, lower is better); `predicted`: images on which the model predicts it "
                   "(logit > 0), on which deletion, insertion and confidence score σ(logit). `mean`: the average over "
                   "the attributes; – : no image to score.\n\n")
    markdown = header + markdown_table(rows, columns) + "\n"
    (output_dir / "metrics.md").write_text(markdown)
    summary = {"ckpt_path": str(cfg.ckpt_path), "split": cfg.split, "images": seen, **accuracy,
               "rows": [{key: None if isinstance(value, float) and math.isnan(value) else value
                         for key, value in row.items()} for row in rows]}  # null, not NaN: valid JSON
    if multilabel:
        summary["attribute_acc"] = explained.attribute_accuracy
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    if writer is not None:
        writer.add_text("explain/metrics", markdown)
        for row in rows:
            if multilabel and row["attribute"] != "mean":  # the table holds them; the mean rows become scalars
                continue
            name = row["method"] if row["layer"] == "default" else f"{row['method']}@{row['layer']}"
            for key in columns[len(lead):]:
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
