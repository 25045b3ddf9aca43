"""The GC benchmark: `python -m bench.gc [--blobs N] [--database sqlite,postgresql]`.

A store of N small blobs (1 KiB), in 100 repositories of 10 accounts, each blob a layer of a live
manifest except a share of garbage: links whose manifests were deleted (review rows due, as the
delete would have queued them). SQL and the store are filled directly, so the setup takes seconds.
It measures one `GarbageCollector.run()` at 10% garbage (objects and bytes freed per second) and the
time at 1% against 10%: GC reads its review queues, so the time should follow the garbage, not the
size of the store."""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from shipyard.app import build
from shipyard.config import Settings
from shipyard.services.gc import GarbageCollector

BLOB_SIZE = 1024
REPOSITORIES = 100
ACCOUNTS = 10


def _populate(app: Any, root: Path, blobs: int, garbage: float) -> tuple[int, int]:
    """Fill SQL and the store; (garbage blobs, their bytes)."""
    engine = app.engine
    postgres = engine.dialect.name == "postgresql"
    then = datetime.now(UTC) - timedelta(days=2)
    stamp: object = then if postgres else then.strftime("%Y-%m-%d %H:%M:%S.%f")
    rows = []
    store = root / "blobs" / "sha256"
    for n in range(blobs):
        data = n.to_bytes(8, "big") * (BLOB_SIZE // 8)
        encoded = hashlib.sha256(data).hexdigest()
        directory = store / encoded[:2]
        directory.mkdir(parents=True, exist_ok=True)
        (directory / encoded).write_bytes(data)  # no fsync: setup, not what is measured
        rows.append(f"sha256:{encoded}")
    dead = int(blobs * garbage)
    names = [f"account{n % ACCOUNTS}/repo{n}" for n in range(REPOSITORIES)]
    param = (lambda name: f"%({name})s") if postgres else (lambda name: f":{name}")
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        p = param
        cursor.executemany(
            f"INSERT INTO repositories (name, created_at) VALUES ({p('name')}, {p('now')})",
            [{"name": name, "now": stamp} for name in names],
        )
        cursor.execute("SELECT id, name FROM repositories")
        ids = {name: int(id_) for id_, name in cursor.fetchall()}
        cursor.executemany(
            "INSERT INTO blobs (digest, size, media_type, created_at) "
            f"VALUES ({p('d')}, {p('s')}, NULL, {p('now')})",
            [{"d": d, "s": BLOB_SIZE, "now": stamp} for d in rows],
        )
        links = [{"r": ids[names[i % REPOSITORIES]], "d": d, "now": stamp} for i, d in enumerate(rows)]
        cursor.executemany(
            "INSERT INTO repository_blobs (repository_id, digest, created_at) "
            f"VALUES ({p('r')}, {p('d')}, {p('now')})",
            links,
        )
        # the live blobs: one manifest per 10 layers, in the layer's repository
        live = links[dead:]
        by_repository: dict[int, list[str]] = {}
        for link in live:
            by_repository.setdefault(int(link["r"]), []).append(str(link["d"]))  # type: ignore[call-overload]
        for repository_id, digests in by_repository.items():
            for start in range(0, len(digests), 10):
                layers = digests[start : start + 10]
                body = json.dumps({"layers": layers}).encode()
                manifest_digest = "sha256:" + hashlib.sha256(body).hexdigest()
                cursor.execute(
                    "INSERT INTO manifests (repository_id, digest, media_type, size, content, created_at) "
                    f"VALUES ({p('r')}, {p('d')}, 'application/vnd.oci.image.manifest.v1+json', {p('s')}, "
                    f"{p('c')}, {p('now')}) RETURNING id",
                    {"r": repository_id, "d": manifest_digest, "s": len(body), "c": body, "now": stamp},
                )
                manifest_id = cursor.fetchone()[0]
                cursor.executemany(
                    "INSERT INTO manifest_layers (manifest_id, position, digest, size, media_type) "
                    f"VALUES ({p('m')}, {p('i')}, {p('d')}, {BLOB_SIZE}, "
                    "'application/vnd.oci.image.layer.v1.tar')",
                    [{"m": manifest_id, "i": i, "d": d} for i, d in enumerate(layers)],
                )
        # the garbage: links of deleted manifests, reviews due
        cursor.executemany(
            "INSERT INTO gc_link_reviews (repository_id, digest, review_after) "
            f"VALUES ({p('r')}, {p('d')}, {p('now')})",
            links[:dead],
        )
        raw.commit()
    finally:
        raw.close()
    return dead, dead * BLOB_SIZE


@contextlib.contextmanager
def _database(kind: str, work: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{work / 'shipyard.db'}"
        return
    from tests.support.postgres import start_postgres

    server = start_postgres()
    try:
        yield server.create_database()
    finally:
        server.stop()


def measure(kind: str, blobs: int, garbage: float) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="bench-gc-"))
    try:
        with _database(kind, work) as url:
            app = build(Settings(data_dir=work, database_url=url, insecure_no_auth=True), run_migrations=True)
            try:
                started = time.perf_counter()
                dead, dead_bytes = _populate(app, work, blobs, garbage)
                setup = time.perf_counter() - started
                collector = GarbageCollector(
                    app.registry.metadata, app.registry.blobs, grace=timedelta(hours=1)
                )
                started = time.perf_counter()
                report = collector.run()
                seconds = time.perf_counter() - started
                assert (report.blobs, report.bytes) == (dead, dead_bytes), (report, dead)
                assert sum(1 for _ in app.registry.blobs.digests()) == blobs - dead
            finally:
                app.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "blobs": blobs,
        "garbage": garbage,
        "freed_objects": dead,
        "freed_bytes": dead_bytes,
        "setup_s": round(setup, 2),
        "gc_s": round(seconds, 3),
        "objects_per_s": round(dead / seconds, 1) if seconds else 0.0,
        "bytes_per_s": round(dead_bytes / seconds, 1) if seconds else 0.0,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gc", description=__doc__)
    p.add_argument("--blobs", type=int, default=100_000)
    p.add_argument("--database", default="sqlite,postgresql", help="comma-separated: sqlite, postgresql")
    p.add_argument("--results", type=Path, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    results = []
    for kind in [k.strip() for k in args.database.split(",") if k.strip()]:
        for garbage in (0.10, 0.01):
            figures = {"database": kind, **measure(kind, args.blobs, garbage)}
            results.append(figures)
            print(
                f"{kind:<10} {args.blobs} blobs, {garbage:.0%} garbage: freed {figures['freed_objects']} "
                f"objects in {figures['gc_s']} s = {figures['objects_per_s']:.0f} objects/s, "
                f"{figures['bytes_per_s'] / 2**20:.2f} MiB/s (setup {figures['setup_s']} s)",
                flush=True,
            )
    if args.results:
        args.results.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
