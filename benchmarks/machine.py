"""What the numbers were measured on: the machine, the PostgreSQL server and package versions."""

from __future__ import annotations

import hashlib
import os
import platform
import resource
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from sqlalchemy import Engine

SERVER_SETTINGS = ("server_version", "fsync", "synchronous_commit", "shared_buffers")
PACKAGES = ("pgq-sa", "pgqueuer", "sqlalchemy", "psycopg", "asyncpg", "anyio", "trio")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    return "unknown"


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


CpuSample = tuple[int, int]


def _cpu_jiffies() -> list[int] | None:
    """All CPUs' user nice system idle iowait irq softirq steal jiffies so far (guest time is
    already in user), from ``/proc/stat``; None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    return [int(value) for value in fields[1:9]]


def cpu_sample() -> CpuSample | None:
    """(steal, total) jiffies of all CPUs so far; None off Linux."""
    values = _cpu_jiffies()
    return None if values is None else (values[7], sum(values))


def steal_percent(before: CpuSample | None, after: CpuSample | None) -> float | None:
    """The share of CPU time the hypervisor gave to other guests between two samples."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return 100.0 * (after[0] - before[0]) / (after[1] - before[1])


def steal_since(before: CpuSample | None) -> str:
    """``"CPU steal 12%"`` since ``before``, for progress lines (empty when unknown)."""
    share = steal_percent(before, cpu_sample())
    return "" if share is None else f"CPU steal {share:.0f}%"


@dataclass(frozen=True)
class CpuUse:
    """CPU seconds used so far: by this process, and by the whole machine (busy, not idle)."""

    process: float
    machine: float

    @classmethod
    def now(cls) -> CpuUse | None:
        values = _cpu_jiffies()
        if values is None:
            return None
        busy = sum(values) - values[3] - values[4] - values[7]  # not idle, iowait or steal
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(usage.ru_utime + usage.ru_stime, busy / os.sysconf("SC_CLK_TCK"))


def cpu_per_job(before: CpuUse | None, jobs: int) -> str:
    """``"CPU per job: 24 us here + 60 us elsewhere"`` since ``before``: this process (the
    worker or PgQueuer's managers) and the rest of the machine (PostgreSQL, on a quiet box)."""
    after = CpuUse.now()
    if before is None or after is None or jobs <= 0:
        return ""
    here = after.process - before.process
    elsewhere = (after.machine - before.machine) - here
    per_job = 1e6 / jobs
    return f"CPU per job: {here * per_job:.0f} us here + {elsewhere * per_job:.0f} us elsewhere"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages: other work on the machine skews the figures."""
    try:
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def _package_dir() -> Path:
    import pgq_sa

    return Path(pgq_sa.__file__).resolve().parent


def source_digest() -> str:
    """Where the imported ``pgq_sa`` lives and a SHA-256 of its ``.py`` files: what was measured."""
    package = _package_dir()
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        digest.update(path.read_bytes())
    return f"{package} sha256:{digest.hexdigest()[:12]}"


def checkout() -> str:
    """The commit of the imported ``pgq_sa``, and how many of its files differ from it."""
    root = _package_dir().parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "pgq_sa"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        # Not a checkout: a snapshot may say where it came from in a COMMIT file.
        marker = root / "COMMIT"
        return marker.read_text(encoding="utf-8").strip() if marker.is_file() else "unknown"
    return f"{commit}" + (f" + {len(changed)} changed file(s) under pgq_sa/" if changed else "")


def describe(engine: Engine) -> dict[str, str]:
    """Machine, server settings (``SHOW ...``) and package versions, as label -> value."""
    info = {
        "nproc": str(os.cpu_count()),
        "CPU": _cpu_model(),
        "RAM": _memory(),
        "OS": platform.platform(),
        "Python": sys.version.split()[0],
        "load average at start": load_average(),
        "pgq_sa checkout": checkout(),
        "pgq_sa source": source_digest(),
    }
    with engine.connect() as connection:
        for setting in SERVER_SETTINGS:
            info[setting] = str(connection.exec_driver_sql(f"SHOW {setting}").scalar())
    for package in PACKAGES:
        info[package] = _version(package)
    return info


def render(info: dict[str, str]) -> str:
    width = max(len(key) for key in info)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in info.items())


def render_markdown(info: dict[str, str]) -> str:
    lines = ["| | |", "|---|---|"]
    lines += [f"| {key} | {value} |" for key, value in info.items()]
    return "\n".join(lines)
