"""One benchmark run: start the servers, seed them, run the rounds, grow the database, report, clean up.

Every process and directory the run creates is registered on one ExitStack as it is made, so an error,
Ctrl-C or SIGTERM at any moment still stops every server and removes every temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import platform
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

from tests.support.postgres import PostgresServer

from bench import report, tools
from bench.client import OCI_MANIFEST, Registry, RegistryError, make_image
from bench.config import AUTH_SERVER, SERVER_NAMES, SHIPYARDS, MiB, Sizes
from bench.growth import GROWTH_REPO, PROBE_TAG, SqlFiller, growth_tag, settle_database
from bench.procs import ResourceSampler, tree_usage
from bench.servers import (
    Server,
    port_is_listening,
    start_distribution,
    start_nginx,
    start_shipyard,
    stop_all,
    stop_postgres,
)
from bench.workloads import (
    Bench,
    Item,
    Metrics,
    build_items,
    build_layouts,
    check_registries,
    cpu_metrics,
    log,
    prepare_files,
    seed_auth,
    seed_registries,
)


@dataclass
class Options:
    sizes: Sizes
    servers: tuple[str, ...] = SERVER_NAMES
    results_dir: Path = Path("bench/results")
    work_parent: Path | None = None
    shipyard_workers: int | None = None
    growth: bool = True
    only: tuple[str, ...] | None = None
    chart: bool = True


@dataclass
class Run:
    options: Options
    samples: report.Samples = field(default_factory=dict)
    passes: report.Passes = field(default_factory=dict)
    ports: list[int] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def add(self, metric: str, server: str, value: float, pass_key: str = "") -> None:
        """One sample; `pass_key` names the pass it was measured in, shared by the samples of the other
        servers (or levels) measured in the same pass ("": not part of a pass)."""
        self.samples.setdefault(metric, {}).setdefault(server, []).append(value)
        self.passes.setdefault(metric, {}).setdefault(server, []).append(pass_key)

    def elapsed(self) -> str:
        return f"[{time.monotonic() - self.started:6.1f}s]"


class Interrupted(Exception):
    pass


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP unwind the stack like Ctrl-C does, so every cleanup runs."""

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(f"signal {signal.Signals(signum).name}")

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def measure(
    run: Run, bench: Bench, item: Item, server: Server | None, round_no: int, pass_key: str = ""
) -> Metrics:
    before = tree_usage(server.cpu_roots).cpu_seconds if server else 0.0
    metrics = item.run(server, round_no) if server else item.run(_REFERENCE, round_no)
    if server is not None:
        metrics.update(cpu_metrics(item, metrics, tree_usage(server.cpu_roots).cpu_seconds - before))
    name = server.name if server else "reference"
    for key, value in metrics.items():
        if key != "requests":
            run.add(f"{item.name}.{key}", name, value, pass_key)
    return metrics


# a stand-in for the reference measurements, which run in the benchmark's own process
_REFERENCE = Server("reference", "", 0, Path(), [], [], lambda: None)


def _summary(metrics: Metrics) -> str:
    for key in ("mbps", "rps", "images_per_s", "p50_ms"):
        if key in metrics:
            return f"{metrics[key]:.2f} {report.UNITS.get(key, key)}"
    return ""


def run_rounds(run: Run, bench: Bench) -> None:
    items = build_items(bench)
    for round_no in range(bench.sizes.rounds):
        log(f"{run.elapsed()} round {round_no + 1} of {bench.sizes.rounds}")
        for item in items:
            if item.rounds is not None and round_no >= item.rounds:
                continue
            if item.prepare is not None:
                item.prepare(round_no)
            for repeat in range(item.repeats):
                # rotate the order every pass: no server always goes first
                order = list(item.servers)
                shift = (round_no * item.repeats + repeat) % len(order)
                for name in order[shift:] + order[:shift]:
                    _sample(run, bench, item, name, round_no, f"{item.name} {round_no}.{repeat}")


def _sample(run: Run, bench: Bench, item: Item, name: str, round_no: int, pass_key: str) -> None:
    server = bench.servers.get(name)
    try:
        metrics = measure(run, bench, item, server, round_no, pass_key)
    except (tools.ToolError, RegistryError, RuntimeError, OSError) as exc:
        # one failed measurement costs its sample, not the whole run; the table says so
        problem = f"round {round_no + 1}, {item.name} on {name} failed: {exc}"
        bench.notes.append(problem[:500])
        log(f"{run.elapsed()}   {problem}")
        return
    log(f"{run.elapsed()}   {item.name:28s} {name:13s} {_summary(metrics)}")


def record_resources(run: Run, bench: Bench, sampler: ResourceSampler) -> None:
    sampler.sample()
    for server in bench.servers.values():
        peak = sampler.peaks.get(server.name)
        if peak is not None:
            run.add("resources.peak_rss_mib", server.name, peak.tree_rss_bytes / MiB)
            run.add("resources.peak_process_rss_mib", server.name, peak.process_rss_bytes / MiB)
        run.add("resources.cpu_s", server.name, tree_usage(server.cpu_roots).cpu_seconds)
    peak = sampler.peaks.get("postgres")
    if peak is not None:
        run.add("resources.postgres_peak_rss_mib", "shipyard-pg", peak.tree_rss_bytes / MiB)


def run_growth(
    run: Run,
    options: Options,
    work: Path,
    stack: contextlib.ExitStack,
    postgres: PostgresServer | None,
    notes: list[str],
) -> None:
    """Each Shipyard flavour gets one server and database per level, filled once; then every pass
    measures a probe on all levels back to back, so that the machine's drift over minutes falls on
    every level alike instead of on the last one filled."""
    wanted = [name for name in SHIPYARDS if name in options.servers and (name != "shipyard-pg" or postgres)]
    for name in wanted:
        _growth_of(name, run, options, work, stack, postgres, notes)


def _growth_of(
    name: str,
    run: Run,
    options: Options,
    work: Path,
    stack: contextlib.ExitStack,
    postgres: PostgresServer | None,
    notes: list[str],
) -> None:
    sizes = options.sizes
    probe = make_image(sizes.manifest_layers, "growth-probe")
    servers: dict[int, Server] = {}
    clients: dict[int, Registry] = {}
    for level in sizes.growth_levels:
        pg = postgres if name == "shipyard-pg" else None
        url = pg.create_database(f"shipyard_growth_{level}") if pg else None
        server = start_shipyard(
            name,
            work / f"growth-{name}-{level}",
            database_url=url,
            workers=options.shipyard_workers,
            postgres=pg,
        )
        stack.callback(server.stop)
        run.ports.append(server.port)
        servers[level] = server
        clients[level] = Registry(server.url)
        probe.push(clients[level], GROWTH_REPO, PROBE_TAG)
        assert server.database_url is not None
        seconds = SqlFiller(server.database_url).fill_to(level)
        run.add(f"growth.{level}.fill_rows_per_s", name, 2 * level / seconds)
        log(f"{run.elapsed()} growth: {name} has {level:,} tags ({seconds:.1f} s to fill)")
    paths: dict[int, dict[str, str]] = {}
    for level, client in clients.items():
        every_path = {
            "manifest_get_tag": f"/v2/{GROWTH_REPO}/manifests/{PROBE_TAG}",
            "manifest_get_digest": f"/v2/{GROWTH_REPO}/manifests/{probe.digest}",
            "tags_first": f"/v2/{GROWTH_REPO}/tags/list?n={sizes.page}",
            "tags_middle": f"/v2/{GROWTH_REPO}/tags/list?n={sizes.page}&last={growth_tag(level // 2)}",
            "tags_last": f"/v2/{GROWTH_REPO}/tags/list?n={sizes.page}"
            f"&last={growth_tag(level - sizes.page - 1)}",
        }
        paths[level] = {what: path for what, path in every_path.items() if what in sizes.growth_probes}
        expected = [growth_tag(i) for i in range(level // 2 + 1, level // 2 + 1 + sizes.page)]
        page = client.get_json(every_path["tags_middle"]).get("tags")
        if page != expected:
            raise RuntimeError(f"growth: {name} at {level:,} tags gave a wrong middle page: {page!r:.200}")
        for path in paths[level].values():  # warm up: the first requests after a big fill read cold pages
            client.request("GET", path, headers={"Accept": OCI_MANIFEST})
    script = work / "report.lua"
    # each pass goes through the levels and back (1k 100k 1M 1M 100k 1k): a drift of the machine
    # during the pass weighs on every level alike
    order = [*servers, *reversed(servers)]
    for round_no in range(sizes.rounds_of_growth):
        for what in sizes.growth_probes:
            seen: dict[int, int] = {}
            for level in order:
                # the first visit of each level in this pass pairs with the other levels' first visits
                visit = seen[level] = seen.get(level, -1) + 1
                server = servers[level]
                result = tools.wrk(
                    f"{server.url}{paths[level][what]}",
                    connections=1,
                    seconds=sizes.latency_seconds,
                    headers={"Accept": OCI_MANIFEST},
                    script=script,
                )
                if result.errors and result.requests and result.errors <= result.requests * 0.01:
                    # the same tolerance as the rounds' load runs; the note names the errors
                    notes.append(
                        f"growth {level:,} {what} on {name}: {result.errors} errors "
                        f"({result.error_kinds}) in {result.requests} requests; the server's log ends:\n"
                        f"{log_tail(server.log_path)}"
                    )
                elif result.errors or not result.requests:
                    raise RuntimeError(
                        f"growth {name} at {level:,} tags {what}: {result.errors} errors "
                        f"({result.error_kinds}) in {result.requests} requests; the server's log ends:\n"
                        f"{log_tail(server.log_path)}"
                    )
                run.add(f"growth.{level}.{what}.p50_ms", name, result.p50_ms, f"growth {round_no}.{visit}")
                log(f"{run.elapsed()}   growth {level:>9,} {what:20s} {name:13s} {result.p50_ms:.3f} ms")
    for client in clients.values():
        client.close()
    for server in servers.values():
        server.stop()


def log_tail(path: Path | None, lines: int = 12) -> str:
    """The last lines of a server's log, for an error message."""
    if path is None or not path.is_file():
        return "(no log)"
    with path.open("rb") as f:
        f.seek(max(0, path.stat().st_size - 16384))
        text = f.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


def _git_commit() -> str:
    """The commit measured, with "+dirty" when the working tree has changes."""
    import subprocess

    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "src"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown commit"
    return f"{head}+dirty" if dirty else head


def _keep_logs(work: Path, results: Path) -> None:
    target = results / f"failed-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"
    for path in work.rglob("*.log"):
        if path.is_file():
            destination = target / path.relative_to(work)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, destination)
    log(f"server logs of the failed run kept in {target}")


def execute(options: Options) -> dict[str, Any]:
    sizes = options.sizes
    run = Run(options)
    started_at = datetime.now(UTC)
    loadavg_start = _loadavg()
    sampler = ResourceSampler()
    listening: list[str] = []
    server_info: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    postgres: PostgresServer | None = None
    with signals_raise(), contextlib.ExitStack() as stack:
        work = Path(tempfile.mkdtemp(prefix="shipyard-bench-", dir=options.work_parent))
        work.chmod(0o755)  # PostgreSQL runs as its own user; nginx as root
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        # runs before the rmtree and after every server stopped: keep their logs if the run failed
        stack.push(
            lambda exc_type, _exc, _tb: (
                _keep_logs(work, options.results_dir)
                if exc_type is not None and not issubclass(exc_type, (KeyboardInterrupt, Interrupted))
                else None
            )
        )
        log(f"{run.elapsed()} {sizes.mode} run in {work}; servers: {', '.join(options.servers)}")
        servers: dict[str, Server] = {}
        lock = threading.Lock()

        def started(server: Server) -> Server:
            # called from the start-up threads: the ExitStack learns of each server as soon as it runs
            with lock:
                servers[server.name] = server
                stack.callback(server.stop)
                run.ports.append(server.port)
                sampler.watch(server.name, server.rss_roots)
            return server

        def start_pg_shipyard() -> Server:
            nonlocal postgres
            from tests.support.postgres import start_postgres

            pg = start_postgres()
            with lock:
                postgres = pg
                stack.callback(stop_postgres, pg)
                sampler.watch("postgres", [pg.process.pid])
            return started(
                start_shipyard(
                    "shipyard-pg",
                    work / "shipyard-pg",
                    database_url=pg.create_database(),
                    workers=options.shipyard_workers,
                    postgres=pg,
                )
            )

        www = work / "www"
        www.mkdir()
        bench = Bench(sizes, work, servers, notes=notes, only=options.only)
        starters: dict[str, Callable[[], object]] = {
            "files": lambda: prepare_files(bench),
            "shipyard": lambda: started(
                start_shipyard("shipyard", work / "shipyard", workers=options.shipyard_workers)
            ),
            "shipyard-pg": start_pg_shipyard,
            AUTH_SERVER: lambda: started(
                start_shipyard(AUTH_SERVER, work / AUTH_SERVER, workers=options.shipyard_workers, auth=True)
            ),
            "distribution": lambda: started(start_distribution(work / "distribution")),
        }
        log(f"{run.elapsed()} writing the test files and starting the servers")
        # the pool's exit waits for every start-up, so none can finish after the ExitStack unwound
        with ThreadPoolExecutor(max_workers=len(starters)) as pool:
            futures = [
                pool.submit(job)
                for name, job in starters.items()
                if name == "files" or name in options.servers
            ]
            for future in futures:
                future.result()
        if "nginx" in options.servers:  # it serves the files
            started(start_nginx(work / "nginx", www))
        sampler.start()
        stack.callback(sampler.stop)
        log(f"{run.elapsed()} servers up: " + ", ".join(f"{s.name} {s.url}" for s in servers.values()))
        if bench.registries:
            log(f"{run.elapsed()} building {sizes.rounds} x {sizes.small_images} small OCI images")
            if bench.wants("small_push"):
                build_layouts(bench)
            log(f"{run.elapsed()} seeding the registries")
            seed_registries(bench)
            check_registries(bench)
            for server in bench.registries:
                if server.database_url:  # Shipyard's; the seeding was a bulk load
                    settle_database(server.database_url)
            wanted = [f"manifest_get_{ref}.c{c}" for ref in ("tag", "digest") for c in sizes.connections]
            if any(bench.wants(name) for name in wanted):
                seed_auth(bench)
            for metric, by_server in bench.setup_metrics.items():
                for name, value in by_server.items():
                    run.add(metric, name, value)
        run_rounds(run, bench)
        record_resources(run, bench, sampler)
        server_info = {s.name: {"url": s.url, "port": s.port, **s.info} for s in servers.values()}
        listening += stop_all(list(servers.values()))
        for client in bench.clients.values():
            client.close()
        if options.growth and bench.wants("growth") and any(name in options.servers for name in SHIPYARDS):
            log(f"{run.elapsed()} growth: {', '.join(str(n) for n in sizes.growth_levels)} tags")
            try:
                run_growth(run, options, work, stack, postgres, notes)
            except (tools.ToolError, RegistryError, RuntimeError, OSError) as exc:
                # keep the rounds' results: the growth rows of the table stay empty
                notes.append(f"growth failed: {str(exc)[:3000]}")
                log(f"{run.elapsed()} growth failed: {exc}")
                _keep_logs(work, options.results_dir)
    # after the ExitStack: every server, PostgreSQL and the work directory are gone
    for port in run.ports:
        with contextlib.suppress(OSError):
            if port_is_listening(port):
                listening.append(f"port {port} still listening after the run")
    if postgres is not None and port_is_listening(postgres.port):
        listening.append(f"PostgreSQL port {postgres.port} still listening after the run")
    if work.exists():
        listening.append(f"{work} was not removed")
    wall = time.monotonic() - run.started
    meds = report.medians(run.samples)
    ts = report.targets(meds, sizes, run.samples, run.passes)
    meta = {
        "mode": sizes.mode,
        "started_at": started_at.isoformat(),
        "wall_seconds": wall,
        "loadavg_start": loadavg_start,
        "loadavg_end": _loadavg(),
        "cpus": os.cpu_count(),
        "host": platform.node(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "tools": tools.tool_versions(),
        "shipyard_commit": _git_commit(),
        "servers": server_info,
        "sizes": sizes.to_json(),
        "cleanup_problems": listening,
        "notes": notes,
        "shipyard_auth": "off (SHIPYARD_INSECURE_NO_AUTH=true, as tests/support/server.py starts it)",
    }
    payload = {
        "meta": meta,
        "samples": run.samples,
        "passes": run.passes,
        "medians": meds,
        "speedups": {
            metric: {
                f"{server}/{ref}": ratio
                for server in SHIPYARDS
                for ref in ("distribution", "nginx")
                if (ratio := report.speedup(meds, metric, server, ref)) is not None
            }
            for metric in meds
        },
        "targets": [t.to_json() for t in ts],
        "table": report.render(meds, sizes, ts, meta),
    }
    return payload


def save(payload: dict[str, Any], options: Options) -> dict[str, Path]:
    out = options.results_dir
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    base = f"bench-{options.sizes.mode}-{stamp}"
    paths = {"json": out / f"{base}.json", "table": out / f"{base}.txt"}
    report.write_json(paths["json"], payload)
    paths["table"].write_text(payload["table"] + "\n")
    if options.chart:
        chart = out / f"{base}.png"
        meds = payload["medians"]
        ts = report.targets(meds, options.sizes, payload["samples"], payload["passes"])
        if report.draw_chart(chart, meds, options.sizes, ts):
            paths["chart"] = chart
    for name, path in list(paths.items()):
        latest = out / f"latest-{options.sizes.mode}{path.suffix}"
        with contextlib.suppress(OSError):
            latest.unlink()
        shutil.copyfile(path, latest)
        paths[f"latest-{name}"] = latest
    return paths
