"""The outbox's readers in SQL: the events page, webhooks, their deliveries and attempts, and the
dispatcher's transactions (fan-out, claiming due deliveries under a lease, recording attempts)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, delete, exists, false, func, insert, or_, select, update

from shipyard.db.engine import read_transaction, write_transaction
from shipyard.db.models import Account, Event, Webhook, WebhookAttempt, WebhookDelivery
from shipyard.domain.events import (
    PENDING,
    AttemptRecord,
    DeliveryRecord,
    EventRecord,
    WebhookRecord,
)
from shipyard.domain.management import Listing

# the attempts a delivery's log shows (the newest)
ATTEMPT_LOG = 20


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every stored time is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Claim:
    """A due delivery a dispatcher holds the lease of: what to send, where, and how to sign it."""

    delivery_id: int
    attempts: int
    window_start: datetime | None
    event: EventRecord
    webhook_id: int
    url: str
    secret: str


_EVENT_COLUMNS = (
    Event.id,
    Event.at,
    Event.type,
    Event.account,
    Event.repository,
    Event.digest,
    Event.tag,
    Event.media_type,
    Event.size,
    Event.detail,
)


def _event(row: Any) -> EventRecord:
    return EventRecord(
        id=int(row.id),
        at=_aware(row.at),
        type=row.type,
        account=row.account,
        repository=row.repository,
        digest=row.digest,
        tag=row.tag,
        media_type=row.media_type,
        size=None if row.size is None else int(row.size),
        detail=json.loads(row.detail) if row.detail else None,
    )


def _split(text: str) -> tuple[str, ...]:
    return tuple(item for item in text.split(",") if item)


def _webhook(row: Any) -> WebhookRecord:
    return WebhookRecord(
        id=int(row.id),
        account=row.account,
        url=row.url,
        event_types=_split(row.event_types),
        repositories=_split(row.repositories),
        description=row.description,
        created_at=_aware(row.created_at),
    )


# A webhook belongs to the account of its name that existed when it was made: once that account is
# deleted, a new account of the same name neither sees the webhook nor has its events sent to it.
_LIVE = exists(
    select(Account.id).where(Account.name == Webhook.account, Account.created_at <= Webhook.created_at)
)


def _listing(items: Sequence[Any], limit: int, key: Any) -> Listing[Any]:
    page = list(items[:limit])
    return Listing(page, key(page[-1]) if len(items) > limit and page else None)


class EventStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._postgres = engine.dialect.name == "postgresql"

    # -- events --------------------------------------------------------------------------------

    def events_page(
        self,
        limit: int,
        last: int | None,
        *,
        account: str | None = None,
        repository: str | None = None,
        type: str | None = None,
        since: datetime | None = None,
    ) -> Listing[EventRecord]:
        """Events newest first, those before event `last`, filtered by account, repository, type and
        time (`since`: at or after it)."""
        query = select(*_EVENT_COLUMNS)
        if since is not None:
            query = query.where(Event.at >= since)
        if account is not None:
            query = query.where(Event.account == account)
        if repository is not None:
            query = query.where(Event.repository == repository)
        if type is not None:
            query = query.where(Event.type == type)
        if last is not None:
            query = query.where(Event.id < last)
        with read_transaction(self.engine) as conn:
            rows = conn.execute(query.order_by(Event.id.desc()).limit(limit + 1)).all()
        return _listing([_event(r) for r in rows], limit, lambda e: str(e.id))

    # -- webhooks ------------------------------------------------------------------------------

    _WEBHOOK_COLUMNS = (
        Webhook.id,
        Webhook.account,
        Webhook.url,
        Webhook.event_types,
        Webhook.repositories,
        Webhook.description,
        Webhook.created_at,
    )

    def create_webhook(
        self,
        account: str,
        url: str,
        event_types: Iterable[str],
        repositories: Iterable[str],
        secret: str,
        description: str | None,
    ) -> WebhookRecord:
        now = utcnow()
        with write_transaction(self.engine) as conn:
            webhook_id = conn.execute(
                insert(Webhook)
                .values(
                    account=account,
                    url=url,
                    event_types=",".join(event_types),
                    repositories=",".join(repositories),
                    secret=secret,
                    description=description,
                    created_at=now,
                )
                .returning(Webhook.id)
            ).scalar_one()
            row = conn.execute(select(*self._WEBHOOK_COLUMNS).where(Webhook.id == webhook_id)).one()
        return _webhook(row)

    def webhooks_page(self, account: str, limit: int, last: int | None) -> Listing[WebhookRecord]:
        query = select(*self._WEBHOOK_COLUMNS).where(Webhook.account == account, _LIVE)
        if last is not None:
            query = query.where(Webhook.id > last)
        with read_transaction(self.engine) as conn:
            rows = conn.execute(query.order_by(Webhook.id).limit(limit + 1)).all()
        return _listing([_webhook(r) for r in rows], limit, lambda w: str(w.id))

    def get_webhook(self, account: str, webhook_id: int) -> WebhookRecord | None:
        with read_transaction(self.engine) as conn:
            row = conn.execute(
                select(*self._WEBHOOK_COLUMNS).where(
                    Webhook.id == webhook_id, Webhook.account == account, _LIVE
                )
            ).first()
        return None if row is None else _webhook(row)

    def delete_webhook(self, account: str, webhook_id: int) -> bool:
        with write_transaction(self.engine) as conn:
            found = conn.execute(
                select(Webhook.id).where(Webhook.id == webhook_id, Webhook.account == account, _LIVE)
            ).scalar()
            if found is None:
                return False
            # explicit deletes, as elsewhere: no reliance on SQLite's foreign key enforcement
            deliveries = select(WebhookDelivery.id).where(WebhookDelivery.webhook_id == webhook_id)
            conn.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(deliveries)))
            conn.execute(delete(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id))
            conn.execute(delete(Webhook).where(Webhook.id == webhook_id))
            return True

    # -- deliveries ----------------------------------------------------------------------------

    def delivery(self, webhook_id: int, delivery_id: int) -> DeliveryRecord | None:
        found = self.deliveries_page(webhook_id, 1, None, only=delivery_id)
        return found[0] if found else None

    def deliveries_page(
        self, webhook_id: int, limit: int, last: int | None, *, only: int | None = None
    ) -> Listing[DeliveryRecord]:
        """A webhook's deliveries newest first, each with its latest attempts."""
        query = (
            select(
                WebhookDelivery.id,
                WebhookDelivery.webhook_id,
                WebhookDelivery.event_id,
                Event.type,
                WebhookDelivery.state,
                WebhookDelivery.attempts,
                WebhookDelivery.next_attempt_at,
                WebhookDelivery.last_status,
                WebhookDelivery.created_at,
            )
            .join(Event, Event.id == WebhookDelivery.event_id)
            .where(WebhookDelivery.webhook_id == webhook_id)
        )
        if last is not None:
            query = query.where(WebhookDelivery.id < last)
        if only is not None:
            query = query.where(WebhookDelivery.id == only)
        with read_transaction(self.engine) as conn:
            rows = conn.execute(query.order_by(WebhookDelivery.id.desc()).limit(limit + 1)).all()
            ids = [int(r.id) for r in rows[:limit]]
            logs: dict[int, list[AttemptRecord]] = {i: [] for i in ids}
            if ids:
                attempts = conn.execute(
                    select(
                        WebhookAttempt.delivery_id,
                        WebhookAttempt.at,
                        WebhookAttempt.status,
                        WebhookAttempt.error,
                        WebhookAttempt.duration_ms,
                        WebhookAttempt.response,
                    )
                    .where(WebhookAttempt.delivery_id.in_(ids))
                    .order_by(WebhookAttempt.id.desc())
                ).all()
                for a in attempts:
                    log = logs[int(a.delivery_id)]
                    if len(log) < ATTEMPT_LOG:
                        log.append(
                            AttemptRecord(_aware(a.at), a.status, a.error, int(a.duration_ms), a.response)
                        )
        records = [
            DeliveryRecord(
                id=int(r.id),
                webhook_id=int(r.webhook_id),
                event_id=int(r.event_id),
                event_type=r.type,
                state=r.state,
                attempts=int(r.attempts),
                next_attempt_at=_aware(r.next_attempt_at) if r.state == PENDING else None,
                last_status=r.last_status,
                created_at=_aware(r.created_at),
                log=tuple(logs.get(int(r.id), ())),
            )
            for r in rows
        ]
        return _listing(records, limit, lambda d: str(d.id))

    def redeliver(self, webhook_id: int, delivery_id: int) -> bool:
        """Queue a new attempt now, with a new retry window; False when there is no such delivery."""
        with write_transaction(self.engine) as conn:
            result = conn.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id == delivery_id, WebhookDelivery.webhook_id == webhook_id)
                .values(state=PENDING, next_attempt_at=utcnow(), window_start=None)
            )
            return bool(result.rowcount)

    # -- the dispatcher ------------------------------------------------------------------------

    def fan_out(self, limit: int) -> int:
        """Turn up to `limit` undispatched events into deliveries to the webhooks that want them, and
        mark them dispatched, in one transaction. Events are taken by "not yet dispatched", not by "id
        after the last seen": an event that commits late with a lower id is taken all the same.
        Dispatchers running at once take disjoint events (PostgreSQL: SKIP LOCKED; SQLite: its write
        lock). The number of events taken."""
        now = utcnow()
        undispatched = select(Event.id).where(Event.dispatched == false()).limit(1)
        # a look first: an idle dispatcher never takes SQLite's write lock
        with read_transaction(self.engine) as conn:
            if conn.execute(undispatched).first() is None:
                return 0
        with write_transaction(self.engine) as conn:
            rows = conn.execute(
                select(*_EVENT_COLUMNS)
                .where(Event.dispatched == false())
                .order_by(Event.id)
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            if not rows:
                return 0
            events = [_event(r) for r in rows]
            accounts = sorted({e.account for e in events})
            webhooks = [
                _webhook(r)
                for r in conn.execute(
                    select(*self._WEBHOOK_COLUMNS).where(Webhook.account.in_(accounts), _LIVE)
                )
            ]
            deliveries = [
                {
                    "webhook_id": w.id,
                    "event_id": e.id,
                    "state": PENDING,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                }
                for e in events
                for w in webhooks
                if w.matches(e)
            ]
            if deliveries:
                conn.execute(insert(WebhookDelivery), deliveries)
            conn.execute(update(Event).where(Event.id.in_([e.id for e in events])).values(dispatched=True))
        return len(events)

    def claim_due(self, limit: int, owner: str, lease: timedelta) -> list[Claim]:
        """Take the lease of up to `limit` pending deliveries whose attempt is due and whose lease (if
        any) has run out: no other dispatcher sends them until the lease ends or the attempt is
        recorded."""
        now = utcnow()
        due = select(WebhookDelivery.id).where(
            WebhookDelivery.state == PENDING,
            WebhookDelivery.next_attempt_at <= now,
            or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < now),
        )
        with read_transaction(self.engine) as conn:
            if conn.execute(due.limit(1)).first() is None:
                return []
        with write_transaction(self.engine) as conn:
            ids = list(
                conn.execute(
                    due.order_by(WebhookDelivery.next_attempt_at)
                    .limit(limit)
                    .with_for_update(skip_locked=True)
                ).scalars()
            )
            if not ids:
                return []
            conn.execute(
                update(WebhookDelivery)
                .where(WebhookDelivery.id.in_(ids))
                .values(lease_until=now + lease, lease_owner=owner)
            )
            rows = conn.execute(
                select(
                    WebhookDelivery.id.label("delivery_id"),
                    WebhookDelivery.attempts,
                    WebhookDelivery.window_start,
                    Webhook.id.label("webhook_id"),
                    Webhook.url,
                    Webhook.secret,
                    *_EVENT_COLUMNS,
                )
                .join(Webhook, Webhook.id == WebhookDelivery.webhook_id)
                .join(Event, Event.id == WebhookDelivery.event_id)
                .where(WebhookDelivery.id.in_(ids))
                .order_by(WebhookDelivery.next_attempt_at)
            ).all()
        return [
            Claim(
                delivery_id=int(r.delivery_id),
                attempts=int(r.attempts),
                window_start=None if r.window_start is None else _aware(r.window_start),
                event=_event(r),
                webhook_id=int(r.webhook_id),
                url=r.url,
                secret=r.secret,
            )
            for r in rows
        ]

    def record_attempt(
        self,
        claim: Claim,
        owner: str,
        attempt: AttemptRecord,
        *,
        state: str,
        next_attempt_at: datetime,
        window_start: datetime,
    ) -> bool:
        """Log an attempt and move the delivery on, if `owner` still holds its lease (else a dispatcher
        that took the expired lease over records its own attempt instead)."""
        with write_transaction(self.engine) as conn:
            moved = conn.execute(
                update(WebhookDelivery)
                .where(and_(WebhookDelivery.id == claim.delivery_id, WebhookDelivery.lease_owner == owner))
                .values(
                    state=state,
                    attempts=WebhookDelivery.attempts + 1,
                    next_attempt_at=next_attempt_at,
                    window_start=window_start,
                    lease_until=None,
                    lease_owner=None,
                    last_status=attempt.status,
                )
            )
            if not moved.rowcount:
                return False
            conn.execute(
                insert(WebhookAttempt).values(
                    delivery_id=claim.delivery_id,
                    at=attempt.at,
                    status=attempt.status,
                    error=attempt.error,
                    duration_ms=attempt.duration_ms,
                    response=attempt.response,
                )
            )
            return True

    def pending_events(self) -> int:
        """Events not yet fanned out (for tests and metrics)."""
        with read_transaction(self.engine) as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(Event).where(Event.dispatched == false())
                ).scalar_one()
            )

    def prune(self, older_than: timedelta, *, batch: int = 1000) -> int:
        """Delete the events older than `older_than` that are dispatched and have no delivery still
        pending, with their deliveries and attempts (explicitly: SQLite cascades only with foreign keys
        on), in transactions of `batch` events. The number of events deleted."""
        cutoff = utcnow() - older_than
        pending = exists().where(WebhookDelivery.event_id == Event.id, WebhookDelivery.state == PENDING)
        done = 0
        while True:
            with write_transaction(self.engine) as conn:
                ids = list(
                    conn.execute(
                        select(Event.id)
                        .where(Event.at < cutoff, Event.dispatched.is_(True), ~pending)
                        .order_by(Event.id)
                        .limit(batch)
                    ).scalars()
                )
                if not ids:
                    return done
                deliveries = select(WebhookDelivery.id).where(WebhookDelivery.event_id.in_(ids))
                conn.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(deliveries)))
                conn.execute(delete(WebhookDelivery).where(WebhookDelivery.event_id.in_(ids)))
                conn.execute(delete(Event).where(Event.id.in_(ids)))
                done += len(ids)
