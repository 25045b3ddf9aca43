"""Composition root: settings -> drivers -> services -> ASGI app. The only place naming concrete drivers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import Engine

from shipyard.api.asgi import ShipyardASGI
from shipyard.api.oci.context import Context
from shipyard.config import Settings, load_settings
from shipyard.db import migrate
from shipyard.db.engine import make_engine
from shipyard.db.metadata import MetadataStore
from shipyard.services.access import AccessPolicy, AnonymousAccess
from shipyard.services.registry import RegistryService
from shipyard.storage.base import BlobStore
from shipyard.storage.filesystem import FilesystemBlobStore
from shipyard.storage.memory import MemoryBlobStore

log = logging.getLogger(__name__)

BLOB_STORES: dict[str, Callable[[Settings], BlobStore]] = {
    "filesystem": lambda s: FilesystemBlobStore(s.resolved_storage_path),
    "memory": lambda s: MemoryBlobStore(),
}


def make_blob_store(settings: Settings) -> BlobStore:
    try:
        factory = BLOB_STORES[settings.storage_backend]
    except KeyError:
        raise ValueError(f"unknown storage_backend: {settings.storage_backend!r}") from None
    return factory(settings)


class Periodic:
    """Runs jobs every few seconds on one daemon thread, off the request path."""

    def __init__(self) -> None:
        self._jobs: list[tuple[float, Callable[[], object], str]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def every(self, seconds: float, job: Callable[[], object], name: str) -> None:
        self._jobs.append((seconds, job, name))

    def start(self) -> None:
        if self._thread is None and self._jobs:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="shipyard-periodic", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def _run(self) -> None:
        import time

        due = {name: time.monotonic() + interval for interval, _, name in self._jobs}
        while not self._stop.wait(0.5):
            now = time.monotonic()
            for interval, job, name in self._jobs:
                if now >= due[name]:
                    due[name] = now + interval
                    try:
                        job()
                    except Exception:
                        log.exception("periodic job %s failed", name)


@dataclass
class Shipyard:
    settings: Settings
    engine: Engine
    registry: RegistryService
    asgi: ShipyardASGI
    periodic: Periodic
    executor: ThreadPoolExecutor

    def close(self) -> None:
        self.periodic.stop()
        self.registry.pulls.flush()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.engine.dispose()


def build(
    settings: Settings, *, run_migrations: bool = False, access: AccessPolicy | None = None
) -> Shipyard:
    engine = make_engine(settings.resolved_database_url, pool_size=min(settings.threads, 16))
    if run_migrations:
        migrate.upgrade(engine)
    metadata = MetadataStore(engine)
    registry = RegistryService(metadata, make_blob_store(settings), delete_enabled=settings.delete_enabled)
    executor = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="shipyard-io")
    periodic = Periodic()
    periodic.every(settings.pull_flush_interval_seconds, registry.pulls.flush, "record-pulls")
    max_age = timedelta(seconds=settings.upload_max_age_seconds)
    periodic.every(
        settings.upload_purge_interval_seconds, lambda: registry.purge_uploads(max_age), "purge-uploads"
    )
    context = Context(registry, access or AnonymousAccess(), executor)
    asgi = ShipyardASGI(
        context, on_startup=[periodic.start], on_shutdown=[periodic.stop, registry.pulls.flush]
    )
    return Shipyard(settings, engine, registry, asgi, periodic, executor)


def asgi_from_environment() -> ShipyardASGI:
    """Factory for server workers: settings come from SHIPYARD_* variables set by `shipyard serve`."""
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return build(settings).asgi
