"""The explanation comparison of docs/results.md, in one command: train, explain, score, tabulate.

    python scripts/compare_explanations.py                 # both data sets, then prints the two tables
    python scripts/compare_explanations.py --update-docs   # also writes them into docs/results.md, the grids into docs/

For each data set with ground-truth boxes (the embedded shapes and cluttered Fashion-MNIST) it trains the
``baseline``, ``cam`` and ``abn`` heads with one Hydra multirun (``abn-train -m model.head=baseline,cam,abn``),
then runs ``abn-explain`` on each checkpoint's test split twice: every applicable method at the default layer with
every metric, and Grad-CAM vs Relevance-CAM at a shallow, a middle and a deep layer (pointing game only).
Everything lands in ``--out`` (default ``logs/compare``); the tables go to ``<out>/comparison.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from doc_tables import markers, write_between_markers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROOT_DOCS = ROOT / "docs"
PAGE = ROOT_DOCS / "results.md"  # the page that holds the tables (the README links to it)
TABLE_START, TABLE_END = markers("explain")
HEADS = ("baseline", "cam", "abn")
# shallow, middle and deep feature maps of the CIFAR-style ResNets
DEPTHS = {"shallow": "features.layer1", "middle": "features.layer2", "deep": "last_stage"}
METRIC_NAMES = {
    "pointing_game": "pointing ↑",
    "energy_pointing_game": "energy PG ↑",
    "localization_error": "loc. error ↓",
    "deletion_auc": "deletion ↓",
    "insertion_auc": "insertion ↑",
    "average_drop": "avg drop ↓",
    "increase_in_confidence": "increase ↑",
}


def data_sets(args: argparse.Namespace) -> dict[str, list[str]]:
    """Training overrides per data set (sizes chosen so that the whole comparison runs on a laptop CPU)."""
    return {
        "shapes": [f"trainer.max_epochs={args.epochs}"],
        "cluttered_fashion_mnist": [
            f"trainer.max_epochs={args.epochs}", f"data.train_size={args.cluttered_train}", "data.val_size=1000",
            f"data.test_size={args.images}",
        ],
    }


def run(command: list[str]) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def train(name: str, overrides: list[str], out: Path, args: argparse.Namespace) -> list[Path]:
    sweep = out / name / "train"
    if not (args.reuse and all((sweep / str(i) / "checkpoints" / "last.ckpt").is_file() for i in range(len(HEADS)))):
        run([sys.executable, "-m", "abn.train", "-m", f"data={name}", f"model.head={','.join(HEADS)}",
             f"seed={args.seed}", "trainer=cpu" if args.cpu else "trainer=default", *overrides,
             f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=${hydra.job.num}"])
    return [sweep / str(i) for i in range(len(HEADS))]  # jobs in the order of HEADS


def explain(job: Path, tag: str, extra: list[str], args: argparse.Namespace) -> list[dict[str, str]]:
    out = job / tag
    if not (args.reuse and (out / "metrics.csv").is_file()):
        run([sys.executable, "-m", "abn.explain.run", f"ckpt_path={job / 'checkpoints' / 'last.ckpt'}", "split=test",
             f"batch_size={args.batch_size}", f"num_batches={-(-args.images // args.batch_size)}", f"seed={args.seed}",
             f"metrics.deletion_steps={args.steps}", f"hydra.run.dir={out}", *extra])
    with open(out / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def accuracy_of(job: Path, tag: str) -> str:
    """Test accuracy of the perception branch (and of the attention branch, for ABN) on the explained images."""
    summary = json.loads((job / tag / "summary.json").read_text())
    text = f"{100 * summary['acc']:.2f} %"
    return text + (f" (att. {100 * summary['acc_att']:.2f} %)" if "acc_att" in summary else "")


def reproducing_flags(argv: list[str] | None) -> str:
    """The command-line flags that change results (not where they are written)."""
    flags, skip = [], False
    for item in sys.argv[1:] if argv is None else argv:
        if skip:
            skip = False
        elif item in ("--out", "--recorded"):
            skip = True
        elif item not in ("--update-docs", "--update-readme", "--reuse", "--only-finished"):
            flags.append(item)
    return "".join(f" {flag}" for flag in flags)


def fmt(value: str) -> str:
    return f"{float(value):.3f}" if value not in ("", None) else "–"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "compare")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cluttered-train", type=int, default=6000, help="training garments of cluttered Fashion-MNIST")
    parser.add_argument("--images", type=int, default=200,
                        help="test images explained and scored per model (rounded up to whole batches)")
    parser.add_argument("--steps", type=int, default=16, help="deletion / insertion steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU exists")
    parser.add_argument("--reuse", action="store_true", help="keep checkpoints and explanations already in --out")
    parser.add_argument("--data", nargs="+", default=["shapes", "cluttered_fashion_mnist"])
    parser.add_argument("--train-override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra abn-train override for every data set (repeatable), e.g. data.train_size=64")
    parser.add_argument("--update-docs", "--update-readme", dest="update_docs", action="store_true",
                        help="write the tables into docs/results.md (--update-readme is the old name)")
    args = parser.parse_args(argv)

    main_rows, depth_rows, grids, counts = [], [], {}, {}
    for name in args.data:
        jobs = train(name, data_sets(args)[name] + args.train_override, args.out, args)
        for head, job in zip(HEADS, jobs):
            rows = explain(job, "explain", [], args)
            accuracy = accuracy_of(job, "explain")
            counts[name] = json.loads((job / "explain" / "summary.json").read_text())["images"]
            main_rows += [(name, head, accuracy, row) for row in rows]
            layers = f"layers=[{','.join(DEPTHS.values())}]"
            by_layer = explain(job, "explain_layers", ["methods=[gradcam,relevance_cam]", layers,
                                                       "metrics.faithfulness=false", "grid_batches=1"], args)
            depth_rows.append((name, head, {(r["method"], r["layer"]): r["pointing_game"] for r in by_layer}))
            if head == "abn":
                grids[name] = job / "explain" / "grids" / "test_batch_000.png"

    images = ", ".join(f"{name} {count}" for name, count in counts.items())
    lines = [f"Seed {args.seed}, {args.epochs} epochs, resnet20; test images explained per model (whole batches of "
             f"{args.batch_size}): {images}; {args.steps} deletion/insertion steps. Command: "
             f"`python scripts/compare_explanations.py{reproducing_flags(argv)}`.", "",
             "| data | head | accuracy | method | " + " | ".join(METRIC_NAMES.values()) + " |",
             "|---|---|---|---|" + "---|" * len(METRIC_NAMES)]
    for name, head, accuracy, row in main_rows:
        lines.append(f"| {name} | {head} | {accuracy} | {row['method']} | "
                     + " | ".join(fmt(row.get(key, "")) for key in METRIC_NAMES) + " |")
    lines += ["", "Pointing game of Grad-CAM vs Relevance-CAM by depth "
              f"({', '.join(f'{depth}: `{layer}`' for depth, layer in DEPTHS.items())}):", "",
              "| data | head | " + " | ".join(f"{d}: Grad-CAM | {d}: Relevance-CAM" for d in DEPTHS) + " |",
              "|---|---|" + "---|---|" * len(DEPTHS)]
    for name, head, scores in depth_rows:
        cells = [fmt(scores.get((method, layer), "")) for layer in DEPTHS.values() for method in ("gradcam", "relevance_cam")]
        lines.append(f"| {name} | {head} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    (args.out / "comparison.md").write_text(table + "\n")
    print("\n" + table)
    if args.update_docs:
        docs = ROOT_DOCS
        docs.mkdir(exist_ok=True)
        for name, grid in grids.items():
            shutil.copyfile(grid, docs / f"explanations_{name}.png")
        write_between_markers(PAGE, "explain", table)
    return table


if __name__ == "__main__":
    main()
