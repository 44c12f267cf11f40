"""Attention supervision measured: ABN's map unsupervised, its class maps, and supervised with each loss on a share
of the training images, beside Grad-CAM of the baseline; mean ± std over seeds (docs/supervision.md).

    python scripts/compare_supervision.py                        # both data sets, 3 seeds, every loss and share
    python scripts/compare_supervision.py --data shapes --seeds 0 --losses l1 energy --fractions 0.1
    python scripts/compare_supervision.py --epochs 10 --losses   # only baseline and unsupervised ABN, longer
    python scripts/compare_supervision.py --reuse --update-docs  # finish the sweep, tabulate it into the docs
    python scripts/compare_supervision.py --only-finished --update-docs  # tabulate what has finished so far

Each setting is one ``abn-train`` run per seed (ResNet-20, the data sizes of ``compare_explanations.py``) in
``<out>/<data>/<epochs>ep/<setting>/seed<k>``, then one ``abn-explain`` of its checkpoint's test images (pointing
game, energy inside the box, deletion). Accuracy is the run's own test accuracy (the whole test split, last epoch).
``--reuse`` keeps every finished run and explanation, so an interrupted sweep goes on where it stopped.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_explanations import ROOT, data_sets, explain, reproducing_flags  # noqa: E402
from doc_tables import markers, write_between_markers  # noqa: E402
from run_logs import mean_std, test_accuracy, train_or_reuse  # noqa: E402

PAGE = ROOT / "docs" / "supervision.md"
TABLE_START, TABLE_END = markers("supervision")
LOSSES = ("l1", "mse", "energy", "rrr", "bce", "suppress_outside")
METRICS = {"pointing_game": "pointing ↑", "energy_pointing_game": "energy in box ↑", "deletion_auc": "deletion ↓"}


def settings(args: argparse.Namespace) -> dict[str, list[str]]:
    """Every compared setting by name, with its abn-train overrides."""
    chosen = {"baseline": ["model.head=baseline"], "abn": ["model.head=abn"]}
    for loss in args.losses:
        for fraction in args.fractions:
            chosen[f"{loss}@{fraction:g}"] = ["model.head=abn", f"model.attention_supervision.loss={loss}",
                                              f"model.attention_supervision.weight={args.weight}",
                                              f"data.supervised_fraction={fraction}"]
    return chosen


def train_job(data: str, overrides: list[str], job: Path, seed: int, args: argparse.Namespace) -> float:
    """Train (unless ``--reuse`` finds the run finished) and return its test accuracy."""
    return train_or_reuse([f"data={data}", f"seed={seed}", *data_sets(args)[data], *overrides, *args.train_override],
                          job, args.reuse, args.cpu)


Row = tuple[str, str, str, dict[str, list[float]]]


def measure(args: argparse.Namespace) -> tuple[list[Row], list[str]]:
    """The rows (data, setting, map, {accuracy and each metric: one value per seed}) of every setting and its maps,
    and the settings left out: with ``--only-finished``, those whose runs are not all finished."""
    rows, missing = [], []
    for data in args.data:
        for name, overrides in settings(args).items():
            methods = ["gradcam"] if name == "baseline" else ["abn", "abn_class"] if name == "abn" else ["abn"]
            values: dict[str, dict[str, list[float]]] = {method: {} for method in methods}
            jobs = {seed: args.out / data / f"{args.epochs}ep" / name / f"seed{seed}" for seed in args.seeds}
            if args.only_finished:
                accuracies = {seed: test_accuracy(job) for seed, job in jobs.items()}
                if None in accuracies.values():
                    missing.append(f"{data} {name}")
                    continue
            else:
                accuracies = {seed: train_job(data, overrides, job, seed, args) for seed, job in jobs.items()}
            for seed, job in jobs.items():
                explained = explain(job, "explain", [f"methods=[{','.join(methods)}]", "grid_batches=1"], args)
                for row in explained:
                    scores = values[row["method"]]
                    scores.setdefault("accuracy", []).append(accuracies[seed])
                    for key in METRICS:
                        scores.setdefault(key, []).append(float(row[key]))
            rows += [(data, name, method, values[method]) for method in methods]
    return rows, missing


def table(rows: list[Row], missing: list[str], args: argparse.Namespace, argv: list[str] | None) -> str:
    seeds = (f"seed {args.seeds[0]}" if len(args.seeds) == 1
             else f"seeds {', '.join(map(str, args.seeds))} (mean ± std)")
    lines = [f"ResNet-20, {args.epochs} epochs, {seeds}; supervision weight {args.weight}; "
             f"{args.images} test images explained per run. Command: "
             f"`python scripts/compare_supervision.py{reproducing_flags(argv)}`.", "",
             "| data | model | map | supervised images | test accuracy % | " + " | ".join(METRICS.values()) + " |",
             "|---|---|---|---|---|" + "---|" * len(METRICS)]
    for data, name, method, values in rows:
        model, share = ("baseline", "–") if name == "baseline" else ("ABN", "none") if name == "abn" else \
            (f"ABN, `{name.split('@')[0]}` loss", f"{100 * float(name.split('@')[1]):g} %")
        shown = {"gradcam": "Grad-CAM", "abn": "M", "abn_class": "class map"}[method]
        cells = [mean_std(values.get("accuracy", []), 100, 2)] + [mean_std(values.get(key, [])) for key in METRICS]
        lines.append(f"| {data} | {model} | {shown} | {share} | " + " | ".join(cells) + " |")
    if missing:
        lines += ["", "Not measured yet (not every seed's run finished): " + ", ".join(missing) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "supervision")
    parser.add_argument("--data", nargs="+", default=["shapes", "cluttered_fashion_mnist"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--losses", nargs="*", default=list(LOSSES), choices=LOSSES,
                        help="supervision losses compared (none: only the baseline and unsupervised ABN)")
    parser.add_argument("--fractions", nargs="+", type=float, default=[1.0, 0.1, 0.01],
                        help="shares of the training images that carry their box")
    parser.add_argument("--weight", type=float, default=1.0, help="model.attention_supervision.weight")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--cluttered-train", type=int, default=6000, help="training garments of cluttered Fashion-MNIST")
    parser.add_argument("--images", type=int, default=256, help="test images explained per run (whole batches)")
    parser.add_argument("--steps", type=int, default=16, help="deletion steps")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU exists")
    parser.add_argument("--reuse", action="store_true", help="keep the runs and explanations already in --out")
    parser.add_argument("--only-finished", action="store_true",
                        help="train nothing: tabulate the settings whose runs all finished, name the others")
    parser.add_argument("--train-override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra abn-train override for every run (repeatable), e.g. data.train_size=64")
    parser.add_argument("--update-docs", action="store_true", help="write the table into docs/supervision.md")
    args = parser.parse_args(argv)
    args.reuse = args.reuse or args.only_finished
    args.seed = args.seeds[0]  # the explanation seed (random map, sampling) of compare_explanations' explain()

    text = table(*measure(args), args, argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"supervision_{args.epochs}ep.md").write_text(text + "\n")
    print("\n" + text)
    if args.update_docs:
        write_between_markers(PAGE, "supervision", text)
    return text


if __name__ == "__main__":
    main()
