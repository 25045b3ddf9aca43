"""Medians, ratios and targets of a run; the text tables, the JSON file and the PNG chart."""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.config import AUTH_SERVER, SHIPYARDS, Sizes

Samples = dict[str, dict[str, list[float]]]  # metric -> server -> one value per round
Medians = dict[str, dict[str, float]]
# metric -> server -> the pass of each sample, side by side with Samples ("": none, never paired)
Passes = dict[str, dict[str, list[str]]]

HIGHER_IS_BETTER = ("mbps", "rps", "images_per_s")
UNITS = {
    "mbps": "MB/s",
    "rps": "req/s",
    "images_per_s": "img/s",
    "p50_ms": "ms",
    "p99_ms": "ms",
    "cpu_s_per_gib": "CPU-s/GiB",
    "cpu_us_per_req": "CPU-us/req",
    "cpu_s": "CPU-s",
    "mib": "MiB",
}
COLUMNS = ("shipyard", "shipyard-pg", "distribution", "nginx")


def higher_is_better(metric: str) -> bool:
    return metric.rsplit(".", 1)[-1] in HIGHER_IS_BETTER


def unit_of(metric: str) -> str:
    last = metric.rsplit(".", 1)[-1]
    if last.endswith("_mib"):
        return "MiB"
    return UNITS.get(last, "")


def medians(samples: Samples) -> Medians:
    return {
        metric: {server: statistics.median(values) for server, values in by_server.items() if values}
        for metric, by_server in samples.items()
    }


def speedup(
    medians_: Medians, metric: str, server: str, reference: str, ref_metric: str | None = None
) -> float | None:
    """How many times better `server` is than `reference` on `metric` (>1: better); None if unknown."""
    value = medians_.get(metric, {}).get(server)
    ref = medians_.get(ref_metric or metric, {}).get(reference)
    if value is None or ref is None or value <= 0 or ref <= 0:
        return None
    return value / ref if higher_is_better(metric) else ref / value


# --------------------------------------------------------------------------------------------- targets

# a target that compares two figures measured in the same passes takes the median of the per-pass
# ratios when at least this many passes have both: a pass is a few seconds, so a slow minute of the
# machine weighs on both sides of a pair alike instead of on whichever server it fell on
MIN_PAIRS = 3


@dataclass(frozen=True)
class Target:
    label: str
    server: str
    measured: float | None
    op: str  # ">=", "<=" or "<"
    goal: float
    unit: str  # "x" for a ratio, otherwise the unit of an absolute goal
    pairs: int = 0  # the passes whose ratios gave `measured`; 0: the quotient of the two medians

    @property
    def passed(self) -> bool | None:
        if self.measured is None or math.isnan(self.measured):
            return None
        if self.op == ">=":
            return self.measured >= self.goal
        if self.op == "<=":
            return self.measured <= self.goal
        return self.measured < self.goal

    @property
    def mark(self) -> str:
        return {True: "PASS", False: "MISS", None: "n/a"}[self.passed]

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def _ratio(
    m: Medians, metric: str, server: str, ref_server: str, ref_metric: str | None = None
) -> float | None:
    """Plain quotient value/reference (not a speed-up): the form the targets are written in."""
    value = m.get(metric, {}).get(server)
    ref = m.get(ref_metric or metric, {}).get(ref_server)
    if value is None or ref is None or ref == 0:
        return None
    return value / ref


def _by_pass(samples: Samples, passes: Passes, metric: str, server: str) -> dict[str, float]:
    values = samples.get(metric, {}).get(server, [])
    keys = passes.get(metric, {}).get(server, [])
    if len(keys) != len(values):  # not recorded side by side: no pairing
        return {}
    return {key: value for key, value in zip(keys, values, strict=True) if key}


def paired_ratio(
    samples: Samples, passes: Passes, metric: str, server: str, ref_server: str, ref_metric: str | None = None
) -> tuple[float, int] | None:
    """The median of value/reference over the passes that measured both, and how many there were;
    None when fewer than MIN_PAIRS passes did."""
    values = _by_pass(samples, passes, metric, server)
    refs = _by_pass(samples, passes, ref_metric or metric, ref_server)
    ratios = [value / refs[key] for key, value in values.items() if refs.get(key)]
    if len(ratios) < MIN_PAIRS:
        return None
    return statistics.median(ratios), len(ratios)


def targets(
    m: Medians, sizes: Sizes, samples: Samples | None = None, passes: Passes | None = None
) -> list[Target]:
    """The issue's targets, judged on this run. With the samples and their passes, a ratio of two figures
    measured in the same passes is the median of the per-pass ratios; otherwise the medians' quotient."""
    out: list[Target] = []

    def compare(
        label: str,
        server: str,
        metric: str,
        ref_server: str,
        op: str,
        goal: float,
        ref_metric: str | None = None,
    ) -> None:
        paired = (
            paired_ratio(samples, passes, metric, server, ref_server, ref_metric)
            if samples and passes
            else None
        )
        if paired is not None:
            out.append(Target(label, server, paired[0], op, goal, "x", paired[1]))
        else:
            out.append(
                Target(label, server, _ratio(m, metric, server, ref_server, ref_metric), op, goal, "x")
            )

    for server in SHIPYARDS:
        if not any(server in by_server for by_server in m.values()):
            continue
        for kind in ("full", "range"):
            compare(f"blob GET {kind} vs nginx", server, f"blob_get_{kind}.mbps", "nginx", ">=", 0.95)
        for mode in ("monolithic", "chunked"):
            metric = f"upload_{mode}.mbps"
            compare(f"upload {mode} vs Distribution", server, metric, "distribution", ">=", 1.0)
            compare(
                f"upload {mode} vs hashlib sha256",
                server,
                metric,
                "reference",
                ">=",
                0.4,
                "reference.sha256.mbps",
            )
        goal = 10.0 if server == "shipyard" else 3.0
        for connections in (16, 64):
            if connections not in sizes.connections:
                continue
            for method in ("get", "head"):
                for reference in ("tag", "digest"):
                    metric = f"manifest_{method}_{reference}.c{connections}.rps"
                    label = f"manifest {method.upper()} by {reference} c={connections} vs Distribution"
                    compare(label, server, metric, "distribution", ">=", goal)
        compare(
            "small-image push vs Distribution", server, "small_push.images_per_s", "distribution", ">=", 1.2
        )
        out.append(
            Target(
                "peak RSS of one process",
                server,
                m.get("resources.peak_process_rss_mib", {}).get(server),
                "<",
                150.0,
                "MiB",
            )
        )
        compare(
            "tags/list middle page vs first page",
            server,
            "tags_list_middle.p50_ms",
            server,
            "<=",
            1.25,
            "tags_list_first.p50_ms",
        )
        low, high = min(sizes.growth_levels), max(sizes.growth_levels)
        compare(
            f"growth: manifest GET p50 at {high:,} vs {low:,} tags",
            server,
            f"growth.{high}.manifest_get_tag.p50_ms",
            server,
            "<=",
            1.2,
            f"growth.{low}.manifest_get_tag.p50_ms",
        )
        for page in ("middle", "last"):
            if f"tags_{page}" not in sizes.growth_probes:
                continue
            compare(
                f"growth: tags/list {page} vs first page at {high:,} tags",
                server,
                f"growth.{high}.tags_{page}.p50_ms",
                server,
                "<=",
                1.25,
                f"growth.{high}.tags_first.p50_ms",
            )
    # With authentication on, as users run it, the manifest goal still holds against Distribution (which
    # runs without). What a token costs next to no authentication is the token table's ratio: a figure,
    # not a goal, since every gain on the path both share lowers it.
    for connections in sizes.connections:
        if connections < 16 and connections != max(sizes.connections):
            continue
        for reference in ("tag", "digest"):
            compare(
                f"manifest GET by {reference} c={connections} with a token vs Distribution",
                AUTH_SERVER,
                f"manifest_get_{reference}.c{connections}.rps",
                "distribution",
                ">=",
                10.0,
            )
    return out


# --------------------------------------------------------------------------------------------- tables


def _fmt(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _ratio_fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
        for row in [header, ["-" * w for w in widths], *rows]
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class Row:
    label: str
    metric: str
    nginx_metric: str | None = None  # what nginx's column and the nginx ratio compare against


def main_rows(sizes: Sizes) -> list[Row]:
    rows = [
        Row("blob GET full", "blob_get_full.mbps", "blob_get_full.mbps"),
        Row("blob GET full, server CPU", "blob_get_full.cpu_s_per_gib", "blob_get_full.cpu_s_per_gib"),
        Row("blob GET Range", "blob_get_range.mbps", "blob_get_range.mbps"),
        Row("blob GET Range, server CPU", "blob_get_range.cpu_s_per_gib", "blob_get_range.cpu_s_per_gib"),
        Row("upload monolithic PUT", "upload_monolithic.mbps"),
        Row("upload monolithic, server CPU", "upload_monolithic.cpu_s_per_gib"),
        Row(f"upload chunked PATCH ({sizes.chunk_bytes >> 20} MiB)", "upload_chunked.mbps"),
        Row("upload chunked, server CPU", "upload_chunked.cpu_s_per_gib"),
    ]
    for method in ("get", "head"):
        for reference in ("tag", "digest"):
            for c in sizes.connections:
                base = f"manifest_{method}_{reference}.c{c}"
                nginx = f"smallfile_get.c{c}" if method == "get" else None
                label = f"manifest {method.upper()} {reference} c={c}"
                rows.append(Row(label, f"{base}.rps", f"{nginx}.rps" if nginx else None))
                rows.append(Row("  p50", f"{base}.p50_ms", f"{nginx}.p50_ms" if nginx else None))
                rows.append(Row("  p99", f"{base}.p99_ms", f"{nginx}.p99_ms" if nginx else None))
                rows.append(
                    Row(
                        "  server CPU",
                        f"{base}.cpu_us_per_req",
                        f"{nginx}.cpu_us_per_req" if nginx else None,
                    )
                )
    rows += [
        Row(
            f"push {sizes.small_images} small images, {sizes.push_parallel} at a time",
            "small_push.images_per_s",
        ),
        Row(f"tags/list first page (n={sizes.page}, {sizes.tags:,} tags)", "tags_list_first.p50_ms"),
        Row("tags/list middle page (last=)", "tags_list_middle.p50_ms"),
        Row("tags/list everything (no n=)", "tags_list_all.p50_ms"),
        Row(f"catalog first page ({sizes.repositories:,} repositories)", "catalog_first.p50_ms"),
        Row("catalog middle page (last=)", "catalog_middle.p50_ms"),
        Row(f"catalog n={min(sizes.repositories, 10_000):,}", "catalog_all.p50_ms"),
        Row("set-up: manifest PUT with a new tag (8 threads)", "setup.tag_put.rps"),
        Row("peak RSS, whole server", "resources.peak_rss_mib"),
        Row("peak RSS, largest process", "resources.peak_process_rss_mib"),
        Row("peak RSS, shipyard-pg's PostgreSQL", "resources.postgres_peak_rss_mib"),
        Row("CPU-seconds, whole run (pg: with PostgreSQL)", "resources.cpu_s"),
    ]
    return rows


def render_main(m: Medians, sizes: Sizes) -> str:
    header = ["workload", "unit", *COLUMNS, "sy/dist", "pg/dist", "sy/nginx", "pg/nginx"]
    rows: list[list[str]] = []
    for row in main_rows(sizes):
        if row.metric not in m and not (row.nginx_metric and row.nginx_metric in m):
            continue
        values = m.get(row.metric, {})
        cells = [row.label, unit_of(row.metric)]
        for server in COLUMNS:
            value = values.get(server)
            if server == "nginx" and row.nginx_metric:
                value = m.get(row.nginx_metric, {}).get("nginx")
            cells.append(_fmt(value))
        for server in SHIPYARDS:
            cells.append(_ratio_fmt(speedup(m, row.metric, server, "distribution")))
        for server in SHIPYARDS:
            cells.append(
                _ratio_fmt(speedup(m, row.metric, server, "nginx", row.nginx_metric))
                if row.nginx_metric
                else "-"
            )
        rows.append(cells)
    return _table(header, rows)


def render_auth(m: Medians, sizes: Sizes) -> str:
    """Manifest GETs of the same server build with and without authentication: what tokens cost."""
    header = ["token verification (SQLite)", "unit", "no auth", "with token", "ratio"]
    rows: list[list[str]] = []
    for reference in ("tag", "digest"):
        for c in sizes.connections:
            for what in ("rps", "p50_ms", "cpu_us_per_req"):
                metric = f"manifest_get_{reference}.c{c}.{what}"
                off = m.get(metric, {}).get("shipyard")
                on = m.get(metric, {}).get(AUTH_SERVER)
                if off is None and on is None:
                    continue
                label = f"manifest GET {reference} c={c}" if what == "rps" else f"  {what.split('_')[0]}"
                ratio = None if off is None or on is None or off == 0 else on / off
                rows.append([label, unit_of(metric), _fmt(off), _fmt(on), _ratio_fmt(ratio)])
    return _table(header, rows) if rows else ""


def render_references(m: Medians, sizes: Sizes) -> str:
    rows = [
        [
            "hashlib sha256 (one thread, 1 MiB updates)",
            "MB/s",
            _fmt(m.get("reference.sha256.mbps", {}).get("reference")),
        ],
        [
            "disk write + fsync (1 MiB writes)",
            "MB/s",
            _fmt(m.get("reference.disk_fsync_write.mbps", {}).get("reference")),
        ],
        ["nginx blob GET full (sendfile)", "MB/s", _fmt(m.get("blob_get_full.mbps", {}).get("nginx"))],
        ["nginx blob GET Range", "MB/s", _fmt(m.get("blob_get_range.mbps", {}).get("nginx"))],
    ]
    for c in sizes.connections:
        rows.append(
            [f"nginx 2 KB file, wrk c={c}", "req/s", _fmt(m.get(f"smallfile_get.c{c}.rps", {}).get("nginx"))]
        )
    return _table(["physical reference (same run)", "unit", "value"], rows)


def render_growth(m: Medians, sizes: Sizes) -> str:
    header = ["growth (tags in the database)", "unit"]
    for server in SHIPYARDS:
        header += [server, f"vs {min(sizes.growth_levels):,}"]
    rows = []
    for what, label in (
        ("manifest_get_tag", "manifest GET by tag p50"),
        ("manifest_get_digest", "manifest GET by digest p50"),
        ("tags_first", f"tags/list first page p50 (n={sizes.page})"),
        ("tags_middle", "tags/list middle page p50"),
        ("tags_last", "tags/list last page p50"),
    ):
        for level in sizes.growth_levels:
            metric = f"growth.{level}.{what}.p50_ms"
            base = f"growth.{min(sizes.growth_levels)}.{what}.p50_ms"
            if metric not in m:
                continue
            cells = [f"{label} @ {level:,}", "ms"]
            for server in SHIPYARDS:
                cells.append(_fmt(m.get(metric, {}).get(server)))
                ratio = _ratio(m, metric, server, server, base)
                cells.append(_ratio_fmt(ratio))
            rows.append(cells)
    for level in sizes.growth_levels:
        fill = f"growth.{level}.fill_rows_per_s"
        cells = [f"SQL fill rate of {level:,} tags", "rows/s"]
        for server in SHIPYARDS:
            cells += [_fmt(m.get(fill, {}).get(server)), ""]
        rows.append(cells)
    return _table(header, rows)


def render_targets(ts: list[Target]) -> str:
    rows = []
    for t in ts:
        measured = (
            "-"
            if t.measured is None
            else (f"{t.measured:.2f}x" if t.unit == "x" else f"{t.measured:.1f} {t.unit}")
        )
        goal = f"{t.op} {t.goal:g}{'x' if t.unit == 'x' else ' ' + t.unit}"
        basis = f"{t.pairs} pairs" if t.pairs else ("medians" if t.unit == "x" else "")
        rows.append([t.label, t.server, measured, basis, goal, t.mark])
    passed = sum(1 for t in ts if t.passed)
    known = sum(1 for t in ts if t.passed is not None)
    return (
        _table(["target", "server", "measured", "from", "goal", "mark"], rows)
        + f"\n{passed} of {known} targets met"
    )


def render(m: Medians, sizes: Sizes, ts: list[Target], meta: dict[str, Any]) -> str:
    parts = [
        f"Shipyard benchmark ({meta.get('shipyard_commit', '?')}), {sizes.mode} mode: medians of "
        f"{sizes.rounds} round(s) ({sizes.rounds_of_load} for the load and latency runs, "
        f"{sizes.rounds * sizes.blob_get_repeats} samples of the blob GETs); wall time "
        f"{meta.get('wall_seconds', 0):.0f} s; load average {meta.get('loadavg_start', '?')} -> "
        f"{meta.get('loadavg_end', '?')} on {meta.get('cpus', '?')} CPUs",
        "Authentication is off on every registry (Shipyard with SHIPYARD_INSECURE_NO_AUTH=true; Distribution"
        " has none configured) except shipyard-auth: the embedded defaults with authentication on, whose"
        " manifest GETs carry a registry token (see the token verification table).",
        "Ratios: >1 means Shipyard is better (a throughput ratio, or the inverse of a latency or cost"
        " ratio).",
        "The targets' ratios are plain quotients (value / reference). Where both figures were measured in the"
        " same passes, a target takes the median of the per-pass quotients ('N pairs'); otherwise the"
        " quotient of the two medians ('medians'), as the workload table does.",
        "",
        render_main(m, sizes),
        "",
        render_references(m, sizes),
        "",
        render_auth(m, sizes),
        "",
        render_growth(m, sizes),
        "",
        render_targets(ts),
    ]
    if meta.get("notes"):
        parts += ["", "Notes:", *(f"- {note}" for note in meta["notes"])]
    return "\n".join(parts)


# --------------------------------------------------------------------------------------------- files


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def draw_chart(path: Path, m: Medians, sizes: Sizes, ts: list[Target]) -> bool:
    """A PNG of the ratios: the targets (measured vs goal) and every workload vs Distribution."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False

    ratio_targets = [t for t in ts if t.unit == "x" and t.measured is not None]
    vs_dist = [
        row
        for row in main_rows(sizes)
        if not row.metric.startswith(("resources.", "setup."))
        and any(speedup(m, row.metric, s, "distribution") for s in SHIPYARDS)
        and not row.label.startswith("  ")
    ]
    height = max(4.0, 0.28 * (len(ratio_targets) + len(vs_dist)) + 2.5)
    fig, (ax1, ax2) = plt.subplots(
        1, 2, figsize=(17, height), gridspec_kw={"width_ratios": [1, 1]}, constrained_layout=True
    )

    labels = [f"{t.label} [{t.server}]" for t in ratio_targets]
    values = [t.measured or 0.0 for t in ratio_targets]
    colors = ["#2e7d32" if t.passed else "#c62828" for t in ratio_targets]
    y = range(len(ratio_targets))
    ax1.barh(list(y), values, color=colors)
    ax1.scatter(
        [t.goal for t in ratio_targets], list(y), marker="|", s=300, color="black", zorder=3, label="goal"
    )
    ax1.set_yticks(list(y), labels, fontsize=7)
    ax1.invert_yaxis()
    ax1.set_xscale("log")
    ax1.set_xlabel("measured ratio (log); green = met, red = missed, | = goal")
    ax1.set_title(f"Targets ({sizes.mode} run)")
    ax1.legend(loc="lower right", fontsize=7)

    y2 = list(range(len(vs_dist)))
    width = 0.4
    for offset, server, color in ((-width / 2, "shipyard", "#1565c0"), (width / 2, "shipyard-pg", "#6a1b9a")):
        values = [speedup(m, row.metric, server, "distribution") or 0.0 for row in vs_dist]
        ax2.barh([v + offset for v in y2], values, height=width, color=color, label=server)
    ax2.axvline(1.0, color="black", linewidth=0.8)
    ax2.set_yticks(y2, [row.label for row in vs_dist], fontsize=7)
    ax2.invert_yaxis()
    ax2.set_xscale("log")
    ax2.set_xlabel("times better than CNCF Distribution (log; >1 = Shipyard better)")
    ax2.set_title("Shipyard vs Distribution, medians")
    ax2.legend(loc="lower right", fontsize=7)
    from matplotlib.ticker import NullFormatter

    for ax in (ax1, ax2):
        ax.xaxis.set_minor_formatter(NullFormatter())
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
