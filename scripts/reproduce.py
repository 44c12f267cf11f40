"""Is an ABN trained here a better classifier than its baseline? Fashion-MNIST, trained to convergence, over seeds.

    python scripts/reproduce.py                                   # ResNet-20 and ResNet-56, 4 heads, 3 seeds, 30 epochs
    python scripts/reproduce.py --nets resnet20 --seeds 0         # a part of it
    python scripts/reproduce.py --reuse --update-docs             # tabulate the finished runs into docs/results.md
    python scripts/reproduce.py --recorded docs/reproduce_fashion_mnist.csv --only-finished --update-docs

Each (network, head, seed) is one ``abn-train experiment=fashion_mnist`` run in
``<out>/<net>/<epochs>ep/<head>/seed<k>`` with the paper's schedule shape: SGD at lr 0.1, ×0.1 at 50 % and 75 % of
the epochs (the CIFAR recipe's 150 and 225 of 300). The 5 000 held-out validation images are only watched, nothing
is selected on them: the figure is the last epoch's test accuracy on the 10 000 test images. ``--reuse`` keeps every
finished run, so the sweep can be stopped and continued. The per-seed figures, with the device and precision each run
trained on, go to ``<out>/reproduce_<epochs>ep.csv`` (and ``docs/reproduce_fashion_mnist.csv`` with
``--update-docs``). ``--recorded`` takes the rows of such a CSV as measured (runs from another machine, or from a
sitting whose run folders are gone) and trains only the rest; ``--only-finished`` trains nothing and names what is
missing.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import statistics
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_explanations import ROOT, reproducing_flags  # noqa: E402
from doc_tables import write_between_markers  # noqa: E402
from run_logs import mean_std, test_accuracy, train_or_reuse  # noqa: E402

PAGE = ROOT / "docs" / "results.md"
DOCS_CSV = ROOT / "docs" / "reproduce_fashion_mnist.csv"
FIELDS = ["net", "head", "seed", "epochs", "test_acc", "test_acc_att", "precision", "device"]
HEADS = {"baseline": ["model.head=baseline"], "cam": ["model.head=cam"], "abn": ["model.head=abn"],
         "abn_light": ["model.head=abn", "model.branch_depth=light"]}


def milestones(epochs: int) -> list[int]:
    """The paper's decay points (150 and 225 of 300 epochs) scaled to ``epochs``."""
    return [round(epochs * 0.5), round(epochs * 0.75)]


def this_machine(cpu: bool) -> str:
    """The device the runs train on here: the GPU's name, or the CPU's model, how many cores this process has and
    its best instructions (CPUs of one model name differ between machines, e.g. with or without AVX-512 BF16)."""
    import torch

    from abn.speed import cpu_bf16_instructions

    if torch.cuda.is_available() and not cpu:
        return torch.cuda.get_device_name(0)
    cpuinfo = Path("/proc/cpuinfo")
    names = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M) if cpuinfo.exists() else []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    instructions = " and ".join(cpu_bf16_instructions()) or torch.backends.cpu.get_cpu_capability()
    return f"{names[0].strip() if names else 'CPU'} ({cores} cores, {instructions})"


def run_precision(job: Path) -> str:
    """The precision the run trained in, as its train.log says (``Precision bf16-mixed: ...``)."""
    log = job / "train.log"
    found = re.search(r"Precision (\S+):", log.read_text(errors="replace")) if log.exists() else None
    return found.group(1) if found else ""


def train_job(net: str, head: str, seed: int, job: Path, args: argparse.Namespace) -> dict[str, float | str | None]:
    """Train (unless ``--reuse`` finds the run finished); the last test accuracies of both branches and the
    precision."""
    first, second = milestones(args.epochs)
    accuracy = train_or_reuse(["experiment=fashion_mnist", f"model.arch={net}", *HEADS[head], f"seed={seed}",
                               f"trainer.max_epochs={args.epochs}", "model/scheduler=multistep",
                               f"model.scheduler.milestones=[{first},{second}]",
                               *args.train_override], job, args.reuse, args.cpu)
    return {"test_acc": accuracy, "test_acc_att": test_accuracy(job, "test/acc_att"),
            "precision": run_precision(job)}


def read_recorded(path: Path) -> dict[tuple[str, str, int, int], dict]:
    """The rows of a per-seed CSV this script wrote, by (network, head, seed, epochs)."""
    if not path.is_file():
        raise SystemExit(f"--recorded {path}: no such file; give a per-seed CSV this script wrote "
                         f"(e.g. docs/reproduce_fashion_mnist.csv)")
    with path.open(newline="") as file:
        reader = csv.DictReader(file)
        lacking = {"net", "head", "seed", "epochs", "test_acc"} - set(reader.fieldnames or ())
        if lacking:
            raise SystemExit(f"--recorded {path}: not a per-seed CSV of scripts/reproduce.py (no column "
                             f"{', '.join(sorted(lacking))}; its header: {reader.fieldnames})")
        recorded = {}
        for line, row in enumerate(reader, start=2):
            try:
                row = {**dict.fromkeys(FIELDS, ""), **row, "seed": int(row["seed"]), "epochs": int(row["epochs"]),
                       "test_acc": float(row["test_acc"]),
                       "test_acc_att": float(row["test_acc_att"]) if row.get("test_acc_att") else None}
            except (TypeError, ValueError) as error:
                raise SystemExit(f"--recorded {path}, line {line}: {error}; mend or delete that row") from None
            recorded[(row["net"], row["head"], row["seed"], row["epochs"])] = row
    return recorded


def measure(args: argparse.Namespace, recorded: dict[tuple[str, str, int, int], dict]
            ) -> tuple[list[dict], list[tuple[str, str, int]]]:
    """One row per (network, head, seed), recorded, reused or trained; and with ``--only-finished`` the runs left out
    because they have not finished."""
    device = this_machine(args.cpu)
    rows, missing = [], []
    for net in args.nets:
        for head in args.heads:
            for seed in args.seeds:
                job = args.out / net / f"{args.epochs}ep" / head / f"seed{seed}"
                if (net, head, seed, args.epochs) in recorded:
                    rows.append(recorded[(net, head, seed, args.epochs)])
                elif args.only_finished and test_accuracy(job) is None:
                    missing.append((net, head, seed))
                else:
                    rows.append({"net": net, "head": head, "seed": seed, "epochs": args.epochs, "device": device,
                                 **train_job(net, head, seed, job, args)})
    return rows, missing


def verdict(rows: list[dict], net: str) -> str:
    """ABN against its baseline in words: the difference of the means and whether it is outside the seed spread
    (larger than the standard deviation of the difference of two means, √(s_abn² + s_base²))."""
    baseline = [row["test_acc"] * 100 for row in rows if row["net"] == net and row["head"] == "baseline"]
    abn = [row["test_acc"] * 100 for row in rows if row["net"] == net and row["head"] == "abn"]
    if len(baseline) < 2 or len(abn) < 2:
        return f"{net}: fewer than two seeds of `abn` or `baseline`, no verdict."
    difference = statistics.fmean(abn) - statistics.fmean(baseline)
    spread = math.hypot(statistics.stdev(abn), statistics.stdev(baseline))
    if abs(difference) <= spread:
        words = "within the seed spread: no difference shown"
    else:
        words = "outside the seed spread: ABN is " + ("better" if difference > 0 else "worse")
    return f"{net}: ABN − baseline = {difference:+.2f} points (spread {spread:.2f}), {words}."


def runs(count: int) -> str:
    return f"{count} run{'' if count == 1 else 's'}"


def table(rows: list[dict], missing: list[tuple[str, str, int]], args: argparse.Namespace,
          argv: list[str] | None) -> str:
    first, second = milestones(args.epochs)
    lines = [f"Fashion-MNIST (`experiment=fashion_mnist`), {args.epochs} epochs, SGD lr 0.1 ×0.1 at epochs {first} and "
             f"{second}, seeds {', '.join(map(str, args.seeds))}; last-epoch test accuracy, mean ± std over the seeds "
             f"run (one seed: its value). Command: `python scripts/reproduce.py{reproducing_flags(argv)}`; per seed: "
             f"[reproduce_fashion_mnist.csv](reproduce_fashion_mnist.csv).", "",
             "| network | head | test accuracy % (perception) | attention branch % | seeds |", "|---|---|---|---|---|"]
    for net in args.nets:
        for head in args.heads:
            chosen = [row for row in rows if row["net"] == net and row["head"] == head]
            attention = [row["test_acc_att"] for row in chosen if row["test_acc_att"] is not None]
            lines.append(f"| {net} | {head} | {mean_std([row['test_acc'] for row in chosen], 100, 2)} | "
                         f"{mean_std(attention, 100, 2)} | {len(chosen)} |")
    lines += ["", *(f"- {verdict(rows, net)}" for net in args.nets)]
    if missing:
        seeds: dict[tuple[str, str], list[str]] = {}
        for net, head, seed in missing:
            seeds.setdefault((net, head), []).append(str(seed))
        lines += ["", f"Not measured yet ({runs(len(missing))}): " + ", ".join(
            f"{net} {head} (seed{'s' if len(chosen) > 1 else ''} {', '.join(chosen)})"
            for (net, head), chosen in seeds.items()) + "."]
    trained_on = Counter((row["device"] or "device not recorded", row["precision"] or "precision not recorded")
                         for row in rows)
    if trained_on:
        lines += ["", "Trained on " + "; ".join(f"{device}, {precision} ({runs(count)})"
                                                for (device, precision), count in sorted(trained_on.items())) + "."]
    return "\n".join(lines)


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "reproduce")
    parser.add_argument("--nets", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=list(HEADS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU exists")
    parser.add_argument("--reuse", action="store_true", help="keep the finished runs in --out")
    parser.add_argument("--train-override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra abn-train override for every run (repeatable), e.g. data.on_device=true")
    parser.add_argument("--recorded", type=Path, metavar="CSV",
                        help="per-seed CSV of earlier runs (e.g. docs/reproduce_fashion_mnist.csv): its rows are "
                             "taken as measured, only the rest is trained")
    parser.add_argument("--only-finished", action="store_true",
                        help="train nothing: tabulate the recorded rows and the finished runs in --out")
    parser.add_argument("--update-docs", action="store_true",
                        help="write the table into docs/results.md and the per-seed figures into docs/")
    args = parser.parse_args(argv)

    args.reuse = args.reuse or args.only_finished
    recorded = read_recorded(args.recorded) if args.recorded else {}
    rows, missing = measure(args, recorded)
    text = table(rows, missing, args, argv)
    write_csv(rows, args.out / f"reproduce_{args.epochs}ep.csv")
    print("\n" + text)
    if args.update_docs:
        write_between_markers(PAGE, "reproduce", text)
        # recorded rows outside this selection (other networks, heads, seeds or epochs) stay in the CSV
        measured = {(row["net"], row["head"], row["seed"], row["epochs"]) for row in rows}
        kept = [row for key, row in recorded.items() if key not in measured]
        write_csv(rows + kept, DOCS_CSV)
    return text


if __name__ == "__main__":
    main()
