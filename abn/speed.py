"""The fast settings, chosen for the machine unless the config sets them: precision and memory format.

``trainer.precision=auto`` trains in bf16 autocast where the device computes bf16 natively (GPUs that support it;
CPUs with AMX or AVX-512 BF16 instructions) and in fp32 elsewhere, where bf16 would be emulated and slow.
``model.channels_last=auto`` measures a few training steps of the network in each memory format on the run's
device, at the run's precision and input size, and keeps NHWC only where it is faster: it depends on the network,
the device and the library version, so no rule of thumb replaces the measurement. Each decision is printed with its
reason and recorded in the run's hyperparameters.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

# NHWC must be at least this much faster to be chosen: below it, round-to-round noise decides
MIN_GAIN = 1.05
# images per measured step (the run's batch if smaller): enough to keep the device busy, few enough to be quick
MEASURED_BATCH = 32



def cache_file() -> Path:
    """Where measured memory formats are kept (``ABN_CACHE_DIR``, else ~/.cache/abn): one measurement per network,
    input, device, precision and torch version on a machine, so that its runs (a sweep, a resumed or requeued
    run) all train in the same format and stay reproducible. Delete the file to measure again."""
    return Path(os.environ.get("ABN_CACHE_DIR") or Path.home() / ".cache" / "abn") / "memory_formats.json"


def _read_cache() -> dict[str, Any]:
    try:
        cached = json.loads(cache_file().read_text())
    except (OSError, ValueError):  # none yet, or unreadable: measure again
        return {}
    return cached if isinstance(cached, dict) else {}


def _write_cache(key: str, chosen: bool, reason: str) -> None:
    path = cache_file()
    cached = {**_read_cache(), key: {"channels_last": chosen, "reason": reason}}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(cached, indent=1, sort_keys=True))
        os.replace(temporary, path)
    except OSError as error:  # a read-only home: the choice holds for this run only
        log.warning("could not keep the memory-format measurement in %s (%s); it is measured again next run", path,
                    error)


def device_name(device: torch.device) -> str:
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return f"{device.type} {torch.backends.cpu.get_cpu_capability()} ×{os.cpu_count()}"


def training_device(accelerator: str) -> torch.device:
    """The device ``trainer.accelerator`` trains on: a GPU for ``gpu``/``cuda``, and for ``auto`` where one exists."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")  # the current one; asking which would start CUDA before DDP spawns its processes
    return torch.device("cpu")


def cpu_bf16_instructions() -> list[str]:
    """The bf16 instruction sets this CPU has: AMX and AVX-512 BF16, either, both or neither."""
    return [name for name, present in (("AMX", torch.cpu._is_amx_tile_supported()),
                                       ("AVX-512 BF16", torch.cpu._is_avx512_bf16_supported())) if present]


def native_bf16(device: torch.device) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 natively, and the reason in words."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device) if torch.cuda.is_available() else "the GPU"
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{name} computes bf16 natively"
        return False, f"{name} has no native bf16"
    if device.type == "cpu":
        found = cpu_bf16_instructions()
        if found:
            return True, f"this CPU has {' and '.join(found)} instructions"
        return False, (f"this CPU has neither AMX nor AVX-512 BF16 instructions (its best: "
                       f"{torch.backends.cpu.get_cpu_capability()}), so bf16 would be emulated")
    return False, f"bf16 support of {device.type} devices is not known"


def choose_precision(requested: Any, device: torch.device) -> tuple[str, str]:
    """``trainer.precision``: the configured value, or for ``auto`` bf16-mixed where bf16 is native, else 32-true."""
    if str(requested) != "auto":
        return str(requested), "set in the config"
    native, reason = native_bf16(device)
    return ("bf16-mixed" if native else "32-true"), reason


def choose_channels_last(requested: Any, net: nn.Module, input_shape: Sequence[int], device: torch.device,
                         precision: str) -> tuple[bool, str]:
    """``model.channels_last``: the configured value, or for ``auto`` whether NHWC trains ``net`` faster than NCHW
    on ``device`` (``input_shape``: one batch, N×C×H×W), measured on a copy of the network."""
    if str(requested) != "auto":
        return bool(requested), "set in the config"
    shape = (min(int(input_shape[0]), MEASURED_BATCH), *map(int, input_shape[1:]))
    parameters = sum(p.numel() for p in net.parameters())
    key = (f"{type(net).__name__} {parameters} parameters | {'×'.join(map(str, shape))} | {device_name(device)} | "
           f"{precision} | torch {torch.__version__}")
    cached = _read_cache().get(key)
    if isinstance(cached, dict) and isinstance(cached.get("channels_last"), bool):
        return cached["channels_last"], f"{cached.get('reason', 'measured before')} (kept in {cache_file()})"
    nchw, nhwc = seconds_per_step(net, shape, device, precision)
    gain = nchw / nhwc
    chosen = gain >= MIN_GAIN
    reason = (f"NHWC trained {gain:.2f}× as fast as NCHW ({shape[0]}-image steps of this network on {device}, "
              f"{precision}; chosen from ×{MIN_GAIN:.2f})")
    _write_cache(key, chosen, reason)
    return chosen, reason


def seconds_per_step(net: nn.Module, shape: Sequence[int], device: torch.device, precision: str,
                     rounds: int = 3) -> tuple[float, float]:
    """The fastest of ``rounds`` forward+backward steps of a copy of ``net`` in NCHW and in NHWC, taken in turn
    after one warm-up step each (the network itself, its statistics and gradients are left untouched)."""
    trial = copy.deepcopy(net).to(device).train()
    images = torch.randn(*shape, device=device)
    formats = (torch.contiguous_format, torch.channels_last)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision.startswith("bf16")
                else nullcontext())
    best = {fmt: float("inf") for fmt in formats}
    for round_ in range(rounds + 1):
        for fmt in formats:
            trial.to(memory_format=fmt)
            batch = images.contiguous(memory_format=fmt)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            with autocast:
                loss = output_sum(trial(batch))
            loss.backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if round_:  # the first round warms up (allocations, kernel choice)
                best[fmt] = min(best[fmt], time.perf_counter() - start)
            trial.zero_grad(set_to_none=True)
    return best[torch.contiguous_format], best[torch.channels_last]


def output_sum(output: Any) -> Tensor:
    """One number from whatever the network returns (a tensor, or a tuple such as ABNOutput), to backpropagate."""
    if isinstance(output, Tensor):
        return output.float().sum()
    return sum(part.float().sum() for part in output if isinstance(part, Tensor))


def apply_fast_settings(cfg: Any, model: Any, datamodule: Any) -> None:
    """Resolve ``trainer.precision`` and ``model.channels_last`` of ``cfg`` where they are ``auto`` (the config then
    holds what was chosen, so the run's hyperparameters record it), set the model's memory format, and log both
    decisions with their reasons."""
    device = training_device(str(cfg.trainer.get("accelerator") or "auto"))
    precision, why = choose_precision(cfg.trainer.get("precision", "auto"), device)
    cfg.trainer.precision = precision
    log.info("Precision %s: %s", precision, why)
    try:
        size = datamodule.input_size
    except NotImplementedError:
        size = None
    if size is None and str(cfg.model.get("channels_last")) == "auto":
        channels_last, why = False, "the data module does not say its image size, so nothing was measured"
    else:
        height, width = (size, size) if isinstance(size, int) else size
        shape = (datamodule.batch_size, model.hparams.get("in_chans", datamodule.in_chans), height, width)
        channels_last, why = choose_channels_last(cfg.model.get("channels_last", False), model.net, shape, device,
                                                  precision)
    cfg.model.channels_last = channels_last
    model.set_channels_last(channels_last)
    log.info("Memory format %s: %s", "NHWC (channels_last)" if channels_last else "NCHW", why)
