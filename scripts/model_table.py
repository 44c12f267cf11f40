"""Parameters and MACs per image of every registered arch × head at its native input size.

    python scripts/model_table.py                    # print the Markdown table
    python scripts/model_table.py --update-docs      # also write it into docs/models.md between the markers

MACs are counted with torch's FlopCounterMode (convolutions and matrix products, one MAC = two FLOPs; BatchNorm,
activations and pooling are not counted, as usual). Classes: 10 for 32-pixel archs, 1000 for 224-pixel ones.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from abn.models import create_model, list_models, model_info

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_tables import markers, write_between_markers  # noqa: E402

# the page that holds the table (the README links to it)
PAGE = Path(__file__).resolve().parents[1] / "docs" / "models.md"
START, END = markers("model")


def measure(arch: str, head: str, branch_depth: str = "full") -> tuple[int, float, tuple[int, int] | None]:
    """(parameters, MACs per image, attention-map size) of one network."""
    size = model_info(arch).input_size
    num_classes = 10 if size <= 64 else 1000
    kwargs = {"branch_depth": branch_depth} if head == "abn" else {}
    model = create_model(arch, head=head, num_classes=num_classes, **kwargs).eval()
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(torch.randn(1, 3, size, size))
    map_size = tuple(out.attention.shape[-2:]) if out.attention is not None else None
    return params, counter.get_total_flops() / 2, map_size


def table_order(arch: str) -> tuple:
    """CIFAR-size archs first, then ImageNet-size; within each, by family and then by depth (resnet20 < resnet110)."""
    return model_info(arch).input_size, [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", arch)]


def millions(value: float) -> str:
    return f"{value / 1e6:,.2f} M" if value < 1e9 else f"{value / 1e9:,.2f} G"


def overhead(abn: float, baseline: float) -> str:
    return f"+{100 * (abn / baseline - 1):.0f} %"


def table(archs: list[str]) -> str:
    lines = [
        "| arch | input | ABN map | params baseline | params CAM | params ABN | ABN extra params | MACs baseline "
        "| MACs CAM | MACs ABN | ABN extra MACs | light ABN: params, MACs (extra) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for arch in archs:
        size = model_info(arch).input_size
        (p_base, m_base, _), (p_cam, m_cam, _) = measure(arch, "baseline"), measure(arch, "cam")
        p_abn, m_abn, map_size = measure(arch, "abn")
        p_light, m_light, _ = measure(arch, "abn", "light")
        light = f"{millions(p_light)}, {millions(m_light)} ({overhead(p_light, p_base)}, {overhead(m_light, m_base)})"
        lines.append(
            f"| {arch} | {size}×{size} | {map_size[0]}×{map_size[1]} | {millions(p_base)} | {millions(p_cam)} "
            f"| {millions(p_abn)} | {overhead(p_abn, p_base)} | {millions(m_base)} | {millions(m_cam)} "
            f"| {millions(m_abn)} | {overhead(m_abn, m_base)} | {light} |"
        )
        print(lines[-1], flush=True)
    return "\n".join(lines)


def update_page(markdown: str) -> None:
    write_between_markers(PAGE, "model", markdown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", nargs="*", default=None, help="archs to measure (default: every registered one)")
    parser.add_argument("--update-docs", "--update-readme", dest="update_docs", action="store_true",
                        help="write the table into docs/models.md (--update-readme is the old name)")
    args = parser.parse_args()
    archs = args.arch or sorted(list_models(), key=table_order)
    torch.manual_seed(0)
    markdown = table(archs)
    print("\n" + markdown)
    if args.update_docs:
        update_page(markdown)


if __name__ == "__main__":
    main()
