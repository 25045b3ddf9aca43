"""Record when manifests were last pulled: in memory on the hot path, flushed to SQL in batches."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime
from typing import Protocol

log = logging.getLogger(__name__)


class PullSink(Protocol):
    def record_pulls(self, pulls: dict[int, datetime]) -> None: ...


class PullRecorder:
    def __init__(self, sink: PullSink) -> None:
        self._sink = sink
        # manifest id -> when it was last pulled, as time.time() (the datetimes are made when flushing)
        self._pending: dict[int, float] = {}
        self._lock = threading.Lock()

    def record(self, manifest_id: int) -> None:
        # a dict store under a lock: no I/O on the request path
        now = time.time()
        with self._lock:
            self._pending[manifest_id] = now

    def flush(self) -> int:
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        try:
            self._sink.record_pulls({k: datetime.fromtimestamp(v, UTC) for k, v in pending.items()})
        except Exception:
            log.exception("could not record %d manifest pulls; will retry", len(pending))
            with self._lock:
                for key, value in pending.items():
                    self._pending.setdefault(key, value)
            return 0
        return len(pending)
