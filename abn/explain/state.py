"""Leave a model exactly as it was found after explaining it."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def preserved_state(model: nn.Module, eval_mode: bool = True, freeze: bool = True) -> Iterator[None]:
    """Run the body with the model in eval mode and its parameters frozen; restore afterwards, also on error.

    Restored: the train/eval flag of every module, ``requires_grad`` of every parameter and the ``.grad`` each one
    held (the body computes no parameter gradient, and a gradient the caller accumulated survives). Eval mode
    keeps BatchNorm statistics unchanged and dropout off; frozen parameters keep backward passes from reaching them.
    """
    modes = [(module, module.training) for module in model.modules()]
    params = [(param, param.requires_grad, param.grad) for param in model.parameters()]
    try:
        if eval_mode:
            model.eval()
        if freeze:
            for param, _, _ in params:
                param.requires_grad_(False)
        yield
    finally:
        for module, training in modes:
            module.training = training
        for param, requires_grad, grad in params:
            param.requires_grad_(requires_grad)
            param.grad = grad
