"""Helpers shared by the benchmark sections: CPU time of a process, medians with spread, machine info.

These machines are shared and noisy: every section measures its baseline in the same run, in
interleaved rounds, and reports per-round ratios as median and spread (min–max). CPU time per
request (user + system time of the proxy from ``/proc/<pid>/stat``) is preferred over throughput,
which depends on what else runs on the cores.
"""

from __future__ import annotations

import os
import platform
import statistics
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
OUT_DIR = REPO / ".cache" / "bench"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads) so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime (fields 14 and 15 of stat)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def spread(values: list[float]) -> dict:
    """Median and min–max of per-round values (None entries are rounds that timed out)."""
    ok = [v for v in values if v is not None]
    if not ok:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": statistics.median(ok), "min": min(ok), "max": max(ok), "n": len(ok)}


def fmt_spread(s: dict | None, digits: int = 2, unit: str = "") -> str:
    if not s or s.get("median") is None:
        return "timed out"
    d = digits
    return f"{s['median']:.{d}f}{unit} ({s['min']:.{d}f}–{s['max']:.{d}f})"


def machine() -> dict:
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}


def rotate(items: list, k: int) -> list:
    """The order of round ``k``: ``items`` rotated by k//2, reversed in odd rounds. Over rounds each
    variant runs first, and right after each other variant, equally often (a run can leave the
    machine warmer or busier for the next one)."""
    n = len(items) or 1
    r = (k // 2) % n
    order = items[r:] + items[:r]
    return order[::-1] if k % 2 else order
