"""Sizes and durations of a benchmark run: full (the issue's numbers), --quick, and --smoke (tests)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MiB = 1024 * 1024
GiB = 1024 * MiB

SERVER_NAMES = ("shipyard", "shipyard-pg", "shipyard-auth", "distribution", "nginx")
REGISTRIES = ("shipyard", "shipyard-pg", "distribution")
SHIPYARDS = ("shipyard", "shipyard-pg")
# Shipyard on the embedded defaults WITH authentication: the manifest GETs carry a registry token, and
# beside "shipyard" (the same server without authentication) they show what verifying tokens costs
AUTH_SERVER = "shipyard-auth"


@dataclass(frozen=True)
class Sizes:
    mode: str
    rounds: int
    blob_bytes: int  # the blob served by GET (and by nginx as a static file)
    range_bytes: int  # the Range GET's length, taken from the middle of the blob
    upload_bytes: int
    chunk_bytes: int  # PATCH chunk size of the chunked upload
    load_seconds: int  # wrk / hey duration of each throughput run (wrk takes whole seconds)
    latency_seconds: int  # duration of each single-connection latency run
    connections: tuple[int, ...]
    manifest_layers: int
    small_images: int
    push_parallel: int
    tags: int  # tags in the tags/list repository
    repositories: int  # repositories in the catalog
    page: int  # n= of the paged listings
    growth_levels: tuple[int, ...]  # tags in the database for the growth workload
    # rounds of the duration-bound runs (manifest load, listings) and of growth; 0: as many as `rounds`
    load_rounds: int = 0
    growth_rounds: int = 0
    # blob GETs are short and the noisiest figures: each round takes this many samples of them, the
    # servers interleaved every time
    blob_get_repeats: int = 1
    growth_probes: tuple[str, ...] = (
        "manifest_get_tag",
        "manifest_get_digest",
        "tags_first",
        "tags_middle",
        "tags_last",
    )
    listings: tuple[str, ...] = (
        "tags_list_first",
        "tags_list_middle",
        "tags_list_all",
        "catalog_first",
        "catalog_middle",
        "catalog_all",
    )
    fill_threads: int = 8

    @property
    def rounds_of_load(self) -> int:
        return self.load_rounds or self.rounds

    @property
    def rounds_of_growth(self) -> int:
        return self.growth_rounds or self.rounds

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


FULL = Sizes(
    mode="full",
    rounds=3,
    blob_bytes=1 * GiB,
    range_bytes=256 * MiB,
    upload_bytes=1 * GiB,
    chunk_bytes=16 * MiB,
    load_seconds=5,
    latency_seconds=3,
    connections=(1, 16, 64),
    manifest_layers=8,
    small_images=200,
    push_parallel=8,
    tags=10_000,
    repositories=10_000,
    page=100,
    growth_levels=(1_000, 100_000, 1_000_000),
    growth_rounds=3,  # each round measures every level twice (see runner.run_growth)
    blob_get_repeats=5,
)

QUICK = Sizes(
    mode="quick",
    rounds=2,
    blob_bytes=256 * MiB,
    range_bytes=64 * MiB,
    upload_bytes=256 * MiB,
    chunk_bytes=16 * MiB,
    load_seconds=1,
    latency_seconds=1,
    connections=(16, 64),
    manifest_layers=8,
    small_images=32,
    push_parallel=8,
    tags=500,
    repositories=100,
    page=100,
    growth_levels=(1_000, 10_000, 50_000),
    load_rounds=1,
    growth_rounds=1,
    growth_probes=("manifest_get_tag", "tags_first", "tags_middle"),
    listings=("tags_list_first", "tags_list_middle", "catalog_first", "catalog_middle"),
)

SMOKE = Sizes(
    mode="smoke",
    rounds=1,
    blob_bytes=4 * MiB,
    range_bytes=1 * MiB,
    upload_bytes=4 * MiB,
    chunk_bytes=1 * MiB,
    load_seconds=1,
    latency_seconds=1,
    connections=(8,),
    manifest_layers=2,
    small_images=4,
    push_parallel=2,
    tags=30,
    repositories=20,
    page=10,
    growth_levels=(100, 300),
    load_rounds=1,
    growth_rounds=1,
    growth_probes=("manifest_get_tag", "tags_first", "tags_middle"),
    listings=("tags_list_first", "tags_list_middle", "catalog_first"),
    fill_threads=4,
)

MODES = {"full": FULL, "quick": QUICK, "smoke": SMOKE}
