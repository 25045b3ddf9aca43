"""Events and webhooks as the management API offers them, authorized here: an account's admins see
and manage their account's events, webhooks and deliveries, registry administrators every
account's; anyone else learns nothing, not even whether the account exists. Webhook changes are
audited; a webhook's secret is answered once, at creation, and never logged."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from shipyard.db.accounts import AccountStore, Conflict, NotFound
from shipyard.db.webhooks import EventStore
from shipyard.domain.accounts import AccountRecord, PrincipalRecord, is_superuser
from shipyard.domain.errors import Denied, PaginationInvalid, RequestInvalid
from shipyard.domain.events import EVENT_TYPES, DeliveryRecord, EventRecord, WebhookRecord
from shipyard.domain.management import MAX_PAGE, Listing
from shipyard.events import signing, targets

log = logging.getLogger(__name__)

MAX_PATTERNS = 20
MAX_WEBHOOKS = 100
# a repository name's characters, and the glob's * and ?
PATTERN_GRAMMAR = r"^[a-z0-9._/*?-]{1,255}$"
_PATTERN = re.compile(PATTERN_GRAMMAR)
_DESCRIPTION = 500


class WebhookInvalid(RequestInvalid):
    message = "invalid webhook"


@dataclass(frozen=True, slots=True)
class CreatedWebhook:
    webhook: WebhookRecord
    # shown once
    secret: str


def _page_size(limit: int) -> int:
    if not 1 <= limit <= MAX_PAGE:
        raise PaginationInvalid(f"n must be between 1 and {MAX_PAGE}, not {limit}")
    return limit


class EventService:
    def __init__(self, store: EventStore, accounts: AccountStore, *, allow_private_networks: bool) -> None:
        self.store = store
        self.accounts = accounts
        self.allow_private_networks = allow_private_networks

    # -- authorization ---------------------------------------------------------------------------

    def _require_admin(self, actor: PrincipalRecord, account: str) -> AccountRecord:
        if not is_superuser(actor):
            # outsiders learn nothing about other accounts, not even whether they exist
            if not (actor.active and actor.account == account):
                raise NotFound(f"no account {account}")
            if actor.role != "admin":
                raise Denied(f"only admins of {account} may do this")
        found = self.accounts.get_account(account)
        if found is None:
            raise NotFound(f"no account {account}")
        return found

    def _audit(
        self, actor: PrincipalRecord, source: str, action: str, account: str, target: str, reason: str
    ) -> None:
        try:
            self.accounts.record_event(
                action,
                principal=actor.login,
                source=source,
                account=account,
                target=target,
                outcome="allowed",
                reason=reason,
            )
        except Exception:
            log.exception("could not write the audit event")

    # -- events ----------------------------------------------------------------------------------

    def list_events(
        self,
        actor: PrincipalRecord,
        account: str | None = None,
        *,
        repository: str | None = None,
        type: str | None = None,
        limit: int = 100,
        last: int | None = None,
    ) -> Listing[EventRecord]:
        """Events newest first: a registry administrator's of every account (or of `account`), an
        account admin's of their account."""
        if type is not None and type not in EVENT_TYPES:
            raise RequestInvalid(f"unknown event type {type!r}: one of {', '.join(EVENT_TYPES)}")
        if repository is not None and account is None and not is_superuser(actor):
            account = repository.split("/", 1)[0]
        since = None
        if not is_superuser(actor):
            account = account or actor.account
            # not the events of an earlier account of the same name
            since = self._require_admin(actor, account).created_at
        if repository is not None and account is not None and repository.split("/", 1)[0] != account:
            return Listing([])
        return self.store.events_page(
            _page_size(limit), last, account=account, repository=repository, type=type, since=since
        )

    # -- webhooks --------------------------------------------------------------------------------

    def create_webhook(
        self,
        actor: PrincipalRecord,
        account: str,
        url: str,
        event_types: Sequence[str] = (),
        repositories: Sequence[str] = (),
        description: str | None = None,
        *,
        source: str = "local",
    ) -> CreatedWebhook:
        self._require_admin(actor, account)
        targets.check_at_creation(url, self.allow_private_networks)
        unknown = sorted(set(event_types) - set(EVENT_TYPES))
        if unknown:
            raise WebhookInvalid(
                f"unknown event types {', '.join(unknown)}: each one of {', '.join(EVENT_TYPES)}"
            )
        if len(repositories) > MAX_PATTERNS:
            raise WebhookInvalid(f"at most {MAX_PATTERNS} repository patterns")
        for pattern in repositories:
            if not _PATTERN.fullmatch(pattern):
                raise WebhookInvalid(
                    f"invalid repository pattern {pattern!r}: lower-case letters, digits, . _ / - and the "
                    "wildcards * and ?, at most 255 characters"
                )
        if description is not None and len(description) > _DESCRIPTION:
            raise WebhookInvalid(f"a description has at most {_DESCRIPTION} characters")
        if len(self.store.webhooks_page(account, MAX_WEBHOOKS, None)) >= MAX_WEBHOOKS:
            raise Conflict(f"{account} has {MAX_WEBHOOKS} webhooks, the most an account may have")
        secret = signing.new_secret()
        webhook = self.store.create_webhook(
            account, url, dict.fromkeys(event_types), dict.fromkeys(repositories), secret, description
        )
        self._audit(actor, source, "webhook.create", account, str(webhook.id), f"url {url}")
        return CreatedWebhook(webhook, secret)

    def list_webhooks(
        self, actor: PrincipalRecord, account: str, *, limit: int = 100, last: int | None = None
    ) -> Listing[WebhookRecord]:
        self._require_admin(actor, account)
        return self.store.webhooks_page(account, _page_size(limit), last)

    def get_webhook(self, actor: PrincipalRecord, account: str, webhook_id: int) -> WebhookRecord:
        self._require_admin(actor, account)
        found = self.store.get_webhook(account, webhook_id)
        if found is None:
            raise NotFound(f"no webhook {webhook_id} in {account}")
        return found

    def delete_webhook(
        self, actor: PrincipalRecord, account: str, webhook_id: int, *, source: str = "local"
    ) -> None:
        self._require_admin(actor, account)
        if not self.store.delete_webhook(account, webhook_id):
            raise NotFound(f"no webhook {webhook_id} in {account}")
        self._audit(actor, source, "webhook.delete", account, str(webhook_id), "deleted")

    def deliveries(
        self,
        actor: PrincipalRecord,
        account: str,
        webhook_id: int,
        *,
        limit: int = 100,
        last: int | None = None,
    ) -> Listing[DeliveryRecord]:
        self.get_webhook(actor, account, webhook_id)
        return self.store.deliveries_page(webhook_id, _page_size(limit), last)

    def redeliver(
        self,
        actor: PrincipalRecord,
        account: str,
        webhook_id: int,
        delivery_id: int,
        *,
        source: str = "local",
    ) -> DeliveryRecord:
        self.get_webhook(actor, account, webhook_id)
        if not self.store.redeliver(webhook_id, delivery_id):
            raise NotFound(f"no delivery {delivery_id} of webhook {webhook_id}")
        self._audit(actor, source, "webhook.redeliver", account, f"{webhook_id}/{delivery_id}", "queued")
        found = self.store.delivery(webhook_id, delivery_id)
        assert found is not None
        return found
