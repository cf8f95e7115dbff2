"""Evaluation harness throughput against the provider double on 127.0.0.1, next to a plain httpx loop measured in
the same run.

    python bench/eval.py [--requests 2000] [--concurrency 32] [--repeat 3] [--workers 2]

1. serves the recorded-answers provider double's chat endpoint (infra/testing/provider.py, its lean ASGI handler)
   with the bundled corpus's answers on uvicorn, in `--workers` processes of their own sharing one port (the
   threaded double in one process caps near 220 requests/s here, which would make it the bottleneck);
2. baseline: a plain `httpx.AsyncClient` posting the same chat requests, `concurrency` at a time, discarding
   answers;
3. the harness: `run_eval` over the same requests as examples (retries, scoring, and commits to `eval_runs` in a
   temporary lake included);
4. repeats both (`--repeat`) and prints the median and range of requests/s of each and their ratio per round.
   The goal is that the harness is never the bottleneck: at least 200 requests/s at concurrency 32 on this
   machine, close to the plain loop's rate (which, with this endpoint, is what httpx itself sustains).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
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
    plain, harness = [], []
    url, servers = _serve(args.workers)
    try:
        for r in range(args.repeat):
            plain.append(args.requests / asyncio.run(_plain(url, bodies, args.concurrency)))
            lake = Path(tempfile.mkdtemp(prefix="flywheel-bench-eval-"))
            try:
                t0 = time.perf_counter()
                # the default batch size (FLYWHEEL_EVAL_SAVE_EVERY), as `flywheel eval run` commits
                res = run_eval(lake, f"bench-{r}", examples, Target("t", url, "m"), Secret(""),
                               EvalSettings(concurrency=args.concurrency))
                harness.append(args.requests / (time.perf_counter() - t0))
                assert res.failed == 0, res.summary
            finally:
                shutil.rmtree(lake, ignore_errors=True)
            print(f"round {r + 1}: plain httpx {plain[-1]:,.0f} req/s, harness {harness[-1]:,.0f} req/s "
                  f"({harness[-1] / plain[-1]:.2f})", flush=True)
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
    p, h = statistics.median(plain), statistics.median(harness)
    ratios = [x / y for x, y in zip(harness, plain)]
    print(json.dumps({"requests": args.requests, "concurrency": args.concurrency, "server_workers": args.workers,
                      "plain_req_s": round(p), "plain_range": [round(min(plain)), round(max(plain))],
                      "harness_req_s": round(h), "harness_range": [round(min(harness)), round(max(harness))],
                      "ratio": round(h / p, 2), "rounds": [round(x, 2) for x in ratios]}))


if __name__ == "__main__":
    main()
