"""``abn-train -m hydra/launcher=slurm`` on a real one-node SLURM cluster (started by tests/slurm_cluster.py, as root
with the Debian packages slurm-wlm and munge; skipped with the reason where it cannot start): a sweep's jobs run
through the scheduler, and a job requeued in the middle of training, by ``scontrol requeue`` (SIGTERM) or by
submitit on the warning before the time limit (SIGUSR2), continues from its checkpoint in its own folder and ends
with the weights of a job of the same sweep that was never stopped."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch

from . import slurm_cluster
from .conftest import compose_train_config

LAUNCHER_INSTALLED = importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is not None
needs_launcher = pytest.mark.skipif(not LAUNCHER_INSTALLED,
                                    reason="hydra-submitit-launcher is not installed (pip install 'abn[slurm]')")

# one CPU per job, tiny runs; the memory format and precision fixed (not measured by each job on its own)
JOBS = ["hydra/launcher=slurm", "hydra.launcher.cpus_per_task=1", "data.train_size=64", "data.val_size=32",
        "data.test_size=32", "data.batch_size=16", "callbacks.attention_images=null", "logger=none",
        "model.channels_last=false", "trainer.precision=32-true"]
# 4 steps an epoch, 3 epochs; last.ckpt also every 2 steps, so the test sees when training is under way
REQUEUED = [*JOBS, "trainer.max_epochs=3", "trainer.deterministic=true",
            "callbacks.step_checkpoint.every_n_train_steps=2"]
WAIT_S = 600


@pytest.fixture(scope="session")
def slurm(tmp_path_factory) -> dict[str, str]:
    """The environment of a client of the test cluster (SLURM_CONF), which runs for the whole session."""
    if not LAUNCHER_INSTALLED:
        pytest.skip("hydra-submitit-launcher is not installed (pip install 'abn[slurm]')")
    folder = tmp_path_factory.mktemp("slurm")
    try:
        environment = slurm_cluster.start(folder)
    except slurm_cluster.ClusterUnavailable as error:
        pytest.skip(f"SLURM cannot start: {error}")
    yield {**os.environ, **environment, "OMP_NUM_THREADS": "1"}  # one thread per one-CPU job
    slurm_cluster.stop(folder)


@pytest.fixture
def start_sweep(slurm, tmp_path: Path) -> Iterator[Callable[[list[str]], "Sweep"]]:
    """Starts ``abn-train -m arguments`` on the test cluster; a command still running when the test ends is stopped."""
    started: list[Sweep] = []

    def start(arguments: list[str]) -> Sweep:
        started.append(Sweep(tmp_path, arguments, slurm))
        return started[-1]

    yield start
    for sweep in started:
        if sweep.process.poll() is None:
            sweep.process.kill()
            sweep.process.wait()


def abn_train() -> list[str]:
    installed = shutil.which("abn-train")
    return [installed] if installed else [sys.executable, "-m", "abn.train"]


def wait_for(condition: Callable[[], object], what: str, timeout_s: float = WAIT_S) -> object:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"waited {timeout_s:.0f} s for {what}")


class Sweep:
    """``abn-train -m arguments`` started in ``folder`` (it waits for its SLURM jobs), with its folders and logs."""

    def __init__(self, folder: Path, arguments: list[str], environment: dict[str, str]) -> None:
        self.folder, self.environment = folder, environment
        self.output = folder / "abn-train.txt"
        with open(self.output, "w") as sink:
            self.process = subprocess.Popen([*abn_train(), "-m", *arguments], cwd=folder, env=environment,
                                            stdout=sink, stderr=subprocess.STDOUT)

    def sweep_folders(self) -> list[Path]:
        multiruns = self.folder / "logs" / "train" / "multiruns"
        return sorted(multiruns.iterdir()) if multiruns.is_dir() else []

    def job_folder(self, number: int) -> Path:
        (sweep,) = self.sweep_folders()
        (job,) = sweep.glob(f"{number}_*")
        return job

    def saved_a_checkpoint(self, number: int) -> bool:
        return any(any(sweep.glob(f"{number}_*/checkpoints/last.ckpt")) for sweep in self.sweep_folders())

    def job_id(self, number: int) -> str:
        """The SLURM id of job ``number`` of the sweep (an array task: ``<array id>_<number>``)."""
        (sweep,) = self.sweep_folders()
        return wait_for(lambda: next((path.name for path in sorted((sweep / ".submitit").glob(f"*_{number}"))), None),
                        f"job {number}'s submitit folder")

    def slurm_log(self, number: int) -> str:
        job = self.job_id(number)
        (sweep,) = self.sweep_folders()
        log = sweep / ".submitit" / job / f"{job}_0_log.out"
        return log.read_text(errors="replace") if log.is_file() else ""

    def state(self, job: str) -> str:
        result = subprocess.run(["squeue", "--noheader", "--format=%T", f"--jobs={job}"], capture_output=True,
                                text=True, env=self.environment)
        return result.stdout.strip()

    def finish(self) -> str:
        """Wait for the command to end; its output."""
        try:
            self.process.wait(timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"abn-train -m did not end in {WAIT_S} s:\n{self.report()}")
        return self.output.read_text(errors="replace")

    def report(self) -> str:
        """The command's output and the SLURM logs of its jobs, for a failed assertion (without the test cluster's
        complaints that it keeps no accounting for sacct)."""
        printed = "\n".join(line for line in self.output.read_text(errors="replace").splitlines()
                            if "sacct" not in line and "accounting storage is disabled" not in line)
        logs = [f"--- {log} ---\n{log.read_text(errors='replace')[-3000:]}"
                for sweep in self.sweep_folders() for log in sorted(sweep.glob(".submitit/*/*_log.out"))]
        return "\n".join([printed[-3000:], *logs])

    def restart_now(self, job: str) -> None:
        """SLURM holds a requeued job for two minutes before it may start again; let it start now."""
        wait_for(lambda: self.state(job) == "PENDING", f"job {job} to be requeued", timeout_s=120)
        subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], check=True, env=self.environment)


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    assert a.keys() == b.keys()
    return [name for name in a if not torch.equal(a[name], b[name])]


def test_a_sweep_runs_each_job_through_the_scheduler(start_sweep):
    sweep = start_sweep([*JOBS, "trainer.max_epochs=1", "seed=0,1"])
    printed = sweep.finish()
    assert sweep.process.returncode == 0, sweep.report()
    assert "Submitit 'slurm' sweep output dir" in printed
    for number in (0, 1):
        run = sweep.job_folder(number)
        assert f"seed={number}" in (run / ".hydra" / "overrides.yaml").read_text()
        assert (run / "checkpoints" / "last.ckpt").is_file()
        assert "test accuracy, perception branch:" in (run / "train.log").read_text()
        assert "Job completed successfully" in sweep.slurm_log(number)  # submitit ran it as a SLURM job


def test_a_requeued_job_continues_from_its_checkpoint_and_ends_with_the_uninterrupted_weights(slurm, start_sweep):
    # three jobs with the same settings: 0 requeued by `scontrol requeue`, 1 by submitit on the warning SLURM sends
    # before the time limit (scancel --signal=USR2 sends the same), 2 never stopped
    sweep = start_sweep([*REQUEUED, "seed=0,0,0"])
    for number, requeue in ((0, ["scontrol", "requeue"]), (1, ["scancel", "--signal=USR2"])):
        wait_for(lambda: sweep.saved_a_checkpoint(number), f"job {number} to save its first step checkpoint")
        subprocess.run([*requeue, sweep.job_id(number)], check=True, env=slurm)
    for number in (0, 1):
        sweep.restart_now(sweep.job_id(number))
    sweep.finish()
    assert sweep.process.returncode == 0, sweep.report()

    (folder,) = sweep.sweep_folders()  # the requeued jobs made no sweep folder or job folder of their own
    assert sorted(path.name.split("_")[0] for path in folder.iterdir()
                  if path.is_dir() and not path.name.startswith(".")) == ["0", "1", "2"]
    reference = final_weights(sweep.job_folder(2))
    for number, signal_name in ((0, "SIGTERM"), (1, "SIGUSR2")):
        run, printed = sweep.job_folder(number), sweep.slurm_log(number)
        assert f"Stopped by {signal_name} in epoch" in printed, sweep.report()
        stopped_at = int(printed.split(f"Stopped by {signal_name} in epoch")[1].split("after ")[1].split(" ")[0])
        assert 0 < stopped_at < 12  # in the middle of training
        assert (f"SLURM started this job again (restart 1): continuing the run in {run} from "
                f"{run}/checkpoints/last.ckpt") in printed
        assert "Restored all states from the checkpoint" in printed
        assert "test accuracy, perception branch:" in (run / "train.log").read_text()
        assert differing(final_weights(run), reference) == []
    assert "Requeued: SLURM starts this job again in the same folder" in sweep.slurm_log(1)


@needs_launcher
@pytest.mark.parametrize("trainer, tasks, gpus", [
    ([], 1, None),
    (["trainer=gpu"], 1, 1),
    (["trainer=ddp", "trainer.accelerator=gpu", "trainer.strategy=ddp"], 2, 2),
    (["trainer=ddp", "trainer.accelerator=cpu"], 2, None),
], ids=["cpu", "one gpu", "ddp on gpus", "ddp on cpus"])
def test_the_jobs_ask_slurm_for_the_trainers_devices(clear_hydra, tmp_path: Path, trainer, tasks, gpus):
    import abn.slurm  # noqa: F401  (registers the resolvers, as abn-train does)

    cfg = compose_train_config(tmp_path, ["hydra/launcher=slurm", *trainer])
    assert cfg.hydra.launcher.tasks_per_node == tasks and cfg.hydra.launcher.gpus_per_node == gpus
    assert cfg.hydra.launcher.nodes == 1 and cfg.hydra.launcher.partition is None


@pytest.mark.filterwarnings("ignore:The `srun` command is available")  # SLURMEnvironment outside a SLURM job
def test_in_a_submitit_job_lightning_does_not_requeue_too(clear_hydra, monkeypatch, tmp_path: Path):
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from abn.checkpoint_io import AtomicCheckpointIO
    from abn.slurm import trainer_arguments

    cfg = compose_train_config(tmp_path, [])
    assert trainer_arguments(cfg.trainer) == {}  # outside SLURM: the configured plugins alone
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    configured, environment = trainer_arguments(cfg.trainer)["plugins"]
    assert isinstance(configured, AtomicCheckpointIO)
    assert isinstance(environment, SLURMEnvironment) and not environment.auto_requeue


def test_without_the_launcher_the_message_says_what_to_install(monkeypatch, tmp_path: Path):
    import abn.slurm
    from abn.train import main

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(abn.slurm.importlib.util, "find_spec",
                        lambda name, *args: None if "submitit" in name else real_find_spec(name, *args))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["abn-train", "-m", "hydra/launcher=slurm", "seed=0,1"])
    with pytest.raises(SystemExit) as stop:
        main()
    assert "hydra-submitit-launcher, which is not installed: pip install 'abn[slurm]'" in str(stop.value.code)
    assert not (tmp_path / "logs").exists()
