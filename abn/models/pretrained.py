"""torchvision models with or without their ImageNet weights, and a clear message when the weights are out of reach."""

from __future__ import annotations

import os
from urllib.error import URLError

import torch
import torchvision
from torch import nn


def weights_cache_dir() -> str:
    """Where torch keeps downloaded weights: ``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch``)."""
    return os.path.join(torch.hub.get_dir(), "checkpoints")


def torchvision_model(name: str, pretrained: bool = False, **kwargs) -> nn.Module:
    """``torchvision.models.get_model(name)``, with its default ImageNet weights when ``pretrained``.

    Weights already in :func:`weights_cache_dir` load without network access; otherwise torchvision downloads
    them, and a failed download raises an error that names the file, its URL and where to put it.
    """
    try:
        builder_weights = torchvision.models.get_model_weights(name)
    except ValueError:
        valid = ", ".join(torchvision.models.list_models(module=torchvision.models))
        raise ValueError(f"unknown torchvision model {name!r}; valid names: {valid}") from None
    if not pretrained:
        return torchvision.models.get_model(name, weights=None, **kwargs)
    weights = builder_weights.DEFAULT
    try:
        return torchvision.models.get_model(name, weights=weights, **kwargs)
    except (URLError, OSError, RuntimeError) as error:
        file_name = os.path.basename(weights.url)
        raise FileNotFoundError(  # the weights file is not in the cache and could not be fetched
            f"could not load the ImageNet weights {weights} of {name} ({error}). Download {weights.url} on a "
            f"machine with network access and copy it to {os.path.join(weights_cache_dir(), file_name)} "
            "(set TORCH_HOME to use another cache), or train from scratch with pretrained=false."
        ) from error


def adapt_first_conv(conv: nn.Conv2d, in_chans: int) -> nn.Conv2d:
    """The same convolution for ``in_chans`` inputs; RGB filters are summed (grey) or tiled and rescaled."""
    if in_chans == conv.in_channels:
        return conv
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
    with torch.no_grad():
        if in_chans == 1:
            new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        else:
            repeats = -(-in_chans // conv.in_channels)
            tiled = conv.weight.repeat(1, repeats, 1, 1)[:, :in_chans]
            new.weight.copy_(tiled * conv.in_channels / in_chans)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new
