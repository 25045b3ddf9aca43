"""Process trees under /proc: CPU-seconds, resident memory, and stopping a whole tree for sure."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MIB = 1024 * 1024


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    cpu_seconds: float  # utime + stime of the process itself
    reaped_cpu_seconds: float  # cutime + cstime: children it has waited for
    rss_bytes: int
    start_ticks: int  # start time since boot: tells a process from a later one reusing its pid


def _read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("latin-1")
    except OSError:
        return None
    # the command name is in parentheses and may hold spaces or parentheses itself
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state) of proc(5)
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    start_ticks, rss_pages = int(fields[19]), int(fields[21])
    return ProcStat(
        pid,
        ppid,
        (utime + stime) / CLOCK_TICKS,
        (cutime + cstime) / CLOCK_TICKS,
        rss_pages * PAGE_SIZE,
        start_ticks,
    )


def snapshot() -> dict[int, ProcStat]:
    out: dict[int, ProcStat] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _read_stat(int(entry))
            if stat is not None:
                out[stat.pid] = stat
    return out


def tree_pids(root: int, procs: Mapping[int, ProcStat]) -> list[int]:
    """root and all its live descendants."""
    children: dict[int, list[int]] = {}
    for stat in procs.values():
        children.setdefault(stat.ppid, []).append(stat.pid)
    if root not in procs:
        return []
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


@dataclass(frozen=True)
class TreeUsage:
    cpu_seconds: float
    rss_bytes: int
    max_process_rss_bytes: int
    processes: int


def tree_usage(roots: Iterable[int], procs: Mapping[int, ProcStat] | None = None) -> TreeUsage:
    """CPU and memory of the trees under `roots`.

    CPU counts every live process's own time plus what each has reaped from dead children
    (cutime + cstime), so short-lived processes (PostgreSQL backends, say) are counted once.
    """
    procs = procs if procs is not None else snapshot()
    cpu, rss, top, count = 0.0, 0, 0, 0
    seen: set[int] = set()
    for root in roots:
        for pid in tree_pids(root, procs):
            if pid in seen:
                continue
            seen.add(pid)
            stat = procs[pid]
            cpu += stat.cpu_seconds + stat.reaped_cpu_seconds
            rss += stat.rss_bytes
            top = max(top, stat.rss_bytes)
            count += 1
    return TreeUsage(cpu, rss, top, count)


@dataclass
class Peak:
    tree_rss_bytes: int = 0
    process_rss_bytes: int = 0


@dataclass
class ResourceSampler:
    """Samples the memory of named process trees on a thread, keeping the peaks."""

    interval: float = 0.2
    trees: dict[str, list[int]] = field(default_factory=dict)
    peaks: dict[str, Peak] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def watch(self, name: str, roots: list[int]) -> None:
        with self._lock:
            self.trees[name] = roots
            self.peaks.setdefault(name, Peak())

    def unwatch(self, name: str) -> None:
        with self._lock:
            self.trees.pop(name, None)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def sample(self) -> None:
        procs = snapshot()
        with self._lock:
            for name, roots in self.trees.items():
                usage = tree_usage(roots, procs)
                peak = self.peaks[name]
                peak.tree_rss_bytes = max(peak.tree_rss_bytes, usage.rss_bytes)
                peak.process_rss_bytes = max(peak.process_rss_bytes, usage.max_process_rss_bytes)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(Exception):
                self.sample()


def stop_tree(process: subprocess.Popen[bytes], *, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
    """Stop a process started with start_new_session=True and everything under it.

    Signals the process group, waits, then SIGKILLs whatever of the tree is still alive (also any
    descendant that left the group).
    """
    procs = snapshot()
    descendants = [
        (pid, procs[pid].start_ticks) for pid in tree_pids(process.pid, procs) if pid != process.pid
    ]
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    kill_pids(descendants)


def kill_pids(pids: Iterable[tuple[int, int]], *, grace: float = 5.0) -> None:
    """SIGKILL those of `pids` ((pid, start ticks) of known descendants of ours) still alive.

    The start time guards against killing a stranger that reused a pid.
    """
    deadline = time.monotonic() + grace
    alive = [p for p in pids if _alive(*p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _alive(*p)]
    for pid, _ in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int, start_ticks: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().decode("latin-1").rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    return fields[0] != "Z" and int(fields[19]) == start_ticks
