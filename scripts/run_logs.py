"""What the comparison scripts share about their ``abn-train`` runs: reading a finished run's test accuracy, training
a run unless a finished one can be reused (setting an earlier one aside, never deleting it), and mean ± std."""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_explanations import run  # noqa: E402


def test_accuracy(job: Path, tag: str = "test/acc") -> Optional[float]:
    """The run's last test accuracy (``test/acc``: perception branch), read from its TensorBoard events; None before
    the run ends (or where the run logs no such tag)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for events in sorted((job / "tensorboard").rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(events), size_guidance={"scalars": 0})
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            return accumulator.Scalars(tag)[-1].value
    return None


def set_aside(job: Path) -> None:
    """Rename an earlier or interrupted run's folder (``seed0`` → ``seed0.old1``) so that nothing on disk is lost."""
    number = 1
    while job.with_name(f"{job.name}.old{number}").exists():
        number += 1
    state = "finished" if test_accuracy(job) is not None else "unfinished"
    job.rename(job.with_name(f"{job.name}.old{number}"))
    print(f"kept the {state} run that was in {job} as {job.name}.old{number}", flush=True)


def train_or_reuse(overrides: list[str], job: Path, reuse: bool, cpu: bool = False) -> float:
    """``abn-train overrides`` into ``job`` (unless ``reuse`` finds a finished run there) on the default trainer, or
    on ``trainer=cpu`` where ``cpu``; its test accuracy."""
    if not (reuse and test_accuracy(job) is not None):
        if job.exists():
            set_aside(job)
        trainer = "trainer=cpu" if cpu else "trainer=default"
        run([sys.executable, "-m", "abn.train", trainer, *overrides, f"hydra.run.dir={job}"])
    accuracy = test_accuracy(job)
    if accuracy is None:
        raise SystemExit(f"{job} ended without a test accuracy in its TensorBoard logs; see its train.log")
    return accuracy


def mean_std(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    """Mean ± standard deviation over seeds; one seed's value alone (no spread to show)."""
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0] * scale:.{digits}f}"
    return f"{statistics.fmean(values) * scale:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"
