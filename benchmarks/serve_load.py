"""Load test of ``elmrec serve``: starts the server on 127.0.0.1 (a subprocess, so client and
server do not share a GIL), sends a bounded number of requests at several concurrencies, and
reports requests/s, p50/p95/p99 latency and errors; then the same with ``--max-batch 1`` (one
request per model call), a fault run (malformed requests mixed with valid ones: every valid one
must get the answer a quiet server gives, every bad one a 4xx) and a reload under load.

    python benchmarks/serve_load.py --checkpoint runs/demo/run/best --out benchmarks/results/serve-demo.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone

import httpx
import numpy as np

from elmrec.io import atomic_write_text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m elmrec serve`` on a free loopback port; stopped with SIGTERM."""

    def __init__(self, checkpoint: str, max_batch: int, max_wait_ms: float, threads: int | None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "elmrec", "serve", "--checkpoint", checkpoint, "--port", str(self.port),
                    "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms), "--log-level", "warning",
                    "--device", "cpu"] + (["--threads", str(threads)] if threads else [])

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen(self.cmd)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start: {' '.join(self.cmd)}")
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.proc.wait(60)


async def run_level(url: str, bodies: list[dict], concurrency: int, max_seconds: float) -> dict:
    """Send ``bodies`` with at most ``concurrency`` in flight; stop early after ``max_seconds``."""
    latencies, errors, statuses = [], 0, {}
    queue = list(reversed(bodies))
    stop = time.monotonic() + max_seconds

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal errors
        while queue and time.monotonic() < stop:
            body = queue.pop()
            t = time.perf_counter()
            try:
                r = await client.post("/recommend", json=body)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                errors += r.status_code != 200
            except httpx.HTTPError:
                errors += 1
            latencies.append(time.perf_counter() - t)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(ms), "wall_s": round(wall, 3),
            "requests_per_s": round(len(ms) / wall, 1), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p95_ms": round(float(np.percentile(ms, 95)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "errors": errors, "statuses": statuses}


MALFORMED = [
    b'{"user": ', b"[1, 2]", b'{"history": []}', b'{"user": 1, "top_n": 0}', b'{"user": 1, "top_n": 100000}',
    b'{"user": "nobody-at-all"}', b'{"history": [1, -4]}', b'{"user": 1, "task": "bought"}',
    b'{"user": 1, "task": "direct"}', b'{"user": 1, "extra": true}', b"", b"\xff\xfe",
]


async def fault_run(url: str, users: list[int], n: int, seed: int) -> dict:
    """Valid requests (answers compared with a quiet server's) mixed with malformed ones."""
    rng = random.Random(seed)
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:
        expected = {}
        for u in users:  # one at a time: the reference answers
            expected[u] = (await c.post("/recommend", json={"user": u})).json()["items"]
        plan = [("ok", rng.choice(users)) if rng.random() < 0.5 else ("bad", rng.choice(MALFORMED)) for _ in range(n)]
        sem = asyncio.Semaphore(16)

        async def one(kind, value):
            async with sem:
                if kind == "ok":
                    return kind, value, await c.post("/recommend", json={"user": value})
                return kind, value, await c.post("/recommend", content=value,
                                                  headers={"content-type": "application/json"})

        done = await asyncio.gather(*(one(k, v) for k, v in plan))
    def same(answer: list[dict], reference: list[dict]) -> bool:  # batched scores differ in the last bits
        return [a["item"] for a in answer] == [b["item"] for b in reference] and all(
            abs(a["score"] - b["score"]) < 1e-4 for a, b in zip(answer, reference))

    wrong = sum(1 for k, v, r in done
                if k == "ok" and (r.status_code != 200 or not same(r.json()["items"], expected[v])))
    not_4xx = sum(1 for k, _, r in done if k == "bad" and not 400 <= r.status_code < 500)
    return {"requests": n, "valid": sum(k == "ok" for k, _, _ in done), "valid_wrong_or_failed": wrong,
            "malformed": sum(k == "bad" for k, _, _ in done), "malformed_not_4xx": not_4xx}


async def reload_under_load(url: str, checkpoint: str, users: list[int], n: int, reloads: int) -> dict:
    async with httpx.AsyncClient(base_url=url, timeout=120) as c:
        sem = asyncio.Semaphore(8)

        async def one(u):
            async with sem:
                return await c.post("/recommend", json={"user": u})

        work = [asyncio.create_task(one(users[k % len(users)])) for k in range(n)]
        codes = []
        for _ in range(reloads):
            await asyncio.sleep(0.2)
            codes.append((await c.post("/reload", json={"checkpoint": checkpoint})).status_code)
        answers = await asyncio.gather(*work)
    return {"requests": n, "failed": sum(a.status_code != 200 for a in answers), "reloads": reloads,
            "reload_statuses": codes}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", help="JSON report")
    p.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    p.add_argument("--max-seconds", type=float, default=60, help="time cap per level")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=5)
    p.add_argument("--threads", type=int, help="server's torch threads")
    p.add_argument("--top-n", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    report = {"checkpoint": args.checkpoint, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
              "requests_per_level": args.requests, "max_seconds": args.max_seconds, "runs": []}
    for max_batch in (args.max_batch, 1):
        with Server(args.checkpoint, max_batch, args.max_wait_ms, args.threads) as server:
            info = httpx.get(server.url + "/metadata").json()
            rng = random.Random(args.seed)
            bodies = [{"user": rng.randint(1, info["n_users"]), "top_n": args.top_n} for _ in range(args.requests)]
            report["n_users"], report["n_items"] = info["n_users"], info["n_items"]
            asyncio.run(run_level(server.url, bodies[:20], 4, 30))  # warm-up, not reported
            for c in levels:
                row = {"max_batch": max_batch, **asyncio.run(run_level(server.url, bodies, c, args.max_seconds))}
                print(json.dumps(row))
                report["runs"].append(row)
            if max_batch == args.max_batch:
                users = [rng.randint(1, info["n_users"]) for _ in range(50)]
                report["fault_run"] = asyncio.run(fault_run(server.url, users, 300, args.seed))
                print("fault run:", json.dumps(report["fault_run"]))
                report["reload_under_load"] = asyncio.run(
                    reload_under_load(server.url, args.checkpoint, users, 300, 3))
                print("reload under load:", json.dumps(report["reload_under_load"]))
    if args.out:
        atomic_write_text(args.out, json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
