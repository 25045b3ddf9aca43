"""Events as CloudEvents 1.0 in structured mode: one JSON document with the attributes and `data`."""

from __future__ import annotations

import json
from typing import Any

from shipyard.domain.events import EventRecord

CONTENT_TYPE = "application/cloudevents+json"
TYPE_PREFIX = "dev.shipyard."


def event_data(event: EventRecord) -> dict[str, Any]:
    data: dict[str, Any] = {"account": event.account}
    for key, value in (
        ("repository", event.repository),
        ("digest", event.digest),
        ("tag", event.tag),
        ("mediaType", event.media_type),
        ("size", event.size),
    ):
        if value is not None:
            data[key] = value
    if event.detail:
        data.update(event.detail)
    return data


def structured(event: EventRecord) -> bytes:
    document: dict[str, Any] = {
        "specversion": "1.0",
        "id": str(event.id),
        "source": f"/{event.repository or event.account}",
        "type": TYPE_PREFIX + event.type,
        "time": event.at.isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": event_data(event),
    }
    subject = event.tag or event.digest
    if subject:
        document["subject"] = subject
    return json.dumps(document, separators=(",", ":")).encode()
