"""The management API's events and webhooks: GET /api/v1/events, and an account's webhooks, their
deliveries and redelivery by hand under /api/v1/accounts/{account}/webhooks. Authorization lives in
EventService; this module only translates HTTP (its routes join the management application)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from shipyard.api.management import (
    _NO_CONTENT,
    AccountPath,
    Caller,
    IdAfter,
    PageSize,
    _blank_is,
    _paged,
    link_next,
)
from shipyard.api.management_errors import CONFLICT_RESPONSE, ERROR_RESPONSES, ManagementRoute
from shipyard.api.management_models import SECRET_WARNING
from shipyard.domain.events import EVENT_TYPES, DeliveryRecord, EventRecord, WebhookRecord
from shipyard.domain.management import DEFAULT_PAGE
from shipyard.events.service import PATTERN_GRAMMAR, EventService
from shipyard.events.targets import URL_PATTERN


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WebhookCreate(_Body):
    url: str = Field(
        max_length=2048,
        # documented here, checked by the service (which says what is wrong, and audits)
        json_schema_extra={"pattern": URL_PATTERN},
        description=(
            "http:// or https://, a host name or IPv4 address and no credentials; addresses in private, "
            "loopback and link-local networks are refused (unless the registry allows them)"
        ),
    )
    events: list[Annotated[str, Field(json_schema_extra={"enum": list(EVENT_TYPES)})]] = Field(
        default_factory=list, max_length=len(EVENT_TYPES), description="event types; none: every type"
    )
    repositories: list[Annotated[str, Field(json_schema_extra={"pattern": PATTERN_GRAMMAR})]] = Field(
        default_factory=list,
        max_length=20,
        description="glob patterns of repositories within the account (`web/*`); none: every repository",
    )
    description: str | None = Field(None, max_length=500)


class Event(_Document):
    id: int
    at: str
    type: str
    account: str
    repository: str | None
    digest: str | None
    tag: str | None
    media_type: str | None
    size: int | None
    detail: dict[str, Any] | None


class Events(_Document):
    events: list[Event]


class Webhook(_Document):
    id: int
    account: str
    url: str
    events: list[str]
    repositories: list[str]
    description: str | None
    created_at: str


class WebhookCreated(Webhook):
    """A webhook with its signing secret: the only answer that carries it."""

    secret: str
    warning: str = Field(examples=[SECRET_WARNING])


class Webhooks(_Document):
    webhooks: list[Webhook]


class Attempt(_Document):
    at: str
    status: int | None = Field(description="the receiver's HTTP status; none when it did not answer")
    error: str | None
    duration_ms: int
    response: str | None = Field(description="the first KiB of the receiver's answer")


class Delivery(_Document):
    id: int
    webhook_id: int
    event_id: int
    event_type: str
    state: str = Field(description="pending, succeeded or failed")
    attempts: int
    next_attempt_at: str | None
    last_status: int | None
    created_at: str
    log: list[Attempt] = Field(description="the latest attempts, newest first")


class Deliveries(_Document):
    deliveries: list[Delivery]


def event_document(event: EventRecord) -> Event:
    return Event(
        id=event.id,
        at=event.at.isoformat(),
        type=event.type,
        account=event.account,
        repository=event.repository,
        digest=event.digest,
        tag=event.tag,
        media_type=event.media_type,
        size=event.size,
        detail=event.detail,
    )


def _webhook_fields(webhook: WebhookRecord) -> dict[str, Any]:
    return {
        "id": webhook.id,
        "account": webhook.account,
        "url": webhook.url,
        "events": list(webhook.event_types),
        "repositories": list(webhook.repositories),
        "description": webhook.description,
        "created_at": webhook.created_at.isoformat(),
    }


def delivery_document(delivery: DeliveryRecord) -> Delivery:
    return Delivery(
        id=delivery.id,
        webhook_id=delivery.webhook_id,
        event_id=delivery.event_id,
        event_type=delivery.event_type,
        state=delivery.state,
        attempts=delivery.attempts,
        next_attempt_at=None if delivery.next_attempt_at is None else delivery.next_attempt_at.isoformat(),
        last_status=delivery.last_status,
        created_at=delivery.created_at.isoformat(),
        log=[
            Attempt(
                at=a.at.isoformat(),
                status=a.status,
                error=a.error,
                duration_ms=a.duration_ms,
                response=a.response,
            )
            for a in delivery.log
        ],
    )


def _events(request: Request) -> EventService:
    service: EventService = request.app.state.events
    return service


router = APIRouter(prefix="/api/v1", route_class=ManagementRoute, responses=ERROR_RESPONSES)
_WEBHOOKS = "/accounts/{account}/webhooks"
_WEBHOOK = _WEBHOOKS + "/{webhook}"
WebhookPath = Annotated[int, Path(ge=1, le=2**31 - 1, description="a webhook's id")]
DeliveryPath = Annotated[int, Path(ge=1, le=2**31 - 1, description="a delivery's id")]


@router.get("/events", tags=["events"], **_paged(Events, "events, newest first"))
async def list_events(
    call: Caller,
    request: Request,
    response: Response,
    n: PageSize = DEFAULT_PAGE,
    last: IdAfter = None,
    account: Annotated[str | None, Query(description="only this account's events"), _blank_is(None)] = None,
    repository: Annotated[
        str | None, Query(description="only this repository's events"), _blank_is(None)
    ] = None,
    type: Annotated[
        str | None,
        Query(description="only events of this type", json_schema_extra={"enum": list(EVENT_TYPES)}),
        _blank_is(None),
    ] = None,
) -> Events:
    """The outbox: changes to repositories, manifests, tags and blobs, written with the changes."""
    found = await call.run(
        _events(request).list_events,
        call.actor,
        account,
        repository=repository,
        type=type,
        limit=n,
        last=last,
    )
    link_next(request, response, n, found.next)
    return Events(events=[event_document(e) for e in found])


@router.get(_WEBHOOKS, tags=["webhooks"], **_paged(Webhooks, "the account's webhooks"))
async def list_webhooks(
    call: Caller,
    request: Request,
    response: Response,
    account: AccountPath,
    n: PageSize = DEFAULT_PAGE,
    last: IdAfter = None,
) -> Webhooks:
    found = await call.run(_events(request).list_webhooks, call.actor, account, limit=n, last=last)
    link_next(request, response, n, found.next)
    return Webhooks(webhooks=[Webhook(**_webhook_fields(w)) for w in found])


@router.post(
    _WEBHOOKS, status_code=201, response_model=WebhookCreated, tags=["webhooks"], responses=CONFLICT_RESPONSE
)
async def create_webhook(
    call: Caller, request: Request, account: AccountPath, body: WebhookCreate
) -> WebhookCreated:
    """Subscribe a URL to the account's events; deliveries are CloudEvents signed as Standard
    Webhooks say, with the secret answered here once."""
    created = await call.run(
        _events(request).create_webhook,
        call.actor,
        account,
        body.url,
        body.events,
        body.repositories,
        body.description,
        source=call.source,
    )
    return WebhookCreated(**_webhook_fields(created.webhook), secret=created.secret, warning=SECRET_WARNING)


@router.get(_WEBHOOK, response_model=Webhook, tags=["webhooks"])
async def get_webhook(call: Caller, request: Request, account: AccountPath, webhook: WebhookPath) -> Webhook:
    found = await call.run(_events(request).get_webhook, call.actor, account, webhook)
    return Webhook(**_webhook_fields(found))


@router.delete(_WEBHOOK, tags=["webhooks"], **_NO_CONTENT)
async def delete_webhook(
    call: Caller, request: Request, account: AccountPath, webhook: WebhookPath
) -> Response:
    await call.run(_events(request).delete_webhook, call.actor, account, webhook, source=call.source)
    return Response(status_code=204)


@router.get(
    f"{_WEBHOOK}/deliveries",
    tags=["webhooks"],
    **_paged(Deliveries, "the webhook's deliveries, newest first"),
)
async def list_deliveries(
    call: Caller,
    request: Request,
    response: Response,
    account: AccountPath,
    webhook: WebhookPath,
    n: PageSize = DEFAULT_PAGE,
    last: IdAfter = None,
) -> Deliveries:
    found = await call.run(_events(request).deliveries, call.actor, account, webhook, limit=n, last=last)
    link_next(request, response, n, found.next)
    return Deliveries(deliveries=[delivery_document(d) for d in found])


@router.post(f"{_WEBHOOK}/deliveries/{{delivery}}/redeliver", response_model=Delivery, tags=["webhooks"])
async def redeliver(
    call: Caller, request: Request, account: AccountPath, webhook: WebhookPath, delivery: DeliveryPath
) -> Delivery:
    """Queue a new attempt of a delivery now (with a new retry window)."""
    found = await call.run(
        _events(request).redeliver, call.actor, account, webhook, delivery, source=call.source
    )
    return delivery_document(found)
