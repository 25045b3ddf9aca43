"""Command line of the benchmark: `python -m bench [--quick | --smoke] [--servers ...]`."""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
from pathlib import Path

from bench.config import MODES, SERVER_NAMES
from bench.runner import Interrupted, Options, execute, save
from bench.tools import TOOLS

REQUIRED = {
    "shipyard": ("curl", "wrk", "hey", "skopeo"),
    "shipyard-pg": ("curl", "wrk", "hey", "skopeo"),
    "shipyard-auth": ("wrk",),
    "distribution": ("curl", "wrk", "hey", "skopeo", "docker-registry"),
    "nginx": ("curl", "wrk", "nginx"),
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smaller sizes and fewer rounds (under 3 minutes)")
    mode.add_argument("--smoke", action="store_true", help="tiny sizes: checks the program, measures nothing")
    p.add_argument(
        "--servers",
        default=",".join(SERVER_NAMES),
        help=f"comma-separated subset of {','.join(SERVER_NAMES)} (default: all)",
    )
    p.add_argument("--rounds", type=int, help="override the number of rounds")
    p.add_argument("--results-dir", type=Path, default=Path("bench/results"), help="default bench/results")
    p.add_argument(
        "--work-dir", type=Path, help="parent of the temporary data directories (default: $TMPDIR)"
    )
    p.add_argument("--shipyard-workers", type=int, help="SHIPYARD_WORKERS for both Shipyards (default: 1)")
    p.add_argument("--no-growth", action="store_true", help="skip the database growth workload")
    p.add_argument(
        "--only",
        help="comma-separated prefixes of the workloads to run, e.g. manifest_get,blob_get,growth "
        "(names as in the JSON: blob_get_full, upload_chunked, manifest_head_digest.c64, tags_list_middle,"
        " catalog_first, small_push, growth, ...)",
    )
    p.add_argument("--no-chart", action="store_true", help="do not draw the PNG chart")
    p.add_argument(
        "--against",
        metavar="REV",
        help="instead: the manifest GET A/B of this checkout against commit REV (bench/ab.py), e.g. 772227a",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.against:
        from bench import ab

        rounds = ["--rounds", str(args.rounds)] if args.rounds else []
        return ab.main(["--against", args.against, *rounds])
    sizes = MODES["smoke" if args.smoke else "quick" if args.quick else "full"]
    if args.rounds:
        sizes = dataclasses.replace(sizes, rounds=args.rounds)
    servers = tuple(name.strip() for name in args.servers.split(",") if name.strip())
    unknown = [name for name in servers if name not in SERVER_NAMES]
    if unknown or not servers:
        print(f"bench: unknown server(s) {unknown}; choose from {', '.join(SERVER_NAMES)}", file=sys.stderr)
        return 2
    servers = tuple(name for name in SERVER_NAMES if name in servers)  # the canonical order
    missing = sorted({tool for name in servers for tool in REQUIRED[name] if not _which(tool)})
    if missing:
        print(f"bench: missing tools: {', '.join(missing)} (make bench installs them)", file=sys.stderr)
        return 2
    options = Options(
        sizes=sizes,
        servers=servers,
        results_dir=args.results_dir,
        work_parent=args.work_dir,
        shipyard_workers=args.shipyard_workers,
        growth=not args.no_growth,
        only=tuple(p.strip() for p in args.only.split(",") if p.strip()) if args.only else None,
        chart=not args.no_chart,
    )
    try:
        payload = execute(options)
    except (KeyboardInterrupt, Interrupted) as exc:
        print(f"\nbench: interrupted ({str(exc) or 'Ctrl-C'}); every server was stopped", file=sys.stderr)
        return 130
    paths = save(payload, options)
    print(payload["table"])
    print()
    for name in ("table", "json", "chart"):
        if name in paths:
            print(f"{name}: {paths[name]}")
    problems = payload["meta"]["cleanup_problems"]
    for problem in problems:
        print(f"bench: cleanup problem: {problem}", file=sys.stderr)
    return 3 if problems else 0


def _which(tool: str) -> bool:
    return shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is not None


assert set(TOOLS) >= {t for tools in REQUIRED.values() for t in tools}

if __name__ == "__main__":
    sys.exit(main())
