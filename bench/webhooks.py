"""Push throughput with one webhook subscribed vs none, side by side on one Shipyard (SQLite,
authentication on): rounds alternate the two (ABBA), the webhook's receiver is a live local HTTP
server answering 200, and each webhook run subscribes before and unsubscribes after.

`python -m bench.webhooks [--images N] [--rounds R] [--threads T]`"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from tests.api.helpers import push_image, random_bytes
from tests.support.receiver import receiver
from tests.support.server import ServerProcess, start_server

ADMIN = ("admin", "bench-webhooks-admin")


def token(server: ServerProcess, repositories: list[str]) -> str:
    params = [("service", "shipyard")] + [("scope", f"repository:{r}:pull,push") for r in repositories]
    r = httpx.get(f"{server.url}/token", params=params, auth=ADMIN, timeout=60)
    r.raise_for_status()
    return str(r.json()["token"])


def push_round(server: ServerProcess, label: str, images: int, threads: int) -> float:
    """Images per second: `images` small images (a config, one 4 KiB layer, a tag) by `threads`."""
    repositories = [f"bench/{label}-{i % threads}" for i in range(threads)]
    headers = {"authorization": f"Bearer {token(server, repositories)}"}
    layers = [random_bytes(4096, f"{label}-{i}") for i in range(images)]

    def push(i: int) -> None:
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
            push_image(client, repositories[i % threads], f"t{i}", layers=[layers[i]])

    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(push, range(images)))
    return images / (time.perf_counter() - started)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.webhooks", description=__doc__)
    p.add_argument("--images", type=int, default=150)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--results-dir", type=Path, default=Path("bench/results"))
    args = p.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench-webhooks-") as work, receiver() as hook:
        env = {"SHIPYARD_ADMIN_PASSWORD": ADMIN[1], "SHIPYARD_WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true"}
        server = start_server(Path(work) / "data", auth=True, extra_env=env)
        try:
            api = httpx.Client(base_url=server.url, auth=ADMIN, timeout=60)
            api.post("/api/v1/accounts", json={"name": "bench"}).raise_for_status()
            push_round(server, "warmup", args.images // 2, args.threads)
            results: dict[str, list[float]] = {"none": [], "webhook": []}
            for round_no in range(args.rounds):
                order = ("none", "webhook") if round_no % 2 == 0 else ("webhook", "none")
                for kind in order:
                    webhook = None
                    if kind == "webhook":
                        r = api.post("/api/v1/accounts/bench/webhooks", json={"url": hook.url})
                        r.raise_for_status()
                        webhook = r.json()["id"]
                    rate = push_round(server, f"{kind}{round_no}", args.images, args.threads)
                    results[kind].append(rate)
                    print(f"round {round_no + 1} {kind:8} {rate:7.1f} images/s", flush=True)
                    if webhook is not None:
                        api.delete(f"/api/v1/accounts/bench/webhooks/{webhook}").raise_for_status()
            delivered = len(hook.requests)
            distinct = len({r.headers["webhook-id"] for r in hook.requests})
        finally:
            server.stop()
    none, with_hook = statistics.median(results["none"]), statistics.median(results["webhook"])
    change = (with_hook - none) / none * 100
    # each round's two runs are next to each other in time: their ratio is blind to the machine's drift
    paired = statistics.median(w / n for w, n in zip(results["webhook"], results["none"], strict=True))
    print(
        f"\npush throughput, median of {args.rounds} rounds of {args.images} images"
        f" ({args.threads} threads):\n"
        f"  no webhook      {none:7.1f} images/s\n"
        f"  one webhook     {with_hook:7.1f} images/s  ({change:+.1f}%)\n"
        f"  median of the rounds' ratios: {(paired - 1) * 100:+.1f}%\n"
        f"  webhook requests received: {delivered} ({distinct} distinct webhook-ids)"
    )
    args.results_dir.mkdir(parents=True, exist_ok=True)
    out = args.results_dir / f"webhooks-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps({**vars(args), "results_dir": str(args.results_dir), "rates": results}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
