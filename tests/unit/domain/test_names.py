from __future__ import annotations

import pytest

from shipyard.domain.errors import NameInvalid, TagInvalid
from shipyard.domain.names import MAX_NAME_LENGTH, validate_name, validate_tag

VALID_NAMES = [
    "a",
    "0",
    "ubuntu",
    "library/ubuntu",
    "a/b/c/d/e",
    "my-app",
    "my--app",
    "my---app",
    "my_app",
    "my__app",
    "my.app",
    "v1.2/app-3_x__y",
    "0a/1b",
    "a" * MAX_NAME_LENGTH,
    "/".join(["ab"] * 85),  # 254 characters
]

INVALID_NAMES = [
    "",
    "A",
    "Ubuntu",
    "library/Ubuntu",
    "a/",
    "/a",
    "a//b",
    "-a",
    "a-",
    "_a",
    "a_",
    ".a",
    "a.",
    "a..b",
    "a.-b",
    "a___b",
    "a_-b",
    "a b",
    "a:b",
    "a@b",
    "a+b",
    "a\\b",
    "ä",
    "a\n",
    "\na",
    "a/\nb",
    "a" * (MAX_NAME_LENGTH + 1),
    "../a",
    "a/../b",
    "a/./b",
]

VALID_TAGS = ["latest", "v1", "1.0", "A", "Z9", "_x", "__", "_", "0", "v1.2.3-rc.1_b", "a-", "a.", "a" * 128]

INVALID_TAGS = [
    "",
    ".x",
    "-x",
    "a" * 129,
    "a/b",
    "a:b",
    "a+b",
    "a@b",
    "a b",
    "latest\n",
    "\nlatest",
    "é",
    "sha256:" + "0" * 64,
]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_names(name: str) -> None:
    with pytest.raises(NameInvalid) as caught:
        validate_name(name)
    assert caught.value.code == "NAME_INVALID"


@pytest.mark.parametrize("tag", VALID_TAGS)
def test_valid_tags(tag: str) -> None:
    assert validate_tag(tag) == tag


@pytest.mark.parametrize("tag", INVALID_TAGS)
def test_invalid_tags(tag: str) -> None:
    with pytest.raises(TagInvalid):
        validate_tag(tag)
