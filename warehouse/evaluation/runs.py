"""Evaluation runs: every example of an eval set sent to a target, scored, and recorded in the `eval_runs` lake table.

Guarantees:
- One row per (run, example) with the answer, latency, tokens, cost when priced, error, and scores, plus one
  `summary` row once every example has one; the target is recorded without its key.
- Resumable: results are committed in batches (`EvalSettings.save_every`); a run that was killed resumes where its
  last batch ended (same `run_id`: the latest run of the same eval set and target that has no summary), and an
  example already recorded in the run is never sent or scored again.
- Appends are atomic (Delta), so a reader never sees half a batch. Two processes resuming the same run at once are
  not supported (each would score the examples the other has not committed yet).
"""

from __future__ import annotations

import hashlib
import json
import queue
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa

from flywheel.errors import FlywheelError
from flywheel.warehouse import tables
from flywheel.warehouse.evaluation.client import ChatClient, ChatRequest, Completion, RetryPolicy
from flywheel.warehouse.evaluation.metrics import OUTPUT_FORMATS, passes, score
from flywheel.warehouse.evaluation.settings import EvalSettings
from flywheel.warehouse.evaluation.targets import Secret, Target

TABLE = "eval_runs"
TS = pa.timestamp("us", tz="UTC")
SCHEMA = pa.schema([
    ("run_id", pa.string()), ("row_kind", pa.string()), ("recorded_at", TS),
    ("eval_set", pa.string()), ("target", pa.string()), ("target_spec", pa.string()), ("model", pa.string()),
    ("example_id", pa.string()), ("segment", pa.string()), ("prompt", pa.string()), ("reference", pa.string()),
    ("output", pa.string()), ("error", pa.string()), ("attempts", pa.int32()), ("latency_ms", pa.float64()),
    ("input_tokens", pa.int64()), ("output_tokens", pa.int64()), ("cost_usd", pa.float64()),
    ("similarity", pa.float64()), ("exact_match", pa.bool_()), ("json_valid", pa.bool_()), ("refusal", pa.bool_()),
    ("output_chars", pa.int64()), ("passed", pa.bool_()), ("summary", pa.string()),
])
"""`eval_runs`: `row_kind` is `example` (one per example) or `summary` (one per finished run, `summary` as JSON)."""


class EvalError(FlywheelError):
    """A run could not be read, compared or gated (a run that does not exist, no common examples); also `run_id`."""

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        super().__init__(message, run_id=run_id)
        self.run_id = run_id


@dataclass(frozen=True)
class Example:
    """One thing to ask: the conversation up to the answer, the reference answer if a human gave one, and the
    segment it is reported under (app, prompt template, ...); `output_format` is what the eval set expects the
    answer to be (`text` or `json`: only then is `json_valid` scored)."""

    example_id: str
    messages: tuple[tuple[str, str], ...]
    reference: str | None = None
    segment: str = ""
    output_format: str = "text"

    def __post_init__(self) -> None:
        if self.output_format not in OUTPUT_FORMATS:  # an unknown format would silently score as text
            raise ValueError(f"example {self.example_id!r}: output_format {self.output_format!r} is not one of "
                             f"{', '.join(OUTPUT_FORMATS)}")

    @property
    def prompt(self) -> str:
        users = [c for r, c in self.messages if r == "user"]
        return users[-1] if users else (self.messages[-1][1] if self.messages else "")


@dataclass(frozen=True)
class RunResult:
    run_id: str
    resumed: bool
    examples: int
    sent: int
    """Examples sent in this call (the rest were recorded before it, by the run it resumed)."""
    failed: int
    summary: dict[str, float | int | None]


def target_key(target: Target) -> str:
    """What identifies a target's behaviour in `eval_runs` (its spec, never its key), for resuming."""
    return hashlib.sha256(json.dumps(target.describe(), sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_eval(lake: tables.Where, eval_set: str, examples: Sequence[Example], target: Target, key: Secret,
             settings: EvalSettings, progress: Callable[[int, int], None] | None = None) -> RunResult:
    """Send every example not yet recorded to `target`, score and record each, then the run's summary.
    Scoring and commits run on a writer thread beside the client's requests (`progress(done, total)` is called
    from it); an error of the writer stops the run and is raised here, after the batches before it committed."""
    ids = [e.example_id for e in examples]
    if len(set(ids)) != len(ids):
        raise ValueError(f"eval set {eval_set!r} has duplicate example ids")
    spec = json.dumps(target.describe(), sort_keys=True, default=str)
    tkey = target_key(target)
    run_id, done = _unfinished(lake, eval_set, tkey)
    resumed = run_id is not None
    if run_id is None:
        now = datetime.now(timezone.utc)
        run_id = f"{now:%Y%m%dT%H%M%S}.{now.microsecond // 1000:03d}Z-{uuid.uuid4().hex[:8]}"
    todo = [e for e in examples if e.example_id not in done]
    client = ChatClient(target, key, settings.concurrency, RetryPolicy(attempts=settings.attempts))
    record_completions(lake, TABLE, SCHEMA, client, [ChatRequest(e.messages) for e in todo],
                       lambda i, c: _row(run_id, eval_set, tkey, spec, target, todo[i], c, settings.pass_threshold),
                       settings.save_every, progress, len(done), len(examples))
    summary = summarize(rows(lake, run_id))
    _save(lake, [{"run_id": run_id, "row_kind": "summary", "recorded_at": datetime.now(timezone.utc),
                  "eval_set": eval_set, "target": tkey, "target_spec": spec, "model": target.model,
                  "summary": json.dumps(summary)}])
    return RunResult(run_id, resumed, len(examples), len(todo), int(summary["errors"] or 0), summary)


def record_completions(lake: tables.Where, table: str, schema: pa.Schema, client: ChatClient,
                       requests: Sequence[ChatRequest], make_row: Callable[[int, Completion], dict[str, object]],
                       save_every: int, progress: Callable[[int, int], None] | None = None, already: int = 0,
                       total: int | None = None) -> None:
    """Send `requests` and commit the row `make_row(i, completion)` of each to `table` in batches of `save_every`
    (the rest at the end), so a killed caller loses at most one batch; `progress(done, total)` as each finishes,
    counting the `already` recorded before.

    Rows are made and committed on a writer thread, off the client's event loop: a Delta commit takes 50-150 ms
    here, and on the loop it stalled every request in flight for as long (about 10% of a run). An error of the
    writer stops the sending and is raised here, after the batches before it committed."""
    results: queue.SimpleQueue[tuple[int, Completion] | None] = queue.SimpleQueue()
    failed: list[BaseException] = []
    total = len(requests) + already if total is None else total

    def write() -> None:
        pending: list[dict[str, object]] = []
        finished = already
        try:
            while (item := results.get()) is not None:
                pending.append(make_row(*item))
                finished += 1
                if len(pending) >= save_every:
                    tables.append(lake, table, pa.Table.from_pylist(pending, schema))
                    pending = []
                if progress is not None:
                    progress(finished, total)
            if pending:
                tables.append(lake, table, pa.Table.from_pylist(pending, schema))
        except BaseException as exc:  # handed to the caller's thread, which raises it
            failed.append(exc)

    def record(i: int, c: Completion) -> None:
        if failed:  # the writer failed: stop sending (what it committed stays, for a resume)
            raise failed[0]
        results.put((i, c))

    writer = threading.Thread(target=write, name=f"eval-writer-{table}", daemon=True)
    writer.start()
    try:
        client.complete_all(requests, record)
    finally:
        results.put(None)
        writer.join()
    if failed:
        raise failed[0]


def _row(run_id: str, eval_set: str, tkey: str, spec: str, target: Target, e: Example, c: Completion,
         threshold: float) -> dict[str, object]:
    s = score(c.output, e.reference, e.output_format) if c.output is not None else None
    return {"run_id": run_id, "row_kind": "example", "recorded_at": datetime.now(timezone.utc),
            "eval_set": eval_set, "target": tkey, "target_spec": spec, "model": target.model,
            "example_id": e.example_id, "segment": e.segment, "prompt": e.prompt, "reference": e.reference,
            "output": c.output, "error": c.error, "attempts": c.attempts, "latency_ms": c.latency_ms,
            "input_tokens": c.input_tokens, "output_tokens": c.output_tokens, "cost_usd": c.cost_usd,
            "similarity": s.similarity if s else None, "exact_match": s.exact_match if s else None,
            "json_valid": s.json_valid if s else None, "refusal": s.refusal if s else None,
            "output_chars": s.output_chars if s else None, "passed": passes(c.ok, s, threshold)}


def _save(lake: tables.Where, rows_: list[dict[str, object]]) -> None:
    if rows_:
        tables.append(lake, TABLE, pa.Table.from_pylist(rows_, SCHEMA))


def _unfinished(lake: tables.Where, eval_set: str, tkey: str) -> tuple[str | None, set[str]]:
    """The latest run of this eval set and target without a summary, and the examples it has recorded."""
    latest = tables.query(lake, TABLE, """
        SELECT run_id FROM t WHERE eval_set = $s AND target = $k GROUP BY run_id
        HAVING count(*) FILTER (WHERE row_kind = 'summary') = 0 ORDER BY max(recorded_at) DESC LIMIT 1""",
                          {"s": eval_set, "k": tkey}, empty=SCHEMA)
    if latest.num_rows == 0:
        return None, set()
    run_id = str(latest["run_id"][0].as_py())
    done = tables.query(lake, TABLE, "SELECT DISTINCT example_id FROM t WHERE run_id = $r AND row_kind = 'example'",
                        {"r": run_id}, empty=SCHEMA)
    return run_id, {str(v) for v in done["example_id"].to_pylist()}


def rows(lake: tables.Where, run_id: str) -> pa.Table:
    """The example rows of a run, in example-id order."""
    return tables.query(lake, TABLE, "SELECT * FROM t WHERE run_id = $r AND row_kind = 'example' "
                        "ORDER BY example_id", {"r": run_id}, empty=SCHEMA)


@dataclass(frozen=True)
class RunTarget:
    """What a run evaluated, as the lake's inferences name it."""

    run_id: str
    model: str
    model_version: str | None
    """None: the target named no version (any version of the model)."""
    prompt_version: str | None


def run_target(lake: tables.Where, run_id: str) -> RunTarget:
    """The model, model version and prompt version of a run's target (from its recorded spec)."""
    t = tables.query(lake, TABLE, "SELECT target_spec FROM t WHERE run_id = $r LIMIT 1", {"r": run_id},
                     empty=SCHEMA)
    if t.num_rows == 0:
        raise EvalError(f"evaluation run {run_id!r} does not exist (see `flywheel eval list`)", run_id=run_id)
    spec = json.loads(str(t["target_spec"][0].as_py()))
    return RunTarget(run_id, str(spec["model"]), spec.get("model_version") or None, spec.get("prompt_version") or None)


def finished(lake: tables.Where, run_id: str) -> bool:
    """Whether the run recorded its summary, its last commit: until then it holds only the examples its process
    (running, or killed) committed so far, and is no result to compare or gate on."""
    t = tables.query(lake, TABLE, "SELECT count(*) AS n FROM t WHERE run_id = $r AND row_kind = 'summary'",
                     {"r": run_id}, empty=SCHEMA)
    return bool(t["n"][0].as_py())


def runs(lake: tables.Where) -> pa.Table:
    """One row per run: its eval set, target (the key of its description), model, model and prompt version (as
    the target names them, else null), examples, and summary (null while unfinished)."""
    return tables.query(lake, TABLE, """
        SELECT run_id, any_value(eval_set) AS eval_set, any_value(model) AS model, any_value(target) AS target,
          any_value(json_extract_string(target_spec, '$.model_version')) AS model_version,
          any_value(json_extract_string(target_spec, '$.prompt_version')) AS prompt_version,
          count(*) FILTER (WHERE row_kind = 'example') AS examples, min(recorded_at) AS started_at,
          max(summary) AS summary
        FROM t GROUP BY run_id ORDER BY started_at""", empty=SCHEMA)


def percentile(values: list[float], q: float) -> float | None:
    """The `q` quantile of `values`, linearly interpolated between the two nearest ranks (numpy's default
    method); None for no values."""
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def _rate(flags: list[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def summarize(t: pa.Table) -> dict[str, float | int | None]:
    """Counts, rates and percentiles of a run's example rows (as stored in its summary row).

    Rates are over the examples they apply to: refusals and JSON validity over the answered examples (JSON
    validity only where the eval set expects JSON: None, not applicable, otherwise), exact match over the
    answered examples with a reference. Percentiles of latency, length and cost are over the answers that have
    one (cost only where the target is priced)."""
    n = t.num_rows
    ok = [e is None for e in t["error"].to_pylist()]
    sims = [s for s in t["similarity"].to_pylist() if s is not None]
    lat = [x for x, good in zip(t["latency_ms"].to_pylist(), ok) if good and x is not None]
    costs = [c for c in t["cost_usd"].to_pylist() if c is not None]
    refusals = [bool(r) for r, good in zip(t["refusal"].to_pylist(), ok) if good]
    exact = [bool(x) for x, good in zip(t["exact_match"].to_pylist(), ok) if good and x is not None]
    valid = [bool(x) for x, good in zip(t["json_valid"].to_pylist(), ok) if good and x is not None]
    chars = [c for c in t["output_chars"].to_pylist() if c is not None]
    return {
        "examples": n, "errors": n - sum(ok), "error_rate": (n - sum(ok)) / n if n else None,
        "pass_rate": sum(bool(p) for p in t["passed"].to_pylist()) / n if n else None,
        "similarity_mean": sum(sims) / len(sims) if sims else None, "with_reference": len(sims),
        "exact_match_rate": _rate(exact), "json_valid_rate": _rate(valid),
        "refusal_rate": _rate(refusals),
        "output_chars_mean": sum(chars) / len(chars) if chars else None,
        "output_chars_p50": percentile(chars, 0.5), "output_chars_p95": percentile(chars, 0.95),
        "latency_p50_ms": percentile(lat, 0.5), "latency_p95_ms": percentile(lat, 0.95),
        "cost_usd": sum(costs) if costs else None,
        "cost_usd_p50": percentile(costs, 0.5), "cost_usd_p95": percentile(costs, 0.95),
    }
