"""Evaluation harness throughput against the provider double on 127.0.0.1, next to a plain httpx loop measured in
the same run.

    python bench/eval.py [--requests 2000] [--concurrency 32] [--repeat 3]

1. starts the recorded-answers provider double (infra/testing/provider.py) with the bundled corpus's answers, in
   a process of its own (in this one, its threads and the client would share one GIL);
2. baseline: a plain `httpx.AsyncClient` posting the same chat requests, `concurrency` at a time, discarding
   answers;
3. the harness: `run_eval` over the same requests as examples (retries, scoring, and commits to `eval_runs` in a
   temporary lake included);
4. repeats both (`--repeat`) and prints median requests/s of each and their ratio. The goal is that the harness
   is never the bottleneck: at least 200 requests/s at concurrency 32 on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
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
import json, sys, time
from flywheel.infra.testing.corpus import BUNDLED
from flywheel.infra.testing.provider import RecordedProvider
rows = [json.loads(line) for line in BUNDLED.read_text(encoding="utf-8").splitlines()]
p = RecordedProvider.from_records([{"model": "m", "prompt": r["prompt"], "output": r["output"]} for r in rows
                                   if r["kind"] == "answers"])
print(p.url, flush=True)
time.sleep(3600)
"""


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
    args = ap.parse_args()
    records = _records()
    prompts = [records[i % len(records)]["prompt"] for i in range(args.requests)]
    examples = [Example(f"x{i}", (("user", p),)) for i, p in enumerate(prompts)]
    bodies: list[dict[str, object]] = [{"model": "m", "messages": [{"role": "user", "content": p}]} for p in prompts]
    plain, harness = [], []
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        for r in range(args.repeat):
            plain.append(args.requests / asyncio.run(_plain(url, bodies, args.concurrency)))
            lake = Path(tempfile.mkdtemp(prefix="flywheel-bench-eval-"))
            try:
                t0 = time.perf_counter()
                res = run_eval(lake, f"bench-{r}", examples, Target("t", url, "m"), Secret(""),
                               EvalSettings(concurrency=args.concurrency, save_every=500))
                harness.append(args.requests / (time.perf_counter() - t0))
                assert res.failed == 0, res.summary
            finally:
                shutil.rmtree(lake, ignore_errors=True)
            print(f"round {r + 1}: plain httpx {plain[-1]:,.0f} req/s, harness {harness[-1]:,.0f} req/s "
                  f"({harness[-1] / plain[-1]:.2f})", flush=True)
    finally:
        server.kill()
        server.wait()
    p, h = statistics.median(plain), statistics.median(harness)
    print(json.dumps({"requests": args.requests, "concurrency": args.concurrency, "plain_req_s": round(p),
                      "harness_req_s": round(h), "ratio": round(h / p, 2),
                      "rounds": [round(x / y, 2) for x, y in zip(harness, plain)]}))


if __name__ == "__main__":
    main()
