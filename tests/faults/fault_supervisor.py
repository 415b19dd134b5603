"""Worker processes for the fault and soak runs: start `pgq-sa run` processes of a test app,
kill and replace them, pause and resume them, and account for how each one ended.

Each process logs to a file of its own (never a pipe nobody reads). The supervisor remembers
every pid it killed or paused, so the oracle can tell explained duplicate executions from
unexplained ones, and it checks that no other process exited on its own.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).parent

KIND_ARGS = {
    "threads": ["--threads", "8"],
    "asyncio": ["--async", "--concurrency", "32"],
    "trio": ["--async", "--backend", "trio", "--concurrency", "32"],
}


@dataclass
class WorkerProcess:
    kind: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Supervisor:
    """Runs ``targets[kind]`` (MODULE:QUEUE importable from this folder) on ``url``, each
    command after ``prefix`` (e.g. ``ip netns exec NAME``), logging to ``label-NNN-kind.log``."""

    url: str
    targets: dict[str, str]
    logs: Path
    options: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    prefix: list[str] = field(default_factory=list)
    label: str = "worker"
    live: list[WorkerProcess] = field(default_factory=list)
    killed: list[WorkerProcess] = field(default_factory=list)
    paused: set[int] = field(default_factory=set)
    ever_paused: set[int] = field(default_factory=set)
    started: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def start(self, kind: str) -> WorkerProcess:
        self.started += 1
        log = self.logs / f"{self.label}-{self.started:03d}-{kind}.log"
        command = [
            *self.prefix,
            sys.executable,
            "-m",
            "pgq_sa",
            "--database-url",
            self.url,
            "run",
            self.targets[kind],
            *KIND_ARGS[kind],
            *self.options,
        ]
        with log.open("wb") as output:
            process = subprocess.Popen(
                command,
                cwd=HERE,
                env={**os.environ, "PYTHONPATH": str(HERE), **self.env},
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        worker = WorkerProcess(kind, process, log)
        self.live.append(worker)
        return worker

    def kill_random(self) -> WorkerProcess:
        """SIGKILL a random running (not paused) worker and start a new one of the same kind."""
        candidates = [w for w in self.live if w.pid not in self.paused]
        victim = self.rng.choice(candidates)
        victim.process.send_signal(signal.SIGKILL)
        victim.process.wait(30)
        self.live.remove(victim)
        self.killed.append(victim)
        self.start(victim.kind)
        return victim

    def pause(self, victim: WorkerProcess) -> WorkerProcess:
        victim.process.send_signal(signal.SIGSTOP)
        self.paused.add(victim.pid)
        self.ever_paused.add(victim.pid)
        return victim

    def resume(self, pid: int) -> None:
        os.kill(pid, signal.SIGCONT)
        self.paused.discard(pid)

    def dead(self) -> list[WorkerProcess]:
        """Processes that exited although nobody killed them."""
        return [w for w in self.live if w.process.poll() is not None]

    def stop_all(self, timeout: float = 60) -> dict[int, int | None]:
        """SIGCONT what is paused, SIGTERM everyone, wait; pid -> exit code (None: hung)."""
        for pid in list(self.paused):
            self.resume(pid)
        for worker in self.live:
            if worker.process.poll() is None:
                worker.process.send_signal(signal.SIGTERM)
        codes: dict[int, int | None] = {}
        deadline = time.monotonic() + timeout
        for worker in self.live:
            try:
                codes[worker.pid] = worker.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                worker.process.kill()
                worker.process.wait()
                codes[worker.pid] = None
        return codes

    def kill_all(self) -> None:
        """Last resort on the way out of a failed run."""
        for worker in self.live:
            if worker.process.poll() is None:
                os.kill(worker.pid, signal.SIGCONT)
                worker.process.kill()
                worker.process.wait()

    def pids(self) -> list[int]:
        return [w.pid for w in self.live]

    def rss_kib(self) -> dict[int, int]:
        """Resident memory of each live worker, from /proc."""
        sizes: dict[int, int] = {}
        for worker in self.live:
            try:
                status = Path(f"/proc/{worker.pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("VmRSS:"):
                    sizes[worker.pid] = int(line.split()[1])
        return sizes
