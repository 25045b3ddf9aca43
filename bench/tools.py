"""The load generators and clients, run as processes: curl, wrk, hey, skopeo; their output parsed."""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

TOOLS = ("curl", "wrk", "hey", "skopeo", "nginx", "docker-registry")

# wrk prints its own summary with two-decimal units; a done() hook prints exact numbers as JSON.
WRK_REPORT_LUA = """\
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '\\nBENCH-JSON {"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p99_us": %d, '
    .. '"mean_us": %f, "connect_errors": %d, "read_errors": %d, "write_errors": %d, '
    .. '"timeouts": %d, "non_2xx": %d}\\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(99),
    latency.mean, errors.connect, errors.read, errors.write, errors.timeout, errors.status))
end
"""


class ToolError(RuntimeError):
    pass


@dataclass(frozen=True)
class LoadResult:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    error_kinds: str = ""  # e.g. "read 1, non-2xx 2": what the errors were

    def to_json(self) -> dict[str, float | int]:
        return {
            "rps": self.requests_per_second,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "requests": self.requests,
            "errors": self.errors,
        }


def _run(cmd: list[str], timeout: float) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise ToolError(f"{cmd[0]} timed out after {timeout:.0f} s: {' '.join(cmd)}") from exc
    if done.returncode != 0:
        raise ToolError(f"{' '.join(cmd)} exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    return done.stdout


def wrk(
    url: str, *, connections: int, seconds: int, headers: dict[str, str] | None, script: Path
) -> LoadResult:
    """GET load with wrk (never HEAD: wrk 4.1 hangs on HEAD responses)."""
    threads = max(1, min(connections, 2))
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s", "--timeout", "10s"]
    cmd += ["-s", str(script)]
    for key, value in (headers or {}).items():
        cmd += ["-H", f"{key}: {value}"]
    out = _run([*cmd, url], timeout=seconds + 60)
    match = re.search(r"^BENCH-JSON (\{.*\})$", out, re.MULTILINE)
    if match is None:
        raise ToolError(f"no summary in wrk output:\n{out}")
    data = json.loads(match.group(1))
    kinds = {
        k: int(data[k]) for k in ("connect_errors", "read_errors", "write_errors", "timeouts", "non_2xx")
    }
    errors = sum(kinds.values())
    duration = data["duration_us"] / 1e6
    return LoadResult(
        requests_per_second=data["requests"] / duration if duration else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        requests=int(data["requests"]),
        errors=int(errors),
        error_kinds=", ".join(f"{kind} {count}" for kind, count in kinds.items() if count),
    )


_HEY_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_HEY_PCT = re.compile(r"^\s+(\d+)% in ([\d.]+) secs", re.MULTILINE)
_HEY_STATUS = re.compile(r"^\s+\[(\d+)\]\s+(\d+) responses", re.MULTILINE)
_HEY_ERRORS = re.compile(r"^\s+\[(\d+)\]\s+(?!\d+ responses)", re.MULTILINE)


def hey(
    url: str, *, connections: int, seconds: int, method: str = "GET", headers: dict[str, str] | None = None
) -> LoadResult:
    """Load with hey (used for HEAD). Its latency percentiles have a resolution of 0.1 ms."""
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(connections), "-m", method, "-t", "10"]
    for key, value in (headers or {}).items():
        cmd += ["-H", f"{key}: {value}"]
    out = _run([*cmd, url], timeout=seconds + 60)
    rps = _HEY_RPS.search(out)
    if rps is None:
        raise ToolError(f"no summary in hey output:\n{out}")
    percentiles = {int(p): float(v) * 1000 for p, v in _HEY_PCT.findall(out)}
    statuses = {int(code): int(count) for code, count in _HEY_STATUS.findall(out)}
    ok = sum(count for code, count in statuses.items() if 200 <= code < 400)
    bad = sum(count for code, count in statuses.items() if not 200 <= code < 400)
    # the error distribution lists "[count]\tmessage" lines after the status codes
    error_section = out.split("Error distribution:", 1)[1] if "Error distribution:" in out else ""
    transport_errors = sum(int(count) for count in _HEY_ERRORS.findall(error_section))
    return LoadResult(
        requests_per_second=float(rps.group(1)),
        p50_ms=percentiles.get(50, float("nan")),
        p99_ms=percentiles.get(99, float("nan")),
        requests=ok + bad,
        errors=bad + transport_errors,
    )


@dataclass(frozen=True)
class Transfer:
    status: int
    bytes: int
    seconds: float

    @property
    def mb_per_second(self) -> float:
        return self.bytes / self.seconds / 1e6 if self.seconds else 0.0


def curl_get(url: str, *, byte_range: tuple[int, int] | None = None, timeout: float = 600) -> Transfer:
    """GET into /dev/null; speed is curl's own %{speed_download}."""
    cmd = ["curl", "-s", "-L", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{speed_download}"]
    if byte_range is not None:
        cmd += ["-H", f"Range: bytes={byte_range[0]}-{byte_range[1]}"]
    out = _run([*cmd, url], timeout=timeout).split()
    status, size, speed = int(out[0]), int(out[1]), float(out[2])
    return Transfer(status, size, size / speed if speed else 0.0)


def curl_put_file(url: str, path: Path, *, timeout: float = 900) -> Transfer:
    """PUT a file as the request body (curl -T); the time is the whole request, until the response."""
    cmd = [
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-X",
        "PUT",
        "-T",
        str(path),
        "-H",
        "Content-Type: application/octet-stream",
        "-H",
        "Expect:",  # no 100-continue round trip: every server gets the body straight away
        "-w",
        "%{http_code} %{size_upload} %{time_total}",
    ]
    out = _run([*cmd, url], timeout=timeout).split()
    return Transfer(int(out[0]), int(out[1]), float(out[2]))


def skopeo_copy(source: str, dest: str, policy: Path, *, timeout: float = 300) -> None:
    _run(
        [
            "skopeo",
            "--policy",
            str(policy),
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--dest-no-creds",
            "--retry-times",
            "0",
            source,
            dest,
        ],
        timeout=timeout,
    )


def tool_versions() -> dict[str, str]:
    probes = {
        "curl": ["curl", "--version"],
        "wrk": ["wrk", "--version"],
        "skopeo": ["skopeo", "--version"],
        "nginx": ["nginx", "-v"],
        "docker-registry": ["docker-registry", "--version"],
    }
    out: dict[str, str] = {}
    for name, cmd in probes.items():
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        text = (done.stdout or done.stderr).strip().splitlines()
        if text:
            out[name] = text[0][:120]
    return out
