"""Composition root: settings -> drivers -> services -> ASGI app. The only place naming concrete drivers."""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, text

from shipyard.api.asgi import ShipyardASGI
from shipyard.api.auth import AuthApi
from shipyard.api.management import ManagementApi
from shipyard.api.metrics import Metrics, MetricsEndpoint
from shipyard.api.oci.context import Context
from shipyard.auth.keys import KeyRing, SigningKeyError
from shipyard.config import Settings, SettingsError, load_settings
from shipyard.db import migrate
from shipyard.db.accounts import AccountStore
from shipyard.db.engine import make_engine
from shipyard.db.metadata import MetadataStore
from shipyard.db.webhooks import EventStore
from shipyard.events.dispatcher import Dispatcher, DispatchPolicy
from shipyard.events.sender import SendPolicy
from shipyard.events.service import EventService
from shipyard.services.access import SYSTEM, AccessPolicy, AnonymousAccess
from shipyard.services.accounts import AccountService
from shipyard.services.gc import GarbageCollector
from shipyard.services.health import ReadinessService
from shipyard.services.identity import AuthConfig, IdentityService, TokenAccess
from shipyard.services.jobs import JobService
from shipyard.services.registry import RegistryService
from shipyard.storage.base import BlobStore
from shipyard.storage.direct import DIRECT_CHUNK
from shipyard.storage.filesystem import FilesystemBlobStore
from shipyard.storage.memory import MemoryBlobStore
from shipyard.workers.store import Backoff, JobStore
from shipyard.workers.worker import Handler, Handlers, Schedule, Worker

log = logging.getLogger(__name__)

# prometheus-client's own variable: `shipyard serve` points it at a fresh directory for its workers
MULTIPROCESS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

BLOB_STORES: dict[str, Callable[[Settings], BlobStore]] = {
    "filesystem": lambda s: FilesystemBlobStore(
        s.resolved_storage_path, direct_chunk=DIRECT_CHUNK if s.storage_direct_io else None
    ),
    "memory": lambda s: MemoryBlobStore(),
}


def make_blob_store(settings: Settings) -> BlobStore:
    try:
        factory = BLOB_STORES[settings.storage_backend]
    except KeyError:
        raise ValueError(f"unknown storage_backend: {settings.storage_backend!r}") from None
    return factory(settings)


def make_collector(settings: Settings, registry: RegistryService) -> GarbageCollector:
    """The garbage collector over the registry's database and store: `shipyard gc` runs it, and a
    scheduler runs its `run` every gc_interval_seconds."""
    return GarbageCollector(
        registry.metadata, registry.blobs, grace=timedelta(seconds=settings.gc_grace_seconds)
    )


class Periodic:
    """Runs jobs every few seconds on one daemon thread, off the request path, in every process: for the
    caches and buffers of the process itself. Work done once for the cluster is a schedule of the job
    queue (`build_worker`)."""

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
    identity: IdentityService | None = None

    def close(self) -> None:
        self.periodic.stop()
        self.registry.metadata.close()
        self.registry.pulls.flush()
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.engine.dispose()


def build(
    settings: Settings, *, run_migrations: bool = False, access: AccessPolicy | None = None
) -> Shipyard:
    engine = make_engine(settings.resolved_database_url, pool_size=min(settings.threads, 16))
    if run_migrations:
        migrate.upgrade(engine)
    # the workers of this server share a manifest change counter here (see db/manifest_cache.py)
    metadata = MetadataStore(engine, change_file=settings.data_dir / "manifest-changes")
    registry = RegistryService(
        metadata,
        make_blob_store(settings),
        delete_enabled=settings.delete_enabled,
        max_blob_bytes=settings.max_blob_bytes,
        max_uploads_per_principal=settings.max_uploads_per_principal,
    )
    executor = ThreadPoolExecutor(max_workers=settings.threads, thread_name_prefix="shipyard-io")
    periodic = Periodic()
    # each process buffers its own pulls: each flushes its own
    periodic.every(settings.pull_flush_interval_seconds, registry.pulls.flush, "record-pulls")
    # webhooks are sent by the job workers (build_worker); the API reads and writes their records
    events = EventStore(engine)
    identity = None if settings.insecure_no_auth else make_identity(settings, engine)
    policy: AccessPolicy
    if access is not None:
        policy = access
    elif identity is None:
        policy = AnonymousAccess()
    else:
        policy = TokenAccess(identity)
    if identity is not None:
        keys = identity.keys
        # pick up keys that `shipyard keys rotate` added, and retire the expired ones
        periodic.every(30, keys.refresh, "signing-keys")
        # changes to principals made by other processes; a lookup refreshes a view older than max_age
        view = identity.principals
        periodic.every(max(0.5, view.max_age / 2), view.refresh, "principal-view")
        if identity.failed_auth.window > 0:
            periodic.every(identity.failed_auth.window, identity.failed_auth.flush, "failed-auth-audit")
    context = Context(
        registry,
        policy,
        executor,
        auth_service=None if identity is None else settings.auth_service,
        public_url=settings.public_url,
    )
    metrics = make_metrics(settings, engine, registry)
    periodic.every(1, metrics.metrics.sample, "metrics")
    asgi = ShipyardASGI(
        context,
        auth=None if identity is None else AuthApi(identity, executor),
        management=(
            None
            if identity is None
            else ManagementApi(
                identity,
                AccountService(identity.accounts, metadata),
                executor,
                JobService(make_job_store(settings, engine), _job_audit(identity)),
                EventService(
                    events,
                    identity.accounts,
                    allow_private_networks=settings.webhook_allow_private_networks,
                ),
            )
        ),
        # the PostgreSQL manifest cache is on only while a listener hears other processes' changes
        on_startup=[periodic.start, metadata.watch_changes],
        on_shutdown=[
            periodic.stop,
            metadata.stop_watching,
            registry.pulls.flush,
            metrics.metrics.stop,
            *([] if identity is None else [identity.shutdown]),
        ],
        readiness=make_readiness(engine, registry.blobs),
        metrics=metrics,
    )
    return Shipyard(settings, engine, registry, asgi, periodic, executor, identity)


def make_dispatcher(settings: Settings, engine: Engine) -> Dispatcher:
    send = SendPolicy(
        connect_timeout=min(5.0, settings.webhook_timeout_seconds),
        total_timeout=settings.webhook_timeout_seconds,
        allow_private=settings.webhook_allow_private_networks,
    )
    policy = DispatchPolicy(
        retry_base=settings.webhook_retry_base_seconds,
        retry_window=settings.webhook_retry_window_seconds,
        send=send,
    )
    return Dispatcher(EventStore(engine), policy)


def make_job_store(settings: Settings, engine: Engine) -> JobStore:
    return JobStore(engine, max_attempts=settings.job_max_attempts, backoff=Backoff())


def _job_audit(identity: IdentityService) -> Callable[[str, str, str, str], None]:
    def record(action: str, principal: str, source: str, target: str) -> None:
        identity.accounts.record_event(
            action,
            principal=principal,
            source=source,
            account=None,
            target=target,
            outcome="allowed",
            reason="by hand",
        )

    return record


@dataclass
class WorkerApp:
    """A job worker and what it holds open."""

    worker: Worker
    engine: Engine
    registry: RegistryService
    dispatcher: Dispatcher

    def close(self) -> None:
        self.dispatcher.close()
        self.registry.metadata.close()
        self.engine.dispose()


def build_worker(settings: Settings, *, extra_handlers: dict[str, Handler] | None = None) -> WorkerApp:
    """The worker: the job store, a handler for each job kind, and the cluster's schedules. A new kind of
    background work is one `handlers.add` line here, and one `Schedule` line if it recurs."""
    engine = make_engine(settings.resolved_database_url, pool_size=2)
    metadata = MetadataStore(engine, change_file=settings.data_dir / "manifest-changes")
    registry = RegistryService(
        metadata,
        make_blob_store(settings),
        delete_enabled=settings.delete_enabled,
        max_blob_bytes=settings.max_blob_bytes,
        max_uploads_per_principal=settings.max_uploads_per_principal,
    )
    store = make_job_store(settings, engine)
    max_age = timedelta(seconds=settings.upload_max_age_seconds)
    retention = timedelta(seconds=settings.job_retention_seconds)
    handlers = Handlers()
    handlers.add("purge-uploads", lambda payload: registry.purge_uploads(SYSTEM, max_age))
    handlers.add(
        "prune-jobs", lambda payload: store.prune(retention, scheduled_done_older_than=timedelta(hours=1))
    )
    schedules = [
        Schedule("purge-uploads", settings.upload_purge_interval_seconds, "purge-uploads"),
        Schedule("prune-jobs", 3600, "prune-jobs"),
    ]
    if not settings.insecure_no_auth:
        # deletes the key files no valid token needs any more, in the keys directory the servers share;
        # read afresh at each run, as `shipyard keys rotate` may have changed them meanwhile
        handlers.add("retire-signing-keys", lambda payload: _signing_keys(settings).retire_expired())
        schedules.append(Schedule("retire-signing-keys", 3600, "retire-signing-keys"))
    collector = make_collector(settings, registry)
    handlers.add("gc", lambda payload: _collect(collector))
    schedules.append(Schedule("gc", settings.gc_interval_seconds, "gc"))
    dispatcher = make_dispatcher(settings, engine)
    # the job returns at once: sends go on in the dispatcher's threads, each taking the next due
    # delivery when done, so a slow receiver holds no job and deliveries keep up with pushes
    handlers.add("webhooks", lambda payload: dispatcher.run_once(wait_for_sends=False))
    schedules.append(Schedule("webhooks", settings.webhook_dispatch_interval_seconds, "webhooks"))
    event_retention = timedelta(seconds=settings.event_retention_seconds)
    handlers.add("prune-events", lambda payload: dispatcher.store.prune(event_retention))
    schedules.append(Schedule("prune-events", 3600, "prune-events"))
    for kind, handler in (extra_handlers or {}).items():
        handlers.add(kind, handler)
    worker = Worker(
        store,
        handlers,
        schedules,
        lease_seconds=settings.job_lease_seconds,
        poll_seconds=settings.job_poll_seconds,
    )
    return WorkerApp(worker, engine, registry, dispatcher)


def _collect(collector: GarbageCollector) -> None:
    report = collector.run()
    if report.manifests or report.links or report.blobs:
        log.info(
            "gc freed %d blobs (%d bytes), %d links and %d untagged manifests",
            report.blobs,
            report.bytes,
            report.links,
            report.manifests,
        )


def make_readiness(engine: Engine, blobs: BlobStore) -> ReadinessService:
    def database() -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    def storage() -> None:
        if isinstance(blobs, FilesystemBlobStore):
            root = blobs.root
            if not root.is_dir() or not os.access(root, os.W_OK | os.X_OK):
                raise RuntimeError(f"blob store root {root} is not a writable directory")

    # the shipped migrations do not change while the process runs: read them once, at the first probe
    heads = functools.cache(migrate.head_revisions)

    def migrations() -> None:
        migrate.require_at_head(engine, heads())

    return ReadinessService({"database": database, "storage": storage, "migrations": migrations})


def make_metrics(settings: Settings, engine: Engine, registry: RegistryService) -> MetricsEndpoint:
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None
    if settings.metrics_access == "token" and not token:
        raise SettingsError(
            "invalid setting metrics_access (SHIPYARD_METRICS_ACCESS): 'token' needs metrics_token"
        )
    directory = os.environ.get(MULTIPROCESS_DIR_VARIABLE)
    metrics = Metrics(multiprocess_dir=Path(directory) if directory else None)
    pool = engine.pool

    def database_pool(m: Metrics) -> None:
        # SQLite's pools other than the queue pool have no size to report
        size = getattr(pool, "size", None)
        checked_out = getattr(pool, "checkedout", None)
        if callable(size) and callable(checked_out):
            m.db_pool_size.set(size())
            m.db_pool_checked_out.set(checked_out())

    def manifest_cache(m: Metrics) -> None:
        m.count_to("cache-hits", m.manifest_cache.labels("hit"), registry.manifest_cache_hits)
        m.count_to("cache-misses", m.manifest_cache.labels("miss"), registry.manifest_cache_misses)

    def uploads(m: Metrics) -> None:
        m.uploads_in_progress.set(sum(1 for _ in registry.blobs.uploads()))

    jobs = make_job_store(settings, engine)

    def job_states(m: Metrics) -> None:
        for state, count in jobs.counts().items():
            m.jobs.labels(state).set(count)

    metrics.samplers += [database_pool, manifest_cache]
    # every worker sees the same upload sessions and jobs: counting them once per scrape is enough
    metrics.scrape_samplers += [uploads, job_states]
    return MetricsEndpoint(metrics, access=settings.metrics_access, token=token)


def quiet_libraries(level: str) -> None:
    """Alembic tells at INFO what it sets up and which dialect it found; an operator needs none of it."""
    if level != "debug":
        logging.getLogger("alembic").setLevel(logging.WARNING)


def _longest_token_lifetime(settings: Settings) -> float:
    config = AuthConfig(
        issuer=settings.auth_issuer,
        service=settings.auth_service,
        token_lifetime=settings.token_lifetime_seconds,
        login_password_lifetime=settings.login_password_lifetime_seconds,
    )
    return max(config.token_lifetime, config.login_password_lifetime, config.refresh_lifetime)


def make_identity(settings: Settings, engine: Engine) -> IdentityService:
    config = AuthConfig(
        issuer=settings.auth_issuer,
        service=settings.auth_service,
        token_lifetime=settings.token_lifetime_seconds,
        login_password_lifetime=settings.login_password_lifetime_seconds,
        principal_max_age=settings.principal_max_age_seconds,
        max_failures=settings.login_max_failures,
        max_source_failures=settings.login_max_source_failures,
        failure_window=settings.login_failure_window_seconds,
        limiter_max_entries=settings.login_limiter_max_entries,
        hash_workers=settings.login_hash_workers,
        hash_max_waiting=settings.login_hash_max_waiting,
        failed_auth_window=settings.failed_auth_audit_window_seconds,
    )
    return IdentityService(AccountStore(engine), _signing_keys(settings), config)


def _signing_keys(settings: Settings) -> KeyRing:
    try:
        return KeyRing(
            settings.resolved_keys_dir,
            max_token_lifetime=_longest_token_lifetime(settings),
            signing_key_file=settings.signing_key_file,
        )
    except SigningKeyError as exc:
        raise SettingsError(f"invalid setting signing_key_file (SHIPYARD_SIGNING_KEY_FILE): {exc}") from None


def asgi_from_environment() -> ShipyardASGI:
    """Factory for server workers: settings come from SHIPYARD_* variables set by `shipyard serve`."""
    settings = load_settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    quiet_libraries(settings.log_level)
    return build(settings).asgi
