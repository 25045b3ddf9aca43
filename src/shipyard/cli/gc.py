"""`shipyard gc`: a run of the garbage collector now, with a progress bar and totals, or a dry run that
prints what would be freed by account. Ctrl-C stops it; running it again continues (every batch is a
transaction of its own)."""

from __future__ import annotations

import sys

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from shipyard.db.gc import Freed
from shipyard.services.gc import GarbageCollector, GcReport


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _by_account(freed: dict[str, Freed]) -> list[str]:
    lines = [f"  {'ACCOUNT':<24} {'BLOBS':>10} {'BYTES':>16}"]
    for account, entry in sorted(freed.items(), key=lambda item: (-item[1].bytes, item[0])):
        lines.append(f"  {account or '(unknown)':<24} {entry.blobs:>10} {entry.bytes:>16}")
    return lines


def report_lines(report: GcReport) -> list[str]:
    verb = "would free" if report.dry_run else "freed"
    lines = [
        f"{verb} {report.blobs} blobs ({report.bytes} bytes, {human(report.bytes)}); "
        f"{report.links} unused blob links; {report.manifests} untagged manifests"
    ]
    if report.by_account:
        lines.extend(_by_account(report.by_account))
    if report.dry_run and report.manifests:
        lines.append("(the blobs that only the untagged manifests use are freed by the run after them)")
    return lines


def run_gc(collector: GarbageCollector, *, dry_run: bool) -> int:
    if dry_run:
        report = collector.run(dry_run=True)
    else:
        with Progress(
            TextColumn("{task.description:<10}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=None,
            transient=False,
            disable=not sys.stderr.isatty(),
        ) as bar:
            tasks: dict[str, TaskID] = {}

            def progress(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    tasks[phase] = bar.add_task(phase, total=max(total, done))
                bar.update(tasks[phase], completed=done, total=max(total, done))

            try:
                report = collector.run(progress=progress)
            except KeyboardInterrupt:
                print("stopped; `shipyard gc` again continues where this run was", file=sys.stderr)
                raise
    for line in report_lines(report):
        print(line)
    return 0
