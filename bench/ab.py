"""A/B of the manifest GET hot path: this checkout beside an earlier commit, in interleaved rounds.

`python -m bench.ab --against REV` checks REV out into a temporary git worktree, starts one Shipyard per
variant (one worker each, each with its own data directory holding the same image), and runs wrk against
a manifest GET on each in turn, round after round. The figure to trust is the worker's CPU time per
request (utime + stime from /proc, before and after the load): on a shared machine requests per second
move with whatever else runs, CPU per request much less. The report says whether each variant stays
within --budget (10% by default) of the earlier commit's median.

The earlier commit runs on this checkout's interpreter and libraries with its own sources first on
PYTHONPATH, so it needs no environment of its own (a commit that needs other libraries cannot run here).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.server import ServerProcess, start_server

from bench import tools
from bench.client import MANIFEST_ACCEPT, Registry, make_image
from bench.procs import CLOCK_TICKS

ROOT = Path(__file__).resolve().parent.parent
REPO = "ab/hot"
TAG = "v1"


@dataclass
class Variant:
    label: str
    env: dict[str, str]
    src: Path | None = None  # sources to run instead of this checkout's
    cpu_us: list[float] = field(default_factory=list)
    sys_us: list[float] = field(default_factory=list)  # the kernel's share of cpu_us
    # the whole server (supervisor and worker): work a worker hands to the supervisor counts here
    tree_us: list[float] = field(default_factory=list)
    rps: list[float] = field(default_factory=list)
    server: ServerProcess | None = None
    worker: int = 0


def worker_pid(server: ServerProcess, timeout: float = 30.0) -> int:
    """The one worker process under the server (its supervisor forks it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid in _descendants(server.process.pid):
            with contextlib.suppress(OSError):
                if b"shipyard.server.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
        time.sleep(0.1)
    raise RuntimeError(f"no worker process under {server.process.pid}:\n{server.log()}")


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                raw = Path(f"/proc/{entry}/stat").read_text()
                ppid = int(raw[raw.rindex(")") + 2 :].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def cpu_seconds(pid: int) -> tuple[float, float]:
    """utime and stime of one process, all its threads included."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw[raw.rindex(")") + 2 :].split()
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def tree_cpu_seconds(root: int) -> float:
    total = 0.0
    for pid in _descendants(root):
        with contextlib.suppress(OSError, ValueError):
            total += sum(cpu_seconds(pid))
    return total


@contextlib.contextmanager
def checkout(rev: str) -> Iterator[Path]:
    """A temporary detached worktree of `rev`."""
    with tempfile.TemporaryDirectory(prefix="ab-") as parent:
        path = Path(parent) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(path), rev],
            check=True,
            capture_output=True,
        )
        try:
            yield path
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(path)],
                check=False,
                capture_output=True,
            )


def start(variant: Variant, work: Path) -> None:
    env = {"SHIPYARD_WORKERS": "1", **variant.env}
    if variant.src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(variant.src), os.environ.get("PYTHONPATH", "")])
    data = work / variant.label / "data"
    server = start_server(data, extra_env=env)
    variant.server = server
    variant.worker = worker_pid(server)
    registry = Registry(server.url)
    try:
        make_image(layers=2, seed="ab").push(registry, REPO, TAG)
    finally:
        registry.close()


def measure(variant: Variant, *, connections: int, seconds: int, script: Path) -> None:
    assert variant.server is not None
    url = f"{variant.server.url}/v2/{REPO}/manifests/{TAG}"
    user, system = cpu_seconds(variant.worker)
    tree = tree_cpu_seconds(variant.server.process.pid)
    result = tools.wrk(
        url, connections=connections, seconds=seconds, headers={"Accept": MANIFEST_ACCEPT}, script=script
    )
    user_after, system_after = cpu_seconds(variant.worker)
    tree_after = tree_cpu_seconds(variant.server.process.pid)
    if result.errors or not result.requests:
        raise RuntimeError(f"{variant.label}: {result.requests} requests, errors: {result.error_kinds}")
    variant.cpu_us.append((user_after - user + system_after - system) / result.requests * 1e6)
    variant.sys_us.append((system_after - system) / result.requests * 1e6)
    variant.tree_us.append((tree_after - tree) / result.requests * 1e6)
    variant.rps.append(result.requests_per_second)
    print(
        f"  {variant.label:<24} {variant.cpu_us[-1]:6.1f} CPU-us/req"
        f" ({variant.sys_us[-1]:4.1f} in the kernel; {variant.tree_us[-1]:5.1f} with the supervisor)"
        f" {result.requests_per_second:9.0f} req/s",
        flush=True,
    )


def report(variants: list[Variant], budget: float) -> str:
    """Medians and ranges; the verdict compares worker CPU per request, and whole-server CPU as well."""
    base = statistics.median(variants[0].cpu_us)
    base_tree = statistics.median(variants[0].tree_us)
    lines = [
        f"{'variant':<24} {'worker CPU-us/req':>22} {'server CPU-us/req':>22} {'req/s':>22}"
        f"  vs {variants[0].label} (worker, server)",
    ]
    for v in variants:
        cpu, tree, rps = (statistics.median(x) for x in (v.cpu_us, v.tree_us, v.rps))
        verdict = ""
        if v is not variants[0]:
            over = cpu > base * (1 + budget) or tree > base_tree * (1 + budget)
            verdict = f"{cpu / base - 1:+.0%}, {tree / base_tree - 1:+.0%} {'OVER' if over else 'ok'}"
        lines.append(
            f"{v.label:<24} {cpu:6.1f} ({min(v.cpu_us):5.1f}-{max(v.cpu_us):5.1f})"
            f" {tree:6.1f} ({min(v.tree_us):5.1f}-{max(v.tree_us):5.1f})"
            f" {rps:6.0f} ({min(v.rps):6.0f}-{max(v.rps):6.0f})  {verdict}"
        )
    lines.append(
        f"budget: CPU per request within {budget:.0%} of {variants[0].label} (medians of the rounds)"
    )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n\n")[0])
    p.add_argument("--against", default="772227a", help="the earlier commit (default 772227a)")
    p.add_argument(
        "--also",
        action="append",
        default=[],
        metavar="REV",
        help="another commit to run beside them (repeatable)",
    )
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=6)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--budget", type=float, default=0.10, help="allowed CPU-per-request excess (0.10)")
    p.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL:NAME=VALUE,...",
        help="a further variant of this checkout with these settings, e.g. 'no-log:SHIPYARD_ACCESS_LOG=false'"
        " (default: defaults, and access log off)",
    )
    p.add_argument("--json", type=Path, help="also write the figures here")
    return p.parse_args(argv)


def _variant(text: str) -> Variant:
    label, _, settings = text.partition(":")
    env = dict(item.split("=", 1) for item in settings.split(",") if item)
    return Variant(label, env)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    wanted = args.variant or ["head:", "head-no-access-log:SHIPYARD_ACCESS_LOG=false"]
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ab-data-")))
        script = work / "report.lua"
        script.write_text(tools.WRK_REPORT_LUA)
        variants = [
            Variant(rev, {}, src=stack.enter_context(checkout(rev)) / "src")
            for rev in [args.against, *args.also]
        ]
        variants += [_variant(text) for text in wanted]
        try:
            for variant in variants:
                start(variant, work)
            for round_no in range(1, args.rounds + 1):
                print(f"round {round_no}/{args.rounds}", flush=True)
                # interleaved, and each round in another order: no variant always runs first
                shift = (round_no - 1) % len(variants)
                for variant in variants[shift:] + variants[:shift]:
                    measure(variant, connections=args.connections, seconds=args.seconds, script=script)
        finally:
            for variant in variants:
                if variant.server is not None:
                    variant.server.stop()
    print()
    print(report(variants, args.budget))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    v.label: {"cpu_us": v.cpu_us, "sys_us": v.sys_us, "server_us": v.tree_us, "rps": v.rps}
                    for v in variants
                },
                indent=1,
            )
        )
    # the exit status speaks for this checkout's variants only
    over = [
        v
        for v in variants
        if v.src is None
        and statistics.median(v.cpu_us) > statistics.median(variants[0].cpu_us) * (1 + args.budget)
    ]
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main())
