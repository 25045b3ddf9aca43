"""Shipyard's benchmark: `make bench` (or `.venv/bin/python -m bench [--quick]` from the repo root).

Shipyard (SQLite and PostgreSQL), CNCF Distribution and nginx run side by side on loopback; the same
workloads go to each, interleaved round by round; the medians, ratios and targets are printed and written
to bench/results/ as a table, JSON and a PNG chart.
"""
