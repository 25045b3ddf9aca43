"""One HTTP POST of a delivery, with http.client: connected to the address that was checked (see
targets.py), a connect timeout and a total one, no redirects followed, the first KiB of the answer kept.

http.client rather than a richer client: pinning the connection to a checked address while keeping
the host name for the Host header, TLS SNI and certificate checks takes one overridden `connect`
here, where the richer clients resolve names inside their transports."""

from __future__ import annotations

import http.client
import socket
import ssl
import threading
import time
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime

from shipyard.domain.events import AttemptRecord
from shipyard.events import targets

EXCERPT = 1024


@dataclass(frozen=True, slots=True)
class SendPolicy:
    connect_timeout: float = 5.0
    total_timeout: float = 10.0
    allow_private: bool = False


class _Pinned(http.client.HTTPConnection):
    def __init__(self, target: targets.Target, address: str, timeout: float) -> None:
        super().__init__(target.host, target.port, timeout=timeout)
        self.address = address

    def connect(self) -> None:
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class _PinnedTLS(_Pinned):
    def __init__(self, target: targets.Target, address: str, timeout: float) -> None:
        super().__init__(target, address, timeout)
        self.tls = ssl.create_default_context()

    def connect(self) -> None:
        super().connect()
        self.sock = self.tls.wrap_socket(self.sock, server_hostname=self.host)


def post(url: str, headers: dict[str, str], body: bytes, policy: SendPolicy) -> AttemptRecord:
    """POST `body` to `url`; the attempt as the log keeps it (an error instead of a status when no
    answer came)."""
    at = datetime.now(UTC)
    started = time.monotonic()
    status: int | None = None
    excerpt: str | None = None
    error: str | None = None
    try:
        target = targets.parse(url)
        address = targets.resolve(target, policy.allow_private)
        kind = _PinnedTLS if target.scheme == "https" else _Pinned
        connection = kind(target, address, min(policy.connect_timeout, policy.total_timeout))
        # the total timeout: a receiver that trickles its answer is cut off all the same
        timer = threading.Timer(policy.total_timeout, _abort, (connection,))
        timer.daemon = True
        timer.start()
        try:
            connection.connect()
            remaining = policy.total_timeout - (time.monotonic() - started)
            if remaining <= 0:
                raise TimeoutError("timed out")
            connection.sock.settimeout(remaining)
            connection.request("POST", target.path, body=body, headers=headers)
            response = connection.getresponse()
            status = response.status
            excerpt = response.read(EXCERPT).decode("utf-8", errors="replace")
        finally:
            timer.cancel()
            connection.close()
    except targets.TargetRefused as exc:
        error = f"refused: {exc}"
    except TimeoutError:
        error = f"timed out after {time.monotonic() - started:.1f} s"
    except (OSError, http.client.HTTPException) as exc:
        late = time.monotonic() - started >= policy.total_timeout
        error = f"timed out after {policy.total_timeout:g} s" if late else f"{type(exc).__name__}: {exc}"
    duration = int((time.monotonic() - started) * 1000)
    return AttemptRecord(at, status, error, duration, excerpt)


def _abort(connection: http.client.HTTPConnection) -> None:
    sock = connection.sock
    if sock is not None:
        with suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
