"""Lightning data modules; each knows its normalisation (``mean``/``std``, ``denormalize``) and ``classes``."""

from .base import ClassificationDataModule
from .celeba import CelebADataModule
from .cifar import CIFAR10DataModule, CIFAR100DataModule
from .cluttered import ClutteredFashionMNISTDataModule
from .compcars import CompCarsDataModule
from .fashion_mnist import FashionMNISTDataModule
from .folder import FolderDataModule
from .imagenet import ImageNetDataModule
from .multishapes import MultiShapesDataModule, MultiShapesDataset
from .shapes import SHAPE_NAMES, ShapesDataModule, ShapesDataset, generate_split
from .svhn import SVHNDataModule

__all__ = [
    "CelebADataModule",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "ClutteredFashionMNISTDataModule",
    "ClassificationDataModule",
    "CompCarsDataModule",
    "FashionMNISTDataModule",
    "FolderDataModule",
    "ImageNetDataModule",
    "MultiShapesDataModule",
    "MultiShapesDataset",
    "SHAPE_NAMES",
    "ShapesDataModule",
    "ShapesDataset",
    "SVHNDataModule",
    "generate_split",
]
