"""The curation steps over the temp table `rows` (see `kinds.select`), in their fixed order, each reported with
rows in and out and why.

Order: quality_gate, flags, length, script, pii, exact_dedupe, near_dedupe, decontaminate, sample (eval only),
split. PII goes before deduplication and decontamination, so texts that differ only in an e-mail address are
duplicates, and eval prompts (stored scrubbed) are compared with scrubbed training prompts.

The sft and preference rows come from `select` referring to their texts (`kinds.deferred`: each distinct text is
kept once, in `_pd` and `_td`); quality_gate, flags, length, pii and exact_dedupe work on those texts and reach the
rows by number, and the first step that reads a row's texts (script, or whatever follows exact_dedupe) writes them
into the rows that are left (`kinds.materialize`). The counts and texts are those of the steps over written texts.

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

from flywheel.warehouse.datasets.kinds import ANSWER_COLUMNS, PROMPT_TEXT, StepReport, deferred, materialize, norm
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


_PROMPT_TEXT = PROMPT_TEXT


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
    if deferred(con):
        return _length_deferred(con, recipe)
    con.execute("ALTER TABLE rows ADD COLUMN IF NOT EXISTS prompt_all VARCHAR")
    con.execute("UPDATE rows SET prompt_all = array_to_string(list_transform(messages, lambda m: m.content), ' ')")
    n = _count(con)
    short = int(con.execute(f"SELECT count(*) FROM rows WHERE {shortest} < {s.min_chars}").fetchall()[0][0])
    con.execute(f"DELETE FROM rows WHERE {shortest} < {s.min_chars} OR {total} > {s.max_chars}")
    out = _count(con)
    reasons = tuple((r, c) for r, c in ((f"answer shorter than {s.min_chars} chars", short),
                                        (f"longer than {s.max_chars} chars", n - out - short)) if c)
    return StepReport("length", n, out, reasons)


def _length_deferred(con: duckdb.DuckDBPyConnection, recipe: Recipe) -> StepReport:
    """`length` over rows that refer to their texts (`kinds.deferred`): each text's length is taken once, in
    `_pd` and `_td`, and reaches the rows by number. A null text counts as '' (0), a null prompt as in `length`."""
    s, cols = recipe.steps, [c for c in ANSWER_COLUMNS[recipe.kind] if c != "reference"]
    answers = [f"coalesce(l_{c}.n, 0)" for c in cols]
    shortest = f"least({', '.join(answers)})" if len(answers) > 1 else answers[0]
    total = f"p.n + {' + '.join(answers)}"
    con.execute(f"CREATE OR REPLACE TEMP TABLE _plen AS SELECT _p, length({PROMPT_TEXT}) AS n FROM _pd")
    con.execute("CREATE OR REPLACE TEMP TABLE _tlen AS SELECT _t, length(t) AS n FROM _td")
    joined = "rows LEFT JOIN _plen p ON p._p = rows._p " + " ".join(
        f"LEFT JOIN _tlen l_{c} ON l_{c}._t = rows._{c}_t" for c in cols)
    n = _count(con)
    short = int(con.execute(f"SELECT count(*) FROM {joined} WHERE {shortest} < {s.min_chars}").fetchall()[0][0])
    con.execute(f"DELETE FROM rows WHERE rowid IN (SELECT rows.rowid FROM {joined} "
                f"WHERE {shortest} < {s.min_chars} OR {total} > {s.max_chars})")
    con.execute("DROP TABLE _plen; DROP TABLE _tlen")
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
    materialize(con, recipe.kind)
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
    if deferred(con):
        return _pii_deferred(con, recipe)
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
    _rebuild_messages(con, "rows", "rowid", kinds)
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


def _rebuild_messages(con: duckdb.DuckDBPyConnection, table: str, key: str, kinds: tuple[str, ...]) -> None:
    """Temp table `_pii_msgs` (`r`: the `key` of `table`, `messages`): the messages of each row of `table` whose
    contents are in `_pii` or that has tool calls, with the contents scrubbed (`_pii`) and the tool calls'
    arguments too."""
    arguments = "c.function.arguments"
    scrubbed = f"CASE WHEN regexp_matches({arguments}, {_lit(ANY_PATTERN)}) THEN {scrub_sql(arguments, kinds)} " \
               f"ELSE {arguments} END"
    calls = ("list_transform(m.tool_calls, lambda c: struct_pack(id := c.id, type := c.type, function := "
             f"struct_pack(name := c.function.name, arguments := {scrubbed})))")
    con.execute(f"""
    CREATE OR REPLACE TEMP TABLE _pii_msgs AS
    SELECT r, list(struct_pack(role := m.role, content := coalesce(p.s, m.content), name := m.name,
                               tool_call_id := m.tool_call_id, tool_calls := {calls}) ORDER BY i) AS messages
    FROM (SELECT {key} AS r, unnest(range(len(messages))) AS i, unnest(messages) AS m FROM {table}
          WHERE {key} IN (SELECT r FROM (SELECT {key} AS r, unnest(list_transform(messages, lambda m: m.content))
                                         AS c FROM {table}) JOIN _pii ON c = t)
             OR len(list_filter(messages, lambda m: m.tool_calls IS NOT NULL)) > 0)
    LEFT JOIN _pii p ON p.t = m.content GROUP BY r""")


def _pii_deferred(con: duckdb.DuckDBPyConnection, recipe: Recipe) -> StepReport:
    """`pii` over rows that refer to their texts (`kinds.deferred`): the entries of `_pd` and `_td` are scrubbed
    (each distinct text once, as in `pii`), and the placeholders are counted per entry and summed over the rows
    that refer to it, so the counts are those of `pii` (rows x columns)."""
    kinds = recipe.steps.pii
    assert kinds
    n = _count(con)
    answers = ANSWER_COLUMNS[recipe.kind]

    def counts() -> tuple[int, ...]:
        def found(text: str, prefix: str) -> str:
            return ", ".join(f"contains({text}, '{PLACEHOLDERS[k]}') AS {prefix}{i}" for i, k in enumerate(kinds))
        con.execute(f"CREATE OR REPLACE TEMP TABLE _pf AS SELECT _p, {found('input', 'i')}, "
                    f"{found(PROMPT_TEXT, 'a')} FROM _pd")
        con.execute(f"CREATE OR REPLACE TEMP TABLE _tf AS SELECT _t, {found('t', 'x')} FROM _td")
        # In `pii`'s order: prompt, each answer column, prompt_all; each with every kind
        per = [[f"p.i{i}" for i in range(len(kinds))]] + [[f"f_{c}.x{i}" for i in range(len(kinds))]
                                                          for c in answers] + [[f"p.a{i}" for i in range(len(kinds))]]
        sql = ", ".join(f"count(*) FILTER (WHERE {flag})" for col in per for flag in col)
        joins = " ".join(f"LEFT JOIN _tf f_{c} ON f_{c}._t = rows._{c}_t" for c in answers)
        row = con.execute(f"SELECT {sql} FROM rows LEFT JOIN _pf p ON p._p = rows._p {joins}").fetchall()[0]
        con.execute("DROP TABLE _pf; DROP TABLE _tf")
        return tuple(int(x or 0) for x in row)

    before = counts()
    texts = ("SELECT input AS t FROM _pd UNION SELECT t FROM _td "
             "UNION SELECT unnest(list_transform(messages, lambda m: m.content)) FROM _pd")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _pii AS {texts}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _pii AS SELECT t, {scrub_sql('t', kinds)} AS s FROM _pii "
                f"WHERE regexp_matches(t, {_lit(ANY_PATTERN)})")
    con.execute("UPDATE _pd SET input = p.s FROM _pii p WHERE _pd.input = p.t")
    con.execute("UPDATE _td SET t = p.s FROM _pii p WHERE _td.t = p.t")
    _rebuild_messages(con, "_pd", "_p", kinds)
    con.execute("UPDATE _pd SET messages = x.messages FROM _pii_msgs x WHERE _pd._p = x.r")
    con.execute("DROP TABLE _pii; DROP TABLE _pii_msgs")
    after = counts()
    per_kind = []
    for i, kind in enumerate(kinds):
        got = sum(after[j] - before[j] for j in range(i, len(after), len(kinds)))
        if got:
            per_kind.append((f"{kind} replaced by {PLACEHOLDERS[kind]} (rows x columns)", int(got)))
    return StepReport("pii", n, n, tuple(per_kind), "texts rewritten, no row removed")


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _placeholder_counts(col: str, kinds: tuple[str, ...]) -> str:
    return ", ".join(f"count(*) FILTER (WHERE contains({col}, '{PLACEHOLDERS[k]}'))" for k in kinds)


def _order(kind: str) -> str:
    """A total order of a kind's rows (oldest first): which of two duplicates is kept must not depend on chance.
    The lineage comes last: two preference pairs of one chosen inference whose rejected outputs are the same text
    tie on everything before it, and their ids differ by the rejected inference."""
    return f"timestamp, inference_ids[1], origin, hash({answers_sql(kind)}), label, inference_ids, feedback_ids"


def exact_dedupe(con: duckdb.DuckDBPyConnection, recipe: Recipe) -> StepReport:
    if not recipe.steps.exact_dedupe:
        materialize(con, recipe.kind)
        return _skipped(con, "exact_dedupe", "turned off in the recipe")
    if deferred(con):
        report = _exact_dedupe_deferred(con, recipe)
        materialize(con, recipe.kind)  # the steps after this one read the texts of the rows left
        return report
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
    return _keep_first_per_key(con, n)


def _keep_first_per_key(con: duckdb.DuckDBPyConnection, n: int) -> StepReport:
    """`exact_dedupe`'s end, for both row shapes: keep the first row (by `_rank`) of each `_key` of `_keyed`."""
    con.execute("DELETE FROM rows WHERE rowid NOT IN (SELECT arg_min(_r, _rank) FROM _keyed GROUP BY _key)")
    con.execute("DROP TABLE _keyed; DROP TABLE _pnorm; DROP TABLE IF EXISTS _anorm")
    out = _count(con)
    return StepReport("exact_dedupe", n, out, (("same normalized text as an earlier row", n - out),) if n - out else ())


def _exact_dedupe_deferred(con: duckdb.DuckDBPyConnection, recipe: Recipe) -> StepReport:
    """`exact_dedupe` over rows that refer to their texts (`kinds.deferred`), with the same key and order: a
    prompt's hash is taken once per `_pd` entry, the answers' once per distinct combination of `_td` entries."""
    n = _count(con)
    refs = [f"_{c}_t" for c in ANSWER_COLUMNS[recipe.kind]]
    prompt = f"coalesce({PROMPT_TEXT}, '')"
    con.execute(f"CREATE OR REPLACE TEMP TABLE _pnorm AS SELECT _p, hash({norm(prompt)}) AS h FROM _pd")
    texts = answers_sql(recipe.kind)
    for c in ANSWER_COLUMNS[recipe.kind]:
        texts = texts.replace(f"coalesce({c}, '')", f"coalesce(a_{c}.t, '')")
    joins = " ".join(f"LEFT JOIN _td a_{c} ON a_{c}._t = k._{c}_t" for c in ANSWER_COLUMNS[recipe.kind])
    con.execute(f"CREATE OR REPLACE TEMP TABLE _anorm AS SELECT k.*, {texts} AS t FROM "
                f"(SELECT DISTINCT {', '.join(refs)} FROM rows) k {joins}")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _anorm AS SELECT * EXCLUDE (t), hash({norm('t')}) AS h, hash(t) AS oh "
                "FROM _anorm")
    empty = f"(SELECT hash({norm(_lit(''))}))"  # a row without a prompt entry has no messages: its prompt is ''
    on = " AND ".join(f"a.{r} IS NOT DISTINCT FROM rows.{r}" for r in refs)
    order = _order(recipe.kind).replace(f"hash({answers_sql(recipe.kind)})", "a.oh")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _keyed AS SELECT rows.rowid AS _r, "
                f"hash(app, coalesce(p.h, {empty}), a.h) AS _key, row_number() OVER (ORDER BY {order}) AS _rank "
                f"FROM rows LEFT JOIN _pnorm p ON p._p = rows._p JOIN _anorm a ON {on}")
    return _keep_first_per_key(con, n)


def _tokens(texts: Sequence[str]) -> list[list[str]]:
    return [t.split() or [""] for t in texts]


def near_dedupe(con: duckdb.DuckDBPyConnection, recipe: Recipe, ds: DatasetSettings) -> StepReport:
    threshold = recipe.steps.near_dedupe
    if threshold is None:
        return _skipped(con, "near_dedupe", "turned off in the recipe")
    materialize(con, recipe.kind)
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
    materialize(con, recipe.kind)
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
    materialize(con, recipe.kind)
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
