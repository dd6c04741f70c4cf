"""A single-node SLURM cluster for the tests: munged, slurmctld and slurmd on localhost, started as root in a few
seconds from Debian's ``slurm-wlm`` and ``munge`` packages (``.ci/run`` installs them) and stopped afterwards.

Everything lives in one temporary folder (the munge key and socket, ``slurm.conf``, state, spool, logs) on free
ports, so the machine's own SLURM or munge set-up, if any, is neither used nor touched. Commands reach this
cluster through ``SLURM_CONF`` (``Cluster.env``). Accounting is off (no ``slurmdbd``), so ``sacct`` does not work:
the tests read job states with ``squeue`` / ``scontrol``.

Run as a script to keep a cluster up by hand: ``python tests/slurm_cluster.py`` (Ctrl-C stops it).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

PROGRAMS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo", "srun")


def missing() -> Optional[str]:
    """Why no cluster can be started here (None: it can)."""
    absent = [name for name in PROGRAMS if not shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin")]
    if absent:
        return f"SLURM or munge is not installed ({', '.join(absent)} missing; apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "starting slurmd needs root"
    return None


def _free_ports(count: int) -> List[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _which(name: str) -> str:
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin")


class Cluster:
    """``with Cluster() as cluster:`` a running cluster; ``cluster.env`` is the environment its commands need."""

    def __init__(self, root: Optional[Path] = None, cpus: Optional[int] = None):
        self.root = Path(root or tempfile.mkdtemp(prefix="slurm-"))
        self.cpus = cpus or len(os.sched_getaffinity(0))
        self.processes: List[subprocess.Popen] = []
        self.conf = self.root / "slurm.conf"
        self.env: Dict[str, str] = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.host = socket.gethostname().split(".")[0]

    def __enter__(self) -> "Cluster":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, timeout: float = 30) -> None:
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
            os.chmod(self.root / sub, 0o700)
        os.chmod(self.root, 0o755)
        key, sock = self.root / "munge" / "munge.key", self.root / "munge" / "munge.socket"
        subprocess.run([_which("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True)
        self._spawn([_which("munged"), "--foreground", "--force", f"--socket={sock}", f"--key-file={key}",
                     f"--pid-file={self.root / 'munge' / 'munged.pid'}", f"--seed-file={self.root / 'munge' / 'seed'}",
                     f"--log-file={self.root / 'log' / 'munged.log'}"], "munged")
        self._wait(lambda: sock.exists(), timeout, "munged's socket")
        ctld_port, slurmd_port = _free_ports(2)
        self.conf.write_text(self._config(sock, ctld_port, slurmd_port))
        self._spawn([_which("slurmctld"), "-D", "-i", "-f", str(self.conf)], "slurmctld")
        self._spawn([_which("slurmd"), "-D", "-f", str(self.conf)], "slurmd")
        self._wait(self._node_ready, timeout, "the node to come up (sinfo: idle)")

    def _config(self, sock: Path, ctld_port: int, slurmd_port: int) -> str:
        root = self.root
        return "\n".join([
            "ClusterName=segtest",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={sock}",
            f"StateSaveLocation={root / 'state'}",
            f"SlurmdSpoolDir={root / 'spool'}",
            f"SlurmctldPidFile={root / 'slurmctld.pid'}",
            f"SlurmdPidFile={root / 'slurmd.pid'}",
            f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/builtin",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "MpiDefault=none",
            "ReturnToService=2",
            "SlurmdParameters=config_overrides",  # the node is what this file says, whatever slurmd detects
            "KillWait=30",
            "MinJobAge=300",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO",
            "",
        ])

    def _spawn(self, command: List[str], name: str) -> None:
        log = open(self.root / "log" / f"{name}.out", "w")
        self.processes.append(subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                               start_new_session=True))

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while not ready():
            dead = [p for p in self.processes if p.poll() is not None]
            if dead or time.time() > deadline:
                raise RuntimeError(f"SLURM test cluster: no {what} after {timeout:.0f} s"
                                   f"{' (a daemon exited)' if dead else ''}; logs in {self.root / 'log'}:\n"
                                   + self.logs())
            time.sleep(0.2)

    def _node_ready(self) -> bool:
        result = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True)
        return result.returncode == 0 and result.stdout.strip() in ("idle", "mix", "alloc")

    def logs(self) -> str:
        return "\n".join(f"--- {path.name}\n{path.read_text(errors='replace')[-2000:]}"
                         for path in sorted((self.root / "log").glob("*")) if path.is_file())

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(list(command), env=self.env, capture_output=True, text=True, check=check)

    def stop(self) -> None:
        subprocess.run(["scancel", "--full", "--user=root"], env=self.env, capture_output=True, timeout=30)
        for process in reversed(self.processes):  # slurmd, slurmctld, then munged
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _interrupt)
    with Cluster() as cluster:
        print(f"SLURM up: export SLURM_CONF={cluster.conf}  (Ctrl-C stops it)", flush=True)
        try:
            signal.pause()
        except KeyboardInterrupt:
            pass
