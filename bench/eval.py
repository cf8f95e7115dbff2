"""Evaluation harness throughput against the provider double on 127.0.0.1, next to plain httpx loops measured in
the same run.

    python bench/eval.py [--requests 2000] [--concurrency 32] [--repeat 3] [--workers 2]

1. serves the recorded-answers provider double's chat endpoint (infra/testing/provider.py, its lean ASGI handler)
   with the bundled corpus's answers on uvicorn, in `--workers` processes of their own sharing one port (the
   threaded double in one process caps near 220 requests/s here, which would make it the bottleneck);
2. baselines: a plain `httpx.AsyncClient` posting the same chat requests, `concurrency` at a time, discarding
   answers (`plain`: the usual one client pooling `concurrency` connections, whose pool bookkeeping costs
   O(connections^2) per request in httpcore; `plain_per_connection`: `concurrency` workers with a client and
   connection each, as the harness's client sends);
3. the harness: `run_eval` over the same requests as examples (retries, scoring, and commits to `eval_runs` in a
   temporary lake included);
4. repeats all three (`--repeat`) and prints the median and range of requests/s of each, the ratios per round, and
   the CPU each request cost this process (event loop and writer thread) and the server processes: the CPU
   figures say where the time goes even when other work shares the cores and the rates say little.
   The goal is that the harness is never the bottleneck: at least 200 requests/s at concurrency 32 on this
   machine, at least the plain loops' rates, with the server processes far from saturated.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from flywheel.infra.testing.corpus import BUNDLED
from flywheel.warehouse.evaluation.runs import Example, run_eval
from flywheel.warehouse.evaluation.settings import EvalSettings
from flywheel.warehouse.evaluation.targets import Secret, Target


SERVER = """
import json, socket, sys
import uvicorn
from flywheel.infra.testing.corpus import BUNDLED
from flywheel.infra.testing.provider import RecordedProvider
rows = [json.loads(line) for line in BUNDLED.read_text(encoding="utf-8").splitlines()]
p = RecordedProvider.from_records([{"model": "m", "prompt": r["prompt"], "output": r["output"]} for r in rows
                                   if r["kind"] == "answers"])
p.close()  # only its answers and its lean ASGI handler serve here
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # the workers share the port; the kernel spreads connections
sock.bind(("127.0.0.1", int(sys.argv[1])))
print("ready", flush=True)
uvicorn.Server(uvicorn.Config(p.asgi(), log_level="warning", access_log=False, lifespan="off")).run(sockets=[sock])
"""


def _serve(workers: int) -> tuple[str, list[subprocess.Popen[str]]]:
    """The provider double's chat endpoint on uvicorn, in `workers` processes sharing one port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-c", SERVER, str(port)], stdout=subprocess.PIPE, text=True)
             for _ in range(workers)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 30
    while True:  # bound is not yet listening: wait for uvicorn's first answer
        try:
            httpx.post(f"{url}/chat/completions", json={"model": "m", "messages": []}, timeout=2)
            return url, procs
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _records() -> list[dict[str, str]]:
    rows = [json.loads(line) for line in BUNDLED.read_text(encoding="utf-8").splitlines()]
    return [{"model": "m", "prompt": r["prompt"], "output": r["output"]} for r in rows if r["kind"] == "answers"]


async def _plain(url: str, bodies: list[dict[str, object]], concurrency: int) -> float:
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as http:
        async def one(body: dict[str, object]) -> None:
            async with gate:
                (await http.post(f"{url}/chat/completions", json=body)).raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(one(b) for b in bodies))
        return time.perf_counter() - t0


async def _plain_per_connection(url: str, bodies: list[dict[str, object]], concurrency: int) -> float:
    todo = iter(bodies)
    one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    tls = httpx.create_ssl_context()

    async def worker() -> None:
        async with httpx.AsyncClient(limits=one, timeout=30, verify=tls) as http:
            for body in todo:
                (await http.post(f"{url}/chat/completions", json=body)).raise_for_status()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0


def _cpu_s(pids: list[int]) -> float:
    """User + system CPU seconds the processes `pids` used so far (Linux /proc)."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class _Side:
    rates: list[float] = field(default_factory=list)
    client_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)

    def add(self, n: int, wall_s: float, client_s: float, server_s: float) -> None:
        self.rates.append(n / wall_s)
        self.client_ms.append(1000 * client_s / n)
        self.server_ms.append(1000 * server_s / n)

    def report(self) -> dict[str, object]:
        return {"req_s": round(statistics.median(self.rates)),
                "range": [round(min(self.rates)), round(max(self.rates))],
                "client_cpu_ms_per_req": round(statistics.median(self.client_ms), 2),
                "server_cpu_ms_per_req": round(statistics.median(self.server_ms), 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="uvicorn processes serving the provider double")
    args = ap.parse_args()
    records = _records()
    prompts = [records[i % len(records)]["prompt"] for i in range(args.requests)]
    examples = [Example(f"x{i}", (("user", p),)) for i, p in enumerate(prompts)]
    bodies: list[dict[str, object]] = [{"model": "m", "messages": [{"role": "user", "content": p}]} for p in prompts]
    sides = {name: _Side() for name in ("plain", "plain_per_connection", "harness")}
    url, servers = _serve(args.workers)
    pids = [proc.pid for proc in servers]
    try:
        for r in range(args.repeat):
            for name, loop in (("plain", _plain), ("plain_per_connection", _plain_per_connection)):
                c0, s0 = time.process_time(), _cpu_s(pids)
                wall = asyncio.run(loop(url, bodies, args.concurrency))
                sides[name].add(args.requests, wall, time.process_time() - c0, _cpu_s(pids) - s0)
            lake = Path(tempfile.mkdtemp(prefix="flywheel-bench-eval-"))
            try:
                c0, s0, t0 = time.process_time(), _cpu_s(pids), time.perf_counter()
                # the default batch size (FLYWHEEL_EVAL_SAVE_EVERY), as `flywheel eval run` commits
                res = run_eval(lake, f"bench-{r}", examples, Target("t", url, "m"), Secret(""),
                               EvalSettings(concurrency=args.concurrency))
                sides["harness"].add(args.requests, time.perf_counter() - t0, time.process_time() - c0,
                                     _cpu_s(pids) - s0)
                assert res.failed == 0, res.summary
            finally:
                shutil.rmtree(lake, ignore_errors=True)
            print(f"round {r + 1}: " + ", ".join(
                f"{name} {side.rates[-1]:,.0f} req/s ({side.client_ms[-1]:.2f} ms CPU here, "
                f"{side.server_ms[-1]:.2f} ms in the server per request)" for name, side in sides.items()), flush=True)
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
    h, p, pc = (sides[n].rates for n in ("harness", "plain", "plain_per_connection"))
    print(json.dumps({"requests": args.requests, "concurrency": args.concurrency, "server_workers": args.workers,
                      **{name: side.report() for name, side in sides.items()},
                      "ratio": round(statistics.median(h) / statistics.median(p), 2),
                      "rounds": [round(x / y, 2) for x, y in zip(h, p)],
                      "ratio_per_connection": round(statistics.median(h) / statistics.median(pc), 2),
                      "rounds_per_connection": [round(x / y, 2) for x, y in zip(h, pc)]}))

if __name__ == "__main__":
    main()
