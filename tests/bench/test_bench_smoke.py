"""The benchmark program runs end to end on tiny sizes and reports what it should.

Nothing here asserts a speed: the numbers of a smoke run mean nothing. The test checks that every server
starts and stops, every workload produces its metrics, the JSON, table and chart come out, and nothing is
left running or on disk afterwards.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from bench.config import SMOKE
from bench.report import medians as medians_of
from bench.report import paired_ratio, render_main, render_targets, speedup, targets
from tests.support.postgres import find_binary
from tests.support.tools import in_ci, require_tool

REPO_ROOT = Path(__file__).resolve().parents[2]

PER_SERVER_METRICS = {
    "shipyard": [
        "blob_get_full.mbps",
        "blob_get_full.cpu_s_per_gib",
        "blob_get_range.mbps",
        "upload_monolithic.mbps",
        "upload_chunked.mbps",
        "manifest_get_tag.c8.rps",
        "manifest_get_tag.c8.p50_ms",
        "manifest_get_tag.c8.p99_ms",
        "manifest_get_digest.c8.rps",
        "manifest_head_tag.c8.rps",
        "manifest_head_digest.c8.rps",
        "small_push.images_per_s",
        "tags_list_first.p50_ms",
        "tags_list_middle.p50_ms",
        "catalog_first.p50_ms",
        "setup.tag_put.rps",
        "resources.peak_rss_mib",
        "resources.peak_process_rss_mib",
        "resources.cpu_s",
        "growth.100.manifest_get_tag.p50_ms",
        "growth.300.tags_middle.p50_ms",
    ],
    "nginx": ["blob_get_full.mbps", "blob_get_range.mbps", "smallfile_get.c8.rps", "resources.cpu_s"],
}
PER_SERVER_METRICS["shipyard-pg"] = [*PER_SERVER_METRICS["shipyard"], "growth.100.fill_rows_per_s"]
PER_SERVER_METRICS["shipyard-auth"] = [
    "manifest_get_tag.c8.rps",
    "manifest_get_tag.c8.p50_ms",
    "manifest_get_digest.c8.rps",
    "resources.peak_rss_mib",
]
PER_SERVER_METRICS["distribution"] = [
    m for m in PER_SERVER_METRICS["shipyard"] if not m.startswith("growth.")
]
REFERENCE_METRICS = ["reference.sha256.mbps", "reference.disk_fsync_write.mbps"]


def _require_everything() -> None:
    require_tool("curl", "wrk", "hey", "skopeo", "nginx", "docker-registry")
    if find_binary("initdb") is None:
        reason = "missing tool: PostgreSQL server (initdb)"
        if in_ci():
            pytest.fail(reason)
        pytest.skip(reason)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
@pytest.mark.e2e
def test_smoke_run_against_every_server(tmp_path: Path) -> None:
    _require_everything()
    results, work = tmp_path / "results", tmp_path / "work"
    work.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--results-dir", str(results), "--work-dir", str(work)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-8000:]}"

    (json_path,) = results.glob("bench-smoke-*.json")
    payload = json.loads(json_path.read_text())
    assert set(payload) >= {"meta", "samples", "passes", "medians", "speedups", "targets", "table"}
    meta = payload["meta"]
    assert meta["mode"] == "smoke"
    assert meta["cleanup_problems"] == []
    assert [note for note in meta["notes"] if " failed: " in note] == []
    assert set(meta["servers"]) == {"shipyard", "shipyard-pg", "shipyard-auth", "distribution", "nginx"}
    assert meta["servers"]["shipyard-auth"]["auth"] == "on"
    assert meta["servers"]["shipyard"]["auth"].startswith("off")

    medians = payload["medians"]
    for server, metrics in PER_SERVER_METRICS.items():
        missing = [m for m in metrics if server not in medians.get(m, {})]
        assert not missing, f"{server} lacks {missing}"
    for metric in REFERENCE_METRICS:
        assert "reference" in medians[metric]
    for metric, by_server in payload["samples"].items():
        for server, values in by_server.items():
            assert len(values) >= 1, (metric, server)
            assert all(isinstance(v, (int, float)) for v in values), (metric, server)
            assert len(payload["passes"][metric][server]) == len(values), (metric, server)
    # the blob GETs and manifest loads of every server share their passes, growth its levels
    assert (
        payload["passes"]["blob_get_full.mbps"]["shipyard"]
        == payload["passes"]["blob_get_full.mbps"]["nginx"]
    )
    assert set(payload["passes"]["growth.100.manifest_get_tag.p50_ms"]["shipyard"]) == set(
        payload["passes"]["growth.300.manifest_get_tag.p50_ms"]["shipyard"]
    )

    assert "shipyard/distribution" in payload["speedups"]["manifest_get_tag.c8.rps"]
    assert "shipyard/nginx" in payload["speedups"]["blob_get_full.mbps"]
    labels = {(t["label"], t["server"]) for t in payload["targets"]}
    for server in ("shipyard", "shipyard-pg"):
        assert ("blob GET full vs nginx", server) in labels
        assert ("upload chunked vs hashlib sha256", server) in labels
        assert ("small-image push vs Distribution", server) in labels
        assert ("peak RSS of one process", server) in labels
    token_targets = [t for t in payload["targets"] if t["server"] == "shipyard-auth"]
    assert {t["label"] for t in token_targets} == {
        "manifest GET by tag c=8 with a token vs Distribution",
        "manifest GET by digest c=8 with a token vs Distribution",
    }
    assert all(t["measured"] is not None for t in token_targets)
    assert "token verification" in payload["table"]
    for target in payload["targets"]:
        assert target["passed"] in (True, False, None)

    table = payload["table"]
    assert (results / json_path.name.replace(".json", ".txt")).read_text().strip() == table.strip()
    for heading in ("workload", "physical reference", "growth (tags in the database)", "target"):
        assert heading in table
    for label in ("blob GET full", "upload chunked PATCH", "manifest HEAD digest c=8", "catalog first page"):
        assert label in table
    assert "PASS" in table or "MISS" in table
    assert table in done.stdout

    if importlib.util.find_spec("matplotlib") is not None:
        (png,) = results.glob("bench-smoke-*.png")
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # every server stopped, every temporary directory removed
    for info in meta["servers"].values():
        assert not _listening(int(info["port"])), info
    assert list(work.iterdir()) == []


def test_targets_are_judged_from_the_table_medians() -> None:
    """The pass/miss marks follow the medians (synthetic numbers: this checks the arithmetic only)."""
    medians = {
        "blob_get_full.mbps": {"shipyard": 960.0, "nginx": 1000.0},
        "blob_get_range.mbps": {"shipyard": 500.0, "nginx": 1000.0},
        "manifest_get_tag.c16.rps": {"shipyard": 11_000.0, "distribution": 1000.0},
        "manifest_get_tag.c16.p50_ms": {"shipyard": 1.0, "distribution": 4.0},
        "resources.peak_process_rss_mib": {"shipyard": 200.0},
    }
    sizes = dataclasses.replace(SMOKE, connections=(16,))
    judged = {(t.label, t.server): t for t in targets(medians, sizes)}
    assert judged[("blob GET full vs nginx", "shipyard")].mark == "PASS"
    assert judged[("blob GET range vs nginx", "shipyard")].mark == "MISS"
    assert judged[("peak RSS of one process", "shipyard")].mark == "MISS"
    assert judged[("manifest GET by tag c=16 vs Distribution", "shipyard")].mark == "PASS"
    assert judged[("small-image push vs Distribution", "shipyard")].mark == "n/a"
    assert not any(server == "shipyard-pg" for _, server in judged)
    assert speedup(medians, "manifest_get_tag.c16.rps", "shipyard", "distribution") == 11.0
    assert speedup(medians, "manifest_get_tag.c16.p50_ms", "shipyard", "distribution") == 4.0
    table = render_main(medians, sizes)
    assert "blob GET full" in table and "11.00x" in table


def test_a_target_takes_the_median_of_the_per_pass_ratios_when_passes_pair_up() -> None:
    """Synthetic numbers: the machine was slow for both servers in the last two passes, and in the
    second pass only Shipyard's sample was hit. Paired, the slow passes cancel out and the hit sample is
    one pair of four (a pass); the medians' quotient reads a miss."""
    samples = {
        "blob_get_full.mbps": {
            "shipyard": [2000.0, 1000.0, 1000.0, 1000.0],
            "nginx": [2000.0, 2000.0, 1000.0, 1000.0],
        },
        "blob_get_range.mbps": {"shipyard": [900.0, 900.0], "nginx": [1000.0, 1000.0]},
    }
    passes = {
        "blob_get_full.mbps": {"shipyard": ["p0", "p1", "p2", "p3"], "nginx": ["p0", "p1", "p2", "p3"]},
        "blob_get_range.mbps": {"shipyard": ["p0", "p1"], "nginx": ["p0", "p1"]},
    }
    assert paired_ratio(samples, passes, "blob_get_full.mbps", "shipyard", "nginx") == (1.0, 4)
    # too few pairs, or samples that belong to no pass: no paired figure
    assert paired_ratio(samples, passes, "blob_get_range.mbps", "shipyard", "nginx") is None
    unpaired = {m: {s: [""] * len(v) for s, v in by.items()} for m, by in passes.items()}
    assert paired_ratio(samples, unpaired, "blob_get_full.mbps", "shipyard", "nginx") is None
    # passes that only one side has are left out
    lopsided = {
        **passes,
        "blob_get_full.mbps": {**passes["blob_get_full.mbps"], "nginx": ["p0", "x", "p2", "p3"]},
    }
    assert paired_ratio(samples, lopsided, "blob_get_full.mbps", "shipyard", "nginx") == (1.0, 3)

    medians = medians_of(samples)
    judged = {t.label: t for t in targets(medians, SMOKE, samples, passes) if t.server == "shipyard"}
    full = judged["blob GET full vs nginx"]
    assert (full.measured, full.pairs, full.mark) == (1.0, 4, "PASS")
    # range has two pairs only: the medians' quotient, 900 / 1000
    ranged = judged["blob GET range vs nginx"]
    assert (ranged.measured, ranged.pairs, ranged.mark) == (0.9, 0, "MISS")
    # without the passes, full is judged on the medians: 1000 / 1500
    plain = {t.label: t for t in targets(medians, SMOKE) if t.server == "shipyard"}
    assert plain["blob GET full vs nginx"].measured == 1000.0 / 1500.0
    assert plain["blob GET full vs nginx"].mark == "MISS"
    assert "4 pairs" in render_targets(list(judged.values()))
