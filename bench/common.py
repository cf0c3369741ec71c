"""Shared helpers of the benchmark scripts: machine description and BENCHMARKS.md sections."""

from __future__ import annotations

import os
import platform
import re
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"


def machine() -> str:
    """One line: cores, memory, CPU, Python, date and the load when measured."""
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0]
    return (f"{os.cpu_count()} cores ({cpu or platform.machine()}), {mem_gb:.0f} GiB, "
            f"Python {platform.python_version()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, "
            f"load average {load:.1f} at the start")


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def write_section(title: str, body: str, path: Path = BENCHMARKS) -> None:
    """Replace the ``## title`` section of BENCHMARKS.md (or append it), keeping the others."""
    text = path.read_text() if path.exists() else "# Benchmarks\n\nEach section is written by its script under `bench/`.\n"
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.DOTALL | re.MULTILINE)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text.rstrip("\n") + "\n")
    os.replace(tmp, path)


def use_home(home: Path) -> Any:
    """A workspace at ``home`` with its own MLflow store, set in the environment for what
    the benchmark runs next (library calls and child processes alike)."""
    from crmdata.workspace import Workspace

    (home / "mlflow").mkdir(parents=True, exist_ok=True)
    os.environ["CRMSCORE_HOME"] = str(home)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{home}/mlflow/mlflow.db"
    return Workspace(home)
