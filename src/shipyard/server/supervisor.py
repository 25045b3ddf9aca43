"""The parent process: binds the listening socket, starts the workers, restarts one that dies, and on
SIGTERM or SIGINT shuts them all down gracefully."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from types import FrameType

from shipyard.server.access import AccessPipe, format_lines
from shipyard.server.config import ServerConfig

log = logging.getLogger("shipyard.server")

# beyond the graceful timeout, how long a worker gets to run its lifespan shutdown before it is killed
_EXIT_MARGIN = 5.0
# a worker that dies sooner than this after its start died "soon": its replacement waits, longer each time
# in a row (a crash at every start would otherwise spin a core on spawning and importing)
_SOON = 10.0
_FIRST_BACKOFF = 0.5
_MAX_BACKOFF = 30.0
# an access pipe holds this much: a worker's last batches fit while the supervisor waits for it to stop
_ACCESS_PIPE_SIZE = 1024 * 1024


def bind(config: ServerConfig) -> socket.socket:
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    # create_server sets SO_REUSEADDR: a restart does not wait for TIME_WAIT connections to expire
    sock = socket.create_server((config.host, config.port), family=family, backlog=config.backlog)
    sock.set_inheritable(True)
    return sock


@dataclass
class _Worker:
    number: int
    process: subprocess.Popen[bytes]
    ready_fd: int | None  # our end of the pipe the worker writes a byte to once it serves
    started_at: float
    failures: int = 0  # deaths in a row, each soon after its start
    restart_at: float | None = None  # dead: when its replacement starts

    @property
    def ready(self) -> bool:
        return self.ready_fd is None

    @property
    def name(self) -> str:
        return f"worker {self.number}" if self.number > 0 else f"companion {-self.number}"


class Supervisor:
    def __init__(self, config: ServerConfig, sock: socket.socket) -> None:
        self.config = config
        self.sock = sock
        self.workers: list[_Worker] = []
        self.stopping = False
        self.failed = False
        self.announced = False  # the banner is out
        self._lifeline_read, self._lifeline_write = os.pipe()
        # read ends of the workers' access pipes (those of dead workers until they are drained)
        self.access: dict[int, AccessPipe] = {}

    def _spawn_companion(self, number: int) -> _Worker:
        command = [*self.config.companions[-number - 1], "--lifeline-fd", str(self._lifeline_read)]
        # the lifeline as the workers have it: the companion reads end-of-file once this process is gone
        process = subprocess.Popen(command, pass_fds=(self._lifeline_read,))
        log.debug("companion %s started (pid %d)", " ".join(command[-1:]), process.pid)
        return _Worker(number, process, None, time.monotonic())

    def _spawn(self, number: int) -> _Worker:
        if number < 0:
            return self._spawn_companion(number)
        ready_read, ready_write = os.pipe()
        fd = self.sock.fileno()
        passed = [fd, ready_write, self._lifeline_read]
        access_write: int | None = None
        extra: list[str] = []
        if self.config.access_log:
            access_read, access_write = os.pipe()
            with contextlib.suppress(OSError):
                fcntl.fcntl(access_write, fcntl.F_SETPIPE_SZ, _ACCESS_PIPE_SIZE)
            os.set_blocking(access_read, False)
            self.access[access_read] = AccessPipe(access_read)
            passed.append(access_write)
            extra = ["--access-fd", str(access_write)]
        cmd = [
            sys.executable,
            "-m",
            "shipyard.server.worker",
            "--fd",
            str(fd),
            "--ready-fd",
            str(ready_write),
            "--lifeline-fd",
            str(self._lifeline_read),
            *extra,
            # the banner is the supervisor's alone, and may hold a secret: not on a worker's command line
            replace(self.config, banner=None).to_json(),
        ]
        try:
            process = subprocess.Popen(cmd, pass_fds=passed)
        finally:
            os.close(ready_write)
            if access_write is not None:
                os.close(access_write)
        log.debug("worker %d started (pid %d)", number, process.pid)
        return _Worker(number, process, ready_read, time.monotonic())

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT) and not self.stopping:
            self.stopping = True

    def run(self) -> int:
        wake_read, wake_write = os.pipe()
        os.set_blocking(wake_read, False)
        os.set_blocking(wake_write, False)
        previous_wakeup = signal.set_wakeup_fd(wake_write)
        handlers = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
        }
        try:
            self.workers = [self._spawn(number) for number in range(1, self.config.workers + 1)]
            # companions have negative numbers: -1 is the first
            self.workers += [self._spawn(-1 - index) for index in range(len(self.config.companions))]
            while not self.stopping:
                self._watch(wake_read)
            self._stop_workers()
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for signum, handler in handlers.items():
                signal.signal(signum, handler)
            for fd in (wake_read, wake_write, self._lifeline_read, self._lifeline_write, *self.access):
                with contextlib.suppress(OSError):
                    os.close(fd)
            for worker in self.workers:
                if worker.ready_fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(worker.ready_fd)
            self.sock.close()
        return 1 if self.failed else 0

    def _watch(self, wake_read: int) -> None:
        waiting = {w.ready_fd: w for w in self.workers if w.ready_fd is not None}
        try:
            due = [w.restart_at for w in self.workers if w.restart_at is not None]
            timeout = min([1.0, *(max(0.0, t - time.monotonic()) for t in due)])
            # the banner is the first line: requests served before every worker is up (a readiness
            # probe) wait in their pipes, which hold far more than a start-up's worth of lines
            access = list(self.access) if self.announced else []
            readable, _, _ = select.select([wake_read, *waiting, *access], [], [], timeout)
        except InterruptedError:
            readable = []
        for fd in readable:
            if fd in self.access:
                self._write_access(fd)
                continue
            if fd == wake_read:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_read, 512):
                        pass
                continue
            worker = waiting[fd]
            if os.read(fd, 1):
                os.close(fd)
                worker.ready_fd = None
                log.debug("worker %d (pid %d) is serving", worker.number, worker.process.pid)
        if not self.announced and all(w.ready for w in self.workers):
            # once, and only now: whoever reads it may connect at once (a restarted worker does not repeat it)
            self.announced = True
            if self.config.banner is not None:
                print(self.config.banner, flush=True)
        for index, worker in enumerate(self.workers):
            if worker.restart_at is not None:
                if time.monotonic() >= worker.restart_at and not self.stopping:
                    self.workers[index] = self._spawn(worker.number)
                    self.workers[index].failures = worker.failures
                continue
            code = worker.process.poll()
            if code is None or self.stopping:
                continue
            how = f"signal {-code}" if code < 0 else f"exit status {code}"
            if not worker.ready:
                log.error("%s (pid %d) failed to start (%s)", worker.name, worker.process.pid, how)
                self.failed = True
                self.stopping = True
                return
            soon = time.monotonic() - worker.started_at < _SOON
            worker.failures = worker.failures + 1 if soon else 0
            delay = min(_MAX_BACKOFF, _FIRST_BACKOFF * 2 ** (worker.failures - 1)) if soon else 0.0
            log.warning(
                "%s (pid %d) died (%s); starting a new one in %.1f s",
                worker.name,
                worker.process.pid,
                how,
                delay,
            )
            worker.restart_at = time.monotonic() + delay

    def _write_access(self, fd: int) -> None:
        pipe = self.access[fd]
        batches = pipe.read()
        if batches is None:
            del self.access[fd]
            os.close(fd)
            return
        as_json = self.config.log_format == "json"
        for batch in batches:
            data = format_lines(batch, as_json=as_json).encode("utf-8", "backslashreplace")
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(sys.stderr.fileno(), view) :]
            except OSError:
                return  # nowhere to log to

    def _drain_access(self, timeout: float) -> None:
        """Write what the workers send until `timeout` passes or every access pipe is at its end."""
        deadline = time.monotonic() + timeout
        while self.access:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                readable, _, _ = select.select(list(self.access), [], [], left)
            except InterruptedError:
                continue
            for fd in readable:
                self._write_access(fd)

    def _stop_workers(self) -> None:
        """SIGTERM to every worker, then wait for them; whoever outlives the grace period is killed."""
        self.sock.close()
        for worker in self.workers:
            if worker.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.config.graceful_timeout + _EXIT_MARGIN
        # meanwhile their last access lines arrive: read, so that no worker blocks writing them
        while self.access and any(w.process.poll() is None for w in self.workers):
            if time.monotonic() >= deadline:
                break
            self._drain_access(0.05)
        for worker in self.workers:
            try:
                worker.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s (pid %d) did not stop in time: killed", worker.name, worker.process.pid)
                worker.process.kill()
                worker.process.wait()
        self._drain_access(1.0)


def serve(config: ServerConfig) -> int:
    """Serve `config.app` until SIGTERM or SIGINT; the exit status: 0, or 1 when a worker failed to start."""
    try:
        sock = bind(config)
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", config.host, config.port, exc)
        return 1
    return Supervisor(config, sock).run()
