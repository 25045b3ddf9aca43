"""The GC benchmark runs on a tiny store and frees exactly its garbage (no speed is asserted)."""

from __future__ import annotations

from bench.gc import measure


def test_the_gc_benchmark_frees_exactly_the_garbage_it_made() -> None:
    figures = measure("sqlite", 500, 0.1)
    # measure() itself checks that the report and the store agree with the garbage it made
    assert figures["freed_objects"] == 50 and figures["freed_bytes"] == 50 * 1024
    assert figures["gc_s"] > 0 and figures["objects_per_s"] > 0
