"""The curation steps over the temp table `rows` (see `kinds.select`), in their fixed order, each reported with
rows in and out and why.

Order: quality_gate, flags, length, script, pii, exact_dedupe, near_dedupe, decontaminate, sample (eval only),
split. PII goes before deduplication and decontamination, so texts that differ only in an e-mail address are
duplicates, and eval prompts (stored scrubbed) are compared with scrubbed training prompts.

Near duplicates: MinHash LSH from `rensa` (Rust) over the set of words of the normalized prompt and answers; rows
are visited oldest first and a row is dropped when an earlier kept row is estimated at least `near_dedupe`
similar (Jaccard). Decontamination drops every row whose prompt equals an eval prompt or is at least
`decontaminate` similar to one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import rensa

from flywheel.warehouse.datasets.kinds import ANSWER_COLUMNS, StepReport, norm
from flywheel.warehouse.datasets.recipes import Recipe
from flywheel.warehouse.datasets.settings import DatasetSettings
from flywheel.warehouse.pii import ANY_PATTERN, LUHN_MACRO, PLACEHOLDERS, scrub_sql
from flywheel.warehouse.quality.gates import SuspectWindow

SCRIPT_CLASSES = {"latin": r"\p{Latin}", "cyrillic": r"\p{Cyrillic}", "greek": r"\p{Greek}",
                  "arabic": r"\p{Arabic}", "hebrew": r"\p{Hebrew}", "devanagari": r"\p{Devanagari}",
                  "cjk": r"\p{Han}\p{Hiragana}\p{Katakana}\p{Hangul}"}


@dataclass(frozen=True)
class EvalPrompts:
    """The prompts of the eval datasets a training dataset must not contain, and which versions they came from."""

    prompts: tuple[str, ...] = ()
    sources: tuple[str, ...] = ()


def _count(con: duckdb.DuckDBPyConnection, table: str = "rows") -> int:
    return int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])


def _filter(con: duckdb.DuckDBPyConnection, step: str, keep: str, reason: str, detail: str = "") -> StepReport:
    n = _count(con)
    con.execute(f"DELETE FROM rows WHERE NOT coalesce({keep}, false)")
    out = _count(con)
    return StepReport(step, n, out, ((reason, n - out),) if n - out else (), detail)


def _skipped(con: duckdb.DuckDBPyConnection, step: str, why: str) -> StepReport:
    n = _count(con)
    return StepReport(step, n, n, (), f"skipped: {why}")


def answers_sql(kind: str) -> str:
    return " || chr(30) || ".join(f"coalesce({c}, '')" for c in ANSWER_COLUMNS[kind] if c != "reference")


_PROMPT_TEXT = "array_to_string(list_transform(messages, lambda m: m.content), ' ')"


def prompt_text_sql() -> str:
    return norm(_PROMPT_TEXT)


def quality_gate(con: duckdb.DuckDBPyConnection, recipe: Recipe, windows: Sequence[SuspectWindow]) -> StepReport:
    if not recipe.steps.quality_gate:
        return _skipped(con, "quality_gate", "turned off in the recipe")
    if not windows:
        return _skipped(con, "quality_gate", "no suspect window")
    n = _count(con)
    reasons: list[tuple[str, int]] = []
    for w in windows:
        col = "inf_ingested" if w.table == "inferences" else "fb_ingested"
        con.execute(f"DELETE FROM rows WHERE list_bool_or(list_transform({col}, lambda t: "
                    "t >= $s AND t < $e))", {"s": w.window_start, "e": w.window_end})
        removed = n - sum(c for _, c in reasons) - _count(con)
        if removed:
            reasons.append((f"{w.table} window {w.window_start.isoformat()}..{w.window_end.isoformat()} failed "
                            f"run {w.run_id}", removed))
    return StepReport("quality_gate", n, _count(con), tuple(reasons),
                      "runs relied on: " + ", ".join(sorted({w.run_id for w in windows})))


def flags(con: duckdb.DuckDBPyConnection, recipe: Recipe) -> StepReport:
    if not recipe.steps.flags:
        return _skipped(con, "flags", "turned off in the recipe")
    if recipe.kind == "eval":
        return _skipped(con, "flags", "an eval set keeps flagged outputs as failures")
    keep = "NOT flagged OR label = false" if recipe.kind == "kto" else "NOT flagged"
    return _filter(con, "flags", keep, "the kept answer's inference was flagged")


def length(con: duckdb.DuckDBPyConnection, recipe: Recipe) -> StepReport:
    s = recipe.steps
    answers = [f"length(coalesce({c}, ''))" for c in ANSWER_COLUMNS[recipe.kind] if c != "reference"]
    shortest = f"least({', '.join(answers)})" if len(answers) > 1 else answers[0]
    total = f"length(prompt_all) + {' + '.join(answers)}"
    con.execute("ALTER TABLE rows ADD COLUMN IF NOT EXISTS prompt_all VARCHAR")
    con.execute("UPDATE rows SET prompt_all = array_to_string(list_transform(messages, lambda m: m.content), ' ')")
    n = _count(con)
    short = int(con.execute(f"SELECT count(*) FROM rows WHERE {shortest} < {s.min_chars}").fetchall()[0][0])
    con.execute(f"DELETE FROM rows WHERE {shortest} < {s.min_chars} OR {total} > {s.max_chars}")
    out = _count(con)
    reasons = tuple((r, c) for r, c in ((f"answer shorter than {s.min_chars} chars", short),
                                        (f"longer than {s.max_chars} chars", n - out - short)) if c)
    return StepReport("length", n, out, reasons)


def dominant_script_sql(text: str) -> str:
    counts = ", ".join(f"('{name}', length(regexp_replace({text}, '[^{cls}]', '', 'g')))"
                       for name, cls in SCRIPT_CLASSES.items())
    return (f"(SELECT CASE WHEN max(c) = 0 THEN 'none' ELSE arg_max(s, c) END "
            f"FROM (VALUES {counts}) AS t(s, c))")


def script(con: duckdb.DuckDBPyConnection, recipe: Recipe) -> StepReport:
    allowed = recipe.steps.scripts
    if not allowed:
        return _skipped(con, "script", "no script filter in the recipe")
    text = f"(prompt_all || ' ' || {answers_sql(recipe.kind)})"
    listed = ", ".join(f"'{s}'" for s in allowed)
    return _filter(con, "script", f"{dominant_script_sql(text)} IN ({listed})",
                   f"dominant script not {', '.join(allowed)}")


def pii(con: duckdb.DuckDBPyConnection, recipe: Recipe) -> StepReport:
    kinds = recipe.steps.pii
    n = _count(con)
    if not kinds:
        return _skipped(con, "pii", "turned off in the recipe")
    con.execute(LUHN_MACRO)
    cols = ["prompt", *ANSWER_COLUMNS[recipe.kind]]
    before = con.execute(f"SELECT {', '.join(_placeholder_counts(c, kinds) for c in cols + ['prompt_all'])} "
                         "FROM rows").fetchall()[0]
    # Each distinct text is scanned and scrubbed once: the prompt is also the user message's content, and one
    # prompt or answer recurs over many rows (the regular expressions cost seconds per 100k texts).
    texts = " UNION ".join([f"SELECT {c} AS t FROM rows" for c in cols]
                           + ["SELECT unnest(list_transform(messages, lambda m: m.content)) FROM rows"])
    # Materialized first: a filter over the union would be pushed below its DISTINCT, into every row.
    con.execute(f"CREATE OR REPLACE TEMP TABLE _pii AS {texts}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _pii AS SELECT t, {scrub_sql('t', kinds)} AS s FROM _pii "
                f"WHERE regexp_matches(t, {_lit(ANY_PATTERN)})")
    for c in cols:
        con.execute(f"UPDATE rows SET {c} = p.s FROM _pii p WHERE rows.{c} = p.t")
    # Tool calls' `arguments` are scrubbed too (a lookup by e-mail or card number carries it there), in place: few
    # rows have tool calls, and those are the rows rebuilt below whatever their contents hold.
    arguments = "c.function.arguments"
    scrubbed = f"CASE WHEN regexp_matches({arguments}, {_lit(ANY_PATTERN)}) THEN {scrub_sql(arguments, kinds)} " \
               f"ELSE {arguments} END"
    calls = ("list_transform(m.tool_calls, lambda c: struct_pack(id := c.id, type := c.type, function := "
             f"struct_pack(name := c.function.name, arguments := {scrubbed})))")
    con.execute(f"""
    CREATE OR REPLACE TEMP TABLE _pii_msgs AS
    SELECT r, list(struct_pack(role := m.role, content := coalesce(p.s, m.content), name := m.name,
                               tool_call_id := m.tool_call_id, tool_calls := {calls}) ORDER BY i) AS messages
    FROM (SELECT rowid AS r, unnest(range(len(messages))) AS i, unnest(messages) AS m FROM rows
          WHERE rowid IN (SELECT r FROM (SELECT rowid AS r, unnest(list_transform(messages, lambda m: m.content))
                                         AS c FROM rows) JOIN _pii ON c = t)
             OR len(list_filter(messages, lambda m: m.tool_calls IS NOT NULL)) > 0)
    LEFT JOIN _pii p ON p.t = m.content GROUP BY r""")
    con.execute("UPDATE rows SET messages = x.messages, prompt_all = array_to_string(list_transform(x.messages, "
                "lambda m: m.content), ' ') FROM _pii_msgs x WHERE rows.rowid = x.r")
    con.execute("DROP TABLE _pii; DROP TABLE _pii_msgs")
    after = con.execute(f"SELECT {', '.join(_placeholder_counts(c, kinds) for c in cols + ['prompt_all'])} "
                        "FROM rows").fetchall()[0]
    assert before is not None and after is not None
    per_kind = []
    for i, kind in enumerate(kinds):
        found = sum((after[j] or 0) - (before[j] or 0) for j in range(i, len(after), len(kinds)))
        if found:
            per_kind.append((f"{kind} replaced by {PLACEHOLDERS[kind]} (rows x columns)", int(found)))
    return StepReport("pii", n, n, tuple(per_kind), "texts rewritten, no row removed")


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _placeholder_counts(col: str, kinds: tuple[str, ...]) -> str:
    return ", ".join(f"count(*) FILTER (WHERE contains({col}, '{PLACEHOLDERS[k]}'))" for k in kinds)


def _order(kind: str) -> str:
    """A total order of a kind's rows (oldest first): which of two duplicates is kept must not depend on chance."""
    return f"timestamp, inference_ids[1], origin, hash({answers_sql(kind)}), label"


def exact_dedupe(con: duckdb.DuckDBPyConnection, recipe: Recipe) -> StepReport:
    if not recipe.steps.exact_dedupe:
        return _skipped(con, "exact_dedupe", "turned off in the recipe")
    n = _count(con)
    # Normalizing is the costly part (seconds per 100k texts) and texts recur (a prompt over many rows, an answer
    # in several pairs): each distinct text is normalized once, and the rows that have it are listed with it, so
    # its hash reaches them by row id (a join back on the texts hashed and compared each row's long strings once
    # more: 5-13 s of 668k preference rows at 5M events). The key, order and row id go in a narrow table: copying
    # the wide rows (or a window over the expressions themselves) cost several times more.
    prompt, answers = f"coalesce({_PROMPT_TEXT}, '')", answers_sql(recipe.kind)

    def hashed(table: str, text: str, order_hash: bool = False) -> None:
        """`table`: each row id's `h`, the hash of its normalized `text` (and `oh`, of the text as it is)."""
        con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT t, list(_r) AS _rs "
                    f"FROM (SELECT rowid AS _r, {text} AS t FROM rows) GROUP BY t")
        # Hashed in a statement of its own: with the unnesting in it, each text was normalized once per row id
        oh = ", hash(t) AS oh" if order_hash else ""
        con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT _rs, hash({norm('t')}) AS h{oh} FROM {table}")
        con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT unnest(_rs) AS _r, h{', oh' if oh else ''} "
                    f"FROM {table}")

    hashed("_pnorm", prompt)
    if recipe.kind == "eval":  # keyed by the prompt alone
        key, order, join = "hash(app, p.h)", _order(recipe.kind), ""
    else:
        hashed("_anorm", answers, order_hash=True)  # `oh`: the hash of the answers `_order` sorts by
        label = ", coalesce(label::VARCHAR, '')" if recipe.kind == "kto" else ""
        key, join = f"hash(app, p.h, a.h{label})", "JOIN _anorm a ON a._r = rows.rowid"
        order = _order(recipe.kind).replace(f"hash({answers})", "a.oh")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _keyed AS SELECT rows.rowid AS _r, {key} AS _key, "
                f"row_number() OVER (ORDER BY {order}) AS _rank "
                f"FROM rows JOIN _pnorm p ON p._r = rows.rowid {join}")
    con.execute("DELETE FROM rows WHERE rowid NOT IN (SELECT arg_min(_r, _rank) FROM _keyed GROUP BY _key)")
    con.execute("DROP TABLE _keyed; DROP TABLE _pnorm; DROP TABLE IF EXISTS _anorm")
    out = _count(con)
    return StepReport("exact_dedupe", n, out, (("same normalized text as an earlier row", n - out),) if n - out else ())


def _tokens(texts: Sequence[str]) -> list[list[str]]:
    return [t.split() or [""] for t in texts]


def near_dedupe(con: duckdb.DuckDBPyConnection, recipe: Recipe, ds: DatasetSettings) -> StepReport:
    threshold = recipe.steps.near_dedupe
    if threshold is None:
        return _skipped(con, "near_dedupe", "turned off in the recipe")
    n = _count(con)
    text = prompt_text_sql()
    if recipe.kind != "eval":
        text += f" || ' ' || {norm(answers_sql(recipe.kind))}"
    texts = _ordered(con, text, _order(recipe.kind))
    dedup = rensa.RMinHashDeduplicator(threshold, ds.num_perm, True, ds.num_bands, ds.seed)
    kept = dedup.add_pairs([(str(i), toks) for i, toks in enumerate(_tokens(texts))])
    _keep_where(con, kept)
    out = _count(con)
    return StepReport("near_dedupe", n, out,
                      ((f"at least {threshold:g} similar (MinHash) to an earlier row", n - out),) if n - out else (),
                      f"rensa MinHash LSH, {ds.num_perm} permutations, {ds.num_bands} bands")


def _ordered(con: duckdb.DuckDBPyConnection, text: str, order: str) -> list[str]:
    """Number the rows in `order` (the narrow table `_ord`: row id `_r`, number `_i`) and return `text` of each,
    in that order. Only the numbers are written: copying the wide rows to renumber them cost more than the
    MinHash itself."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE _ord AS SELECT rowid AS _r, row_number() OVER (ORDER BY {order}) - 1 "
                "AS _i FROM rows")
    return [r[0] for r in con.execute(f"SELECT {text} FROM rows JOIN _ord o ON o._r = rows.rowid "
                                      "ORDER BY o._i").fetchall()]


def _keep_where(con: duckdb.DuckDBPyConnection, keep: Sequence[bool]) -> None:
    """Keep the rows numbered by `_ordered` whose flag in `keep` is true (the others are deleted in place)."""
    drop = [i for i, k in enumerate(keep) if not k]
    if drop:
        con.register("_drop", pa.table({"_i": pa.array(drop, pa.int64())}))
        con.execute("DELETE FROM rows WHERE rowid IN (SELECT o._r FROM _ord o SEMI JOIN _drop d USING (_i))")
        con.unregister("_drop")
    con.execute("DROP TABLE _ord")


def decontaminate(con: duckdb.DuckDBPyConnection, recipe: Recipe, ds: DatasetSettings,
                  evals: EvalPrompts) -> StepReport:
    threshold = recipe.steps.decontaminate
    if recipe.kind == "eval":
        return _skipped(con, "decontaminate", "this is an eval set")
    if threshold is None:
        return _skipped(con, "decontaminate", "turned off in the recipe")
    n = _count(con)
    if not evals.prompts:
        return StepReport("decontaminate", n, n, (), "no eval dataset registered yet")
    con.register("_evalp", pa.table({"p": pa.array(list(evals.prompts), pa.string())}))
    con.execute(f"DELETE FROM rows WHERE {prompt_text_sql()} IN (SELECT {norm('p')} FROM _evalp)")
    exact = n - _count(con)
    eval_texts = [r[0] for r in con.execute(f"SELECT DISTINCT {norm('p')} FROM _evalp ORDER BY 1").fetchall()]
    con.unregister("_evalp")
    dedup = rensa.RMinHashDeduplicator(threshold, ds.num_perm, True, ds.num_bands, ds.seed)
    dedup.add_pairs([(f"e{i}", toks) for i, toks in enumerate(_tokens(eval_texts))])
    texts = _ordered(con, prompt_text_sql(), _order(recipe.kind))
    dup = dedup.is_duplicate_pairs([(f"r{i}", toks) for i, toks in enumerate(_tokens(texts))])
    _keep_where(con, [not d for d in dup])
    out = _count(con)
    reasons = tuple((r, c) for r, c in (("prompt equals an eval prompt", exact),
                                        (f"prompt at least {threshold:g} similar to an eval prompt",
                                         n - exact - out)) if c)
    return StepReport("decontaminate", n, out, reasons, "against " + ", ".join(evals.sources))


def sample(con: duckdb.DuckDBPyConnection, recipe: Recipe) -> StepReport:
    if recipe.kind != "eval":
        return _skipped(con, "sample", "only eval sets are sampled")
    e = recipe.eval
    key = {"app": "app", "prompt_template": "coalesce(prompt_template, '')", "model": "model",
           "script": dominant_script_sql("prompt_all")}[e.stratify_by]
    con.execute(f"UPDATE rows SET stratum = {key}")
    n = _count(con)
    nf = int(e.per_stratum * e.failure_share)
    con.execute(f"""
    CREATE OR REPLACE TEMP TABLE rows AS SELECT * EXCLUDE (rk, nfail) FROM (
      SELECT *, row_number() OVER (PARTITION BY stratum, failure ORDER BY
          CASE WHEN failure THEN -epoch_us(timestamp) END, md5(inference_ids[1])) AS rk,
        count(*) FILTER (WHERE failure) OVER (PARTITION BY stratum) AS nfail FROM rows)
    WHERE (failure AND rk <= {nf}) OR (NOT failure AND rk <= {e.per_stratum} - least(nfail, {nf}))""")
    out = _count(con)
    return StepReport("sample", n, out, ((f"beyond {e.per_stratum} per {e.stratify_by}", n - out),) if n - out else (),
                      f"up to {nf} most recent failures per stratum, the rest a stable-hash sample")


def split(con: duckdb.DuckDBPyConnection, recipe: Recipe, columns: Sequence[str]) -> StepReport:
    """Give every row its split (a stable hash of its grouping key, so a key's rows share one split) and its id
    (sha256 of its exported content and lineage)."""
    n = _count(con)
    # The seed is bound; split names are whitelisted by the recipe's loader (`check_name`: no quote can be one).
    bucket = "(('0x' || left(md5($seed || chr(31) || group_key), 15))::BIGINT / 1152921504606846976.0)"
    cases, edge = [], 0.0
    for name, frac in recipe.splits.fractions:
        edge += frac
        cases.append(f"WHEN {bucket} < {edge!r} THEN '{name}'")
    last = recipe.splits.fractions[-1][0]
    content = ", ".join(f"{c} := {c}" for c in columns if c != "id")
    con.execute(f"UPDATE rows SET split = CASE {' '.join(cases)} ELSE '{last}' END", {"seed": recipe.splits.seed})
    con.execute(f"UPDATE rows SET id = left(sha256(to_json(struct_pack({content}))), 32)")
    counts = tuple((f"split {s}", int(c)) for s, c in
                   con.execute("SELECT split, count(*) FROM rows GROUP BY 1 ORDER BY 1").fetchall())
    return StepReport("split", n, n, counts, f"by {recipe.splits.by}, stable md5 bucket")
