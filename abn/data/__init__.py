"""Lightning data modules; each knows its normalisation (``mean``/``std``, ``denormalize``) and ``classes``."""

from .base import ClassificationDataModule
from .cifar import CIFAR10DataModule, CIFAR100DataModule
from .fashion_mnist import FashionMNISTDataModule
from .imagenet import ImageNetDataModule
from .shapes import SHAPE_NAMES, ShapesDataModule, ShapesDataset, generate_split
from .svhn import SVHNDataModule

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ClassificationDataModule",
    "FashionMNISTDataModule",
    "ImageNetDataModule",
    "SHAPE_NAMES",
    "ShapesDataModule",
    "ShapesDataset",
    "SVHNDataModule",
    "generate_split",
]
