"""The login-flood experiment: does a stream of unknown-user logins slow down blob uploads?

Starts a real `shipyard serve` (1 worker, authentication on), measures the latency of a 32-byte
monolithic blob upload (POST + PUT with a token) while idle, then while a second process sends about
`--rate` GET /token logins a second with Basic credentials of random unknown users, and prints the
median and p99 upload latency of both phases and the worker's RSS before and after.

    python -m bench.loginflood [--rate 90] [--seconds 20] [--python PATH] [--src DIR]

`--python`/`--src` run another checkout's server (e.g. main's) for a before/after comparison.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import multiprocessing
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ADMIN_PASSWORD = "flood-bench-admin-pw"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _basic(login: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode()


def _token(port: int, scope: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(
        "GET",
        f"/token?service=shipyard&scope={scope}",
        headers={"Authorization": _basic("admin", ADMIN_PASSWORD)},
    )
    response = conn.getresponse()
    body = response.read()
    conn.close()
    if response.status != 200:
        raise RuntimeError(f"token: {response.status} {body!r}")
    return str(json.loads(body)["token"])


def _upload_once(conn: http.client.HTTPConnection, token: str, repo: str) -> float:
    data = secrets.token_bytes(32)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    auth = {"Authorization": f"Bearer {token}"}
    started = time.perf_counter()
    conn.request("POST", f"/v2/{repo}/blobs/uploads/", headers={**auth, "Content-Length": "0"})
    response = conn.getresponse()
    response.read()
    if response.status != 202:
        raise RuntimeError(f"POST upload: {response.status}")
    location = response.getheader("Location") or ""
    separator = "&" if "?" in location else "?"
    conn.request(
        "PUT",
        f"{location}{separator}digest={digest}",
        body=data,
        headers={**auth, "Content-Type": "application/octet-stream"},
    )
    response = conn.getresponse()
    response.read()
    if response.status != 201:
        raise RuntimeError(f"PUT upload: {response.status}")
    return time.perf_counter() - started


def _measure(port: int, token: str, repo: str, seconds: float) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    latencies = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        latencies.append(_upload_once(conn, token, repo))
        time.sleep(0.05)
    conn.close()
    return latencies


def _flood(port: int, rate: float, seconds: float, counts: dict[str, int]) -> None:
    """Paced logins of random unknown users, each on its own connection as a spraying client would."""
    statuses: dict[str, int] = {}
    lock = threading.Lock()

    def one() -> None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            login = "nobody-" + secrets.token_hex(6)
            conn.request("GET", "/token?service=shipyard", headers={"Authorization": _basic(login, "x")})
            response = conn.getresponse()
            response.read()
            conn.close()
            key = str(response.status)
        except OSError as exc:
            key = type(exc).__name__
        with lock:
            statuses[key] = statuses.get(key, 0) + 1

    threads: list[threading.Thread] = []
    started = time.monotonic()
    sent = 0
    while time.monotonic() - started < seconds:
        due = started + sent / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        thread = threading.Thread(target=one, daemon=True)
        thread.start()
        threads.append(thread)
        sent += 1
        threads = [t for t in threads if t.is_alive()]
    for thread in threads:
        thread.join(timeout=60)
    counts.update(statuses)
    counts["sent"] = sent


def _flood_process(port: int, rate: float, seconds: float, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    counts: dict[str, int] = {}
    _flood(port, rate, seconds, counts)
    queue.put(counts)


def _worker_rss_kib(server_pid: int) -> int:
    """The RSS of the worker process(es) under the server's process group (the supervisor excluded)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == server_pid:
            continue
        try:
            if os.getpgid(int(entry.name)) != server_pid:
                continue
            status = (entry / "status").read_text()
        except (OSError, ProcessLookupError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def _summary(name: str, latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return (
        f"{name}: n={len(ordered)} median={statistics.median(ordered) * 1000:.1f} ms "
        f"p99={p99 * 1000:.1f} ms max={ordered[-1] * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=90.0, help="logins per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the server to test")
    parser.add_argument("--src", type=Path, help="source directory put first on the server's PYTHONPATH")
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the server")
    args = parser.parse_args()

    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="loginflood-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPYARD_")}
        env["SHIPYARD_ADMIN_PASSWORD"] = ADMIN_PASSWORD
        env["SHIPYARD_LOG_LEVEL"] = "warning"
        for item in args.env:
            name, _, value = item.partition("=")
            env[name] = value
        if args.src:
            env["PYTHONPATH"] = str(args.src)
        log = open(Path(tmp) / "server.log", "wb")  # noqa: SIM115 - closed after the server stops
        server = subprocess.Popen(
            [
                *(args.python, "-m", "shipyard", "serve", "--host", "127.0.0.1", "--port", str(port)),
                *("--workers", "1", "--data-dir", str(Path(tmp) / "data")),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    repo = "admin/flood"
                    token = _token(port, f"repository:{repo}:pull,push")
                    break
                except (OSError, RuntimeError):
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise
                    time.sleep(0.2)
            _measure(port, token, repo, 2.0)  # warm up
            rss_before = _worker_rss_kib(server.pid)
            idle = _measure(port, token, repo, args.seconds)
            queue: multiprocessing.Queue = multiprocessing.Queue()  # type: ignore[type-arg]
            flooder = multiprocessing.Process(
                target=_flood_process, args=(port, args.rate, args.seconds, queue)
            )
            flooder.start()
            time.sleep(1.0)  # let the flood reach its pace
            flooded = _measure(port, token, repo, args.seconds - 1.0)
            flooder.join()
            counts = queue.get(timeout=5)
            time.sleep(2.0)
            rss_after = _worker_rss_kib(server.pid)
            print(_summary("idle       ", idle))
            print(_summary("under flood", flooded))
            print(f"flood: {counts}  ({counts.get('sent', 0) / args.seconds:.0f} logins/s offered)")
            print(f"worker RSS: before {rss_before / 1024:.1f} MiB, after {rss_after / 1024:.1f} MiB")
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
            log.close()


if __name__ == "__main__":
    main()
