"""The dispatcher: fans new events out into deliveries and sends the due ones, a bounded batch per
`run_once`. Any number of dispatchers may run at once (the workers of a server, several servers):
fan-out takes disjoint events and an attempt is sent under a lease, so no attempt goes out twice at
once; a dispatcher that dies mid-attempt leaves a lease that runs out, and the attempt is made again.

Retries: after the n-th failed attempt the next comes `retry_base * 2**(n-1)` seconds later (at most an
hour apart), until `retry_window` has passed since the first attempt; then the delivery has failed."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from shipyard.db.webhooks import Claim, EventStore
from shipyard.domain.events import FAILED, PENDING, SUCCEEDED, AttemptRecord
from shipyard.events import cloudevents, sender, signing

log = logging.getLogger(__name__)

USER_AGENT = "shipyard-webhooks"
MAX_DELAY = 3600.0
# deliveries a sending thread claims at once when it goes on by itself
CLAIM_AHEAD = 4


@dataclass(frozen=True, slots=True)
class DispatchPolicy:
    retry_base: float = 5.0
    retry_window: float = 86400.0
    send: sender.SendPolicy = field(default_factory=sender.SendPolicy)
    # deliveries in flight at once, per dispatcher; events fanned out per run
    concurrency: int = 8
    fan_out_batch: int = 500

    def delay(self, failures: int) -> float:
        return float(min(self.retry_base * 2 ** max(0, failures - 1), MAX_DELAY))

    def next_state(
        self, attempts: int, attempt: AttemptRecord, window_start: datetime
    ) -> tuple[str, datetime]:
        """The state of a delivery after its `attempts`-th attempt, and when to try next."""
        if attempt.status is not None and 200 <= attempt.status < 300:
            return SUCCEEDED, attempt.at
        next_at = attempt.at + timedelta(seconds=self.delay(attempts))
        if next_at > window_start + timedelta(seconds=self.retry_window):
            return FAILED, attempt.at
        return PENDING, next_at


Post = Callable[[str, dict[str, str], bytes, sender.SendPolicy], AttemptRecord]


class Dispatcher:
    def __init__(self, store: EventStore, policy: DispatchPolicy, post: Post = sender.post) -> None:
        self.store = store
        self.policy = policy
        self._post = post
        self._owner = uuid.uuid4().hex
        # a lease outlives the attempts a thread holds, each up to the total timeout, and their records
        self._lease = timedelta(seconds=CLAIM_AHEAD * policy.send.total_timeout + 30)
        self._pool = ThreadPoolExecutor(max_workers=policy.concurrency, thread_name_prefix="shipyard-webhook")
        self._in_flight = 0
        self._closed = False
        self._lock = threading.Lock()

    def run_once(self, *, wait_for_sends: bool = True) -> int:
        """Fan out new events, then send as many due deliveries as there is room for (`concurrency`
        at once); the number started. With `wait_for_sends` it returns when they are done: a bounded
        batch. Without, the sends go on in the dispatcher's threads after it returns, and each thread
        takes the next due delivery when it is done with one, until none is due: a slow receiver then
        holds none of the caller's time, and a busy registry's deliveries keep up with its pushes."""
        self.store.fan_out(self.policy.fan_out_batch)
        with self._lock:
            room = self.policy.concurrency - self._in_flight
        if room <= 0 or self._closed:
            return 0
        claims = self.store.claim_due(room, self._owner, self._lease)
        futures: list[Future[None]] = []
        for claim in claims:
            with self._lock:
                self._in_flight += 1
            futures.append(self._pool.submit(self._deliver, claim, not wait_for_sends))
        if wait_for_sends:
            wait(futures)
        return len(claims)

    def close(self) -> None:
        self._closed = True
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _deliver(self, claim: Claim, keep_going: bool) -> None:
        try:
            queue = [claim]
            while queue:
                current = queue.pop(0)
                try:
                    self._record(current, self.send(current))
                except Exception:
                    log.exception("webhook delivery %s failed unexpectedly", current.delivery_id)
                if not queue and keep_going and not self._closed:
                    # a few at a time: fewer claiming transactions, each lease still covering its wait
                    try:
                        queue = self.store.claim_due(CLAIM_AHEAD, self._owner, self._lease)
                    except Exception:
                        log.exception("claiming webhook deliveries failed")
        finally:
            with self._lock:
                self._in_flight -= 1

    def send(self, claim: Claim) -> AttemptRecord:
        body = cloudevents.structured(claim.event)
        # the same id on every attempt of a delivery, so that a receiver can drop duplicates
        message_id = f"msg_{claim.delivery_id}"
        timestamp = int(time.time())
        headers = {
            "content-type": cloudevents.CONTENT_TYPE,
            "user-agent": USER_AGENT,
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signing.signature(claim.secret, message_id, timestamp, body),
        }
        return self._post(claim.url, headers, body, self.policy.send)

    def _record(self, claim: Claim, attempt: AttemptRecord) -> None:
        window_start = claim.window_start or attempt.at
        state, next_at = self.policy.next_state(claim.attempts + 1, attempt, window_start)
        if attempt.status is None or state != SUCCEEDED:
            log.info(
                "webhook delivery %s attempt %d: %s",
                claim.delivery_id,
                claim.attempts + 1,
                attempt.status or attempt.error,
            )
        self.store.record_attempt(
            claim, self._owner, attempt, state=state, next_attempt_at=next_at, window_start=window_start
        )
