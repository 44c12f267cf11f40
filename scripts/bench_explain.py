"""Speed of every explanation method of ``abn.explain``: images/s per method and model, against two references.

    python scripts/bench_explain.py                                   # CPU, the default models, all methods
    python scripts/bench_explain.py --check-gradcam-speedup           # exit code 1 if Grad-CAM is < 2.5× faster
    python scripts/bench_explain.py --device cuda --batch-size 32 --repeats 20
    python scripts/bench_explain.py --models resnet20:abn --methods gradcam guided_backprop --repeats 3

``--models`` are ``arch:head`` (``abn.models.create_model(arch, head=head, num_classes=10)`` at the arch's native
input size, e.g. ``resnet20:abn`` at 32 px, ``resnet18:cam`` at 224 px) or ``torchvision:<name>`` (the plain
torchvision network, ``torchvision.models.get_model(name, num_classes=10)``, at 224 px). Each model is timed on
one fixed batch of random images in eval mode, every call of ``explain(model, images, method)`` explaining the
predicted class, as a user would call it. Two reference rows come with every model:

- ``forward``: the model's forward pass under ``torch.no_grad()``: what the ABN attention map costs at best;
- ``forward+backward``: a forward pass with the parameters requiring grad, then a full backward pass of the summed
  target scores to every parameter and to the input: what a gradient method costs when it does not stop at its
  layer.

Within a round every method and reference runs once, one after the other (the order reversed every other round, so
that a slow moment of the machine hits all of them); ``--repeats`` rounds follow ``--warmup`` untimed calls of
each. The table gives the median time per batch and the images/s it makes, and per method the median over the
rounds of its time / the time of ``forward`` ("cost vs forward") and of the time of ``forward+backward`` / its
time ("speed-up vs forward+backward"): each round times them back to back. The final lines state the issue's
requirement, Grad-CAM at the default layer (the last stage) at least ``--required-speedup`` (2.5×) faster than
forward + full backward, for each of ``--gradcam-models`` (the median over the rounds, then their range: on a busy
machine a wide range says the figure is noise; add ``--repeats``); ``--check-gradcam-speedup`` turns that into the
exit code. A method that raises is reported in its row and left out of later rounds. The thread count is left as
torch sets it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, NamedTuple, Optional

import torch
import torchvision
from torch import Tensor, nn

from abn.explain import METHODS, applicable_methods, default_layer, explain
from abn.models import create_model, list_models, model_info
from abn.models.network import HEADS

REFERENCES = ("forward", "forward+backward")
COLUMNS = ("model", "input", "method", "ms/batch", "images/s", "cost vs forward", "speed-up vs forward+backward")
DEFAULT_MODELS = ("resnet20:abn", "resnet20:cam", "resnet18:abn", "torchvision:resnet18")
DEFAULT_GRADCAM_MODELS = ("torchvision:resnet18", "resnet18:abn")
REQUIRED_SPEEDUP = 2.5
NUM_CLASSES = 10
TORCHVISION_SIZE = 224


class ModelSpec(NamedTuple):
    """One ``--models`` entry: ``arch:head`` of abn.models, or ``torchvision:<name>`` (``head`` None)."""

    label: str
    arch: str
    head: Optional[str]
    input_size: int

    def build(self) -> nn.Module:
        torch.manual_seed(0)
        if self.head is None:
            return torchvision.models.get_model(self.arch, num_classes=NUM_CLASSES)
        return create_model(self.arch, head=self.head, num_classes=NUM_CLASSES)


def parse_model(spec: str) -> ModelSpec:
    """``resnet20:abn`` → ModelSpec; a ValueError names what is wrong and what is accepted."""
    prefix, _, name = spec.rpartition(":")
    if prefix == "torchvision":
        if name not in torchvision.models.list_models(module=torchvision.models):
            raise ValueError(f"torchvision has no classification model {name!r} (in {spec!r}); "
                             "see torchvision.models.list_models()")
        return ModelSpec(spec, name, None, TORCHVISION_SIZE)
    if not prefix:
        raise ValueError(f"model {spec!r} names no head: write arch:head (heads: {', '.join(HEADS)}), "
                         "e.g. resnet20:abn, or torchvision:<name>")
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r} in {spec!r}; heads: {', '.join(HEADS)}")
    if prefix not in list_models():
        raise ValueError(f"unknown arch {prefix!r} in {spec!r}; archs: {', '.join(list_models())}, "
                         "or torchvision:<name> for a plain torchvision network")
    return ModelSpec(spec, prefix, name, model_info(prefix).input_size)


def logits_of(output) -> Tensor:
    return output.logits if hasattr(output, "logits") else output


def forward_call(model: nn.Module, images: Tensor) -> Callable[[], None]:
    def call() -> None:
        with torch.no_grad():
            model(images)
    return call


def forward_backward_call(model: nn.Module, images: Tensor) -> Callable[[], None]:
    """Forward with gradients on, then backward of the summed predicted-class scores to every parameter and the
    input (``explain`` explains the predicted class too)."""
    def call() -> None:
        model.zero_grad(set_to_none=True)
        inputs = images.detach().requires_grad_()
        logits = logits_of(model(inputs))
        logits.gather(1, logits.argmax(dim=1, keepdim=True)).sum().backward()
    return call


def method_call(model: nn.Module, images: Tensor, method: str) -> Callable[[], None]:
    def call() -> None:
        explain(model, images, method)
    return call


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def error_text(error: Exception) -> str:
    """The error's type and first line, fit for a table cell."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:160] if lines else ''}".rstrip(": ").replace("|", "/")


def time_rounds(calls: dict[str, Callable[[], None]], device: torch.device, warmup: int,
                repeats: int) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Seconds per call of each of ``calls`` in each of ``repeats`` interleaved rounds, after ``warmup`` calls of
    each; and the error of each call that raised (it is left out from then on)."""
    failed: dict[str, str] = {}

    def attempt(name: str) -> Optional[float]:
        try:
            synchronize(device)
            start = time.perf_counter()
            calls[name]()
            synchronize(device)
            return time.perf_counter() - start
        except Exception as error:  # report the method and go on with the others
            failed[name] = error_text(error)
            return None

    for name in calls:
        for _ in range(warmup):
            if name in failed or attempt(name) is None:
                break
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for round_ in range(repeats):
        order = list(calls) if round_ % 2 == 0 else list(reversed(calls))
        for name in order:
            if name not in failed:
                took = attempt(name)
                if took is not None:
                    seconds[name].append(took)
    for name in failed:
        seconds[name] = []
    return seconds, failed


def paired_ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """numerator / denominator per round (both timed in the same round); empty if either is missing."""
    if len(numerator) != len(denominator):
        return []
    return [a / b for a, b in zip(numerator, denominator)]


def paired_ratio(numerator: list[float], denominator: list[float]) -> Optional[float]:
    """The median over rounds of :func:`paired_ratios`; None if either is missing."""
    ratios = paired_ratios(numerator, denominator)
    return statistics.median(ratios) if ratios else None


def row(*cells: object) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def times_cell(ratio: Optional[float]) -> str:
    return "–" if ratio is None else f"{ratio:.2f}×"


def not_applicable_reason(method: str) -> str:
    return "needs an attention branch (head abn)" if method == "abn" else "needs a GAP + linear head"


def bench_model(spec: ModelSpec, methods: Optional[list[str]], device: torch.device, batch_size: int, warmup: int,
                repeats: int) -> tuple[dict[str, list[float]], str]:
    """Print the table rows of one model; return the seconds per round of each row and Grad-CAM's default layer."""
    model = spec.build().to(device).eval()
    torch.manual_seed(1)
    images = torch.randn(batch_size, 3, spec.input_size, spec.input_size, device=device)
    applicable = applicable_methods(model)
    chosen = applicable if methods is None else methods
    calls = {"forward": forward_call(model, images), "forward+backward": forward_backward_call(model, images)}
    calls.update({method: method_call(model, images, method) for method in chosen if method in applicable})
    seconds, failed = time_rounds(calls, device, warmup, repeats)
    for name in [*REFERENCES, *chosen]:
        if name not in calls:
            print(row(spec.label, spec.input_size, name, f"does not apply: {not_applicable_reason(name)}", "", "", ""))
            continue
        if name in failed or not seconds[name]:
            print(row(spec.label, spec.input_size, name, f"failed: {failed.get(name, 'no timed call')}", "", "", ""))
            continue
        median = statistics.median(seconds[name])
        print(row(spec.label, spec.input_size, name, f"{median * 1000:,.1f}", f"{batch_size / median:,.1f}",
                  times_cell(paired_ratio(seconds[name], seconds["forward"])),
                  times_cell(paired_ratio(seconds["forward+backward"], seconds[name]))), flush=True)
    layer = default_layer(model, images[:1])
    del model, images, calls
    return seconds, layer


def gradcam_seconds(spec: ModelSpec, device: torch.device, batch_size: int, warmup: int,
                    repeats: int) -> tuple[dict[str, list[float]], dict[str, str], str]:
    """Grad-CAM and forward + full backward of one model, interleaved, for the requirement's line."""
    model = spec.build().to(device).eval()
    torch.manual_seed(1)
    images = torch.randn(batch_size, 3, spec.input_size, spec.input_size, device=device)
    calls = {"forward+backward": forward_backward_call(model, images), "gradcam": method_call(model, images, "gradcam")}
    seconds, failed = time_rounds(calls, device, warmup, repeats)
    return seconds, failed, default_layer(model, images[:1])


def speedup_line(spec: ModelSpec, layer: str, batch_size: int, ratios: list[float], error: Optional[str],
                 required: float) -> str:
    """The requirement's line: the median speed-up over the rounds, then the range of the rounds (the noise)."""
    what = (f"Grad-CAM at the last stage ({layer}) of {spec.label} at {spec.input_size} px vs forward + full "
            f"backward, batch {batch_size}")
    if not ratios:
        return f"{what}: not measured ({error or 'no timed call'}) (required ≥ {required:g}×)"
    speedup = statistics.median(ratios)
    verdict = "" if speedup >= required else " — below the requirement"
    return (f"{what}: {speedup:.1f}× faster (required ≥ {required:g}×){verdict}; "
            f"rounds {min(ratios):.1f}–{max(ratios):.1f}×")


def busy_cpu_note() -> Optional[str]:
    """A warning when other processes already load every CPU: the times then measure them as much as the methods.

    The 1-minute load average still counts a run that just ended (e.g. the previous benchmark) for a while, so only
    a load of at least one per CPU is reported."""
    if not hasattr(os, "getloadavg"):
        return None
    load, cpus = os.getloadavg()[0], os.cpu_count() or 1
    if load < cpus:
        return None
    return (f"warning: load average {load:.1f} on {cpus} CPUs before the start: other processes compete for the "
            "CPUs and the figures will be noisy (see the rounds' range below); time on an idle machine")


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS),
                        help="arch:head (abn.models, at its native size) or torchvision:<name> (224 px)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=None,
                        help="default: every method that applies to the model")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed rounds; medians are printed")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls of each method before the rounds")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--gradcam-models", nargs="*", default=list(DEFAULT_GRADCAM_MODELS),
                        help="models of the final Grad-CAM speed-up lines (none: no such line)")
    parser.add_argument("--required-speedup", type=float, default=REQUIRED_SPEEDUP,
                        help="Grad-CAM's required speed-up over forward + full backward")
    parser.add_argument("--check-gradcam-speedup", action="store_true",
                        help="exit with code 1 if Grad-CAM is below --required-speedup on any --gradcam-models")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("--batch-size and --repeats must be ≥ 1, --warmup ≥ 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available here; use --device cpu")
    try:
        args.models = [parse_model(spec) for spec in dict.fromkeys(args.models)]
        args.gradcam_models = [parse_model(spec) for spec in dict.fromkeys(args.gradcam_models)]
    except ValueError as error:
        parser.error(str(error))
    if args.methods is not None:
        args.methods = list(dict.fromkeys(args.methods))
    return args


def main(argv: Optional[list[str]] = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {where}; torch {torch.__version__}; {torch.get_num_threads()} threads; batch {args.batch_size}; "
          f"{args.repeats} interleaved rounds (median), {args.warmup} warm-up call(s) per method")
    busy = busy_cpu_note()
    if busy:
        print(busy)
    print()
    print(row(*COLUMNS))
    print(row(*["---"] * len(COLUMNS)), flush=True)
    measured: dict[str, tuple[dict[str, list[float]], str]] = {}
    for spec in args.models:
        measured[spec.label] = bench_model(spec, args.methods, device, args.batch_size, args.warmup, args.repeats)

    if args.gradcam_models:
        print()
    below = []
    for spec in args.gradcam_models:
        seconds, layer = measured.get(spec.label, ({}, ""))
        failed: dict[str, str] = {}
        if not (seconds.get("gradcam") and seconds.get("forward+backward")):  # not in the table: time it now
            seconds, failed, layer = gradcam_seconds(spec, device, args.batch_size, args.warmup, args.repeats)
        ratios = paired_ratios(seconds["forward+backward"], seconds["gradcam"])
        error = failed.get("gradcam") or failed.get("forward+backward")
        print(speedup_line(spec, layer, args.batch_size, ratios, error, args.required_speedup), flush=True)
        if not ratios or statistics.median(ratios) < args.required_speedup:
            below.append(spec.label)
    if args.check_gradcam_speedup and below:
        print(f"Grad-CAM speed-up below {args.required_speedup:g}× (or not measured) on: {', '.join(below)}",
              file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
