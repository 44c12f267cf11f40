"""Per-attribute test accuracy of two multi-label runs side by side, as the ABN paper compares on CelebA.

    python scripts/attribute_table.py logs/train/runs/<baseline run> logs/train/runs/<multi-task ABN run>
    python scripts/attribute_table.py <run A> <run B> --names "ResNet-101" "multi-task ABN" --csv table.csv

Each run is an ``abn-train`` run folder (or its ``tensorboard`` folder) of a multi-label data set: the test logs
``test_attributes/<name>``, the accuracy of each attribute, and ``test/acc``, their mean. The script prints a
Markdown table with a row per attribute (the better of the two in bold), the mean, and how many attributes each run
wins (the paper's "odds"; ties count for neither). The last logged value of each scalar is used, i.e. the test of
the last epoch's weights.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

PREFIX = "test_attributes/"


def attribute_accuracies(run: Path) -> dict[str, float]:
    """``attribute name → test accuracy`` of the run's TensorBoard logs; a clear error when it has none."""
    folders = sorted({path.parent for path in run.rglob("events.out.tfevents.*")})
    values: dict[str, float] = {}
    for folder in folders:
        accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0}).Reload()
        for tag in accumulator.Tags()["scalars"]:
            if tag.startswith(PREFIX):
                values[tag[len(PREFIX):]] = accumulator.Scalars(tag)[-1].value
    if not values:
        raise SystemExit(f"{run}: no {PREFIX}<name> scalars found in its TensorBoard logs; give the folder of a "
                         "finished abn-train run on multi-label data (e.g. data=celeba or data=multishapes) that "
                         "ran its test")
    return values


def table(names: tuple[str, str], first: dict[str, float], second: dict[str, float]) -> tuple[str, list[list]]:
    if first.keys() != second.keys():
        only = sorted(first.keys() ^ second.keys())
        raise SystemExit(f"the two runs have different attributes ({', '.join(only[:5])} in only one); compare runs "
                         "of the same data")
    lines = [f"| attribute | {names[0]} | {names[1]} |", "|---|---:|---:|"]
    rows, wins = [], [0, 0]
    for attribute in first:  # the data's order
        a, b = 100 * first[attribute], 100 * second[attribute]
        shown = [f"{a:.2f}", f"{b:.2f}"]
        if a != b:
            winner = int(b > a)
            wins[winner] += 1
            shown[winner] = f"**{shown[winner]}**"
        lines.append(f"| {attribute} | {shown[0]} | {shown[1]} |")
        rows.append([attribute, a, b])
    mean_a, mean_b = (sum(row[i] for row in rows) / len(rows) for i in (1, 2))
    lines.append(f"| mean of {len(rows)} | {mean_a:.2f} | {mean_b:.2f} |")
    lines.append(f"| attributes won | {wins[0]} | {wins[1]} |")
    return "\n".join(lines), rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs=2, help="two abn-train run folders")
    parser.add_argument("--names", nargs=2, default=None, help="column titles (default: the folder names)")
    parser.add_argument("--csv", type=Path, default=None, help="also write attribute, accuracy A, accuracy B")
    args = parser.parse_args(argv)
    for run in args.runs:
        if not run.is_dir():
            raise SystemExit(f"{run} is not a folder; give two abn-train run folders")
    names = tuple(args.names) if args.names else tuple(run.resolve().name for run in args.runs)
    markdown, rows = table(names, *(attribute_accuracies(run) for run in args.runs))
    print(markdown)
    if args.csv:
        with open(args.csv, "w", newline="") as handle:
            csv.writer(handle).writerows([["attribute", *names], *rows])


if __name__ == "__main__":
    main(sys.argv[1:])
