"""How ABN's attention map M is spread on a run's test images: is it flat, saturated, or does it pick regions?

    python scripts/map_stats.py logs/supervision/shapes/3ep/abn/seed0 logs/supervision/shapes/3ep/bce@1/seed0

Each argument is a run folder (its ``checkpoints/last.ckpt`` is read) or a checkpoint file. For the first
``--images`` test images (the run's own data settings, as ``abn-explain`` reads them) it prints one markdown row per
run: how many maps were read (the multi-task head has one per attribute), M's mean, the share of map cells above
0.9 and below 0.1, and M's standard deviation within an image (the mean over images). A map near 1 everywhere with a
tiny within-image spread multiplies every feature by about 2 and shows nothing; the pointing game and energy of
``abn-explain`` say where a map points, these figures say whether it can.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]


def checkpoint_of(given: Path) -> Path:
    checkpoint = given / "checkpoints" / "last.ckpt" if given.is_dir() else given
    if not checkpoint.is_file():
        raise SystemExit(f"{given}: no checkpoint there; give a run folder (with checkpoints/last.ckpt) or a .ckpt "
                         "file")
    return checkpoint.resolve()


def attention_maps(checkpoint: Path, images: int, batch_size: int, device: str) -> torch.Tensor:
    """M of the first ``images`` test images (N×h×w; N×A maps for the multi-task head's A attributes), computed as
    ``abn-explain`` loads model and data."""
    from abn.explain.run import prepare

    overrides = [f"ckpt_path={checkpoint}", "split=test", f"batch_size={batch_size}",
                 f"num_batches={-(-images // batch_size)}", f"device={device}"]
    with initialize_config_dir(str(ROOT / "conf"), version_base=None):
        prepared = prepare(compose("explain", overrides=overrides))
    maps, read = [], 0
    with torch.no_grad():  # prepare returns the network in eval mode
        for batch in prepared.loader:
            attention = prepared.net(batch[0].to(prepared.device)).attention
            if attention is None:
                raise SystemExit(f"{checkpoint}: the network has no attention map M (a baseline or CAM run); "
                                 "give an ABN run")
            maps.append(attention.float().cpu())
            read += len(attention)
            if read >= images:
                break
    return torch.cat(maps)[:images].flatten(0, 1)  # the multi-task head: one map per attribute


def stats_row(name: str, maps: torch.Tensor) -> str:
    cells = maps.flatten(1)
    return (f"| {name} | {len(maps)} | {cells.mean():.3f} | {(cells > 0.9).float().mean():.3f} | "
            f"{(cells < 0.1).float().mean():.3f} | {cells.std(1).mean():.3f} |")


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run folders or checkpoint files")
    parser.add_argument("--images", type=int, default=256, help="test images read per run")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    lines = ["| run | maps | M mean | cells > 0.9 | cells < 0.1 | std within an image |", "|---|---|---|---|---|---|"]
    for given in args.runs:
        lines.append(stats_row(str(given), attention_maps(checkpoint_of(given), args.images, args.batch_size,
                                                          args.device)))
    text = "\n".join(lines)
    print(text)
    return text


if __name__ == "__main__":
    main()
