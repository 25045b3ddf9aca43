"""The login limiter, the hashing pool and the failed-auth aggregation, as logic (fake clocks)."""

from __future__ import annotations

import threading
import time

import pytest

from shipyard.auth.hashing import HashingBusy, HashingPool
from shipyard.auth.limiter import LoginLimiter, LoginThrottled
from shipyard.services.failed_auth import FailedAuthAudit


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def limiter(clock: Clock, **kw: int) -> LoginLimiter:
    kw.setdefault("max_source_failures", 100)
    kw.setdefault("max_entries", 1000)
    return LoginLimiter(kw.pop("max_failures", 3), 60.0, clock=clock, **kw)


def test_a_pair_is_blocked_after_its_failures_until_the_first_slides_out() -> None:
    clock = Clock()
    lim = limiter(clock)
    for step in range(3):
        lim.check("u", "s")
        lim.fail("u", "s")
        clock.now += 10 if step == 0 else 1
    with pytest.raises(LoginThrottled) as caught:
        lim.check("u", "s")
    # failures at 1000, 1010, 1011; now 1012: the first leaves the window at 1060
    assert caught.value.retry_after == 48
    lim.check("u", "other-source")
    lim.check("other-user", "s")
    clock.now = 1060.0
    lim.check("u", "s")  # one more try, the other two still count
    lim.fail("u", "s")
    with pytest.raises(LoginThrottled):
        lim.check("u", "s")


def test_a_source_is_blocked_after_failures_for_any_logins() -> None:
    clock = Clock()
    lim = limiter(clock, max_source_failures=5)
    for n in range(5):
        lim.check(f"user-{n}", "s")
        lim.fail(f"user-{n}", "s")
    with pytest.raises(LoginThrottled) as caught:
        lim.check("someone-new", "s")
    assert caught.value.retry_after == 60
    lim.check("someone-new", "elsewhere")


def test_a_success_clears_its_pair_but_not_the_sources_count() -> None:
    clock = Clock()
    lim = limiter(clock, max_failures=2, max_source_failures=3)
    lim.fail("u", "s")
    lim.fail("u", "s")
    lim.succeed("u", "s")
    lim.check("u", "s")
    lim.fail("v", "s")
    with pytest.raises(LoginThrottled):
        lim.check("w", "s")


def test_memory_is_bounded_by_forgetting_the_least_recent_not_everyone() -> None:
    clock = Clock()
    lim = limiter(clock, max_failures=1, max_source_failures=1_000_000, max_entries=100)
    lim.fail("victim-of-a-guess", "attacker")
    clock.now += 1
    for n in range(1000):
        lim.fail(f"spray-{n}", f"10.0.{n // 250}.{n % 250}")
        if n == 0:
            # the first sprayed pair has failed after the guessed one, and is younger
            clock.now += 1
    assert len(lim._pairs) == 100
    assert len(lim._sources) <= 100
    # the oldest went first; the latest offenders are all still blocked
    lim.check("victim-of-a-guess", "attacker")
    for n in range(900, 1000):
        with pytest.raises(LoginThrottled):
            lim.check(f"spray-{n}", f"10.0.{n // 250}.{n % 250}")


def test_a_pair_failing_again_is_kept_over_quieter_ones() -> None:
    clock = Clock()
    lim = limiter(clock, max_failures=1, max_entries=3)
    for login in ("a", "b", "c"):
        lim.fail(login, "s1")
        clock.now += 1
    lim.fail("a", "s1")  # a is now the most recent
    lim.fail("d", "s1")  # evicts b, the least recent
    with pytest.raises(LoginThrottled):
        lim.check("a", "s1")
    lim_pairs = list(lim._pairs._failures)
    assert ("b", "s1") not in lim_pairs
    assert lim_pairs == [("c", "s1"), ("a", "s1"), ("d", "s1")]


def test_expired_failures_are_dropped_when_looked_at() -> None:
    clock = Clock()
    lim = limiter(clock, max_failures=1)
    lim.fail("u", "s")
    clock.now += 61
    lim.check("u", "s")
    assert len(lim._pairs) == 0


def test_the_hashing_pool_refuses_at_once_past_its_cap() -> None:
    pool = HashingPool(workers=1, max_waiting=1)
    release = threading.Event()
    started = threading.Event()
    results: list[str] = []

    def slow() -> str:
        started.set()
        release.wait(10)
        return "done"

    runners = [threading.Thread(target=lambda: results.append(pool.run(slow))) for _ in range(2)]
    try:
        runners[0].start()
        assert started.wait(10)
        runners[1].start()  # waits for the one thread
        deadline = time.monotonic() + 10
        while pool._slots._value > 0 and time.monotonic() < deadline:  # type: ignore[attr-defined]
            time.sleep(0.01)
        began = time.monotonic()
        with pytest.raises(HashingBusy) as caught:
            pool.run(slow)
        assert time.monotonic() - began < 0.5  # refused, not queued
        assert caught.value.retry_after == 1
        assert caught.value.code == "TOOMANYREQUESTS"
    finally:
        release.set()
        for runner in runners:
            runner.join(10)
        pool.shutdown()
    assert results == ["done", "done"]


Row = tuple[str, str | None, str | None, str | None, str]


def test_failed_auth_is_written_once_per_window_then_summed() -> None:
    rows: list[Row] = []
    audit = FailedAuthAudit(lambda *row: rows.append(row), 0.3)
    for n in range(50):
        audit.record(
            "token-rejected", principal=None, source="s", action=None, reason=f"unknown key id: 'k{n}'"
        )
    audit.record("token-rejected", principal=None, source="t", action=None, reason="expired")
    audit.record("login-failed", principal="x" * 1000, source="s", action="login", reason="unknown principal")
    assert [r[0] for r in rows] == ["token-rejected", "token-rejected", "login-failed"]
    assert rows[0][4] == "unknown key id: 'k0'"
    assert rows[2][1] == "x" * 128
    audit.flush()  # the window has not ended: nothing more
    assert len(rows) == 3
    time.sleep(0.35)
    audit.flush()
    assert len(rows) == 4
    assert rows[3][0] == "token-rejected"
    assert rows[3][2] == "s"
    assert rows[3][4] == "49 more within 0.3 s, the last: unknown key id: 'k49'"


def test_a_new_window_writes_the_last_ones_sum_and_its_first_event() -> None:
    rows: list[Row] = []
    audit = FailedAuthAudit(lambda *row: rows.append(row), 0.2)
    for _ in range(3):
        audit.record("login-failed", principal="u", source="s", action="login", reason="bad secret")
    time.sleep(0.25)
    audit.record("login-failed", principal="u", source="s", action="login", reason="bad secret")
    assert [r[4] for r in rows] == ["bad secret", "2 more within 0.2 s, the last: bad secret", "bad secret"]


def test_the_aggregation_holds_a_bounded_number_of_keys() -> None:
    rows: list[Row] = []
    audit = FailedAuthAudit(lambda *row: rows.append(row), 60, max_keys=10)
    for n in range(100):
        audit.record("login-failed", principal="u", source=f"10.0.0.{n}", action="login", reason="bad secret")
    assert len(audit._tallies) <= 11
    assert len(rows) == 10
    audit.flush(everything=True)
    assert rows[-1][4].startswith("90 more within 60 s")


def test_window_zero_writes_each_event() -> None:
    rows: list[Row] = []
    audit = FailedAuthAudit(lambda *row: rows.append(row), 0)
    for _ in range(5):
        audit.record("login-failed", principal="u", source="s", action="login", reason="bad secret")
    assert len(rows) == 5
