"""Explanations of CNN decisions computed one way for every method, and scored against ground truth.

``explain(model, images, method, targets=None, layer=None)`` gives B×H×W maps for ``abn`` (the attention branch's
map), ``cam``, ``gradcam``, ``gradcam++``, ``guided_backprop``, ``guided_gradcam``, ``counterfactual``,
``relevance_cam`` and ``random``; :mod:`abn.explain.metrics` scores them. On a multi-label model (one logit per
attribute, e.g. the multi-task ABN) a target is an attribute, and every method explains that attribute's logit.
What each method supports is its entry in :data:`METHOD_SPECS` (:mod:`abn.explain.methods`); the metrics of
``abn-explain`` are the entries of :data:`abn.explain.metrics.METRIC_SPECS`.
"""

from .api import METHODS, applicable_methods, explain, normalize_maps
from .layers import default_layer, spatial_layers
from .methods import METHOD_SPECS, MethodSpec

__all__ = ["METHODS", "METHOD_SPECS", "MethodSpec", "applicable_methods", "default_layer", "explain", "normalize_maps",
           "spatial_layers"]
