"""Training throughput and MACs of the baseline and ABN heads of one backbone.

    python scripts/bench_train.py --arch resnet20 --batch-size 128 --image-size 32

Prints, per head: parameters, MACs per image (forward), training images/s (forward + backward + SGD step), and
whether ABN's speed ratio to the baseline matches the inverse of its MAC ratio (the branch should cost its
arithmetic and nothing more). Runs on the CPU, and also on CUDA when a GPU is present.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from abn.models import create_model, list_models


def macs_per_image(model: torch.nn.Module, image_size: int, in_chans: int) -> float:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.randn(1, in_chans, image_size, image_size))
    return counter.get_total_flops() / 2  # a multiply-accumulate is two FLOPs


def train_images_per_second(model, device, batch_size, image_size, in_chans, num_classes, steps, warmup) -> float:
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images = torch.randn(batch_size, in_chans, image_size, image_size, device=device)
    labels = torch.randint(0, num_classes, (batch_size,), device=device)
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        out = model(images)
        loss = F.cross_entropy(out.logits, labels)
        if out.att_logits is not None:
            loss = loss + F.cross_entropy(out.att_logits, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="resnet20", choices=list_models())
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--in-chans", type=int, default=3)
    parser.add_argument("--num-classes", type=int, default=10)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per head and device")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs per head; the best is kept")
    parser.add_argument("--devices", nargs="+", default=["cpu", "cuda"], help="cuda is skipped without a GPU")
    args = parser.parse_args()

    devices = [torch.device(d) for d in args.devices if d != "cuda" or torch.cuda.is_available()]
    print(f"arch={args.arch} batch={args.batch_size} input={args.in_chans}x{args.image_size}x{args.image_size} "
          f"classes={args.num_classes} torch={torch.__version__} cpu threads={torch.get_num_threads()}")
    for device in devices:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
        rows = {}
        for head in ("baseline", "abn"):
            torch.manual_seed(0)
            model = create_model(args.arch, head=head, num_classes=args.num_classes, in_chans=args.in_chans)
            rows[head] = {
                "model": model,
                "params": sum(p.numel() for p in model.parameters()),
                "macs": macs_per_image(model, args.image_size, args.in_chans),
                "speed": 0.0,
            }
        for _ in range(args.repeats):  # alternate heads so that a slow moment of the machine hits both
            for head, row in rows.items():
                speed = train_images_per_second(row["model"], device, args.batch_size, args.image_size,
                                                args.in_chans, args.num_classes, args.steps, args.warmup)
                row["speed"] = max(row["speed"], speed)
        print(f"\n{name}")
        print(f"{'head':<10}{'params':>12}{'MMACs/img':>12}{'train img/s':>14}")
        for head, row in rows.items():
            print(f"{head:<10}{row['params']:>12,}{row['macs'] / 1e6:>12.1f}{row['speed']:>14.1f}")
        mac_ratio = rows["abn"]["macs"] / rows["baseline"]["macs"]
        speed_ratio = rows["abn"]["speed"] / rows["baseline"]["speed"]
        gap = speed_ratio * mac_ratio - 1
        print(f"ABN / baseline: MACs x{mac_ratio:.2f}, speed x{speed_ratio:.3f}, inverse MAC ratio {1 / mac_ratio:.3f}: "
              f"{100 * gap:+.1f} % from cost-proportional ({'within' if abs(gap) <= 0.10 else 'outside'} 10 %"
              f"{', ABN faster than its MACs predict' if gap > 0 else ''})")


if __name__ == "__main__":
    main()
