"""What every data module of the project offers beyond Lightning's interface."""

from __future__ import annotations

import warnings
from typing import Any, Callable, Optional, Sequence, Union

import lightning as L
from lightning.pytorch.trainer.states import TrainerFn
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import tv_tensors
from torchvision.transforms import v2

from .images import image_file_sets, skip_unreadable_collate
from .resumable import EpochShuffle, Position, SeededSamples, run_seed

# The statistics torchvision's ImageNet weights were trained with: the data sets read by ImageNet-pretrained
# backbones (ImageNet, CompCars, CelebA, folders of photos) normalise with them.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

InputSize = Union[int, Sequence[int]]  # a side in pixels, or (height, width)

# The stream of the seeded choice of supervised training images: apart from the hold-out draws made with ``seed``.
_SUPERVISED_SHARE_STREAM = 15


class ClassificationDataModule(L.LightningDataModule):
    """Holds the normalisation (``mean``, ``std``), ``classes``, and builds the three loaders.

    Subclasses fill ``train_set``, ``val_set`` and ``test_set`` in ``setup``. ``task`` is ``multiclass`` (one label
    per image) or ``multilabel`` (a 0/1 vector of ``num_classes`` attributes). A data module whose class count
    comes from the files (``num_classes=None`` in its config) finds it in ``discover_classes``, which ``abn-train``
    calls before building the model. The class names go into every checkpoint (``state_dict``), and resuming
    with data of other classes is refused.

    ``supervision`` says which ground truth for attention supervision the training batches carry as their third
    element: None (batches are (images, labels)), ``"boxes"`` (B×4, x0, y0, x1, y1 in input pixels, x1/y1
    exclusive; a NaN row: no box) or ``"masks"`` (B×1×H×W in [0, 1] at the input size; all NaN: no mask). The
    training loader keeps the ground truth of only ``supervised_fraction`` of the training images (a seeded
    choice, see :class:`PartialSupervision`); validation and test splits are never reduced.
    """

    mean: Sequence[float] = (0.0,)
    std: Sequence[float] = (1.0,)
    task: str = "multiclass"
    # the class count of a data set that has one of its own (CIFAR-10's 10): the module's default and check read it,
    # a test checks that its config holds it; None where the files or the options decide
    fixed_num_classes: Optional[int] = None
    title: str = "this data set"  # its name in messages
    supervision: Optional[str] = None  # the ground truth of the training batches: None, "boxes" or "masks"
    supervised_fraction: float = 1.0  # the share of training images that keep it (set with check_supervised_fraction)
    # False: the training split is built with the evaluation transform (no crop or flip), e.g. to export the maps of
    # training images as they are; an option (data.augment) of the data sets that offer it
    augment: bool = True

    def __init__(self, num_classes: Optional[int], in_chans: int, batch_size: int, num_workers: int, pin_memory: bool):
        super().__init__()
        if self.fixed_num_classes is not None and num_classes != self.fixed_num_classes:
            raise ValueError(f"{self.title} has {self.fixed_num_classes} classes; set "
                             f"data.num_classes={self.fixed_num_classes} (got {num_classes})")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.classes: list[str] = []
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None
        self.resume_position: Optional[Position] = None  # from the checkpoint of a resumed run, until taken

    @property
    def input_size(self) -> InputSize:
        """The side in pixels of the images the loaders yield, or their (height, width): ``image_size`` where the
        module has one; data sets of a fixed size set it as a class attribute."""
        image_size = getattr(self, "image_size", None)
        if image_size is None:
            raise NotImplementedError(f"{type(self).__name__} does not say the size of its images; set model.arch")
        return image_size

    def normalize(self, image: Tensor) -> Tensor:
        mean = torch.tensor(self.mean, dtype=image.dtype, device=image.device).view(-1, 1, 1)
        std = torch.tensor(self.std, dtype=image.dtype, device=image.device).view(-1, 1, 1)
        return (image - mean) / std

    def denormalize(self, images: Tensor) -> Tensor:
        """Undo the normalisation of a batch (B×C×H×W) for display: values back in [0, 1]."""
        mean = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        return (images * std + mean).clamp(0.0, 1.0)

    def assign_splits(self, train: Dataset, eval_view: Callable[[], Dataset], test: Dataset, val_size: int, seed: int,
                      where: str) -> None:
        """Validate on ``val_size`` held-out training images (``eval_view()``: the same images with the evaluation
        transform), or on the test set when ``val_size`` is 0; every split must have images."""
        if val_size > 0:
            self.train_set, self.val_set = hold_out(train, eval_view(), val_size, seed)
        else:
            self.train_set, self.val_set = train, test
        self.test_set = test
        for name in ("train", "val", "test"):
            check_not_empty(name, getattr(self, f"{name}_set"), where)

    def discover_classes(self) -> list[str]:
        """Fill ``classes`` and ``num_classes`` from the data without loading images; data modules whose classes
        are fixed by the data set already know them."""
        if self.num_classes is None:
            raise NotImplementedError(f"{type(self).__name__} cannot find its classes; set data.num_classes")
        return self.classes

    def set_discovered_classes(self, classes: Sequence[str]) -> None:
        """Adopt the classes found in the data; a configured ``num_classes`` must agree with them."""
        if self.num_classes is not None and self.num_classes != len(classes):
            raise ValueError(
                f"the data has {len(classes)} classes but data.num_classes={self.num_classes}; set "
                f"data.num_classes={len(classes)} or null (null takes the count from the data)"
            )
        self.classes, self.num_classes = list(classes), len(classes)

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: which output index is which class, and during a fit where training stands
        (``training_position``), so that a resumed run's loader continues there."""
        state = {"classes": list(self.classes), "task": self.task}
        if self.trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            state["position"] = list(self.training_position())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.resume_position = saved_position(state.get("position"))
        saved = list(state.get("classes") or [])
        if saved and self.classes and saved != list(self.classes):
            changed = [f"{i}: {a!r} → {b!r}" for i, (a, b) in enumerate(zip(saved, self.classes)) if a != b][:3]
            raise ValueError(
                f"the checkpoint was trained on {len(saved)} classes and this data has {len(self.classes)}"
                + (f" in another order ({', '.join(changed)}, …)" if changed else "")
                + "; resume with the data (and split/task options) the checkpoint was trained on"
            )

    def teardown(self, stage: str) -> None:
        self.report_unreadable()

    def report_unreadable(self) -> dict[str, list[str]]:
        """Warn once with the count of image files that were skipped because they could not be read."""
        found, seen = {}, set()
        for split in ("train", "test", "val"):  # a validation split that is the test set counts as test
            sets = [files for files in image_file_sets(getattr(self, f"{split}_set")) if id(files) not in seen]
            seen.update(map(id, sets))
            paths = sorted({path for files in sets for path in files.unreadable_paths()})
            if paths:
                found[split] = paths
        if found:
            counts = ", ".join(f"{len(paths)} in {split}" for split, paths in found.items())
            first = next(iter(found.values()))[0]
            warnings.warn(f"{sum(map(len, found.values()))} unreadable image(s) were skipped ({counts}; first: {first}); "
                          "replace or delete them, or set data.strict=true to stop at the first one", stacklevel=2)
        return found

    def training_position(self) -> Position:
        """Where the fit stands, for a checkpoint's training loader state: (the epoch it runs next, the batches of
        that epoch already trained); an epoch whose batches are all done counts as over."""
        trainer = self.trainer
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if done >= trainer.num_training_batches:
            return trainer.current_epoch + 1, 0
        return trainer.current_epoch, done

    def take_resume_position(self) -> Optional[Position]:
        """The position a resumed run continues from, once (the first pass of its training loader), then None."""
        position, self.resume_position = self.resume_position, None
        return position

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        """The loader of a split; with a run seed the training split's (``shuffle``) order and augmentation depend
        only on the seed, epoch and position, so a resumed run reads what the interrupted one would have read
        (see :mod:`abn.data.resumable`)."""
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() has not been called")
        options = dict(
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),  # pinning needs a GPU to pin for
            persistent_workers=self.num_workers > 0,
            drop_last=shuffle and len(dataset) > self.batch_size,
            collate_fn=skip_unreadable_collate,
        )
        seed = run_seed()
        if not shuffle or seed is None:
            return DataLoader(dataset, shuffle=shuffle, **options)
        seeded = SeededSamples(dataset)
        return DataLoader(seeded, sampler=EpochShuffle(seeded, seed, self.batch_size, self.take_resume_position),
                          **options)

    def supervised_training_set(self) -> Optional[Dataset]:
        """``train_set`` as the training loader reads it: with the ground truth of only ``supervised_fraction`` of
        its images when the batches carry ground truth and the fraction is below 1; else ``train_set`` itself."""
        if self.train_set is None or self.supervision is None or self.supervised_fraction >= 1:
            return self.train_set
        return PartialSupervision(self.train_set, self.supervised_fraction, getattr(self, "seed", 0))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.supervised_training_set(), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


def hold_out(train_view: Dataset, eval_view: Dataset, val_size: int, seed: int) -> tuple[Dataset, Dataset]:
    """Split a training set into (train, validation) subsets, seeded; ``eval_view`` is the same images with the
    evaluation transform, so validation images are not augmented."""
    total = len(train_view)
    if not 0 < val_size < total:
        raise ValueError(f"val_size={val_size} must be between 1 and {total - 1} (the training split has {total} images)")
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(train_view, order[val_size:]), Subset(eval_view, order[:val_size])


def saved_position(saved: Any) -> Optional[Position]:
    """A checkpoint's training position (epoch to run next, its batches done), checked; None where it has none."""
    if saved is None:
        return None
    if (not isinstance(saved, (list, tuple)) or len(saved) != 2 or not all(isinstance(v, int) and v >= 0 for v in saved)):
        raise ValueError(f"the checkpoint's data position {saved!r} is not [epoch, batches done] (two integers ≥ 0); "
                         "resume from a checkpoint written by abn-train")
    return int(saved[0]), int(saved[1])


def check_supervised_fraction(fraction: float) -> float:
    """``data.supervised_fraction`` as a float in (0, 1], or a ValueError saying what to set."""
    if not 0 < fraction <= 1:
        raise ValueError(f"data.supervised_fraction must be in (0, 1] (the share of training images that keep their "
                         f"ground truth for attention supervision; 1: all), got {fraction}")
    return float(fraction)


class PartialSupervision(Dataset):
    """A training set whose samples keep their ground truth (the third element: a box or a mask) for a seeded
    ``round(fraction × n)`` of its n images (at least one); the others get it filled with NaN, which the module
    reads as "no ground truth: train this image without attention supervision".

    The choice depends only on ``seed`` and n, so it is the same in every epoch, worker and run. Samples that are
    ``None`` (unreadable images, dropped by ``skip_unreadable_collate``) stay ``None``; the ground truth comes back
    as float32 for every image, so kept and emptied ones batch together.
    """

    def __init__(self, dataset: Dataset, fraction: float, seed: int):
        self.dataset = dataset
        total = len(dataset)
        count = max(1, round(check_supervised_fraction(fraction) * total)) if total else 0
        generator = np.random.default_rng([_SUPERVISED_SHARE_STREAM, seed % 2**64])  # numpy takes seeds ≥ 0
        order = generator.permutation(total)
        self.supervised = torch.zeros(total, dtype=torch.bool)
        self.supervised[torch.from_numpy(order[:count])] = True

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        sample = self.dataset[index]
        if sample is None:
            return None
        image, target, truth, *rest = sample
        truth = torch.as_tensor(truth).to(torch.float32)
        if not self.supervised[index]:
            truth = torch.full_like(truth, float("nan"))
        return (image, target, truth, *rest)


def check_not_empty(name: str, dataset: Dataset, where: str) -> None:
    if len(dataset) == 0:
        raise ValueError(f"the {name} split is empty ({where}); check the data root and the split options")


def random_hflip_with_box(image: Tensor, box: Tensor) -> tuple[Tensor, Tensor]:
    """Mirror an image (C×H×W) and its box (x0, y0, x1, y1; x1/y1 exclusive) together, with probability 1/2: the
    box becomes (W − x1, y0, W − x0, y1). Returns plain tensors, the box in the shape and dtype it came in.

    The coin is drawn here and torchvision's functional flips run only on heads: about half the cost per sample of
    ``v2.RandomHorizontalFlip``, with the same draw and the same results."""
    if torch.rand(1) >= 0.5:
        return image, box
    boxes = tv_tensors.BoundingBoxes(box, format="XYXY", canvas_size=tuple(image.shape[-2:]))
    flipped = v2.functional.horizontal_flip(boxes).as_subclass(Tensor).reshape(box.shape)
    return v2.functional.horizontal_flip(image), flipped
