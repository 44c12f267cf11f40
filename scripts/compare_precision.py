"""Does bf16 cost accuracy? The same runs in fp32 and at ``trainer.precision=auto``, over seeds (docs/results.md).

    python scripts/compare_precision.py                                   # the quick start, seeds 0, 1, 2
    python scripts/compare_precision.py experiment=fashion_mnist trainer.max_epochs=2 --name fashion_mnist

One ``abn-train -m seed=0,1,2 trainer.precision=32-true,auto <overrides>`` multirun in ``<out>/<name>`` (``--reuse``
keeps it where every job finished), then per precision the last-epoch test accuracy of both branches, mean ± std
over the seeds, and the precision ``auto`` chose (from the run's log). The memory format stays at its default (auto)
in both, so the comparison isolates the precision; the speed of each is measured apart (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_explanations import ROOT, run  # noqa: E402
from run_logs import mean_std, test_accuracy  # noqa: E402

PRECISIONS = ("32-true", "auto")  # in the order Hydra numbers the jobs: precision varies slowest


def chosen_precision(job: Path) -> str:
    """The precision line abn-train printed at the start of the job (e.g. ``bf16-mixed: this CPU has ...``)."""
    for line in (job / "train.log").read_text(errors="replace").splitlines():
        if "[abn.speed]" in line and "Precision " in line:
            return line.split("Precision ", 1)[1].strip()
    return "?"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="abn-train overrides for every job, e.g. experiment=fashion_mnist")
    parser.add_argument("--name", default="quickstart", help="folder of the multirun under --out")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "precision")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--reuse", action="store_true", help="keep the multirun in --out/--name if every job finished")
    args = parser.parse_args(argv)

    sweep = args.out / args.name
    jobs = {(precision, seed): sweep / str(number) for number, (precision, seed) in
            enumerate((precision, seed) for precision in PRECISIONS for seed in args.seeds)}
    if not (args.reuse and all(test_accuracy(job) is not None for job in jobs.values())):
        run([sys.executable, "-m", "abn.train", "-m", f"trainer.precision={','.join(PRECISIONS)}",
             f"seed={','.join(map(str, args.seeds))}", *args.overrides, f"hydra.sweep.dir={sweep}",
             "hydra.sweep.subdir=${hydra.job.num}"])
    overrides = " ".join(args.overrides) or "the quick start's defaults"
    lines = [f"{overrides}; seeds {', '.join(map(str, args.seeds))}; last-epoch test accuracy, mean ± std. Command: "
             f"`python scripts/compare_precision.py{''.join(' ' + o for o in argv or sys.argv[1:] if o != '--reuse')}`.",
             "", "| trainer.precision | chosen | test accuracy % | attention branch % |", "|---|---|---|---|"]
    for precision in PRECISIONS:
        chosen = [jobs[precision, seed] for seed in args.seeds]
        accuracy = [test_accuracy(job) for job in chosen]
        attention = [value for job in chosen if (value := test_accuracy(job, "test/acc_att")) is not None]
        lines.append(f"| {precision} | {chosen_precision(chosen[0])} | {mean_std(accuracy, 100, 2)} | "
                     f"{mean_std(attention, 100, 2)} |")
    text = "\n".join(lines)
    print("\n" + text)
    return text


if __name__ == "__main__":
    main()
