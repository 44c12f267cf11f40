"""What only the data knows about a run, handed to the model when it is built (never written into the config).

``abn-train`` and ``abn-explain`` build the data module first and ask it: how many classes (``data.num_classes:
null`` finds them in the files), which task (multiclass, or multilabel for CelebA's 40 attributes), and, when
``model.arch`` is null, the usual network for its image size. The model config reads ``num_classes`` through
``${data.num_classes}``, so data sets of a fixed class count show it in the composed config too.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
from typing import Any, Optional, Sequence

import lightning as L
from omegaconf import DictConfig

from ..models.registry import arch_size_note, default_arch_for, longer_side

log = logging.getLogger("abn")


@dataclasses.dataclass(frozen=True)
class DataFacts:
    """``arch`` is the network chosen for the data where the config leaves ``model.arch`` null, else None."""

    num_classes: Optional[int]
    task: str
    arch: Optional[str] = None
    attribute_names: Optional[tuple[str, ...]] = None  # multilabel data: the name of each output

    def model_arguments(self) -> dict[str, Any]:
        """Keyword arguments of ``instantiate(cfg.model, ...)``: they replace the config's values."""
        arguments: dict[str, Any] = {"num_classes": self.num_classes, "task": self.task}
        if self.arch is not None:
            arguments["arch"] = self.arch
        if self.attribute_names is not None:
            arguments["attribute_names"] = list(self.attribute_names)
        return arguments

    def settle(self, settings: dict[str, Any]) -> dict[str, Any]:
        """A run's settings (the config as plain dicts) as the run used them: the facts in ``data`` and ``model``."""
        settled = dict(settings)
        if "data" in settled:
            settled["data"] = {**settled["data"], "num_classes": self.num_classes, "task": self.task}
        if "model" in settled:
            settled["model"] = {**settled["model"], **self.model_arguments()}
        return settled


def adopt_data_facts(cfg: DictConfig, datamodule: L.LightningDataModule) -> DataFacts:
    """Let the data decide what it alone knows: the class count, the task, and the network when ``model.arch`` is
    null (resnet20 for small images, resnet18 for ImageNet-size ones); a configured arch made for images of another
    size gets a warning. ``cfg`` is only read."""
    if cfg.data.get("num_classes") is None and hasattr(datamodule, "discover_classes"):
        datamodule.discover_classes()
    task = getattr(datamodule, "task", "multiclass")
    classes = getattr(datamodule, "classes", None)
    facts = DataFacts(num_classes=getattr(datamodule, "num_classes", cfg.data.get("num_classes")), task=task,
                      attribute_names=tuple(classes) if task == "multilabel" and classes else None)
    if "model" not in cfg:
        return facts
    arch = cfg.model.get("arch")
    if arch is None:
        arch = default_arch_for(datamodule.input_size)
        log.info("model.arch=%s: the usual network for this data's %s-px images (set model.arch to choose another)",
                 arch, longer_side(datamodule.input_size))
        return dataclasses.replace(facts, arch=arch)
    note = arch_size_note(arch, datamodule.input_size)
    if note:
        log.warning(note)
    return facts


def check_attribute_names(requested: Sequence[str], names: Sequence[str], setting: str) -> None:
    """Raise one message for the names in ``requested`` that are not among the data's attribute ``names``, with a
    did-you-mean hint per name; ``setting`` is the config key the names came from."""
    unknown = [name for name in requested if name not in names]
    if unknown:
        close = {name: difflib.get_close_matches(name, names, n=1) for name in unknown}
        hints = "".join(f" ({name}: did you mean {match[0]}?)" for name, match in close.items() if match)
        raise ValueError(f"{setting}: {', '.join(unknown)} not among the attributes{hints}; choose from: "
                         f"{', '.join(names)}, or null for all")
