"""Training speed and memory of the multi-task ABN: the authors' per-attribute loop vs batched attribute chunks.

    python scripts/bench_multitask.py                                   # ResNet-101 and ResNet-18, 224 px, B=8, T=40
    python scripts/bench_multitask.py --arch resnet18 --batch-size 4 --chunks 1 8 40 --steps 2 --repeats 3

The multitask head runs the shared last stage once per attribute on g·M^t. ``task_chunk=1`` is the authors' loop
(T passes of B images); ``task_chunk=c`` runs c attributes as one batch of B·c images, with per-attribute BatchNorm
statistics, so it computes the same outputs and gradients (tests/models/test_multitask.py). Per arch this prints a
Markdown table: parameters, MACs per image, training images/s (forward + backward + SGD step on a fixed batch,
median of interleaved rounds), the speed relative to the loop (median and range of the per-round ratios), and the
peak memory of a training step (CUDA: peak allocated; CPU: peak resident memory of a fresh process that builds the
model and runs two steps, minus that process's memory before building it). The single-map ABN and the baseline with
T outputs are timed beside them for scale.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys

import torch

from bench_train import Timer, build, interleaved, macs_per_image

NUM_ATTRIBUTES = 40


def configurations(chunks: list[int]) -> dict[str, dict]:
    """Row name → create_model head and options."""
    rows = {("multitask, loop (task_chunk=1)" if c == 1 else f"multitask, task_chunk={c}"):
            {"head": "multitask", "task_chunk": c} for c in chunks}
    rows["abn (one map), T outputs"] = {"head": "abn"}
    rows["baseline, T outputs"] = {"head": "baseline"}
    return rows


def timer(arch: str, options: dict, args, device: torch.device) -> Timer:
    model = build(arch, classes=args.attributes, in_chans=3, **options)
    return Timer(model, device, args.batch_size, args.image_size, 3, args.attributes, multilabel=True)


def peak_memory(arch: str, options: dict, args, device: torch.device) -> float:
    """MiB a training step takes at its peak (see the module docstring)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        measured = timer(arch, options, args, device)
        for _ in range(2):
            measured.step()
        peak = torch.cuda.max_memory_allocated(device) - before
        del measured
        return peak / 2**20
    command = [sys.executable, __file__, "--memory-of", json.dumps({"arch": arch, "options": options}),
               "--batch-size", str(args.batch_size), "--image-size", str(args.image_size),
               "--attributes", str(args.attributes)]
    return float(subprocess.run(command, check=True, capture_output=True, text=True).stdout.split()[-1])


def peak_resident_kib() -> float:
    """This process's peak resident memory in KiB. Linux: VmHWM of /proc/self/status, the peak of this program's
    own memory; getrusage's ru_maxrss is not, as a child started by a larger parent inherits the parent's peak."""
    try:
        with open("/proc/self/status") as status:
            return float(next(line.split()[1] for line in status if line.startswith("VmHWM:")))
    except (OSError, StopIteration):
        return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def measure_memory_here(spec: str, args) -> None:
    """The child process of :func:`peak_memory` on the CPU: prints the peak resident MiB above its start."""
    parsed = json.loads(spec)
    start = peak_resident_kib()
    measured = timer(parsed["arch"], parsed["options"], args, torch.device("cpu"))
    for _ in range(2):
        measured.step()
    print((peak_resident_kib() - start) / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="+", default=["resnet101", "resnet18"])
    parser.add_argument("--batch-size", type=int, default=8, help="8: the authors' CelebA batch")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--attributes", type=int, default=NUM_ATTRIBUTES, help="T, 40 for CelebA")
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 8, 40], help="task_chunk values; 1 is the loop")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; medians are printed")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory column")
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        measure_memory_here(args.memory_of, args)
        return
    device = torch.device(args.device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {where}; batch {args.batch_size}, {args.image_size} px, T = {args.attributes}, "
          f"{args.repeats} rounds of {args.steps} steps (after {args.warmup} warm-up)\n")
    rows = configurations(args.chunks)
    loop = next(iter(rows))
    for arch in args.arch:
        timers = {name: timer(arch, options, args, device) for name, options in rows.items()}
        speeds = interleaved(timers, args.steps, args.warmup, args.repeats)
        print(f"### {arch}\n")
        print("| model | parameters | MACs / image | train img/s | vs loop | peak memory (MiB) |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, options in rows.items():
            model = timers[name].model
            params = sum(p.numel() for p in model.parameters())
            macs = macs_per_image(build(arch, classes=args.attributes, in_chans=3, **options), args.image_size, 3)
            ratios = [speed / base for speed, base in zip(speeds[name], speeds[loop])]
            ratio = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}–{max(ratios):.2f})"
            memory = "" if args.no_memory else f"{peak_memory(arch, options, args, device):,.0f}"
            print(f"| {name} | {params / 1e6:.1f} M | {macs / 1e9:.1f} G | {statistics.median(speeds[name]):.2f} | "
                  f"{ratio} | {memory} |")
        print()
        del timers


if __name__ == "__main__":
    main()
