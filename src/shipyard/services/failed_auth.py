"""Failed-authentication audit events, aggregated per source and kind of reason over a short window,
so that a flood of garbage tokens or passwords writes a row and a log line per window, not per try."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# what is stored and logged of a login name or a reason: a client may send any length
MAX_NAME = 128
MAX_REASON = 512

Writer = Callable[[str, str | None, str | None, str | None, str], None]
_Key = tuple[str, str, str]


def truncate(value: str | None, limit: int = MAX_NAME) -> str | None:
    return None if value is None else value[:limit]


@dataclass
class _Tally:
    started: float
    count: int
    principal: str | None
    action: str | None
    reason: str


class FailedAuthAudit:
    """The first event of a (event, source, kind) key in a window is written at once, so that a
    single failure shows up without delay; the others are counted and written as one summary event
    when the window has ended (at the key's next event, or by `flush`). The kind is the reason up to
    its first colon: the rest (a key id, an issuer) is the client's and would make every key new.
    With `window` 0 every event is written."""

    def __init__(self, write: Writer, window: float, *, max_keys: int = 10_000) -> None:
        self.write = write
        self.window = window
        self.max_keys = max_keys
        self._tallies: dict[_Key, _Tally] = {}
        self._lock = threading.Lock()

    def record(
        self, event: str, *, principal: str | None, source: str | None, action: str | None, reason: str
    ) -> None:
        principal, reason = truncate(principal), reason[:MAX_REASON]
        if self.window <= 0:
            self.write(event, principal, source, action, reason)
            return
        now = time.monotonic()
        key = (event, source or "-", reason.split(":", 1)[0])
        due: list[tuple[_Key, _Tally]] = []
        write_now = False
        with self._lock:
            tally = self._tallies.get(key)
            if tally is not None and now - tally.started < self.window:
                tally.count += 1
                tally.principal, tally.action, tally.reason = principal, action, reason
            else:
                if tally is not None:
                    due.append((key, self._tallies.pop(key)))
                if len(self._tallies) >= self.max_keys:
                    due.extend(self._take_ended(now))
                if len(self._tallies) < self.max_keys:
                    self._tallies[key] = _Tally(now, 0, principal, action, reason)
                    write_now = True
                else:
                    # every slot holds a live window: count it under the key's event from anywhere
                    spill = self._tallies.setdefault(
                        (event, "*", "*"), _Tally(now, 0, principal, action, reason)
                    )
                    spill.count += 1
        for ended_key, ended in due:
            self._write_summary(ended_key, ended)
        if write_now:
            self.write(event, principal, source, action, reason)

    def flush(self, *, everything: bool = False) -> None:
        """Write the summaries of the windows that have ended (all of them with `everything`)."""
        with self._lock:
            due = self._take_ended(None if everything else time.monotonic())
        for key, tally in due:
            self._write_summary(key, tally)

    def _take_ended(self, now: float | None) -> list[tuple[_Key, _Tally]]:
        ended = [k for k, t in self._tallies.items() if now is None or now - t.started >= self.window]
        return [(k, self._tallies.pop(k)) for k in ended]

    def _write_summary(self, key: _Key, tally: _Tally) -> None:
        if tally.count == 0:
            return
        event, source, _ = key
        reason = f"{tally.count} more within {self.window:g} s, the last: {tally.reason}"
        self.write(event, tally.principal, None if source == "-" else source, tally.action, reason)
