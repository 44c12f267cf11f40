"""Explanations of CNN decisions computed one way for every method, and scored against ground truth.

``explain(model, images, method, targets=None, layer=None)`` gives B×H×W maps for ``abn`` (the attention branch's
map), ``cam``, ``gradcam``, ``gradcam++``, ``guided_backprop``, ``guided_gradcam``, ``counterfactual``,
``relevance_cam`` and ``random``; :mod:`abn.explain.metrics` scores them.
"""

from .api import METHODS, applicable_methods, explain, normalize_maps
from .layers import default_layer, spatial_layers

__all__ = ["METHODS", "applicable_methods", "default_layer", "explain", "normalize_maps", "spatial_layers"]
