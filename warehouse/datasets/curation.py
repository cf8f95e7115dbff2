"""Curation: one recipe over the lake becomes a new dataset version, or nothing when its content did not change.

`curate(core, ds, recipe)` reads the lake's views once (one DuckDB connection), runs the kind's selection and every
step (`steps`), and compares the content hash (the kind, columns, exports and every row's split and id; a row's id
is the sha256 of its content and lineage) with the latest version's. Equal: nothing is written. Different: the
next version is written and published (`registry`), with a manifest saying what changed and why.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import DeltaTable

from flywheel.config import Settings
from flywheel.errors import FlywheelError
from flywheel.warehouse.datasets import exports, steps
from flywheel.warehouse.datasets.kinds import KIND_COLUMNS, StepReport, select
from flywheel.warehouse.datasets.recipes import Recipe
from flywheel.warehouse.datasets.registry import Registry, VersionInfo, now, sha256_file
from flywheel.warehouse.datasets.settings import DatasetSettings
from flywheel.warehouse.quality.gates import RUNS_TABLE, SuspectWindow, suspect_windows
from flywheel.warehouse.query import connect


class CurationError(FlywheelError):
    """A recipe cannot produce a dataset from this lake (an empty window, every row removed); `dataset` names it."""

    def __init__(self, message: str, *, dataset: str) -> None:
        self.dataset = dataset
        super().__init__(message)


@dataclass(frozen=True)
class CurationResult:
    """What one run did: the version it wrote (`created`) or the unchanged latest one, and the step counts."""

    name: str
    version: int
    created: bool
    content_hash: str
    reason: str
    steps: tuple[StepReport, ...]
    splits: tuple[tuple[str, int], ...]
    path: Path

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "version": self.version, "created": self.created,
                "content_hash": self.content_hash, "reason": self.reason, "splits": dict(self.splits),
                "path": str(self.path), "steps": [_step_json(s) for s in self.steps]}


def _step_json(s: StepReport) -> dict[str, object]:
    return {"step": s.step, "rows_in": s.rows_in, "rows_out": s.rows_out, "reasons": dict(s.reasons),
            "detail": s.detail, "seconds": s.seconds}


def code_version() -> dict[str, str]:
    """The package version and a hash of this stage's source: what built a version."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return {"flywheel": metadata.version("flywheel"), "datasets_source_sha256": h.hexdigest()}


def lake_versions(core: Settings) -> dict[str, int | None]:
    out: dict[str, int | None] = {}
    where = core.lake_location
    for table in ("inferences", "feedback", RUNS_TABLE):
        uri, so = where.join(table), where.storage_options
        out[table] = DeltaTable(uri, storage_options=so).version() if DeltaTable.is_deltatable(uri, so) else None
    return out


def eval_prompts(registry: Registry, exclude: str) -> steps.EvalPrompts:
    """The prompts of the latest version of every eval dataset (but `exclude`)."""
    prompts: list[str] = []
    sources: list[str] = []
    for info in registry.versions():
        if info.kind != "eval" or info.name == exclude or registry.latest(info.name) != info:
            continue
        sources.append(info.ref)
        for split, _n in info.splits:
            table = pq.read_table(info.path / "data" / f"{split}.parquet", columns=["messages"])
            prompts += [" ".join(m["content"] or "" for m in msgs) for msgs in table["messages"].to_pylist()]
    return steps.EvalPrompts(tuple(prompts), tuple(sources))


def build(core: Settings, ds: DatasetSettings, recipe: Recipe, windows: list[SuspectWindow],
          evals: steps.EvalPrompts) -> tuple[dict[str, pa.Table], list[StepReport]]:
    """The rows of every split and the report of every step (nothing is written)."""
    con = connect(core)
    spill = ds.root_path(core) / ".spill"
    try:
        spill.mkdir(parents=True, exist_ok=True)
        con.execute(f"SET memory_limit = '{ds.duckdb_memory_limit()}'")
        con.execute(f"SET temp_directory = '{str(spill).replace(chr(39), chr(39) * 2)}'")
        con.execute("SET enable_progress_bar = false")
        sel = _timed(lambda: select(con, recipe))
        if sel.rows_in == 0:
            s = recipe.source
            raise CurationError(f"{recipe.name}: the window has no inferences (since {s.since or 'the start'}, "
                                f"until {s.until or 'now'}, filters {_filters(recipe)}); widen `source` in "
                                f"{recipe.path or 'the recipe'} or land events first", dataset=recipe.name)
        columns = KIND_COLUMNS[recipe.kind]
        reports = [sel] + [_timed(step) for step in (
            lambda: steps.quality_gate(con, recipe, windows), lambda: steps.flags(con, recipe),
            lambda: steps.length(con, recipe), lambda: steps.script(con, recipe), lambda: steps.pii(con, recipe),
            lambda: steps.exact_dedupe(con, recipe), lambda: steps.near_dedupe(con, recipe, ds),
            lambda: steps.decontaminate(con, recipe, ds, evals), lambda: steps.sample(con, recipe),
            lambda: steps.split(con, recipe, columns))]
        if reports[-1].rows_out == 0:
            raise CurationError(f"{recipe.name}: no row is left after the steps ("
                                + ", ".join(f"{r.step} {r.rows_in}->{r.rows_out}" for r in reports)
                                + "); check the recipe's feedback rule and steps", dataset=recipe.name)
        cols = ", ".join(columns)
        splits = {}
        for name, _frac in recipe.splits.fractions:
            splits[name] = con.sql(f"SELECT {cols} FROM rows WHERE split = $split ORDER BY id",
                                   params={"split": name}).to_arrow_table()
        return splits, reports
    finally:
        con.close()


def _timed(step: Callable[[], StepReport]) -> StepReport:
    t0 = time.perf_counter()
    report = step()
    return dataclasses.replace(report, seconds=round(time.perf_counter() - t0, 3))


def _filters(recipe: Recipe) -> str:
    s = recipe.source
    parts = [f"{k}={list(getattr(s, k))}" for k in ("app", "model", "model_version", "prompt_template",
                                                    "prompt_version") if getattr(s, k)]
    return ", ".join(parts) or "none"


def content_hash(recipe: Recipe, splits: dict[str, pa.Table]) -> str:
    shape: dict[str, object] = {"kind": recipe.kind, "columns": KIND_COLUMNS[recipe.kind],
                                "exports": list(recipe.exports)}
    if recipe.kind == "eval" and recipe.eval.output_format != "text":
        # How its answers are scored is part of an eval set (the manifest is where evaluation reads it), so a new
        # format is a new version; text, the default, is left out to keep the hashes of existing versions.
        shape["output_format"] = recipe.eval.output_format
    h = hashlib.sha256(json.dumps(shape).encode())
    for name, table in splits.items():
        for row_id in table["id"].to_pylist():
            h.update(f"{name}\t{row_id}\n".encode())
    return h.hexdigest()


def curate(core: Settings, ds: DatasetSettings, recipe: Recipe) -> CurationResult:
    """Build `recipe` over the lake and publish a new version if its content changed (see the module doc)."""
    registry = Registry(core, ds)
    windows = suspect_windows(core) if recipe.steps.quality_gate else []
    evals = eval_prompts(registry, recipe.name) if recipe.kind != "eval" else steps.EvalPrompts()
    lake = lake_versions(core)
    splits, reports = build(core, ds, recipe, windows, evals)
    digest = content_hash(recipe, splits)
    counts = tuple((k, t.num_rows) for k, t in splits.items())
    with registry.writing(recipe.name) as draft:
        latest = registry.latest(recipe.name)
        if latest is not None and latest.content_hash == digest:
            return CurationResult(recipe.name, latest.version, False, digest,
                                  f"unchanged: same content as {latest.ref}; nothing written", tuple(reports),
                                  counts, latest.path)
        reason = _reason(recipe, latest, splits, lake, evals)
        files: dict[str, dict[str, object]] = {}
        for fmt in recipe.exports:
            for rel in exports.write(fmt, recipe.kind, splits, draft.tmp, recipe.name):
                files[str(rel)] = {"sha256": sha256_file(draft.tmp / rel), "bytes": (draft.tmp / rel).stat().st_size}
        created = now()
        manifest = {
            "name": recipe.name, "version": draft.version, "kind": recipe.kind, "created_at": created.isoformat(),
            "content_hash": digest, "reason": reason, "rows": sum(n for _, n in counts), "splits": dict(counts),
            "steps": [_step_json(r) for r in reports], "files": files, "exports": list(recipe.exports),
            "recipe": recipe.to_json(), "recipe_sha256": recipe.sha256, "recipe_path": recipe.path,
            "lake_versions": lake,
            "quality_runs": [{"run_id": w.run_id, "table": w.table, "window_start": w.window_start.isoformat(),
                              "window_end": w.window_end.isoformat(), "failed": list(w.failed)} for w in windows],
            "decontaminated_against": list(evals.sources), "code_version": code_version(),
            "lineage": "every row lists its inference_ids and feedback_ids",
        }
        (draft.tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        (draft.tmp / "README.md").write_text(card(manifest, recipe), encoding="utf-8")
        info = VersionInfo(recipe.name, draft.version, recipe.kind, created, digest, recipe.sha256,
                           sum(n for _, n in counts), counts, recipe.exports, reason, draft.final)
        draft.publish(info)
    return CurationResult(recipe.name, info.version, True, digest, reason, tuple(reports), counts, info.path)


def _reason(recipe: Recipe, latest: VersionInfo | None, splits: dict[str, pa.Table],
            lake: dict[str, int | None], evals: steps.EvalPrompts) -> str:
    if latest is None:
        return "first version"
    old = latest.manifest()
    parts = []
    if old.get("recipe_sha256") != recipe.sha256:
        parts.append(f"recipe changed ({str(old.get('recipe_sha256'))[:12]} -> {recipe.sha256[:12]})")
    old_lake = old.get("lake_versions") or {}
    assert isinstance(old_lake, dict)
    moved = [f"{t} v{old_lake.get(t)} -> v{v}" for t, v in lake.items() if old_lake.get(t) != v]
    if moved:
        parts.append("lake changed: " + ", ".join(moved))
    if old.get("decontaminated_against") != list(evals.sources):
        parts.append(f"eval sets now {', '.join(evals.sources) or 'none'}")
    diffs = []
    for name, table in splits.items():
        path = latest.path / "data" / f"{name}.parquet"
        before = set(pq.read_table(path, columns=["id"])["id"].to_pylist()) if path.exists() else set()
        after = set(table["id"].to_pylist())
        if before != after:
            diffs.append(f"{name} +{len(after - before)} -{len(before - after)}")
    if diffs:
        parts.append("rows: " + ", ".join(diffs))
    if old.get("exports") != list(recipe.exports):
        parts.append(f"exports now {', '.join(recipe.exports)}")
    return "; ".join(parts) or "content changed"


def card(manifest: dict[str, object], recipe: Recipe) -> str:
    """The dataset card: what the version holds, how it was made, how to load it."""
    splits = manifest["splits"]
    assert isinstance(splits, dict)
    step_rows = []
    for s in manifest["steps"]:  # type: ignore[attr-defined]
        why = "; ".join(f"{k}: {v}" for k, v in s["reasons"].items()) or s["detail"]
        step_rows.append(f"| {s['step']} | {s['rows_in']} | {s['rows_out']} | {why} |")
    ref = f"{manifest['name']}@{manifest['version']}"
    return "\n".join([
        f"# {ref}", "", recipe.description or f"A flywheel `{recipe.kind}` dataset.", "",
        f"- kind: `{recipe.kind}`; created {manifest['created_at']}; content hash `{manifest['content_hash']}`",
        f"- why this version: {manifest['reason']}",
        "- splits: " + ", ".join(f"{k} {v}" for k, v in splits.items()) + f" (grouped by `{recipe.splits.by}`)",
        f"- recipe: `{recipe.path}` (sha256 `{recipe.sha256}`)",
        f"- lake table versions read: {manifest['lake_versions']}",
        f"- eval sets it is decontaminated against: {manifest['decontaminated_against'] or 'none'}", "",
        "| step | rows in | rows out | why |", "| --- | --- | --- | --- |", *step_rows, "",
        "Every row lists the `inference_ids` and `feedback_ids` it came from. PII was replaced by typed "
        "placeholders such as `[EMAIL]`.", "",
        "```", f"flywheel datasets pull {ref} --format {recipe.exports[-1]} --out ./{manifest['name']}",
        "```", "", "```python", "from flywheel.warehouse.datasets import load",
        f"train = load(\"{ref}\", split=\"{recipe.splits.fractions[0][0]}\")  # a pyarrow.Table", "```", ""])
