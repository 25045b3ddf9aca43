"""The access log and the application's access observers: one record per finished request."""

from __future__ import annotations

import functools
import itertools
import json
import logging
import marshal
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
        self.prefix = os.urandom(6).hex().encode() + b"-"
        self.counter = itertools.count(1)

    def choose(self, offered: bytes | None) -> bytes:
        if offered is not None and _SANE_REQUEST_ID.fullmatch(offered):
            return offered
        return b"%s%x" % (self.prefix, next(self.counter))


# A finished request as the server notes it: AccessRecord's fields in its order, as a plain tuple, the
# cheapest thing to make once per request. Records, lines and metrics are made from these in batches.
Noted = tuple[float, str, str, str, str | None, int, int, int, float, str, str | None, str | None]

# noted requests are handed on at the server's tick (once a second), or sooner when this many are waiting
FLUSH_RECORDS = 512

# a text line in a worker process: the logging module's default prefix (local time with milliseconds,
# level, logger), then the record with its time in UTC; one %-format per line
_TEXT_LINE = "%s,%03d INFO shipyard.access: %s.%03dZ %s %s %s %d %d %d %.3fms %s %s %s\n"
_TEXT_MESSAGE = "%s.%03dZ %s %s %s %d %d %d %.3fms %s %s %s"


class AccessLog:
    """The access log and the application's access observers; costs nothing when neither is wanted.

    Per request the server only appends a plain tuple to `pending`. At the server's tick (once a
    second), or every FLUSH_RECORDS requests, `flush` hands the batch to the application's observers
    and writes its lines in one write. Counted with callgrind on a manifest GET, the log and the metrics
    cost 38,500 instructions per request when each request went through an AccessRecord, an observer
    call, a line formatter and a logging check, and 31,000 this way: a batch makes its records in C
    (tuple.__new__ over map) and each line with one %-format.

    The application may offer `access_batch_observer(records)`, called once per batch, and/or
    `access_observer(record)`, called for each record of a batch. In a worker process (`buffer_to`),
    lines carry the prefix the logging module's default format would give them and go straight to the
    log's descriptor; elsewhere (tests in one process) each line is a logging record."""

    __slots__ = (
        "batch_observer",
        "fd",
        "json",
        "log",
        "log_on",
        "observer",
        "observer_failed",
        "pending",
        "pipe",
        "wanted",
    )

    def __init__(self, app: object, *, enabled: bool, log_format: str) -> None:
        if log_format not in ("text", "json"):
            raise ValueError(f"log format {log_format!r} is neither 'text' nor 'json'")
        batch = getattr(app, "access_batch_observer", None)
        self.batch_observer: Callable[[list[AccessRecord]], Any] | None = batch if callable(batch) else None
        observer = getattr(app, "access_observer", None)
        self.observer: Callable[[AccessRecord], Any] | None = observer if callable(observer) else None
        self.observer_failed = False
        self.log = enabled
        self.json = log_format == "json"
        self.fd: int | None = None
        self.pipe: int | None = None
        self.pending: list[Noted] = []
        self.log_on = False
        # read on every request: whether to note it at all
        self.wanted = False
        self._check_wanted()

    def _check_wanted(self) -> None:
        # the logger's level may change while serving: looked at again with every batch
        self.log_on = self.log and access_log.isEnabledFor(logging.INFO)
        self.wanted = self.log_on or self.observer is not None or self.batch_observer is not None

    def buffer_to(self, fd: int) -> None:
        """Write lines to `fd` in batches, with the prefix of the process's log format."""
        self.fd = fd

    def send_to(self, fd: int) -> None:
        """Send each batch's raw records to `fd`, a pipe to the supervisor, which writes the lines."""
        self.pipe = fd

    def note(self, noted: Noted) -> None:
        """A finished request (callers check `wanted` first; the hot path appends to `pending` itself)."""
        pending = self.pending
        pending.append(noted)
        if len(pending) >= FLUSH_RECORDS:
            self.flush()

    def flush(self) -> None:
        """Hand on what was noted: lines to the log, records to the observers."""
        noted = self.pending
        if noted:
            self.pending = []
            if self.log_on:
                self._write(noted)
            if self.batch_observer is not None or self.observer is not None:
                # named tuples made in C, without a Python call per record
                self._observe(list(map(tuple.__new__, itertools.repeat(AccessRecord), noted)))
        self._check_wanted()

    def _write(self, noted: list[Noted]) -> None:
        if self.pipe is not None:
            # a line costs more to format than the request it describes: the supervisor, idle otherwise,
            # formats and writes them; the worker only marshals the batch (in C) and writes it once
            payload = marshal.dumps(noted)
            _write_all(self.pipe, len(payload).to_bytes(4, "big") + payload)
            return
        if self.fd is None:
            name = access_log.name
            line = self._json if self.json else self._text
            for record in noted:
                # straight to the handlers: Logger.info would first walk the stack for a caller nobody reads
                access_log.handle(access_log.makeRecord(name, logging.INFO, "", 0, line(record), (), None))
            return
        _write_all(self.fd, format_lines(noted, as_json=self.json).encode("utf-8", "backslashreplace"))

    def _observe(self, records: list[AccessRecord]) -> None:
        if self.batch_observer is not None:
            try:
                self.batch_observer(records)
            except Exception:
                self._observer_failed()
        observer = self.observer
        if observer is not None:
            for record in records:
                try:
                    observer(record)
                except Exception:
                    self._observer_failed()

    def _observer_failed(self) -> None:
        if not self.observer_failed:
            # once: a broken observer would otherwise write a traceback per request
            self.observer_failed = True
            log.exception("the application's access observer failed (reported once)")

    @staticmethod
    def _text(r: Noted) -> str:
        second = int(r[0])
        return _TEXT_MESSAGE % (
            _utc_second(second),
            (r[0] - second) * 1000,
            r[1],
            r[2],
            r[4] or "-",
            r[5],
            r[6],
            r[7],
            r[8] * 1000,
            r[10] or "-",
            r[11] or "-",
            r[9],
        )

    @staticmethod
    def _json(r: Noted) -> str:
        # by hand: json.dumps of the whole dict cost several times the rest of the record
        return (
            f'{{"time":"{_iso(r[0])}","client":{_js(r[1])},"method":{_js(r[2])},'
            f'"path":{_js(r[3])},"route":{_js(r[4])},"status":{r[5]},'
            f'"bytes_received":{r[6]},"bytes_sent":{r[7]},'
            f'"duration_ms":{r[8] * 1000:.3f},"request_id":{_js(r[9])},'
            f'"principal":{_js(r[10])},"repository":{_js(r[11])}}}'
        )


def format_lines(noted: list[Noted], *, as_json: bool) -> str:
    """A batch's lines, each with the prefix the logging module's default format gives a line."""
    if as_json:
        return "".join([f"{_asctime(r[0])} INFO shipyard.access: {AccessLog._json(r)}\n" for r in noted])
    return _text_lines(noted)


class AccessPipe:
    """The supervisor's end of a worker's access pipe: whole batches out of the bytes as they come."""

    __slots__ = ("buffer", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()

    def read(self) -> list[list[Noted]] | None:
        """The batches now complete; None at end of file (a partial batch of a killed worker is lost)."""
        try:
            data = os.read(self.fd, 1 << 20)
        except BlockingIOError:
            return []
        if not data:
            return None
        buffer = self.buffer
        buffer += data
        batches = []
        while len(buffer) >= 4:
            size = int.from_bytes(buffer[:4], "big")
            if len(buffer) < 4 + size:
                break
            batches.append(marshal.loads(buffer[4 : 4 + size]))
            del buffer[: 4 + size]
        return batches


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        pass  # nowhere to log to: the lines are lost, the requests are not


def _text_lines(noted: list[Noted]) -> str:
    """The text lines of a batch, prefixed as the logging module would: one %-format per line, and
    each second's two timestamps formatted once."""
    stamps: dict[int, tuple[str, str]] = {}
    lines: list[str] = []
    append = lines.append
    for started, client, method, _, route, status, received, sent, duration, rid, principal, repo in noted:
        second = int(started)
        stamp = stamps.get(second)
        if stamp is None:
            stamp = stamps[second] = (_local_second(second), _utc_second(second))
        ms = (started - second) * 1000
        append(
            _TEXT_LINE
            % (
                stamp[0],
                ms,
                stamp[1],
                ms,
                client,
                method,
                route or "-",
                status,
                received,
                sent,
                duration * 1000,
                principal or "-",
                repo or "-",
                rid,
            )
        )
    return "".join(lines)


def route_path(route: object) -> str | None:
    """A framework's route object (Starlette puts its own in the scope): its path is the template."""
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


def _js(value: str | None) -> str:
    """A JSON string; the usual one needs no escaping and skips json.dumps."""
    if value is None:
        return "null"
    if value.isprintable() and '"' not in value and "\\" not in value:
        return f'"{value}"'
    return json.dumps(value)


@functools.lru_cache(maxsize=4)
def _utc_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


@functools.lru_cache(maxsize=4)
def _local_second(second: int) -> str:
    """As the logging module's default format writes it: local time."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))


def _iso(epoch: float) -> str:
    second = int(epoch)
    return f"{_utc_second(second)}.{int((epoch - second) * 1000):03d}Z"


def _asctime(epoch: float) -> str:
    second = int(epoch)
    return f"{_local_second(second)},{int((epoch - second) * 1000):03d}"
