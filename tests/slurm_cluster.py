"""A one-node SLURM cluster for the tests, run as root from a folder of its own: munged, slurmctld and slurmd with a
minimal ``slurm.conf`` (no cgroups, no accounting database), on free ports, so it touches nothing in /etc.

    python tests/slurm_cluster.py start /tmp/slurm    # prints: export SLURM_CONF=/tmp/slurm/slurm.conf
    SLURM_CONF=/tmp/slurm/slurm.conf sinfo
    python tests/slurm_cluster.py stop /tmp/slurm

Needs the Debian packages ``slurm-wlm`` and ``munge`` (``apt-get install slurm-wlm munge``). :func:`start` raises
:class:`ClusterUnavailable` with the reason (and the daemons' log tails) when the cluster cannot run here.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo")
DAEMONS = ("slurmd", "slurmctld", "munged")  # the order they are stopped in
PARTITION = "debug"


class ClusterUnavailable(RuntimeError):
    """SLURM cannot run here; the message says why."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def slurm_conf(folder: Path, host: str, cpus: int) -> str:
    """A controller and one compute node on this machine; processes tracked without cgroups."""
    return f"""\
ClusterName=abntest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge/munge.socket
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
MinJobAge=300
KillWait=15
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def log_tails(folder: Path, lines: int = 15) -> str:
    tails = []
    for name in ("munge/munged.log", "slurmctld.log", "slurmd.log"):
        log = folder / name
        if log.is_file():
            text = log.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"--- {log} ---\n" + "\n".join(text))
    return "\n".join(tails)


def environment(folder: Path) -> dict[str, str]:
    """What a SLURM client (sbatch, squeue, …) needs to find this cluster."""
    return {"SLURM_CONF": str(folder / "slurm.conf")}


def run_daemon(command: list[str], folder: Path) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise ClusterUnavailable(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()}\n"
                                 f"{log_tails(folder)}")


def node_state(folder: Path) -> str:
    result = subprocess.run(["sinfo", "--noheader", "--format=%T"], capture_output=True, text=True, timeout=30,
                            env={**os.environ, **environment(folder)})
    return result.stdout.strip() if result.returncode == 0 else f"sinfo failed: {result.stderr.strip()}"


def start(folder: Path, wait_s: float = 60) -> dict[str, str]:
    """Start munged, slurmctld and slurmd with their files in ``folder``; wait until the node is idle. Returns the
    environment a client needs (``SLURM_CONF``)."""
    if os.geteuid() != 0:
        raise ClusterUnavailable("the test cluster's daemons run as root (the CI machine runs the tests as root)")
    missing = [program for program in PROGRAMS if shutil.which(program) is None]
    if missing:
        raise ClusterUnavailable(f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge)")
    folder = Path(folder).resolve()
    for sub in ("munge", "state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    os.chmod(folder / "munge", 0o700)
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o600)
    host = socket.gethostname().split(".")[0]
    # at least 4 CPUs whatever the machine has (config_overrides): a test's few one-CPU jobs run side by side
    (folder / "slurm.conf").write_text(slurm_conf(folder, host, max(4, os.cpu_count() or 1)))

    munge = folder / "munge"
    run_daemon(["munged", "--force", f"--socket={munge}/munge.socket", f"--key-file={key}",
                f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log", f"--seed-file={munge}/munged.seed"],
               folder)
    conf = str(folder / "slurm.conf")
    run_daemon(["slurmctld", "-f", conf, "-i"], folder)  # -i: no earlier state to recover
    run_daemon(["slurmd", "-f", conf], folder)

    deadline = time.monotonic() + wait_s
    state = ""
    while time.monotonic() < deadline:
        state = node_state(folder)
        if state == "idle":
            return environment(folder)
        time.sleep(1)
    stop(folder)
    raise ClusterUnavailable(f"the node did not become idle in {wait_s:.0f} s (sinfo: {state!r})\n{log_tails(folder)}")


def stop(folder: Path, wait_s: float = 30) -> None:
    """Cancel the cluster's jobs and stop its daemons (those whose pid files are in ``folder``)."""
    folder = Path(folder).resolve()
    if shutil.which("scancel") and (folder / "slurmctld.pid").is_file():
        subprocess.run(["scancel", "--full", f"--partition={PARTITION}"], capture_output=True, timeout=30,
                       env={**os.environ, **environment(folder)})
    for daemon in DAEMONS:
        pid_file = folder / ("munge/munged.pid" if daemon == "munged" else f"{daemon}.pid")
        try:
            pid = int(pid_file.read_text().strip())
            os.kill(pid, signal.SIGTERM)
        except (FileNotFoundError, ValueError, ProcessLookupError):
            continue
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.2)


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit(f"usage: {sys.argv[0]} start|stop FOLDER")
    folder = Path(sys.argv[2])
    if sys.argv[1] == "stop":
        stop(folder)
        return
    try:
        for key, value in start(folder).items():
            print(f"export {key}={value}")
    except ClusterUnavailable as error:
        sys.exit(f"SLURM cannot start: {error}")


if __name__ == "__main__":
    main()
