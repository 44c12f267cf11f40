"""Training throughput of every backbone: baseline vs ABN, ours vs the official ABN code, and speed switches.

    python scripts/bench_train.py --arch resnet20 --batch-size 128 --light
    python scripts/bench_train.py --arch resnet110_bottleneck densenet_bc100 --batch-size 32 \\
        --official-repo /path/to/attention_branch_network
    python scripts/bench_train.py --arch resnet110_bottleneck --switches --no-heads          # all switches
    python scripts/bench_train.py --arch resnet20 --switches channels_last bf16 --no-heads
    python scripts/bench_train.py --arch all --steps 2 --warmup 1 --repeats 1 --batch-size 8
    python scripts/bench_train.py --no-heads --official-repo /path/to/checkout --defaults   # ours as abn-train runs
    python scripts/bench_train.py --no-heads --peak                 # achieved FLOP/s against the matmul peak

Per arch it prints Markdown rows: parameters and MACs per image of the baseline and ABN heads (``--light``: and of
ABN with the light branch), training images/s (forward + backward + SGD step on a fixed batch) of each, and each
one's speed relative to the baseline beside the inverse of its MAC ratio (what a cost-proportional speed would be).
``--official-repo`` points at a checkout of github.com/machine-perception-robotics-group/attention_branch_network:
its model definitions are imported from there at run time and timed against ours on the
same input, batch and device, interleaved so that a slow moment of the machine hits both. ``--switches`` times the
ABN head with channels_last, bf16 autocast and torch.compile (or those named), each against no switch. ``--peak``
times a large square matmul in fp32 and bf16 (the device's practical peak) and the ABN's training steps in fp32 and
bf16 autocast, and prints the FLOP/s each step achieves (forward and backward FLOPs counted by torch's FlopCounterMode)
as a share of the peak of its precision. Inputs default to each arch's native size.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from abn.models import ABNOutput, create_model, list_models, model_info
from abn.speed import choose_channels_last, choose_precision

# our arch → (file in the official repository, constructor, its arguments); only networks that are the same
OFFICIAL = {
    # the official CIFAR ResNet has basic blocks below depth 44 and bottlenecks from there on
    "resnet20": ("models/cifar/resnet.py", "resnet", {"depth": 20}),
    "resnet32": ("models/cifar/resnet.py", "resnet", {"depth": 32}),
    "resnet110_bottleneck": ("models/cifar/resnet.py", "resnet", {"depth": 110}),
    "densenet_bc100": ("models/cifar/densenet.py", "densenet", {"depth": 100, "growthRate": 12, "compressionRate": 2}),
    "wrn28_10": ("models/cifar/wrn.py", "wrn", {"depth": 28, "widen_factor": 10, "dropRate": 0.3}),
    "resnext29_8x64d": ("models/cifar/resnext.py", "resnext", {"cardinality": 8, "depth": 29, "widen_factor": 4}),
    **{f"resnet{d}": ("models/imagenet/resnet.py", f"resnet{d}", {}) for d in (18, 34, 50, 101, 152)},
}


SWITCHES = {"channels_last": "channels_last", "bf16": "bf16 autocast", "compile": "torch.compile"}


class OfficialABN(nn.Module):
    """The official model, returning our ABNOutput (it returns attention logits, logits, map)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> ABNOutput:
        att_logits, logits, attention = self.model(x)
        return ABNOutput(logits, att_logits, attention)


def official_model(repo: Path, arch: str, num_classes: int) -> nn.Module:
    path, constructor, kwargs = OFFICIAL[arch]
    if not (repo / path).is_file():
        raise SystemExit(f"{repo / path} not found: --official-repo must be a checkout of "
                         "https://github.com/machine-perception-robotics-group/attention_branch_network")
    spec = importlib.util.spec_from_file_location(f"official_{Path(path).stem}_{arch}", repo / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return OfficialABN(getattr(module, constructor)(num_classes=num_classes, **kwargs))


def macs_per_image(model: nn.Module, image_size: int, in_chans: int) -> float:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, in_chans, image_size, image_size))
    return counter.get_total_flops() / 2  # a multiply-accumulate is two FLOPs


def training_flops_per_image(model: nn.Module, image_size: int, in_chans: int, classes: int) -> float:
    """FLOPs of one training step per image: forward, both branches' losses and backward, counted by torch."""
    model.train()
    images = torch.randn(2, in_chans, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        out = model(images)
        loss = F.cross_entropy(out.logits, torch.tensor([0, 1]))
        if out.att_logits is not None:
            loss = loss + F.cross_entropy(out.att_logits, torch.tensor([0, 1]))
        loss.backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def matmul_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` rounds of square ``size``×``size`` matmuls: the practical peak."""
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    rounds = max(1, int(2e10 // (2 * size**3)))  # about 20 GFLOP a round
    best = 0.0
    for _ in range(repeats + 1):  # the first round warms up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(rounds):
            torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * size**3 * rounds / (time.perf_counter() - start))
    return best


def peak_table(archs: list[str], settings: dict[str, tuple[int, int]], device: torch.device,
               args: argparse.Namespace) -> None:
    """Achieved training FLOP/s of the ABN, fp32 and bf16 autocast (NHWC and NCHW), as a share of the matmul peak."""
    size = args.peak_size or (8192 if device.type == "cuda" else 2048)
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    peaks = {name: matmul_peak(device, dtype, size) for name, dtype in dtypes.items()}
    rows = []
    for arch in archs:
        size_, classes = settings[arch]
        models = {(precision, layout): build(arch, "abn", classes, args.in_chans)
                  for precision in ("fp32", "bf16") for layout in ("NCHW", "NHWC")}
        flops = training_flops_per_image(models["fp32", "NCHW"], size_, args.in_chans, classes)  # the same for all
        timers = {(precision, layout): Timer(model, device, args.batch_size, size_, args.in_chans, classes,
                                             channels_last=layout == "NHWC", bf16=precision == "bf16")
                  for (precision, layout), model in models.items()}
        speeds = interleaved(timers, args.steps, args.warmup, args.repeats)
        rows += [(arch, size_, precision, layout, statistics.median(values), flops)
                 for (precision, layout), values in speeds.items()]
        del timers
    # measured again after the training steps, the best kept: a busy moment of the machine lowers neither figure
    peaks = {name: max(peak, matmul_peak(device, dtypes[name], size)) for name, peak in peaks.items()}
    print(f"\nmatmul peak ({size}×{size}, best of 5 before and 5 after): fp32 {peaks['fp32'] / 1e9:,.1f} GFLOP/s, "
          f"bf16 {peaks['bf16'] / 1e9:,.1f} GFLOP/s\n")
    print("| arch | input | settings | train img/s | training GFLOP/img | achieved GFLOP/s | share of the matmul peak |")
    print("|---|---|---|---|---|---|---|")
    for arch, size_, precision, layout, speed, flops in rows:
        achieved = speed * flops
        print(f"| {arch} | {size_} | {precision}, {layout} | {speed:.1f} | {flops / 1e9:.3f} | {achieved / 1e9:,.1f} "
              f"| {100 * achieved / peaks[precision]:.1f} % of {precision} |", flush=True)


class Timer:
    """Training steps of one model on a fixed batch; ``run`` returns images/s over ``steps`` steps."""

    def __init__(self, model: nn.Module, device: torch.device, batch: int, size: int, in_chans: int, classes: int,
                 channels_last: bool = False, bf16: bool = False, compile: bool = False, multilabel: bool = False):
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device, memory_format=memory_format).train()
        if compile:
            self.model.compile()
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9)
        self.images = torch.randn(batch, in_chans, size, size, device=device).contiguous(memory_format=memory_format)
        if multilabel:  # one 0/1 target per attribute, binary cross-entropy (as the module trains CelebA)
            self.labels = torch.randint(0, 2, (batch, classes), device=device).float()
            self.criterion = F.binary_cross_entropy_with_logits
        else:
            self.labels = torch.randint(0, classes, (batch,), device=device)
            self.criterion = F.cross_entropy
        self.device, self.bf16 = device, bf16
        self.settings = f"{'bf16 autocast' if bf16 else 'fp32'}, {'NHWC' if channels_last else 'NCHW'}"

    def step(self) -> None:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            out = self.model(self.images)
            loss = self.criterion(out.logits, self.labels)
            if out.att_logits is not None:
                loss = loss + self.criterion(out.att_logits, self.labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def run(self, steps: int) -> float:
        self._sync()
        start = time.perf_counter()
        for _ in range(steps):
            self.step()
        self._sync()
        return steps * len(self.labels) / (time.perf_counter() - start)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()


def interleaved(timers: dict[str, Timer], steps: int, warmup: int, repeats: int) -> dict[str, list[float]]:
    """Images/s of each timer in each of ``repeats`` rounds, the timers taking turns within a round."""
    for timer in timers.values():
        for _ in range(warmup):
            timer.step()
    speeds: dict[str, list[float]] = {name: [] for name in timers}
    for round_ in range(repeats):
        names = list(timers) if round_ % 2 == 0 else list(reversed(timers))  # neither always goes first
        for name in names:
            speeds[name].append(timers[name].run(steps))
    return speeds


def paired_ratio(speeds: dict[str, list[float]], a: str, b: str) -> str:
    """Median over rounds of speed a / speed b, with the range: each round times both back to back."""
    ratios = [x / y for x, y in zip(speeds[a], speeds[b])]
    return f"{statistics.median(ratios):.3f} ({min(ratios):.2f}–{max(ratios):.2f})"


def build(arch: str, head: str, classes: int, in_chans: int, **options) -> nn.Module:
    torch.manual_seed(0)
    return create_model(arch, head=head, num_classes=classes, in_chans=in_chans, **options)


def default_timer(arch: str, device: torch.device, args: argparse.Namespace, size: int, classes: int) -> Timer:
    """Our ABN with the precision and memory format ``abn-train`` chooses by default on ``device`` (abn.speed)."""
    model = build(arch, "abn", classes, args.in_chans)
    precision, _ = choose_precision("auto", device)
    channels_last, _ = choose_channels_last("auto", model, (args.batch_size, args.in_chans, size, size), device,
                                            precision)
    return Timer(model, device, args.batch_size, size, args.in_chans, classes, channels_last=channels_last,
                 bf16=precision.startswith("bf16"))


def try_speeds(make: Callable[[], dict[str, Timer]], args) -> Optional[dict[str, float]]:
    try:
        return {name: statistics.median(values) for name, values in interleaved(make(), args.steps, args.warmup,
                                                                                 args.repeats).items()}
    except Exception as error:  # e.g. torch.compile without a working compiler: report, go on
        print(f"  failed: {type(error).__name__}: {str(error).splitlines()[0][:200]}", file=sys.stderr)
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["resnet20"], help=f"one or more of {', '.join(list_models())}, or all")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=None, help="default: the arch's native size (32 or 224)")
    parser.add_argument("--in-chans", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=None, help="default: 10 at 32 px, 1000 at 224 px")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are printed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--official-repo", type=Path, default=None, help="checkout of the official ABN code")
    parser.add_argument("--switches", nargs="*", choices=SWITCHES, default=None,
                        help="time the ABN head with these speed switches (none named: all of them)")
    parser.add_argument("--no-heads", action="store_true", help="skip the baseline-vs-ABN table")
    parser.add_argument("--defaults", action="store_true",
                        help="with --official-repo: also time ours at abn-train's default settings (precision and "
                             "memory format auto) against the official code at its own (fp32, NCHW)")
    parser.add_argument("--light", action="store_true", help="add the ABN with the light branch to that table")
    parser.add_argument("--peak", action="store_true",
                        help="the ABN's achieved training FLOP/s (fp32, bf16) as a share of the device's matmul peak")
    parser.add_argument("--peak-size", type=int, default=None, help="side of the peak's matmuls (8192 GPU, 2048 CPU)")
    args = parser.parse_args()

    archs = list_models() if args.arch == ["all"] else args.arch
    for arch in archs:
        model_info(arch)  # a clear error for an unknown name
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {where}; torch {torch.__version__}; batch {args.batch_size}; "
          f"{args.steps} steps × {args.repeats} interleaved rounds (median), {args.warmup} warm-up steps\n")

    settings = {}
    for arch in archs:
        size = args.image_size or model_info(arch).input_size
        settings[arch] = (size, args.num_classes or (10 if size <= 64 else 1000))
    if not args.no_heads:
        print("| arch | input | network | params | MACs/img | train img/s | speed vs baseline, median (range) of rounds "
              "| baseline MACs / MACs |")
        print("|---|---|---|---|---|---|---|---|")
    for arch in [] if args.no_heads else archs:
        size, classes = settings[arch]
        models = {"baseline": build(arch, "baseline", classes, args.in_chans),
                  "ABN": build(arch, "abn", classes, args.in_chans)}
        if args.light:
            models["ABN, light branch"] = build(arch, "abn", classes, args.in_chans, branch_depth="light")
        params = {h: sum(p.numel() for p in m.parameters()) for h, m in models.items()}
        macs = {h: macs_per_image(m, size, args.in_chans) for h, m in models.items()}
        timers = {h: Timer(m, device, args.batch_size, size, args.in_chans, classes) for h, m in models.items()}
        speeds = interleaved(timers, args.steps, args.warmup, args.repeats)
        for name in models:
            print(f"| {arch} | {size} | {name} | {params[name] / 1e6:.2f} M | {macs[name] / 1e6:,.0f} M "
                  f"| {statistics.median(speeds[name]):.1f} | {paired_ratio(speeds, name, 'baseline')} "
                  f"| {macs['baseline'] / macs[name]:.3f} |", flush=True)
        del models, timers

    defaults: list[str] = []
    if args.official_repo is not None:
        print("\n| arch | input | params ours | params official | MACs/img ours | MACs/img official "
              "| img/s ours (ABN) | img/s official | ours / official, median (range) of rounds |")
        print("|---|---|---|---|---|---|---|---|---|")
        for arch in archs:
            size, classes = settings[arch]
            if arch not in OFFICIAL:
                print(f"| {arch} | {size} | | | | | | | no official counterpart |")
                continue
            if size != model_info(arch).input_size:  # the official code hard-codes its pooling sizes
                print(f"| {arch} | {size} | | | | | | | the official code runs only at {model_info(arch).input_size} |")
                continue
            ours, theirs = build(arch, "abn", classes, args.in_chans), official_model(args.official_repo, arch, classes)
            counts = [sum(p.numel() for p in m.parameters()) for m in (ours, theirs)]
            macs = [macs_per_image(m, size, args.in_chans) / 1e6 for m in (ours, theirs)]
            timers = {name: Timer(m, device, args.batch_size, size, args.in_chans, classes)
                      for name, m in (("ours", ours), ("official", theirs))}
            if args.defaults:  # ours as abn-train sets it up by default (trainer.precision, model.channels_last auto)
                timers["ours, defaults"] = default_timer(arch, device, args, size, classes)
            speeds = interleaved(timers, args.steps, args.warmup, args.repeats)
            print(f"| {arch} | {size} | {counts[0]:,} | {counts[1]:,} | {macs[0]:,.0f} M | {macs[1]:,.0f} M "
                  f"| {statistics.median(speeds['ours']):.1f} | {statistics.median(speeds['official']):.1f} "
                  f"| {paired_ratio(speeds, 'ours', 'official')} |", flush=True)
            if args.defaults:
                defaults.append(f"| {arch} | {size} | {timers['ours, defaults'].settings} "
                                f"| {statistics.median(speeds['ours, defaults']):.1f} "
                                f"| {statistics.median(speeds['official']):.1f} "
                                f"| {paired_ratio(speeds, 'ours, defaults', 'official')} |")
            del ours, theirs, timers
        if defaults:
            print("\n| arch | input | our default settings | img/s ours, defaults | img/s official (fp32, NCHW) "
                  "| ours, defaults / official, median (range) |")
            print("|---|---|---|---|---|---|")
            print("\n".join(defaults), flush=True)

    if args.switches is not None:
        switches = args.switches or list(SWITCHES)
        print("\n| arch | ABN img/s, no switch | " + " | ".join(SWITCHES[n] for n in switches) + " |")
        print("|---|---|" + "---|" * len(switches))
        for arch in archs:
            size, classes = settings[arch]
            speeds = {}
            for name in ["plain", *switches]:  # each timed on its own: compile is slow to warm up
                def make(name=name):
                    options = {} if name == "plain" else {name: True}
                    return {name: Timer(build(arch, "abn", classes, args.in_chans), device, args.batch_size, size,
                                        args.in_chans, classes, **options)}
                result = try_speeds(make, args)
                speeds[name] = result[name] if result else None
            plain = speeds["plain"]
            cells = [f"{speeds[n]:.1f} (×{speeds[n] / plain:.2f})" if speeds[n] else "failed" for n in switches]
            print(f"| {arch} | {plain:.1f} | " + " | ".join(cells) + " |", flush=True)

    if args.peak:
        peak_table(archs, settings, device, args)


if __name__ == "__main__":
    main()
