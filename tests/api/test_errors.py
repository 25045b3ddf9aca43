"""Error bodies are the spec's JSON, and no malformed input makes the registry fail (5xx)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.api.helpers import (
    OCI_MANIFEST,
    assert_error,
    assert_error_body,
    digest_of,
    push_image,
    random_bytes,
    start_upload,
    unique_repo,
)
from tests.conftest import Registry

D = digest_of(b"fuzz")
D512 = digest_of(b"fuzz", "sha512")


@pytest.fixture
def no_internal_errors(registry: Registry, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail when the registry logged an unexpected error while the test ran (in-process: the log
    records; a server: its log file)."""
    before = registry.server.log() if registry.server is not None else ""
    with caplog.at_level(logging.ERROR):
        yield
    if registry.server is not None:
        added = registry.server.log()[len(before) :]
        assert "unexpected error" not in added and "Traceback" not in added, added[-5000:]
    else:
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("shipyard")]
        assert not errors, [r.getMessage() for r in errors]


def check(r: httpx.Response) -> None:
    """Below 500, and a JSON body, when there is one, is the spec's error body."""
    assert r.status_code < 500, (r.request.method, str(r.request.url)[:200], r.status_code, r.text[:500])
    is_json = r.headers.get("content-type", "").startswith("application/json")
    if r.status_code >= 400 and r.request.method != "HEAD" and r.content and is_json:
        assert_error_body(r)


def raw(client: httpx.Client, method: str, raw_path: str, **kwargs: object) -> httpx.Response:
    """A request whose path goes out exactly as given (httpx would otherwise normalize it)."""
    request = client.build_request(method, "/", **kwargs)  # type: ignore[arg-type]
    request.url = request.url.copy_with(raw_path=raw_path)
    return client.send(request)


# -- error bodies --------------------------------------------------------------------------------


def test_every_spec_error_we_can_provoke_has_the_spec_body(registry: Registry) -> None:
    c = registry.client
    repo = unique_repo("err")
    cases = [
        (c.get(f"/v2/{repo}/blobs/{D}"), 404, "BLOB_UNKNOWN"),
        (c.get(f"/v2/{repo}/blobs/sha256:zz"), 400, "DIGEST_INVALID"),
        (c.get(f"/v2/{repo}/blobs/uploads/{'0' * 32}"), 404, "BLOB_UPLOAD_UNKNOWN"),
        (c.get(f"/v2/{repo}/manifests/latest"), 404, "MANIFEST_UNKNOWN"),
        (c.put(f"/v2/{repo}/manifests/latest", content=b"nope"), 400, "MANIFEST_INVALID"),
        (c.get("/v2/UPPER/tags/list"), 400, "NAME_INVALID"),
        (c.get(f"/v2/{repo}/tags/list"), 404, "NAME_UNKNOWN"),
        (c.delete("/v2/_catalog"), 405, "UNSUPPORTED"),
    ]
    for r, status, code in cases:
        body = assert_error(r, status, code)
        assert all(isinstance(e.get("message", ""), str) for e in body["errors"])
    body = assert_error(
        c.put(
            f"/v2/{repo}/manifests/v1",
            content=b'{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"a/b","digest":"%s","size":1}}'
            % (OCI_MANIFEST.encode(), D.encode()),
            headers={"content-type": OCI_MANIFEST},
        ),
        400,
        "MANIFEST_BLOB_UNKNOWN",
    )
    # the detail names the missing digest
    assert any(D in str(e.get("detail")) for e in body["errors"])


def test_head_errors_have_no_body(registry: Registry) -> None:
    repo = unique_repo("err")
    for path in (
        f"/v2/{repo}/blobs/{D}",
        f"/v2/{repo}/manifests/x",
        f"/v2/{repo}/blobs/bad",
        "/v2/BAD/manifests/x",
    ):
        r = registry.client.head(path)
        assert 400 <= r.status_code < 500
        assert r.content == b""


# -- fuzzing -------------------------------------------------------------------------------------

FUZZ_PATHS = [
    "/v2/%00/tags/list",
    "/v2/a%00b/tags/list",
    "/v2/a/tags/list%00",
    "/v2/../../etc/passwd",
    "/v2/a/../../../etc/passwd/tags/list",
    "/v2//tags/list",
    "/v2///",
    "/v2/a//b/tags/list",
    "/v2/a/manifests/",
    "/v2/a/manifests/%ff",
    "/v2/a/manifests/%",
    "/v2/a/manifests/a%2fb",
    "/v2/a/manifests/sha256%3a" + "a" * 64,
    "/v2/a/manifests/" + "t" * 5000,
    "/v2/a/blobs/",
    "/v2/a/blobs/%ff",
    "/v2/a/blobs/" + D + "%0a",
    "/v2/a/blobs/" + D + "%0d%0a",
    "/v2/a/blobs/" + D + "%20",
    "/v2/a/blobs/" + D512 + "/extra",
    "/v2/a/blobs/uploads/%ff",
    "/v2/a/blobs/uploads/" + "0" * 32 + "%0a",
    "/v2/a/blobs/uploads/" + "0" * 32 + "/x",
    "/v2/a/referrers/",
    "/v2/a/referrers/" + D + "/extra",
    "/v2/a/referrers/" + D + "%0a",
    "/v2/%c3%a9/tags/list",
    "/v2/" + "a" * 10000 + "/tags/list",
    "/v2/" + "a/" * 3000 + "a/tags/list",
    "/v2/a/tags/list?n=%ff",
    "/v2/a/tags/list?n=1&n=2&last=%00",
    "/v2/a/tags/list?last=" + "z" * 10000,
    "/v2/_catalog?n=-0",
    "/v2/_catalog?n=%2b5",
    "/v2/_catalog?last=%ff%fe",
    "/v2/_catalog?last=%00",
    "/v2/_catalog/extra",
    "/v2/a/_catalog",
    "/v2/a/blobs/" + D + "?x=[&&&=",
    "/v2/a/referrers/" + D + "?artifactType=%ff",
    "/v2/a/referrers/" + D + "?artifactType=",
    "/v2/%2e%2e/tags/list",
    "/v2/a/manifests/latest?tag=%ff",
    "/v2;/tags/list",
    "/v2/a/tags/list;x",
    "/v2?x",
    "/v2/?n=-1",
]


@pytest.mark.usefixtures("no_internal_errors")
@pytest.mark.parametrize("method", ["GET", "HEAD", "PUT", "DELETE", "PATCH", "POST"])
def test_malformed_paths_never_fail(registry: Registry, method: str) -> None:
    for path in FUZZ_PATHS:
        check(
            raw(registry.client, method, path.encode(), content=b"{}" if method in ("PUT", "PATCH") else None)
        )


@pytest.mark.usefixtures("no_internal_errors")
@pytest.mark.parametrize("method", ["OPTIONS", "TRACE", "PROPFIND", "FOO", "get"])
def test_unknown_methods_never_fail(registry: Registry, method: str) -> None:
    repo = unique_repo("err")
    for path in (
        "/v2/",
        "/v2/_catalog",
        f"/v2/{repo}/tags/list",
        f"/v2/{repo}/manifests/latest",
        f"/v2/{repo}/blobs/{D}",
        f"/v2/{repo}/blobs/uploads/",
        f"/v2/{repo}/blobs/uploads/{'0' * 32}",
        f"/v2/{repo}/referrers/{D}",
    ):
        r = registry.client.request(method, path)
        check(r)
        assert r.status_code >= 400 or method == "get"


MALFORMED_DIGESTS = [
    "",
    ":",
    "sha256",
    "sha256:",
    "sha256:" + "a" * 63 + "\n",
    "sha256:" + "a" * 64 + "\n",
    "sha256:" + "a" * 64 + " ",
    " sha256:" + "a" * 64,
    "sha256:" + "\u00e9" * 64,
    "sha256:" + "a" * 20_000,
    "SHA256:" + "a" * 64,
    "sha1:" + "a" * 40,
    "a" * 300 + ":" + "b" * 64,
    "sha256+b64:abc",
    "sha256:../../../../etc/passwd",
    "sha512:" + "f" * 127,
    "\x00",
    "sha256:%00",
]


@pytest.mark.usefixtures("no_internal_errors")
def test_malformed_digests_never_fail(registry: Registry) -> None:
    c = registry.client
    repo = unique_repo("err")
    image = push_image(c, repo, "v1")
    for digest in MALFORMED_DIGESTS:
        for params in ({"digest": digest}, {"mount": digest}, {"mount": digest, "from": repo}):
            r = c.post(f"/v2/{repo}/blobs/uploads/", params=params, content=b"x")
            check(r)
            if r.status_code == 202:
                c.delete(r.headers["location"])
        location = start_upload(c, repo)
        check(c.put(location, params={"digest": digest}, content=b"abc"))
        check(c.get(f"/v2/{repo}/referrers/x", params={"artifactType": digest}))
        check(c.put(f"/v2/{repo}/manifests/v2", params={"tag": digest}, content=image.body))
        # as a descriptor's digest inside a manifest
        body = image.body.replace(digest_of(image.config).encode(), digest.encode("utf-8", "replace"))
        r = c.put(f"/v2/{repo}/manifests/fuzz", content=body, headers={"content-type": OCI_MANIFEST})
        check(r)
        assert r.status_code == 400, (digest, r.text)


@pytest.mark.usefixtures("no_internal_errors")
def test_malformed_headers_never_fail(registry: Registry) -> None:
    c = registry.client
    repo = unique_repo("err")
    image = push_image(c, repo, "v1")
    layer = digest_of(image.layers[0])
    ranges = [
        "bytes=0-1,",
        "bytes=,0-1",
        "bytes=0-1,2-3,4-5",
        "bytes=99999999999999999999999999999-",
        "bytes=-99999999999999999999999999999",
        "bytes=0-99999999999999999999999999999",
        "bytes=\u00e9",
        "bytes=1 -2",
        "bytes=-",
        "=",
        "x" * 8000,
    ]
    for value in ranges:
        check(c.get(f"/v2/{repo}/blobs/{layer}", headers={"range": value.encode("utf-8")}))
        check(c.head(f"/v2/{repo}/blobs/{layer}", headers={"range": value.encode("utf-8")}))
    content_ranges = [
        "bytes=0-2",
        "0-99999999999999999999999999",
        "99999999999999999999999999-99999999999999999999999999",
        "0-2/3",
        "0-2/*",
        "-1-2",
        "\u00ff",
        "0 - 2",
        "x" * 8000,
    ]
    for value in content_ranges:
        location = start_upload(c, repo)
        check(c.patch(location, content=b"abc", headers={"content-range": value.encode("utf-8")}))
        check(
            c.put(
                location,
                params={"digest": digest_of(b"abc")},
                content=b"abc",
                headers={"content-range": value.encode("utf-8")},
            )
        )
    content_types = [
        ";;;",
        "a/b/c",
        "x" * 8000,
        "application/vnd.oci.image.manifest.v1+json;;=",
        "\u00e9/\u00e9",
        "",
    ]
    for value in content_types:
        check(
            c.put(
                f"/v2/{repo}/manifests/ct",
                content=image.body,
                headers={"content-type": value.encode("utf-8")},
            )
        )
    for value in ("\u00e9", "x" * 8000, "Bearer", "Basic !!!", ""):
        check(c.get(f"/v2/{repo}/manifests/v1", headers={"authorization": value.encode("utf-8")}))
    for value in ("*/*;q=abc", "\u00e9", "x" * 8000, ",,,"):
        r = c.get(f"/v2/{repo}/manifests/v1", headers={"accept": value.encode("utf-8")})
        check(r)


def _nested(depth: int) -> bytes:
    return (
        b'{"schemaVersion":2,"mediaType":"'
        + OCI_MANIFEST.encode()
        + b'","x":'
        + b"[" * depth
        + b"]" * depth
        + b"}"
    )


@pytest.mark.usefixtures("no_internal_errors")
def test_pathological_manifest_bodies_never_fail(registry: Registry) -> None:
    c = registry.client
    repo = unique_repo("err")
    bodies = [
        _nested(100_000),
        b"[" * 500_000,
        b'{"schemaVersion":' + b"9" * 10_000 + b"}",
        b'{"schemaVersion":2,"config":{"mediaType":"a/b","digest":"' + D.encode() + b'","size":1e400}}',
        b'{"schemaVersion":2,"config":{"mediaType":"a/b","digest":"' + D.encode() + b'","size":NaN}}',
        b'{"schemaVersion":2,"config":{"mediaType":"a/b","digest":"' + D.encode() + b'","size":true}}',
        b'{"schemaVersion":2,"config":{"mediaType":"a/b","digest":"' + D.encode() + b'","size":-0}}',
        b'{"schemaVersion":2,"config":{"mediaType":"a/b","digest":"' + D.encode() + b'","size":2.0}}',
        b'{"schemaVersion":2,"config":{},"layers":[{}]}',
        b'{"schemaVersion":2,"mediaType":null,"manifests":null}',
        b'{"schemaVersion":2,"manifests":[null]}',
        b'{"schemaVersion":2,"manifests":[{"platform":[]}]}',
        b'{"schemaVersion":2,"mediaType":"' + OCI_MANIFEST.encode() + b'","config":[],"layers":null}',
        b'{"schemaVersion":2.0,"mediaType":"' + OCI_MANIFEST.encode() + b'"}',
        b'{"schemaVersion":2,"schemaVersion":2}',
        b'{"\xed\xa0\x80":1}',
        b'{"a":"\\ud800"}',
        b"\xef\xbb\xbf{}",
        b"\x00" * 1000,
        random_bytes(10_000),
        b'{"schemaVersion":2,"subject":{"mediaType":"a/b","digest":"'
        + D.encode()
        + b'","size":1},"manifests":[]}',
        b'{"schemaVersion":2,"annotations":[],"manifests":[]}',
        b'{"schemaVersion":2,"artifactType":7,"manifests":[]}',
    ]
    for body in bodies:
        for content_type in (OCI_MANIFEST, "application/vnd.oci.image.index.v1+json", None):
            headers = {"content-type": content_type} if content_type else {}
            r = c.put(f"/v2/{repo}/manifests/fuzz", content=body, headers=headers)
            check(r)
            r = c.put(f"/v2/{repo}/manifests/{digest_of(body)}", content=body, headers=headers)
            check(r)


@pytest.mark.usefixtures("no_internal_errors")
def test_upload_abuse_never_fails(registry: Registry) -> None:
    c = registry.client
    repo = unique_repo("err")
    location = start_upload(c, repo)
    # finishing twice, patching after finishing, cancelling twice, status of a cancelled upload
    check(c.put(location, params={"digest": digest_of(b"")}))
    check(c.put(location, params={"digest": digest_of(b"")}))
    check(c.patch(location, content=b"x"))
    check(c.delete(location))
    location = start_upload(c, repo)
    check(c.delete(location))
    check(c.delete(location))
    check(c.get(location))
    # several digest parameters
    location = start_upload(c, repo)
    check(c.put(location, params=[("digest", digest_of(b"a")), ("digest", "bad")], content=b"a"))
    # a body on the POST that starts a session
    check(c.post(f"/v2/{repo}/blobs/uploads/", content=b"unexpected body"))
    # a PUT with a Content-Range but no body
    location = start_upload(c, repo)
    check(c.put(location, params={"digest": digest_of(b"")}, headers={"content-range": "0-0"}))


def _raw_exchange(address: tuple[str, int], payload: bytes) -> bytes:
    with socket.create_connection(address, timeout=10) as sock:
        chunks = []
        try:
            sock.sendall(payload)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed before it had all of it: read what it said
            pass
        while True:
            try:
                data = sock.recv(65536)
            except (OSError, TimeoutError):
                break
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


@pytest.mark.usefixtures("no_internal_errors")
def test_malformed_http_to_a_real_server_never_fails(registry: Registry) -> None:
    if registry.server is None:
        pytest.skip("raw HTTP needs a real server")
    address = (registry.server.host, registry.server.port)
    repo = unique_repo("err")
    location = httpx.URL(start_upload(registry.client, repo)).path.encode()
    payloads = [
        b"PATCH " + location + b" HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\nabc",
        b"PATCH " + location + b" HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\nabc",
        b"PATCH " + location + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nshort",
        b"PATCH "
        + location
        + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
        b"PATCH " + location + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
        b"PUT /v2/" + repo.encode() + b"/manifests/x HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{",
        b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX: \x00\x01\r\n\r\n",
        b"GET /v2/" + b"a" * 100_000 + b"/tags/list HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /v2/\xff\xfe/tags/list HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET v2/ HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET * HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET /v2/ HTTP/9.9\r\n\r\n",
        b"GET /v2/ HTTP/1.0\r\n\r\n",
    ]
    for payload in payloads:
        answer = _raw_exchange(address, payload)
        if answer.startswith(b"HTTP/"):
            status = int(answer.split(b" ", 2)[1])
            assert status < 500, (payload[:120], answer[:300])
    # and the server is still there, and the upload still usable
    assert registry.client.get("/v2/").status_code == 200
    assert registry.client.get(location.decode()).status_code in (204, 404)
