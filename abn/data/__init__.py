"""Lightning data modules; each knows its normalisation (``mean``/``std``, ``denormalize``) and ``classes``."""

from .base import ClassificationDataModule
from .fashion_mnist import FashionMNISTDataModule
from .shapes import SHAPE_NAMES, ShapesDataModule, ShapesDataset, generate_split

__all__ = [
    "ClassificationDataModule",
    "FashionMNISTDataModule",
    "SHAPE_NAMES",
    "ShapesDataModule",
    "ShapesDataset",
    "generate_split",
]
