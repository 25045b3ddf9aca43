"""The outbox: every change a user cares about is an event written in the transaction of the change
(none when the change fails), and fan-out turns events into deliveries exactly once, whatever the
order in which events commit and however many dispatchers run. In-process, SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import insert, select, update

from shipyard.db.accounts import AccountStore
from shipyard.db.models import Event, WebhookAttempt, WebhookDelivery
from shipyard.db.webhooks import EventStore, utcnow
from shipyard.domain.events import SUCCEEDED, EventRecord
from tests.api.helpers import (
    encode,
    image_manifest,
    push_blob,
    push_image,
    put_manifest,
    random_bytes,
    unique_repo,
)
from tests.conftest import Registry


def store_of(registry: Registry) -> EventStore:
    assert registry.app is not None
    return EventStore(registry.app.engine)


def make_account(registry: Registry, name: str) -> None:
    AccountStore(registry.app.engine).create_account(name)  # type: ignore[union-attr]


def events_of(registry: Registry, repository: str) -> list[tuple[str, str | None, str | None]]:
    """(type, tag, digest) of the repository's events, oldest first."""
    found = store_of(registry).events_page(1000, None, repository=repository)
    return [(e.type, e.tag, e.digest) for e in reversed(found)]


def newest(registry: Registry, repository: str) -> EventRecord:
    return store_of(registry).events_page(1, None, repository=repository)[0]


def test_a_push_records_the_repository_the_manifest_and_its_tag(app_registry: Registry) -> None:
    repo = unique_repo("ev")
    image = push_image(app_registry.client, repo, "v1")
    assert events_of(app_registry, repo) == [
        ("repository.created", None, None),
        ("manifest.pushed", None, image.digest),
        ("tag.created", "v1", image.digest),
    ]
    pushed = store_of(app_registry).events_page(10, None, repository=repo, type="manifest.pushed")[0]
    assert pushed.account == repo.split("/")[0]
    assert pushed.media_type == image.media_type
    assert pushed.size == len(image.body)


def test_moving_a_tag_names_its_previous_manifest_and_a_repush_records_nothing(
    app_registry: Registry,
) -> None:
    repo = unique_repo("ev")
    first = push_image(app_registry.client, repo, "latest")
    second = push_image(app_registry.client, repo, "latest")
    assert events_of(app_registry, repo)[3:] == [
        ("manifest.pushed", None, second.digest),
        ("tag.moved", "latest", second.digest),
    ]
    assert newest(app_registry, repo).detail == {"previous": first.digest}
    # the same manifest under the same tag again changes nothing, and records nothing
    count = len(events_of(app_registry, repo))
    assert put_manifest(app_registry.client, repo, "latest", second.body).status_code == 201
    assert len(events_of(app_registry, repo)) == count
    # a new tag for a manifest the repository has is a tag event only
    assert put_manifest(app_registry.client, repo, "stable", second.body).status_code == 201
    assert events_of(app_registry, repo)[-1] == ("tag.created", "stable", second.digest)


def test_a_refused_push_records_nothing(app_registry: Registry) -> None:
    repo = unique_repo("ev")
    config = encode({"architecture": "amd64", "os": "linux"})
    push_blob(app_registry.client, repo, config)
    before = events_of(app_registry, repo)
    body = encode(image_manifest(config, [random_bytes(64)]))  # the layer was never pushed
    assert put_manifest(app_registry.client, repo, "v1", body).status_code == 400
    assert events_of(app_registry, repo) == before


def test_deletes_and_mounts_are_events(app_registry: Registry) -> None:
    client = app_registry.client
    repo = unique_repo("ev")
    image = push_image(client, repo, "a")
    assert put_manifest(client, repo, "b", image.body).status_code == 201
    assert client.delete(f"/v2/{repo}/manifests/a").status_code == 202
    assert events_of(app_registry, repo)[-1] == ("tag.deleted", "a", image.digest)
    # deleting a tag that is not there is no event
    count = len(events_of(app_registry, repo))
    assert client.delete(f"/v2/{repo}/manifests/a").status_code == 404
    assert len(events_of(app_registry, repo)) == count
    assert client.delete(f"/v2/{repo}/manifests/{image.digest}").status_code == 202
    assert events_of(app_registry, repo)[-2:] == [
        ("tag.deleted", "b", image.digest),
        ("manifest.deleted", None, image.digest),
    ]

    target = unique_repo("ev")
    layer = push_blob(client, repo, random_bytes(300))
    r = client.post(f"/v2/{target}/blobs/uploads/", params={"mount": layer, "from": repo})
    assert r.status_code == 201, r.text
    assert events_of(app_registry, target) == [
        ("repository.created", None, None),
        ("blob.mounted", None, layer),
    ]
    assert newest(app_registry, target).detail == {"from": repo}
    # mounting it again links nothing new
    assert (
        client.post(f"/v2/{target}/blobs/uploads/", params={"mount": layer, "from": repo}).status_code == 201
    )
    assert len(events_of(app_registry, target)) == 2

    metadata = app_registry.app.registry.metadata  # type: ignore[union-attr]
    assert metadata.delete_repository(target)
    assert events_of(app_registry, target)[-1] == ("repository.deleted", None, None)
    empty = unique_repo("ev")
    assert metadata.create_repository(empty)
    assert events_of(app_registry, empty) == [("repository.created", None, None)]


def test_fan_out_matches_types_and_patterns_and_marks_events_once(app_registry: Registry) -> None:
    store = store_of(app_registry)
    store.fan_out(10_000)  # what earlier tests left
    account = "fan"
    make_account(app_registry, account)
    make_account(app_registry, "elsewhere")
    every = store.create_webhook(account, "http://example.com/a", [], [], "whsec_AAAA", None)
    web = store.create_webhook(
        account, "http://example.com/b", ["tag.created"], ["web/*"], "whsec_AAAA", None
    )
    other = store.create_webhook("elsewhere", "http://example.com/c", [], [], "whsec_AAAA", None)
    push_image(app_registry.client, f"{account}/web/app", "v1")
    push_image(app_registry.client, f"{account}/web/deep/app", "v1")  # * stays within one component
    push_image(app_registry.client, f"{account}/api", "v1")
    taken = store.fan_out(10_000)
    assert taken == 9
    assert store.fan_out(10_000) == 0
    assert store.pending_events() == 0
    with app_registry.app.engine.connect() as conn:  # type: ignore[union-attr]
        rows = conn.execute(select(WebhookDelivery.webhook_id, WebhookDelivery.event_id)).all()
    by_webhook: dict[int, int] = {}
    for webhook_id, _ in rows:
        by_webhook[webhook_id] = by_webhook.get(webhook_id, 0) + 1
    assert by_webhook.get(every.id) == 9
    assert by_webhook.get(web.id) == 1
    assert other.id not in by_webhook


def test_concurrent_dispatchers_take_each_event_once_and_each_attempt_once(app_registry: Registry) -> None:
    store = store_of(app_registry)
    store.fan_out(10_000)
    engine = app_registry.app.engine  # type: ignore[union-attr]
    make_account(app_registry, "race")
    hook = store.create_webhook("race", "http://example.com/", [], [], "whsec_AAAA", None)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            insert(Event),
            [{"at": now, "type": "tag.created", "account": "race", "tag": str(i)} for i in range(200)],
        )
    errors: list[BaseException] = []

    def dispatch() -> None:
        try:
            while store.fan_out(7):
                pass
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=dispatch) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.pending_events() == 0
    assert len(store.deliveries_page(hook.id, 1000, None)) == 200

    claimed: list[list[int]] = [[], []]

    def claim(slot: int) -> None:
        while batch := store.claim_due(9, f"owner-{slot}", timedelta(minutes=5)):
            claimed[slot] += [c.delivery_id for c in batch if c.webhook_id == hook.id]

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not set(claimed[0]) & set(claimed[1])
    assert len(claimed[0]) + len(claimed[1]) == 200


def test_an_event_that_commits_late_with_a_lower_id_is_not_lost(app_registry: Registry) -> None:
    if app_registry.database != "postgresql":
        pytest.skip("SQLite's single writer commits in id order")
    store = store_of(app_registry)
    store.fan_out(10_000)
    engine = app_registry.app.engine  # type: ignore[union-attr]
    make_account(app_registry, "late")
    hook = store.create_webhook("late", "http://example.com/", [], [], "whsec_AAAA", None)
    slow = engine.connect()
    slow_tx = slow.begin()
    early = slow.execute(
        insert(Event).values(at=utcnow(), type="tag.created", account="late", tag="early").returning(Event.id)
    ).scalar_one()
    with engine.begin() as conn:
        later = conn.execute(
            insert(Event)
            .values(at=utcnow(), type="tag.created", account="late", tag="later")
            .returning(Event.id)
        ).scalar_one()
    assert early < later
    assert store.fan_out(100) == 1  # the later one; the early one is not committed yet
    slow_tx.commit()
    slow.close()
    assert store.fan_out(100) == 1
    assert sorted(d.event_id for d in store.deliveries_page(hook.id, 10, None)) == [early, later]


def test_a_new_account_of_a_deleted_ones_name_inherits_none_of_its_webhooks(app_registry: Registry) -> None:
    store = store_of(app_registry)
    store.fan_out(10_000)
    accounts = AccountStore(app_registry.app.engine)  # type: ignore[union-attr]
    accounts.create_account("reborn")
    old = store.create_webhook("reborn", "http://example.com/", [], [], "whsec_AAAA", None)
    accounts.delete_account("reborn")
    accounts.create_account("reborn")
    assert store.webhooks_page("reborn", 10, None) == []
    assert store.get_webhook("reborn", old.id) is None
    assert not store.delete_webhook("reborn", old.id)
    push_image(app_registry.client, "reborn/app", "v1")
    assert store.fan_out(10_000) == 3
    assert store.deliveries_page(old.id, 10, None) == []


def test_webhook_and_delivery_ids_are_never_reused(app_registry: Registry) -> None:
    """A delivery's id is its message id, which receivers may remember to drop duplicates."""
    store = store_of(app_registry)
    store.fan_out(10_000)
    make_account(app_registry, "ids")
    first = store.create_webhook("ids", "http://example.com/", [], [], "whsec_AAAA", None)
    push_image(app_registry.client, "ids/app", "v1")
    store.fan_out(10_000)
    delivered = max(d.id for d in store.deliveries_page(first.id, 10, None))
    assert store.delete_webhook("ids", first.id)
    second = store.create_webhook("ids", "http://example.com/", [], [], "whsec_AAAA", None)
    assert second.id > first.id
    push_image(app_registry.client, "ids/app", "v2")
    store.fan_out(10_000)
    assert min(d.id for d in store.deliveries_page(second.id, 10, None)) > delivered


def test_pruning_deletes_old_finished_events_with_their_deliveries(app_registry: Registry) -> None:
    store = store_of(app_registry)
    store.fan_out(10_000)  # what earlier tests left
    engine = app_registry.app.engine  # type: ignore[union-attr]
    make_account(app_registry, "prune")
    store.create_webhook("prune", "http://example.com/", [], [], "whsec_AAAA", None)
    old, recent = utcnow() - timedelta(days=40), utcnow()
    with engine.begin() as conn:
        ids = [
            conn.execute(
                insert(Event).values(at=at, type="tag.created", account="prune", tag=tag).returning(Event.id)
            ).scalar_one()
            for at, tag in ((old, "sent"), (old, "also-sent"), (old, "still-trying"), (recent, "recent"))
        ]
    assert store.fan_out(10_000) == 4
    sent, also_sent, still_trying, young = ids
    with engine.begin() as conn:
        conn.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.event_id.in_([sent, also_sent, young]))
            .values(state=SUCCEEDED)
        )
        delivery = conn.execute(
            select(WebhookDelivery.id).where(WebhookDelivery.event_id == sent)
        ).scalar_one()
        conn.execute(insert(WebhookAttempt).values(delivery_id=delivery, at=old, status=200, duration_ms=3))
        # an old event not fanned out yet is kept too
        undispatched = conn.execute(
            insert(Event).values(at=old, type="tag.created", account="prune", tag="late").returning(Event.id)
        ).scalar_one()
    assert store.prune(timedelta(days=30), batch=1) == 2
    with engine.connect() as conn:
        left = set(conn.execute(select(Event.id).where(Event.account == "prune")).scalars())
        delivered = set(conn.execute(select(WebhookDelivery.event_id)).scalars())
        attempts = conn.execute(select(WebhookAttempt.id).where(WebhookAttempt.delivery_id == delivery)).all()
    assert left == {still_trying, young, undispatched}
    assert sent not in delivered and also_sent not in delivered and still_trying in delivered
    assert attempts == []
    assert store.prune(timedelta(days=30)) == 0
