"""The access log and the application's access observer: one record per finished request."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import time
from collections.abc import Callable
from typing import Any

from shipyard.server.types import AccessRecord

log = logging.getLogger("shipyard.server")
access_log = logging.getLogger("shipyard.access")

# a client's X-Request-ID is kept only when it is this: it goes into a response header and into log lines
_SANE_REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,128}")


class RequestIds:
    """Request ids of one worker: a random prefix and a counter, far cheaper than a uuid4 per request."""

    __slots__ = ("counter", "prefix")

    def __init__(self) -> None:
        self.prefix = os.urandom(6).hex()
        self.counter = itertools.count(1)

    def choose(self, offered: bytes | None) -> bytes:
        if offered is not None and _SANE_REQUEST_ID.fullmatch(offered):
            return offered
        return b"%s-%x" % (self.prefix.encode(), next(self.counter))


# a worker writes its buffered access lines at least this often (the server's tick), or sooner when this
# many are waiting
FLUSH_LINES = 256


class AccessLog:
    """Writes the access log and calls the observer; costs nothing when neither is wanted.

    In a worker process (`buffer_to`), lines are formatted as the logging module would format them, kept,
    and written to the log's descriptor in one write a second (or every FLUSH_LINES lines): a record
    through `logging` (a LogRecord, the formatter, a write and a flush per line) cost about as much
    CPU as the request it described. Elsewhere (tests in one process) each line is a logging record."""

    __slots__ = ("fd", "json", "log", "observer", "observer_failed", "pending")

    def __init__(self, app: object, *, enabled: bool, log_format: str) -> None:
        if log_format not in ("text", "json"):
            raise ValueError(f"log format {log_format!r} is neither 'text' nor 'json'")
        observer = getattr(app, "access_observer", None)
        self.observer: Callable[[AccessRecord], Any] | None = observer if callable(observer) else None
        self.observer_failed = False
        self.log = enabled
        self.json = log_format == "json"
        self.fd: int | None = None
        self.pending: list[str] = []

    def buffer_to(self, fd: int) -> None:
        """Write lines to `fd` in batches, with the prefix of the process's log format."""
        self.fd = fd

    def flush(self) -> None:
        if not self.pending or self.fd is None:
            return
        data = "".join(self.pending).encode("utf-8", "backslashreplace")
        self.pending.clear()
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view) :]
        except OSError:
            pass  # nowhere to log to: the lines are lost, the requests are not

    @property
    def wanted(self) -> bool:
        return self.observer is not None or (self.log and access_log.isEnabledFor(logging.INFO))

    def record(self, record: AccessRecord) -> None:
        if self.log and access_log.isEnabledFor(logging.INFO):
            line = self._json(record) if self.json else self._text(record)
            if self.fd is not None:
                self.pending.append(f"{_asctime(record.time)} INFO shipyard.access: {line}\n")
                if len(self.pending) >= FLUSH_LINES:
                    self.flush()
            else:
                # straight to the handlers: Logger.info would first walk the stack for a caller nobody reads
                access_log.handle(access_log.makeRecord(access_log.name, logging.INFO, "", 0, line, (), None))
        observer = self.observer
        if observer is not None:
            try:
                observer(record)
            except Exception:
                if not self.observer_failed:
                    # once: a broken observer would otherwise write a traceback per request
                    self.observer_failed = True
                    log.exception("the application's access observer failed (reported once)")

    @staticmethod
    def _text(r: AccessRecord) -> str:
        return (
            f"{_iso(r.time)} {r.client} {r.method} {r.route or '-'} {r.status} {r.bytes_received} "
            f"{r.bytes_sent} {r.duration * 1000:.3f}ms {r.principal or '-'} {r.repository or '-'} "
            f"{r.request_id}"
        )

    @staticmethod
    def _json(r: AccessRecord) -> str:
        # by hand: json.dumps of the whole dict cost several times the rest of the record
        return (
            f'{{"time":"{_iso(r.time)}","client":{_js(r.client)},"method":{_js(r.method)},'
            f'"path":{_js(r.path)},"route":{_js(r.route)},"status":{r.status},'
            f'"bytes_received":{r.bytes_received},"bytes_sent":{r.bytes_sent},'
            f'"duration_ms":{r.duration * 1000:.3f},"request_id":{_js(r.request_id)},'
            f'"principal":{_js(r.principal)},"repository":{_js(r.repository)}}}'
        )


def _js(value: str | None) -> str:
    """A JSON string; the usual one needs no escaping and skips json.dumps."""
    if value is None:
        return "null"
    if value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return json.dumps(value)


_second = [-1, ""]


def _iso(epoch: float) -> str:
    second = int(epoch)
    if _second[0] != second:  # formatted once a second, as the Date header is
        _second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    return f"{_second[1]}.{int(epoch % 1 * 1000):03d}Z"


_local_second = [-1, ""]


def _asctime(epoch: float) -> str:
    """The time as the logging module's default format writes it (local time, milliseconds)."""
    second = int(epoch)
    if _local_second[0] != second:
        _local_second[:] = [second, time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))]
    return f"{_local_second[1]},{int(epoch % 1 * 1000):03d}"
