"""Job handlers that `shipyard worker --extra-handler` loads in the worker tests: they leave a trace
of each run in a file the test reads."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any


def _trace(payload: dict[str, Any], event: str) -> None:
    with Path(payload["trace"]).open("a") as trace:
        trace.write(f"{event} {payload['name']} {os.getpid()}\n")
        trace.flush()
        os.fsync(trace.fileno())


def slow(payload: dict[str, Any]) -> None:
    """Runs for payload["seconds"]; writes `start` before and `done` after."""
    _trace(payload, "start")
    time.sleep(float(payload["seconds"]))
    _trace(payload, "done")
