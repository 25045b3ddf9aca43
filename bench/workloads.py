"""The workloads: data set-up, and the measurements run against every server, interleaved by round.

A measurement is one `Item`: a name, the servers it applies to, and a function that runs it once against
one server and returns {metric: value}. The runner calls every item for every server in turn, round after
round, and adds the server's CPU-seconds for the run.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import random
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench import tools
from bench.client import (
    MANIFEST_ACCEPT,
    ImageBlobs,
    Registry,
    basic_authorization,
    fetch_token,
    make_image,
    sha256_digest,
)
from bench.config import AUTH_SERVER, GiB, MiB, Sizes
from bench.servers import ADMIN_PASSWORD, ADMIN_USER, Server

BLOB_REPO = "bench/blob"
APP_REPO = "bench/app"
TINY_REPO = "bench/tiny"
TAGS_REPO = "bench/tags"
UPLOAD_REPO = "bench/upload"
APP_TAG = "latest"


def tag_name(i: int) -> str:
    return f"t{i:07d}"


def catalog_repo(i: int) -> str:
    return f"cat/r{i:06d}"


def push_repo(round_no: int, i: int) -> str:
    # sorts after every cat/ repository, so the catalog pages measured stay the same from round to round
    return f"zpush/r{round_no}/i{i:04d}"


Metrics = dict[str, float]


@dataclass
class Item:
    name: str
    servers: tuple[str, ...]
    run: Callable[[Server, int], Metrics]
    prepare: Callable[[int], None] | None = None
    bytes_moved: int | None = None  # for cpu_s_per_gib
    cpu_per_request: bool = False  # for cpu_us_per_req
    rounds: int | None = None  # run in the first `rounds` rounds only (None: every round)
    repeats: int = 1  # samples per round, each one a pass over every server


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def write_random_file(path: Path, size: int, seed: str) -> str:
    """`size` pseudo-random bytes (incompressible); returns the sha256 digest."""
    rng = random.Random(seed)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            block = rng.randbytes(min(16 * MiB, left))
            digest.update(block)
            f.write(block)
            left -= len(block)
    return "sha256:" + digest.hexdigest()


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(4 * MiB):
            digest.update(block)
    return "sha256:" + digest.hexdigest()


@dataclass
class Bench:
    sizes: Sizes
    work: Path
    servers: dict[str, Server]
    clients: dict[str, Registry] = field(default_factory=dict)
    blob_path: Path = Path()
    blob_digest: str = ""
    upload_path: Path = Path()
    upload_digests: dict[str, str] = field(default_factory=dict)  # mode -> digest of this round's variant
    app: ImageBlobs | None = None
    tiny: ImageBlobs | None = None
    policy: Path = Path()
    layouts: dict[int, Path] = field(default_factory=dict)
    wrk_script: Path = Path()
    setup_metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    only: tuple[str, ...] | None = None  # prefixes of the item names to run (None: every item)

    def wants(self, name: str) -> bool:
        return self.only is None or name.startswith(self.only)

    @property
    def wants_listings(self) -> bool:
        return any(self.wants(name) for name in self.sizes.listings)

    def client(self, server: Server) -> Registry:
        if server.name not in self.clients:
            self.clients[server.name] = Registry(server.url)
        return self.clients[server.name]

    @property
    def registries(self) -> list[Server]:
        """The registries every workload runs on (not the one with authentication: see seed_auth)."""
        return [s for s in self.servers.values() if s.name not in ("nginx", AUTH_SERVER)]

    def token(self, server: Server, actions: str = "pull") -> str:
        """A fresh registry token for the manifest repository (tokens live 300 s; a run is shorter)."""
        return fetch_token(server.url, ADMIN_USER, ADMIN_PASSWORD, f"repository:{APP_REPO}:{actions}")

    def present(self, names: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(name for name in names if name in self.servers)


# --------------------------------------------------------------------------------------------- set-up


def prepare_files(bench: Bench) -> None:
    sizes = bench.sizes
    www = bench.work / "www"
    www.mkdir(exist_ok=True)
    bench.blob_path = www / "blob.bin"
    bench.blob_digest = write_random_file(bench.blob_path, sizes.blob_bytes, "blob")
    bench.upload_path = bench.work / "upload.bin"
    write_random_file(bench.upload_path, sizes.upload_bytes, "upload")
    bench.app = make_image(sizes.manifest_layers, "app")
    bench.tiny = make_image(1, "tiny", layer_bytes=256)
    # nginx's small file is the manifest itself: the same bytes a manifest GET returns
    (www / "small.json").write_bytes(bench.app.manifest)
    bench.policy = bench.work / "policy.json"
    bench.policy.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    bench.wrk_script = bench.work / "report.lua"
    bench.wrk_script.write_text(tools.WRK_REPORT_LUA)


def build_layouts(bench: Bench) -> None:
    from tests.support.oci_layout import OciLayout, random_layer

    for round_no in range(bench.sizes.rounds):
        root = bench.work / "layouts" / f"r{round_no}"
        layout = OciLayout.create(root)
        for i in range(bench.sizes.small_images):
            layers = [
                random_layer(128 * 1024, seed=f"bench-{round_no}-{i}-a", level=1),
                random_layer(2 * 1024, seed=f"bench-{round_no}-{i}-b", name="etc/config", level=1),
            ]
            layout.tag(layout.add_image(layers, cmd=["/bin/sh"]), f"i{i}")
        bench.layouts[round_no] = root


def _parallel(threads: int, jobs: list[Callable[[], object]]) -> float:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result()
    return time.perf_counter() - started


def seed_registries(bench: Bench) -> None:
    """The data every registry gets before the rounds: the GET blob, a ~2 KB manifest, a repository
    with `tags` tags and `repositories` more repositories for the catalog."""
    assert bench.app is not None and bench.tiny is not None
    sizes = bench.sizes
    app, tiny = bench.app, bench.tiny
    for server in bench.registries:
        client = bench.client(server)
        client.upload_file(BLOB_REPO, bench.blob_path, bench.blob_digest)
        app.push(client, APP_REPO, APP_TAG)
        tiny.push(client, TINY_REPO, APP_TAG)
        if not bench.wants_listings:
            continue
        for digest in app.blob_digests:
            client.mount(TAGS_REPO, digest, APP_REPO)
        # the first tag alone, so that the timed PUTs all do the same work: add a tag to a manifest the
        # repository already holds
        client.put_manifest(TAGS_REPO, tag_name(0), app.manifest)

        def put_tags(start: int, client: Registry = client) -> None:
            for i in range(start + 1, sizes.tags, sizes.fill_threads):
                client.put_manifest(TAGS_REPO, tag_name(i), app.manifest)
            client.close()

        threads = sizes.fill_threads
        seconds = _parallel(threads, [functools.partial(put_tags, s) for s in range(threads)])
        rate = sizes.tags / seconds
        bench.setup_metrics.setdefault("setup.tag_put.rps", {})[server.name] = rate
        log(f"  {server.name}: {sizes.tags} tags at {rate:.0f}/s")
    if not bench.wants_listings:
        return

    def make_repos(client: Registry, start: int) -> None:
        for i in range(start, sizes.repositories, sizes.fill_threads):
            tiny.mount_and_tag(client, catalog_repo(i), APP_TAG, TINY_REPO)
        client.close()

    # the catalog's repositories go into every registry at once: nothing is measured here, and a full run
    # makes 30,000 requests per registry for them
    jobs: list[Callable[[], object]] = [
        functools.partial(make_repos, bench.client(server), start)
        for server in bench.registries
        for start in range(sizes.fill_threads)
    ]
    seconds = _parallel(len(jobs), jobs)
    log(f"  {sizes.repositories} repositories in each registry in {seconds:.1f} s")


def seed_auth(bench: Bench) -> None:
    """The registry with authentication gets only the manifest workloads' image, pushed with a token."""
    assert bench.app is not None
    server = bench.servers.get(AUTH_SERVER)
    if server is None:
        return
    # a push needs an account for its namespace
    admin = Registry(server.url, authorization=basic_authorization(ADMIN_USER, ADMIN_PASSWORD))
    namespace = APP_REPO.split("/")[0].encode()
    created = admin.request(
        "POST", "/api/v1/accounts", b'{"name": "' + namespace + b'"}', {"content-type": "application/json"}
    )
    if created.status not in (201, 409):
        raise RuntimeError(f"{server.name}: creating the account {namespace.decode()}: HTTP {created.status}")
    client = Registry(server.url, authorization=f"Bearer {bench.token(server, 'pull,push')}")
    bench.app.push(client, APP_REPO, APP_TAG)
    pulled = Registry(server.url, authorization=f"Bearer {bench.token(server)}")
    response = pulled.request(
        "GET", f"/v2/{APP_REPO}/manifests/{APP_TAG}", headers={"Accept": MANIFEST_ACCEPT}
    )
    if response.status != 200 or response.headers.get("docker-content-digest") != bench.app.digest:
        raise RuntimeError(f"{server.name}: GET manifest with a token: HTTP {response.status}")
    anonymous = Registry(server.url).request("GET", f"/v2/{APP_REPO}/manifests/{APP_TAG}")
    if anonymous.status != 401:
        raise RuntimeError(
            f"{server.name}: GET manifest without a token gave HTTP {anonymous.status}, not 401"
        )
    client.close()
    pulled.close()


def check_registries(bench: Bench) -> None:
    """Fail early, with a clear message, if a registry does not return what the workloads measure."""
    assert bench.app is not None
    sizes = bench.sizes
    for server in bench.registries:
        client = bench.client(server)
        for reference in (APP_TAG, bench.app.digest):
            for method in ("GET", "HEAD"):
                response = client.request(
                    method, f"/v2/{APP_REPO}/manifests/{reference}", headers={"Accept": MANIFEST_ACCEPT}
                )
                if (
                    response.status != 200
                    or response.headers.get("docker-content-digest") != bench.app.digest
                ):
                    raise RuntimeError(
                        f"{server.name}: {method} manifest {reference}: HTTP {response.status}"
                    )
        # a whole GET first: it checks the blob and reads it into the page cache, where nginx's copy is
        # too (an upload may write around the cache)
        whole = tools.curl_get(_blob_url(bench, server))
        if whole.status != 200 or whole.bytes != sizes.blob_bytes:
            raise RuntimeError(f"{server.name}: blob GET gave HTTP {whole.status}, {whole.bytes} bytes")
        ranged = tools.curl_get(_blob_url(bench, server), byte_range=_middle_range(sizes))
        if ranged.status != 206 or ranged.bytes != sizes.range_bytes:
            raise RuntimeError(f"{server.name}: Range GET gave HTTP {ranged.status}, {ranged.bytes} bytes")
        if not bench.wants_listings:
            continue
        every = client.get_json(f"/v2/{TAGS_REPO}/tags/list")
        # Distribution 2.8 lists tags in no particular order
        if sorted(every.get("tags") or []) != [tag_name(i) for i in range(sizes.tags)]:
            raise RuntimeError(f"{server.name}: tags/list without n= did not return all {sizes.tags} tags")
        first = client.get_json(f"/v2/{TAGS_REPO}/tags/list?n={sizes.page}")
        middle = client.get_json(f"/v2/{TAGS_REPO}/tags/list?n={sizes.page}&last={tag_name(sizes.tags // 2)}")
        expected = [tag_name(i) for i in range(sizes.tags // 2 + 1, sizes.tags // 2 + 1 + sizes.page)]
        expected_first = [tag_name(i) for i in range(sizes.page)]
        if first.get("tags") == every["tags"] and middle.get("tags") == every["tags"]:
            # Distribution 2.8 ignores n= and last= on tags/list (paging came in 3.0)
            note = "ignores n= and last= on tags/list: every page is the whole list"
            server.info["tags_paging"] = note
            bench.notes.append(f"{server.name} {note}")
        elif first.get("tags") != expected_first or middle.get("tags") != expected:
            raise RuntimeError(f"{server.name}: tags/list pages are wrong: {middle.get('tags')!r:.200}")
        catalog = client.get_json(f"/v2/_catalog?n={sizes.page}&last={catalog_repo(sizes.repositories // 2)}")
        names = catalog.get("repositories") or []
        if not names or names[0] != catalog_repo(sizes.repositories // 2 + 1):
            raise RuntimeError(f"{server.name}: the middle catalog page is wrong")


def _middle_range(sizes: Sizes) -> tuple[int, int]:
    first = (sizes.blob_bytes - sizes.range_bytes) // 2
    return first, first + sizes.range_bytes - 1


# --------------------------------------------------------------------------------------------- items


def _blob_url(bench: Bench, server: Server) -> str:
    if server.name == "nginx":
        return f"{server.url}/blob.bin"
    return f"{server.url}/v2/{BLOB_REPO}/blobs/{bench.blob_digest}"


def blob_get_full(bench: Bench, server: Server, _round: int) -> Metrics:
    result = tools.curl_get(_blob_url(bench, server))
    if result.status != 200 or result.bytes != bench.sizes.blob_bytes:
        raise RuntimeError(f"{server.name}: blob GET gave HTTP {result.status}, {result.bytes} bytes")
    return {"mbps": result.mb_per_second}


def blob_get_range(bench: Bench, server: Server, _round: int) -> Metrics:
    result = tools.curl_get(_blob_url(bench, server), byte_range=_middle_range(bench.sizes))
    if result.status != 206 or result.bytes != bench.sizes.range_bytes:
        raise RuntimeError(f"{server.name}: Range GET gave HTTP {result.status}, {result.bytes} bytes")
    return {"mbps": result.mb_per_second}


def make_upload_variant(bench: Bench, mode: str, round_no: int) -> None:
    """A new blob for every round and mode (the same bytes for every server): the first 64 bytes
    change, so no server sees a blob it already has."""
    marker = f"shipyard-bench upload {mode} round {round_no} {time.time_ns()}".encode().ljust(64, b".")
    fd = os.open(bench.upload_path, os.O_WRONLY)
    try:
        os.pwrite(fd, marker[:64], 0)
    finally:
        os.close(fd)
    bench.upload_digests[mode] = file_digest(bench.upload_path)


def upload_monolithic(bench: Bench, server: Server, _round: int) -> Metrics:
    client = bench.client(server)
    digest = bench.upload_digests["monolithic"]
    location = client.start_upload(UPLOAD_REPO)
    result = tools.curl_put_file(client.with_digest(location, digest), bench.upload_path)
    if result.status != 201:
        raise RuntimeError(f"{server.name}: monolithic upload gave HTTP {result.status}")
    client.delete_blob(UPLOAD_REPO, digest)
    return {"mbps": bench.sizes.upload_bytes / result.seconds / 1e6}


def upload_chunked(bench: Bench, server: Server, _round: int) -> Metrics:
    client = bench.client(server)
    digest = bench.upload_digests["chunked"]
    started = time.perf_counter()
    client.upload_file(UPLOAD_REPO, bench.upload_path, digest, chunk=bench.sizes.chunk_bytes)
    seconds = time.perf_counter() - started
    client.delete_blob(UPLOAD_REPO, digest)
    return {"mbps": bench.sizes.upload_bytes / seconds / 1e6}


def manifest_load(method: str, reference: str, connections: int) -> Callable[[Bench, Server, int], Metrics]:
    def run(bench: Bench, server: Server, _round: int) -> Metrics:
        assert bench.app is not None
        ref = APP_TAG if reference == "tag" else bench.app.digest
        url = f"{server.url}/v2/{APP_REPO}/manifests/{ref}"
        headers = {"Accept": MANIFEST_ACCEPT}
        if server.name == AUTH_SERVER:
            headers["Authorization"] = f"Bearer {bench.token(server)}"
        seconds = bench.sizes.load_seconds
        if method == "GET":
            result = tools.wrk(
                url, connections=connections, seconds=seconds, headers=headers, script=bench.wrk_script
            )
        else:
            result = tools.hey(url, connections=connections, seconds=seconds, method=method, headers=headers)
        return _load_metrics(server, result)

    return run


def smallfile_load(connections: int) -> Callable[[Bench, Server, int], Metrics]:
    def run(bench: Bench, server: Server, _round: int) -> Metrics:
        result = tools.wrk(
            f"{server.url}/small.json",
            connections=connections,
            seconds=bench.sizes.load_seconds,
            headers=None,
            script=bench.wrk_script,
        )
        return _load_metrics(server, result)

    return run


def _load_metrics(server: Server, result: tools.LoadResult) -> Metrics:
    if result.requests == 0 or result.errors > result.requests * 0.01:
        raise RuntimeError(
            f"{server.name}: {result.errors} errors ({result.error_kinds}) in {result.requests} requests"
        )
    return {
        "rps": result.requests_per_second,
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "requests": float(result.requests),
    }


def listing_latency(path: Callable[[Bench], str]) -> Callable[[Bench, Server, int], Metrics]:
    def run(bench: Bench, server: Server, _round: int) -> Metrics:
        result = tools.wrk(
            f"{server.url}{path(bench)}",
            connections=1,
            seconds=bench.sizes.latency_seconds,
            headers=None,
            script=bench.wrk_script,
        )
        metrics = _load_metrics(server, result)
        return {"p50_ms": metrics["p50_ms"], "requests": metrics["requests"]}

    return run


def small_push(bench: Bench, server: Server, round_no: int) -> Metrics:
    layout = bench.layouts[round_no]
    count = bench.sizes.small_images
    jobs: list[Callable[[], object]] = [
        functools.partial(
            tools.skopeo_copy,
            f"oci:{layout}:i{i}",
            f"docker://{server.address}/{push_repo(round_no, i)}:v1",
            bench.policy,
        )
        for i in range(count)
    ]
    seconds = _parallel(bench.sizes.push_parallel, jobs)
    return {"images_per_s": count / seconds}


def reference_sha256(bench: Bench, _server: Server, _round: int) -> Metrics:
    block = os.urandom(16 * MiB)
    view = memoryview(block)
    total = bench.sizes.upload_bytes
    digest = hashlib.sha256()
    started = time.perf_counter()
    done = 0
    while done < total:
        for offset in range(0, len(block), MiB):
            digest.update(view[offset : offset + MiB])
        done += len(block)
    return {"mbps": done / (time.perf_counter() - started) / 1e6}


def reference_disk(bench: Bench, _server: Server, _round: int) -> Metrics:
    """Write `upload_bytes` in 1 MiB writes next to the data directories, then fsync."""
    block = os.urandom(MiB)
    path = bench.work / "fsync-test.bin"
    started = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(bench.sizes.upload_bytes // MiB):
            os.write(fd, block)
        os.fsync(fd)
    finally:
        os.close(fd)
    seconds = time.perf_counter() - started
    path.unlink()
    return {"mbps": bench.sizes.upload_bytes / seconds / 1e6}


def build_items(bench: Bench) -> list[Item]:
    sizes = bench.sizes
    registries = bench.present(("shipyard", "shipyard-pg", "distribution"))
    blob_servers = bench.present(("shipyard", "shipyard-pg", "distribution", "nginx"))

    def bind(fn: Callable[[Bench, Server, int], Metrics]) -> Callable[[Server, int], Metrics]:
        return lambda server, round_no: fn(bench, server, round_no)

    items = [
        Item("reference.sha256", ("reference",), bind(reference_sha256)),
        Item("reference.disk_fsync_write", ("reference",), bind(reference_disk)),
        Item(
            "blob_get_full",
            blob_servers,
            bind(blob_get_full),
            bytes_moved=sizes.blob_bytes,
            repeats=sizes.blob_get_repeats,
        ),
        Item(
            "blob_get_range",
            blob_servers,
            bind(blob_get_range),
            bytes_moved=sizes.range_bytes,
            repeats=sizes.blob_get_repeats,
        ),
        Item(
            "upload_monolithic",
            registries,
            bind(upload_monolithic),
            prepare=lambda r: make_upload_variant(bench, "monolithic", r),
            bytes_moved=sizes.upload_bytes,
        ),
        Item(
            "upload_chunked",
            registries,
            bind(upload_chunked),
            prepare=lambda r: make_upload_variant(bench, "chunked", r),
            bytes_moved=sizes.upload_bytes,
        ),
    ]
    # with a token as well as without: the GETs (wrk) only, the HEADs go through hey's own overhead
    with_auth = bench.present(("shipyard", AUTH_SERVER, "shipyard-pg", "distribution"))
    for connections in sizes.connections:
        for method in ("GET", "HEAD"):
            for reference in ("tag", "digest"):
                items.append(
                    Item(
                        f"manifest_{method.lower()}_{reference}.c{connections}",
                        with_auth if method == "GET" else registries,
                        bind(manifest_load(method, reference, connections)),
                        cpu_per_request=True,
                        rounds=sizes.rounds_of_load,
                    )
                )
        if "nginx" in bench.servers:
            items.append(
                Item(
                    f"smallfile_get.c{connections}",
                    ("nginx",),
                    bind(smallfile_load(connections)),
                    cpu_per_request=True,
                    rounds=sizes.rounds_of_load,
                )
            )
    half_tag = tag_name(sizes.tags // 2)
    half_repo = catalog_repo(sizes.repositories // 2)
    listings: list[tuple[str, Callable[[Bench], str]]] = [
        ("tags_list_first", lambda b: f"/v2/{TAGS_REPO}/tags/list?n={sizes.page}"),
        ("tags_list_middle", lambda b: f"/v2/{TAGS_REPO}/tags/list?n={sizes.page}&last={half_tag}"),
        ("tags_list_all", lambda b: f"/v2/{TAGS_REPO}/tags/list"),
        ("catalog_first", lambda b: f"/v2/_catalog?n={sizes.page}"),
        ("catalog_middle", lambda b: f"/v2/_catalog?n={sizes.page}&last={half_repo}"),
        ("catalog_all", lambda b: f"/v2/_catalog?n={min(sizes.repositories, 10_000)}"),
    ]
    for name, path in listings:
        if name not in sizes.listings:
            continue
        items.append(
            Item(
                name,
                registries,
                bind(listing_latency(path)),
                cpu_per_request=True,
                rounds=sizes.rounds_of_load,
            )
        )
    items.append(Item("small_push", registries, bind(small_push)))
    # the physical references always run: ratios to them need them
    return [item for item in items if item.name.startswith("reference.") or bench.wants(item.name)]


def cpu_metrics(item: Item, metrics: Metrics, cpu_seconds: float) -> Metrics:
    out = {"cpu_s": cpu_seconds}
    if item.bytes_moved:
        out["cpu_s_per_gib"] = cpu_seconds / (item.bytes_moved / GiB)
    if item.cpu_per_request and metrics.get("requests"):
        out["cpu_us_per_req"] = cpu_seconds / metrics["requests"] * 1e6
    return out


__all__ = ["Bench", "Item", "build_items", "sha256_digest"]
