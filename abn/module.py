"""LightningModule that trains any :mod:`abn.models` network on the ABN loss."""

from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Optional, Union

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torchmetrics import Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MultilabelAccuracy

from .checkpoint_io import written_checkpoints
from .data.resumable import derived_seed, run_seed
from .models import ABNOutput, create_model
from .models.network import resolve_attention_mode
from .supervision import check_supervision, supervision_loss, target_masks

STAGES = ("train", "val", "test")
# the terms of the ABN loss, by the name messages use, and the name each is logged under ({stage}/loss_per, ...)
LOSS_TERMS = {"perception": "loss_per", "attention": "loss_att", "supervision": "loss_sup"}
# multilabel loss per attribute: binary cross-entropy (the authors'), or the PyTorch port's focal loss BCE·(1 − p_t)^γ
LABEL_LOSSES = ("bce", "focal")
# multilabel weight of each attribute's loss: none (all 1), or the port's ∝ exp(−frequency in the training data)
ATTRIBUTE_WEIGHTS = ("none", "frequency")
WEIGHTS_BUFFER = "attribute_loss_weights"


class ABNModule(L.LightningModule):
    """Loss = w_att · CE(attention logits) + w_per · CE(perception logits); heads without a branch use the latter.

    ``task="multilabel"`` (CelebA's 40 attributes) treats each of the ``num_classes`` outputs as one binary
    attribute: binary cross-entropy on the logits, and ``acc`` is the mean of the per-attribute accuracies; each
    attribute's accuracy is logged too, as ``{stage}_attributes/<name>`` (``attribute_names``, from the data).
    ``head="multitask"`` (one map per attribute, the paper's CelebA model) needs multilabel data; its options
    ``task_chunk``, ``map_pooling``, ``map_activation`` and ``task_head`` are described in ``conf/model/default.yaml``.
    Multilabel models can train on the PyTorch port's loss instead of plain BCE (both branches alike):
    ``label_loss="focal"`` (BCE·(1 − p_t)^``focal_gamma``) and ``attribute_weights="frequency"`` (each attribute's
    loss weighted ∝ exp(−its frequency in the training data), the weights summing to T). The weights are computed
    from the data module (``train_label_frequencies()``) when fitting starts and kept in the checkpoint.

    ``attention_supervision`` (``head=abn``; DESIGN §8) adds ``weight`` × a loss between the attention map and where
    the object is, on the images of a batch whose data hands over a box or a mask (``abn.supervision``): ``loss`` one
    of l1, mse, energy, rrr, bce, suppress_outside (None: off), ``map`` ``attention`` (M) or ``class`` (the attention
    branch's map of the labelled class). Logged as ``{stage}/loss_sup``. ``freeze_features`` trains everything but
    the feature extractor (its weights and BatchNorm statistics stay as loaded), e.g. to fine-tune on edited maps.

    The network is ``create_model(arch, head, num_classes, in_chans, pretrained, split=..., branch_depth=...,
    **model_kwargs)``. ``channels_last`` stores weights and inputs in NHWC (faster convolutions on GPUs with tensor
    cores); ``"auto"`` starts in NCHW until ``abn-train`` has measured which is faster (:mod:`abn.speed`) and calls
    :meth:`set_channels_last`; ``compile`` compiles the network in place with ``nn.Module.compile`` (checkpoint
    keys are unchanged).
    Mixed precision is the trainer's job: ``trainer.precision=bf16-mixed``.

    A training loss that becomes nan or inf stops the run before that step's update, and no checkpoint with nan or
    inf weights is written: :class:`TrainingDiverged` names the step, the loss term and the last good checkpoint.

    ``optimizer`` and ``scheduler`` are partials (Hydra ``_partial_: true``) taking the parameters and the
    optimizer. A scheduler whose ``T_max`` (cosine) or ``total_steps`` (one-cycle) is left out gets the length of
    the run: optimizer steps when ``scheduler_interval`` is ``step``, epochs when it is ``epoch``.
    """

    def __init__(
        self,
        arch: str = "resnet20",
        head: str = "abn",
        num_classes: int = 10,
        in_chans: int = 3,
        attention_mode: Optional[str] = None,
        map_kernel_size: int = 3,
        attention_loss_weight: float = 1.0,
        perception_loss_weight: float = 1.0,
        optimizer: Optional[Callable[..., torch.optim.Optimizer]] = None,
        scheduler: Optional[Callable[..., Any]] = None,
        scheduler_interval: str = "epoch",
        pretrained: bool = False,
        split: Optional[str] = None,
        branch_depth: Union[str, int] = "full",
        model_kwargs: Optional[dict] = None,
        channels_last: Union[bool, str] = False,
        compile: bool = False,
        top5: bool = False,
        task: str = "multiclass",
        task_chunk: Optional[int] = None,
        map_pooling: str = "max",
        map_activation: str = "none",
        task_head: str = "two_way",
        attribute_names: Optional[list[str]] = None,
        label_loss: str = "bce",
        focal_gamma: float = 2.0,
        attribute_weights: str = "none",
        attention_supervision: Optional[dict] = None,
        freeze_features: bool = False,
    ):
        super().__init__()
        if task not in ("multiclass", "multilabel"):
            raise ValueError(f"task must be 'multiclass' or 'multilabel', got {task!r}")
        check_label_loss(task, label_loss, focal_gamma, attribute_weights)
        if head == "multitask" and task != "multilabel":
            raise ValueError("head=multitask learns one attention map per attribute of multi-label data (e.g. "
                             "data=celeba, data=multishapes); this data is single-label (task=multiclass): use "
                             "head=abn, or choose multi-label data")
        if attribute_names is not None:
            attribute_names = [str(name) for name in attribute_names]
            if task != "multilabel" or len(attribute_names) != num_classes:
                raise ValueError(f"attribute_names are for multilabel models, one per output: got "
                                 f"{len(attribute_names)} names for task={task}, num_classes={num_classes}")
        attention_mode = resolve_attention_mode(head, attention_mode)  # recorded as resolved
        if task == "multilabel" and top5:
            raise ValueError("top5=true needs task=multiclass (a multilabel model has no single top-5)")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        if isinstance(model_kwargs, DictConfig):  # plain types only: checkpoints load with weights_only=True
            model_kwargs = OmegaConf.to_container(model_kwargs, resolve=True)
        attention_supervision = supervision_settings(attention_supervision, head)
        if attention_supervision["map"] == "class" and attention_supervision["loss"] is not None and task != "multiclass":
            raise ValueError("model.attention_supervision.map=class supervises the map of each image's one class; "
                             "multi-label data has none: use map=attention")
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        extra = dict(model_kwargs or {})
        if split is not None:
            extra["split"] = split
        self.net = create_model(
            arch,
            head,
            num_classes,
            in_chans,
            pretrained=pretrained,
            attention_mode=attention_mode,
            map_kernel_size=map_kernel_size,
            branch_depth=branch_depth,
            **extra,
            **({"task_chunk": task_chunk, "map_pooling": map_pooling, "map_activation": map_activation,
                "task_head": task_head} if head == "multitask" else {}),
        )
        self.set_channels_last(channels_last is True)
        if freeze_features:
            self.net.features.requires_grad_(False)
        if compile:
            self.net.compile()
        self.optimizer_factory = optimizer
        self.derived_run_length: Optional[tuple[str, int]] = None  # (scheduler argument, value) filled from the run
        # a stop asked for on this process, and whether one was on any process (None: not asked since it was reset)
        self.stop_wanted: bool = False
        self.stop_agreed: Optional[bool] = None
        self.scheduler_factory = scheduler
        self.has_branch = head in ("abn", "multitask")
        if top5 and num_classes <= 5:
            raise ValueError(f"top5=true needs more than 5 classes, got num_classes={num_classes}")
        metrics = {}
        for stage in STAGES:
            metrics[f"{stage}_perception"] = self._branch_metrics(stage, top5=top5)
            if self.has_branch:
                metrics[f"{stage}_attention"] = self._branch_metrics(stage, postfix="_att")
            if task == "multilabel" and stage != "train":
                metrics[f"{stage}_attributes"] = MultilabelAccuracy(num_classes, average=None)
        self.metrics = nn.ModuleDict(metrics)
        if attribute_weights == "frequency":  # 1 until fitting starts (setup), then the training data's
            self.register_buffer(WEIGHTS_BUFFER, torch.ones(num_classes))

    @property
    def attribute_names(self) -> list[str]:
        names = self.hparams.get("attribute_names")
        return list(names) if names else [str(index) for index in range(self.hparams.num_classes)]

    def _branch_metrics(self, stage: str, top5: bool = False, postfix: Optional[str] = None) -> MetricCollection:
        """The accuracies of one branch's logits in one stage, named as logged: ``{stage}/acc{postfix}``, and
        ``{stage}/acc5`` with ``top5``. Multilabel accuracy is the mean of the per-attribute accuracies. No compute
        groups: each metric keeps its own state, as Lightning computes and resets each logged one by itself."""
        num_classes = self.hparams.num_classes
        if self.hparams.task == "multilabel":
            metrics: dict[str, Metric] = {"acc": MultilabelAccuracy(num_classes, average="macro")}
        else:
            metrics = {"acc": MulticlassAccuracy(num_classes, average="micro")}
        if top5:
            metrics["acc5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
        return MetricCollection(metrics, prefix=f"{stage}/", postfix=postfix, compute_groups=False)

    def forward(self, x: Tensor) -> ABNOutput:
        return self.net(x)

    def criterion(self, logits: Tensor, labels: Tensor) -> Tensor:
        if self.hparams.task != "multilabel":
            return F.cross_entropy(logits, labels)
        focal, weighted = self.hparams.label_loss == "focal", self.hparams.attribute_weights == "frequency"
        if not focal and not weighted:
            return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        logits = logits.float()  # the modulating factor in float32 under bf16 autocast, as BCE itself
        targets = labels.to(logits.dtype)
        losses = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")  # B×T
        if focal:
            losses = losses * focal_factor(logits, targets, self.hparams.focal_gamma)
        if weighted:
            losses = losses * getattr(self, WEIGHTS_BUFFER)
        return losses.mean()

    def train(self, mode: bool = True) -> "ABNModule":
        """Training mode everywhere but in a frozen feature extractor, whose BatchNorm statistics stay as loaded."""
        super().train(mode)
        if self.hparams.get("freeze_features"):
            self.net.features.eval()
        return self

    def on_train_epoch_start(self) -> None:
        """Lightning sets the submodules' modes itself (not through ``train()``): keep a frozen extractor in eval
        mode for the epoch (validation restores the modes it found)."""
        if self.hparams.get("freeze_features"):
            self.net.features.eval()

    def set_channels_last(self, enabled: bool) -> None:
        """Weights and input batches in NHWC (True) or NCHW; recorded as the ``channels_last`` setting."""
        self.hparams.channels_last = enabled
        self.memory_format = torch.channels_last if enabled else torch.contiguous_format
        self.net.to(memory_format=self.memory_format)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Seed the step's own randomness (dropout) from (run seed, epoch, batch): a resumed run draws what the
        interrupted one would have at this step (see abn.data.resumable)."""
        seed = run_seed()
        if seed is not None:
            torch.manual_seed(derived_seed(seed, self.current_epoch, batch_idx))

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.attention_supervision["loss"] is not None:
            check_data_supervises(self.trainer.datamodule)
        if stage == "fit" and self.hparams.attribute_weights == "frequency":
            getattr(self, WEIGHTS_BUFFER).copy_(frequency_weights(self._train_label_frequencies()))

    def _train_label_frequencies(self) -> Tensor:
        """The share of positive training labels of each attribute, from the data module being fitted."""
        datamodule = self.trainer.datamodule
        if not callable(getattr(datamodule, "train_label_frequencies", None)):
            given = "no data module" if datamodule is None else f"the data module {type(datamodule).__name__}"
            raise ValueError(f"attribute_weights=frequency weighs each attribute by how often it is present in the "
                             f"training data, but {given} gives these frequencies (train_label_frequencies()): fit "
                             "with a multi-label data module that does (data=celeba, data=multishapes; "
                             "trainer.fit(model, datamodule=...)), or set model.attribute_weights=none")
        frequencies = torch.as_tensor(datamodule.train_label_frequencies(), dtype=torch.float32).cpu()
        if frequencies.shape != (self.hparams.num_classes,):
            raise ValueError(f"the data module gave {tuple(frequencies.shape)} label frequencies for a model of "
                             f"{self.hparams.num_classes} attributes; they must be one per attribute (data and "
                             "model.num_classes must agree)")
        return frequencies

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A checkpoint written without the frequency weights (older, or by a model without them) loads into a model
        with them, which keeps its own (those of its training data when fitting); weights saved by a model with
        them are dropped by one without. Both directions load with strict key checking."""
        state = checkpoint.get("state_dict")
        if state is None:
            return
        if hasattr(self, WEIGHTS_BUFFER):
            state.setdefault(WEIGHTS_BUFFER, getattr(self, WEIGHTS_BUFFER).detach().clone())
        else:
            state.pop(WEIGHTS_BUFFER, None)

    def _step(self, batch: Any, stage: str) -> Tensor:
        return self._losses(batch, stage)[0]

    def _losses(self, batch: Any, stage: str) -> tuple[Tensor, dict[str, Tensor]]:
        """The weighted loss of a batch and its terms by name (``LOSS_TERMS``: those the head has); logs them all."""
        images, labels = batch[0].contiguous(memory_format=self.memory_format), batch[1]
        out = self.net(images)
        loss_per = self.criterion(out.logits, labels)
        terms = {"perception": loss_per}
        loss = self.hparams.perception_loss_weight * loss_per
        on_step = stage == "train"
        # validation and test losses averaged over the images of all DDP processes (once, at the epoch's end); the
        # accuracies are torchmetrics, synced by themselves; train/loss* stay each process's own (no exchange per step)
        log = functools.partial(self.log, on_step=on_step, on_epoch=True, batch_size=len(labels),
                                sync_dist=stage != "train")
        log(f"{stage}/loss_per", loss_per)
        self._update_and_log(self.metrics[f"{stage}_perception"], out.logits, labels, log, shown=[f"{stage}/acc"])
        if f"{stage}_attributes" in self.metrics:
            self.metrics[f"{stage}_attributes"].update(out.logits, labels)
        if out.att_logits is not None:
            loss_att = self.criterion(out.att_logits, labels)
            terms["attention"] = loss_att
            loss = loss + self.hparams.attention_loss_weight * loss_att
            log(f"{stage}/loss_att", loss_att)
            shown = [f"{stage}/acc_att"] if stage != "train" else []
            self._update_and_log(self.metrics[f"{stage}_attention"], out.att_logits, labels, log, shown=shown)
        supervision = self.hparams.attention_supervision
        if supervision["loss"] is not None:
            loss_sup = self._supervision_loss(out, batch, stage)
            if loss_sup is not None:
                terms["supervision"] = loss_sup
                loss = loss + supervision["weight"] * loss_sup
                log(f"{stage}/loss_sup", loss_sup)
        log(f"{stage}/loss", loss, prog_bar=stage == "train")
        return loss, terms

    def _supervision_loss(self, out: ABNOutput, batch: Any, stage: str) -> Optional[Tensor]:
        """The supervision loss of the batch's images that carry a box or mask (None when none does)."""
        if len(batch) < 3:
            if stage != "train":  # validation/test data without ground truth: nothing to score
                return None
            raise ValueError("model.attention_supervision needs training batches with boxes or masks (images, labels, "
                             "boxes|masks), but this batch has only images and labels: train on data that hands over "
                             "ground truth (data=shapes, cluttered_fashion_mnist, compcars with boxes, folder with "
                             "mask_dir), or set model.attention_supervision.loss=null")
        settings, labels = self.hparams.attention_supervision, batch[1]
        if settings["map"] == "class":
            rows = torch.arange(len(labels), device=labels.device)
            maps = torch.sigmoid(out.class_maps[rows, labels])
        else:
            maps = out.attention[:, 0]
        masks, present = target_masks(batch[2], batch[0].shape[-2:], maps.shape[-2:])
        return supervision_loss(settings["loss"], maps, masks, present)

    @staticmethod
    def _update_and_log(metrics: MetricCollection, logits: Tensor, labels: Tensor, log: Callable,
                        shown: list[str]) -> None:
        """Update every metric of the collection with this batch and log each under its prefixed name, those in
        ``shown`` on the progress bar too (Lightning computes and resets them at the end of the epoch)."""
        metrics(logits, labels)
        for name, metric in metrics.items():
            log(name, metric, prog_bar=name in shown)

    def training_step(self, batch: Any, batch_idx: int) -> Optional[Tensor]:
        if len(batch) == 0:  # every image of the batch was unreadable (skipped, counted in the data module's warning)
            return self._skip_empty_batch(batch_idx)
        loss, terms = self._losses(batch, "train")
        self._stop_if_diverged(loss, terms, batch_idx)
        return loss

    def _skip_empty_batch(self, batch_idx: int) -> Optional[Tensor]:
        """No update from a batch without images. One process skips the step (None); the processes of a DDP run
        must all take part in each step's exchanges, so there this one contributes a zero gradient."""
        zero = sum(parameter.sum() * 0 for parameter in self.parameters() if parameter.requires_grad)
        self._stop_if_diverged(zero, {}, batch_idx)  # its all-reduce, as on the other ranks
        return None if self.trainer.world_size == 1 else zero

    def _stop_if_diverged(self, loss: Tensor, terms: dict[str, Tensor], batch_idx: int) -> None:
        """Raise :class:`TrainingDiverged` before the update of a step whose loss is nan or inf, on every process.

        One value read back from the device per step (the progress bar reads the loss anyway). The processes of a
        DDP run agree first, so a nan on one rank stops them all at this step, each with the same message, instead
        of leaving the others waiting in the gradient all-reduce. That exchange (one all-reduce of two counts) also
        carries the question of :class:`abn.interrupt.StopOnSignal`, whether any process was asked to stop
        (``stop_wanted``); the answer is left in ``stop_agreed``, so the step needs no second exchange."""
        non_finite = (~torch.isfinite(loss.detach())).to(torch.int64)
        counts = torch.stack([non_finite, torch.full_like(non_finite, int(self.stop_wanted))])
        diverged, wanting_stop = self.trainer.strategy.reduce(counts, reduce_op="sum").tolist()  # summed over ranks
        self.stop_agreed = wanting_stop > 0
        if not diverged:
            return
        codes = torch.stack([non_finite_code(terms[name]) if name in terms else torch.tensor(0, device=loss.device)
                             for name in LOSS_TERMS] + [non_finite_code(loss)])
        per_rank = self.all_gather(codes).view(-1, len(LOSS_TERMS) + 1).cpu()  # world_size × (terms, sum)
        step = (f"at global step {self.trainer.global_step} (epoch {self.current_epoch}, batch {batch_idx}; both "
                f"counted from 0)")
        raise TrainingDiverged(
            f"Training diverged {step}: {describe_non_finite_losses(per_rank)}.\nThe run stopped before that step's "
            f"update and writes no checkpoint from here on. {self._advice()}")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to write weights that are nan or inf (an update can make them so while its loss was finite): the
        files of the run keep the last good weights, and the run stops saying so."""
        state = checkpoint.get("state_dict") or {}
        numbers = {name: value for name, value in state.items() if torch.is_tensor(value) and value.is_floating_point()}
        if not numbers or bool(torch.stack([value.isfinite().all() for value in numbers.values()]).all()):
            return  # one value read back per checkpoint
        broken = [name for name, value in numbers.items() if not bool(value.isfinite().all())]
        raise TrainingDiverged(
            f"Training diverged: after global step {self.trainer.global_step} (epoch {self.current_epoch}, counted "
            f"from 0) the network's weights or statistics are nan or inf ({len(broken)} of its tensors, e.g. "
            f"{broken[0]}), although the losses of the steps before were finite.\nThat checkpoint was not written and "
            f"the run stopped. {self._advice()}")

    def _advice(self) -> str:
        """Which checkpoint holds the last good weights, and how to train without diverging."""
        written = written_checkpoints(self.trainer)
        kept = (f"The last good checkpoint is {written[-1]} (all of them: {written[-1].parent})." if written
                else "No checkpoint had been written yet.")
        configured = getattr(self.optimizer_factory, "keywords", {}).get("lr")
        if configured is not None:
            lower = f"model.optimizer.lr={configured / 10:g} (this run: {configured:g})"
        else:
            current = [group["lr"] for optimizer in self.trainer.optimizers for group in optimizer.param_groups]
            lower = f"lr={current[0] / 10:g} (this run: {current[0]:g})" if current else "a tenth of this run's rate"
        again = (f"Train again with a lower learning rate, e.g. {lower}, or clip the gradients "
                 "(trainer.gradient_clip_val=1.0)")
        if written:
            again += f"; init_from={written[-1]} starts that run from the last good weights"
        return f"{kept}\n{again}."

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if len(batch):  # empty: no image of the batch could be read
            self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        if len(batch):
            self._step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_attribute_accuracies("val")

    def on_test_epoch_end(self) -> None:
        self._log_attribute_accuracies("test")

    def _log_attribute_accuracies(self, stage: str) -> None:
        """Perception-branch accuracy of every attribute by name, as ``{stage}_attributes/<name>`` (a vector metric
        cannot be logged as one scalar)."""
        metric = self.metrics[f"{stage}_attributes"] if f"{stage}_attributes" in self.metrics else None
        if metric is None or not metric.update_called:
            return
        for name, value in zip(self.attribute_names, metric.compute()):
            self.log(f"{stage}_attributes/{name}", value)
        metric.reset()

    def configure_optimizers(self) -> Any:
        trained = [parameter for parameter in self.parameters() if parameter.requires_grad]  # not frozen ones
        if self.optimizer_factory is None:
            return torch.optim.SGD(trained, lr=0.1, momentum=0.9, weight_decay=1e-4)
        optimizer = self.optimizer_factory(params=trained)
        if self.scheduler_factory is None:
            return optimizer
        interval = self.hparams.scheduler_interval
        scheduler = self._with_run_length(self.scheduler_factory, interval)(optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    def _with_run_length(self, factory: Callable, interval: str) -> Callable:
        """Fill a scheduler's missing ``T_max``/``total_steps`` with the length of the run."""
        target = factory.func if isinstance(factory, functools.partial) else factory
        given = factory.keywords if isinstance(factory, functools.partial) else {}
        try:
            accepted = inspect.signature(target).parameters
        except (TypeError, ValueError):
            return factory
        length = int(self.trainer.estimated_stepping_batches) if interval == "step" else self.trainer.max_epochs
        for key in ("T_max", "total_steps"):
            if key in accepted and given.get(key) is None:
                self.derived_run_length = (key, length)
                return functools.partial(factory, **{key: length})
        return factory

    def on_train_start(self) -> None:
        """A resumed schedule keeps the length it was made with: refuse a run of another length before its first
        step (the scheduler would otherwise fail mid-run, or restart its cycle)."""
        if self.derived_run_length is None:
            return
        key, length = self.derived_run_length
        for config in self.trainer.lr_scheduler_configs:
            saved = getattr(config.scheduler, key, None)
            if saved is not None and saved != length:
                unit = "optimizer steps" if key == "total_steps" else "epochs"
                raise ValueError(
                    f"the checkpoint's learning-rate schedule ({type(config.scheduler).__name__}) was made for a run of "
                    f"{saved} {unit}, this run has {length}: trainer.max_epochs, data.batch_size or the data differ from "
                    "the run that wrote it. Resume it with that run's settings (abn-train ckpt_path=<run>/checkpoints/"
                    "last.ckpt reads them from the run folder), or start a new run without ckpt_path"
                )


class TrainingDiverged(ValueError):
    """A training loss (or the weights) became nan or inf: the run stops, and its checkpoints keep the last good
    weights. A ValueError, so ``abn-train`` reports the message alone, without a traceback; the run folder is kept
    even before its first checkpoint (its log and TensorBoard curves show how it diverged)."""

    keep_run_folder = True


def non_finite_code(value: Tensor) -> Tensor:
    """``value`` (a scalar loss) as 0 if finite, 1 if nan, 2 if ±inf: an int64 tensor on its device."""
    value = value.detach()
    return torch.where(value.isnan(), 1, torch.where(value.isinf(), 2, 0)).to(torch.int64)


def describe_non_finite_losses(per_rank: Tensor) -> str:
    """Which loss terms were nan or inf, on which process: ``per_rank`` holds a row of :func:`non_finite_code` per
    process, one column per ``LOSS_TERMS`` and a last one for their weighted sum."""
    several = len(per_rank) > 1
    found = []
    for column, (term, logged) in enumerate(LOSS_TERMS.items()):
        for rank, codes in enumerate(per_rank):
            if codes[column]:
                where = f" on process {rank} of {len(per_rank)}" if several else ""
                found.append(f"the {term} loss (train/{logged}) became {'nan' if codes[column] == 1 else 'inf'}{where}")
    if found:
        return ", ".join(found)
    rank = int(per_rank[:, -1].nonzero()[0, 0]) if per_rank[:, -1].any() else 0
    where = f" on process {rank} of {len(per_rank)}" if several else ""
    return f"the weighted sum of the losses (train/loss) overflowed to inf{where} although each term was finite"


def supervision_settings(settings: Optional[dict], head: str) -> dict[str, Any]:
    """``model.attention_supervision`` as a plain, checked dict {loss, weight, map} (defaults filled in)."""
    if isinstance(settings, DictConfig):
        settings = OmegaConf.to_container(settings, resolve=True)
    given = dict(settings or {})
    unknown = sorted(set(given) - {"loss", "weight", "map"})
    if unknown:
        raise ValueError(f"model.attention_supervision has no key(s) {', '.join(unknown)}; its keys are loss, weight "
                         "and map")
    chosen = {"loss": given.get("loss"), "weight": given.get("weight", 1.0), "map": given.get("map", "attention")}
    check_supervision(chosen["loss"], chosen["weight"], chosen["map"])
    if chosen["loss"] is not None and head != "abn":
        raise ValueError(f"model.attention_supervision supervises the attention map of head=abn; head={head} has "
                         f"{'one map per attribute' if head == 'multitask' else 'no attention branch'}: set "
                         "model.head=abn, or model.attention_supervision.loss=null")
    return chosen


def check_data_supervises(datamodule: Any) -> None:
    """Refuse supervision on a data module that hands over no boxes or masks, before the first step."""
    if datamodule is None or getattr(datamodule, "supervision", None) is not None:
        return  # plain loaders: the first batch without ground truth says so
    raise ValueError(f"model.attention_supervision needs data with boxes or masks, but {type(datamodule).__name__} "
                     "hands over none: use data=shapes, data=cluttered_fashion_mnist, data=compcars with its boxes, or "
                     "data=folder with data.mask_dir=<folder of masks>; or set model.attention_supervision.loss=null")


def check_label_loss(task: str, label_loss: str, focal_gamma: float, attribute_weights: str) -> None:
    """One ValueError per bad multilabel loss setting, naming it and what to set instead."""
    if label_loss not in LABEL_LOSSES:
        raise ValueError(f"label_loss must be one of {', '.join(LABEL_LOSSES)} (bce: plain binary cross-entropy, the "
                         f"authors'; focal: the PyTorch port's focal loss), got {label_loss!r}")
    if attribute_weights not in ATTRIBUTE_WEIGHTS:
        raise ValueError(f"attribute_weights must be one of {', '.join(ATTRIBUTE_WEIGHTS)} (none: every attribute "
                         f"weighs 1; frequency: the port's weights from the training data), got {attribute_weights!r}")
    if not focal_gamma >= 0:
        raise ValueError(f"focal_gamma must be 0 or more (the exponent of 1 − p_t; 0 is plain binary cross-entropy, "
                         f"the PyTorch port uses 2), got {focal_gamma}")
    chosen = [(name, value, default) for name, value, default in (("label_loss", label_loss, "bce"),
                                                                  ("attribute_weights", attribute_weights, "none"))
              if value != default]
    if chosen and task != "multilabel":
        given = " and ".join(f"{name}={value}" for name, value, _ in chosen)
        fix = " and ".join(f"model.{name}={default}" for name, _, default in chosen)
        raise ValueError(f"{given} apply to multi-label data (one binary output per attribute, e.g. data=celeba, "
                         f"data=multishapes); this data is single-label (task=multiclass, softmax cross-entropy): set "
                         f"{fix}, or choose multi-label data")


def focal_factor(logits: Tensor, targets: Tensor, gamma: float) -> Tensor:
    """(1 − p_t)^γ, p_t the predicted probability of the true label: near 0 where the model is already right and
    sure, so the focal loss dwells on the attributes it gets wrong."""
    probabilities = torch.sigmoid(logits)
    true_label_probability = probabilities * targets + (1.0 - probabilities) * (1.0 - targets)
    return (1.0 - true_label_probability).pow(gamma)


def frequency_weights(frequencies: Tensor) -> Tensor:
    """The PyTorch port's attribute weights: ∝ exp(−frequency), scaled to sum to T (mean 1), so rare attributes weigh
    more (by at most e between an attribute never and one always present)."""
    weights = torch.exp(-frequencies.double())
    return (weights * len(weights) / weights.sum()).float()
