"""Repository-name and tag grammar, exactly as the distribution-spec gives them."""

from __future__ import annotations

import re

from shipyard.domain.errors import NameInvalid, TagInvalid

_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_PATTERN = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*\Z")
TAG_PATTERN = re.compile(r"^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}\Z")
# Clients combine host and name into one reference; keep names short enough for that to work.
MAX_NAME_LENGTH = 255


def validate_name(name: str) -> str:
    if len(name) > MAX_NAME_LENGTH or not NAME_PATTERN.match(name):
        raise NameInvalid(f"invalid repository name: {name!r}")
    return name


def validate_tag(tag: str) -> str:
    if not TAG_PATTERN.match(tag):
        raise TagInvalid(f"invalid tag: {tag!r}")
    return tag


def is_tag(reference: str) -> bool:
    return TAG_PATTERN.match(reference) is not None
