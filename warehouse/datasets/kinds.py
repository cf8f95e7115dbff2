"""The four dataset kinds as DuckDB SQL over the lake's views: which landed inferences and feedback become rows.

`select(con, recipe)` fills the temporary table `rows` (one row per dataset row, the columns of `ROW_COLUMNS` plus
internal ones the steps use) and returns a `StepReport` whose reasons say what the kind counted out.

Feedback on one inference becomes one verdict (`FeedbackRule`): each event is positive, negative or neutral; with
`conflicts: precedence` the event of the first source in `precedence` (default expert, user, judge) wins, and among
those the latest; with `conflicts: unanimous` an inference with both positive and negative events has no verdict.
A correction is the human's answer: the one of the first source in precedence (then the latest) is used.

- sft: the conversation plus the correction, or else the output of an inference whose verdict is positive.
- preference: (chosen, rejected) from a correction (chosen = correction, rejected = output), from explicit
  preference events (ties dropped; both inferences must have the same app and normalized input, otherwise the
  event is counted out as `different prompt`), and from opposite verdicts on outputs for the same prompt (the k-th
  positive paired with the k-th negative, oldest first).
- kto: (prompt, completion, label) from single-output verdicts, from corrections (the correction desirable, the
  output not) and from explicit preferences (also across prompts); a completion labelled both ways is dropped.
- eval: every inference in the window, with the correction as reference and `failure` = a negative verdict; the
  `sample` step then keeps a stratified sample that favours recent failures.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from flywheel.schemas.arrow import MESSAGES
from flywheel.warehouse.datasets.recipes import Recipe
from flywheel.warehouse.query import first_landed, sql_type

ROW_COLUMNS = ("id", "split", "prompt", "messages", "tools", "completion", "label", "chosen", "rejected", "output",
               "reference", "failure", "stratum", "app", "origin", "group_key", "prompt_key", "timestamp",
               "inference_ids", "feedback_ids")
"""Columns every kind's rows have (those a kind does not use are null); `KIND_COLUMNS` are the ones written.
`messages` are the chat messages as landed (with their tool calls), `tools` the JSON text of the tools the
inference offered (null when none)."""
KIND_COLUMNS: dict[str, tuple[str, ...]] = {
    "sft": ("id", "prompt", "messages", "tools", "completion", "app", "origin", "group_key", "timestamp",
            "inference_ids", "feedback_ids"),
    "preference": ("id", "prompt", "messages", "tools", "chosen", "rejected", "app", "origin", "group_key",
                   "timestamp", "inference_ids", "feedback_ids"),
    "kto": ("id", "prompt", "messages", "tools", "completion", "label", "app", "origin", "group_key", "timestamp",
            "inference_ids", "feedback_ids"),
    "eval": ("id", "prompt", "messages", "tools", "output", "reference", "failure", "stratum", "app", "origin",
             "group_key", "timestamp", "inference_ids", "feedback_ids"),
}
ANSWER_COLUMNS: dict[str, tuple[str, ...]] = {"sft": ("completion",), "preference": ("chosen", "rejected"),
                                              "kto": ("completion",), "eval": ("output", "reference")}
"""The text columns holding answers, per kind (with `prompt` and `messages`, what PII scrubbing rewrites)."""


@dataclass(frozen=True)
class StepReport:
    """One step's accounting: rows in and out, and how many rows each reason removed (or changed)."""

    step: str
    rows_in: int
    rows_out: int
    reasons: tuple[tuple[str, int], ...] = ()
    detail: str = ""
    seconds: float = 0.0


def norm(expr: str) -> str:
    """SQL: the normalized text used for equality: lower case, runs of spaces, tabs and line breaks as one space,
    none at the ends. (Splitting on spaces is about 3x faster here than `regexp_replace(x, '\\s+', ' ')`.)"""
    spaced = f"replace(replace(replace(lower(coalesce({expr}, '')), chr(10), ' '), chr(13), ' '), chr(9), ' ')"
    return f"array_to_string(list_filter(string_split({spaced}, ' '), lambda w: w <> ''), ' ')"


def _source_filter(recipe: Recipe) -> tuple[str, dict[str, object]]:
    """The recipe's `source` as a SQL condition and its parameters: every value a recipe gives (times, allow-lists)
    is bound as a parameter, never written into the SQL text, so no value can change the query."""
    s = recipe.source
    conds: list[str] = ["true"]
    params: dict[str, object] = {}
    if s.since:
        conds.append("timestamp >= $since")
        params["since"] = s.since
    if s.until:
        conds.append("timestamp < $until")
        params["until"] = s.until
    for col in ("app", "model", "model_version", "prompt_template", "prompt_version"):
        allowed = getattr(s, col)
        if allowed:
            conds.append(f"list_contains(${col}::VARCHAR[], {col})")  # col: one of the five names above
            params[col] = list(allowed)
    return " AND ".join(conds), params


# A landed inference's messages: the chat as sent, or its plain input as one user message.
_MESSAGES = f"coalesce(l.input_messages, [{{'role': 'user', 'content': l.input}}]::{sql_type(MESSAGES)})"
# A tool call is part of what was said (a message without tool calls keys as it did before they existed).
_CONVERSATION = ("array_to_string(list_transform(msgs, lambda m: m.role || ': ' || coalesce(m.content, '') || "
                 "coalesce(to_json(nullif(m.tool_calls, []))::VARCHAR, '')), chr(30))")


# The feedback columns `_prepare` reads
_FEEDBACK = ("feedback_id, inference_id, timestamp, kind, value, correction, other_inference_id, _ingested_at, "
             "source, scale_min, scale_max, signal")


def _prepare(con: duckdb.DuckDBPyConnection, recipe: Recipe, narrow: bool) -> int:
    """Temp tables `src` (the window's inferences, with their prompt key and verdict) and `fbk` (their feedback,
    each with its polarity). Returns the number of inferences in the window.

    Keys first: the deduplicating view is read for the narrow columns only (through its window, every column read
    is carried and sorted: the texts cost 10x the keys), the feedback decides which inferences can become rows, and
    only those inferences' texts are read, from the lake's files, by the coordinates of the landed copy the view
    would have chosen. The other inferences are in `src` with null texts and prompt keys: no kind reads them.

    `narrow`: `src` has no texts (output, messages, tools, prompt); the prompt entries `_pd` (one per distinct app,
    input, messages and tools, numbered `_p`), `_keys` (each needed inference's prompt key and `_p`) and `_need`
    (the needed inferences' coordinates) are kept, for `_intern` to number the texts of the kind's rows once they
    are built."""
    fb = recipe.feedback
    # The sources are whitelisted by the recipe's loader (FEEDBACK_SOURCES): names, not free text.
    rank = " ".join(f"WHEN '{s}' THEN {i}" for i, s in enumerate(fb.precedence))
    group = {"session_id": "coalesce(w.session_id, 'inference:' || w.inference_id)",
             "user_id": "coalesce(w.user_id, 'inference:' || w.inference_id)",
             "prompt": "k.prompt_key"}[recipe.splits.by]
    where, params = _source_filter(recipe)
    win = ("inference_id, timestamp, app, model, prompt_template, session_id, user_id, _ingested_at, _topic, "
           "_partition, _offset")
    # The filter reads the landed copy the view keeps (`first_landed`: the same rows as the view, faster)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _win AS SELECT {win} FROM "
                f"{first_landed('inferences', win + ', model_version, prompt_version')} WHERE {where}", params)
    con.execute(f"""
    CREATE OR REPLACE TEMP TABLE fbk AS
    SELECT f.feedback_id, f.inference_id, f.timestamp, f.kind, f.value, f.correction, f.other_inference_id,
      f._ingested_at, coalesce(CASE f.source {rank} END, 99) AS src_rank,
      CASE f.kind
        WHEN 'thumbs' THEN CAST(f.value AS INTEGER)
        WHEN 'rating' THEN CASE
          WHEN (f.value - coalesce(f.scale_min, 1)) / (coalesce(f.scale_max, 5) - coalesce(f.scale_min, 1))
               >= $min_rating THEN 1
          WHEN (f.value - coalesce(f.scale_min, 1)) / (coalesce(f.scale_max, 5) - coalesce(f.scale_min, 1))
               <= $max_negative THEN -1 ELSE 0 END
        WHEN 'implicit' THEN CASE WHEN list_contains($accept::VARCHAR[], f.signal) THEN 1
                                  WHEN list_contains($reject::VARCHAR[], f.signal) THEN -1 ELSE 0 END
        WHEN 'flag' THEN -1 ELSE 0 END AS polarity
    FROM {first_landed('feedback', _FEEDBACK)} f SEMI JOIN _win USING (inference_id)""", {"min_rating": fb.min_rating,
                                                            "max_negative": fb.max_negative_rating,
                                                            "accept": list(fb.accept_signals),
                                                            "reject": list(fb.reject_signals)})
    verdict = ("arg_min(polarity, (src_rank, -epoch_us(timestamp), feedback_id)) FILTER (WHERE polarity <> 0)"
               if fb.conflicts == "precedence" else
               "CASE WHEN bool_or(polarity = 1) AND bool_or(polarity = -1) THEN NULL "
               "ELSE max(polarity) FILTER (WHERE polarity <> 0) END")
    # An inference with one feedback event (most: every one of the bench's 5M events) has that event's verdict:
    # the same values as the aggregates give a group of one, without them (0.5 s instead of 1.7 s for 2M).
    con.execute(f"""
    CREATE OR REPLACE TEMP TABLE verdicts AS
    WITH _many AS (SELECT inference_id FROM fbk GROUP BY inference_id HAVING count(*) > 1)
    SELECT inference_id,
      CASE WHEN polarity <> 0 THEN polarity END AS verdict,
      (polarity = 1) AND (polarity = -1) AS disputed,
      CASE WHEN polarity <> 0 THEN [feedback_id] END AS verdict_ids,
      kind = 'flag' AS flagged,
      CASE WHEN kind = 'correction' THEN correction END AS correction,
      CASE WHEN kind = 'correction' THEN feedback_id END AS correction_id,
      [_ingested_at] AS fb_ingested
    FROM fbk ANTI JOIN _many USING (inference_id)
    UNION ALL
    SELECT inference_id,
      {verdict},
      bool_or(polarity = 1) AND bool_or(polarity = -1),
      list(feedback_id ORDER BY feedback_id) FILTER (WHERE polarity <> 0),
      bool_or(kind = 'flag'),
      arg_min(correction, (src_rank, -epoch_us(timestamp), feedback_id)) FILTER (WHERE kind = 'correction'),
      arg_min(feedback_id, (src_rank, -epoch_us(timestamp), feedback_id)) FILTER (WHERE kind = 'correction'),
      list(_ingested_at)
    FROM fbk SEMI JOIN _many USING (inference_id) GROUP BY inference_id""")
    # The inferences a kind can make rows of: eval takes all, sft those with a correction or a positive verdict;
    # the others those with a correction or a verdict, and both sides of explicit preferences (`kinds` never
    # reads the texts or prompt keys of the others).
    need = {"eval": "SELECT inference_id FROM _win",
            "sft": "SELECT inference_id FROM verdicts WHERE correction IS NOT NULL OR verdict = 1"}.get(
        recipe.kind, "SELECT inference_id FROM verdicts WHERE correction IS NOT NULL OR verdict IN (1, -1) "
        "UNION SELECT inference_id FROM fbk WHERE kind = 'preference' "
        "UNION SELECT other_inference_id FROM fbk WHERE kind = 'preference'")
    con.execute(f"CREATE OR REPLACE TEMP TABLE _need AS SELECT * FROM _win SEMI JOIN ({need}) n USING (inference_id)")
    # The wide tables are built once each (a copy of them costs more than the normalizing, and spills), and the
    # lake's files are read once for these columns: the prompt keys come from the same read, not a second join.
    # Narrow, the outputs (most of the bytes: 2.2 of 3.4 GB for the 2M inferences a 5M-event preference window
    # needs) are left to `_intern`, which reads them for the inferences whose output a row uses.
    prompt_cols = f"l.tools, l.input, {_MESSAGES} AS messages, w.app"
    if not narrow:
        _read_landed(con, "_txt", "_need", f"l.output, {prompt_cols}")
    # Normalizing costs seconds per 100k texts and a prompt recurs over many inferences: once per distinct one.
    # Each group lists its inferences, so the key reaches them by id: a join on the messages themselves (a list of
    # structs, hashed and compared per inference) cost more than the grouping (5.5 s of `src` at 5M events).
    # Narrow, the groups are also the prompt entries `_intern` numbers (`_pd`, its `_p` in `_keys`), so the texts
    # are grouped once: the key is a function of the app and the messages.
    key = f"md5(app || chr(31) || {norm(_CONVERSATION.replace('msgs', 'messages'))})"
    if narrow:
        # Grouped as they are read (a copy of the 2M wide rows first, as `_txt`, cost 3-4 s at 5M events): each
        # needed inference has one landed copy with its coordinates unless two copies share them, which the
        # count of grouped ids shows; then they are read once, one copy per id, and grouped from there.
        grouped = f"""
        CREATE OR REPLACE TEMP TABLE _pd AS
        SELECT row_number() OVER () AS _p, input, messages, tools, {key} AS prompt_key, _ids FROM (
          SELECT app, input, messages, tools, list(inference_id) AS _ids FROM {{rows}}
          GROUP BY app, input, messages, tools)"""
        con.execute(grouped.format(rows=f"(SELECT l.inference_id, {prompt_cols} FROM {_landed('_need')})"))
        if _count(con, "(SELECT unnest(_ids) FROM _pd)") != _count(con, "_need"):
            _read_landed(con, "_txt", "_need", prompt_cols)
            con.execute(grouped.format(rows="_txt"))
            con.execute("DROP TABLE _txt")
        con.execute("CREATE OR REPLACE TEMP TABLE _keys AS "
                    "SELECT unnest(_ids) AS inference_id, prompt_key, _p FROM _pd")
        con.execute("ALTER TABLE _pd DROP COLUMN _ids; ALTER TABLE _pd DROP COLUMN prompt_key")
    else:
        con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _keys AS
        SELECT unnest(ids) AS inference_id, prompt_key FROM (
          SELECT list(inference_id) AS ids, {key} AS prompt_key FROM _txt GROUP BY app, messages)""")
    texts = "" if narrow else "t.output, t.messages, t.tools, t.input AS prompt,"
    txt = "" if narrow else "LEFT JOIN _txt t USING (inference_id)"
    con.execute(f"""
    CREATE OR REPLACE TEMP TABLE src AS
    SELECT w.inference_id, w.timestamp, w.app, w.model, w.prompt_template, w.session_id, w.user_id, {texts}
      w._ingested_at, k.prompt_key, {group} AS group_key
    FROM _win w {txt} LEFT JOIN _keys k USING (inference_id)""")
    if not narrow:
        con.execute("DROP TABLE _keys; DROP TABLE _need; DROP TABLE _txt")
    n = _count(con, "_win")
    con.execute("DROP TABLE _win")
    return n


def _read_landed(con: duckdb.DuckDBPyConnection, table: str, ids: str, cols: str) -> None:
    """Temp table `table`: `inference_id` and `cols` (SQL over the landed copy `l` and the table `ids`, `w`) of
    each inference in `ids` (which has the coordinates of the landed copy the view keeps: read by a join, with no
    window over the texts), one row per inference id."""
    landed = _landed(ids)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT l.inference_id, {cols} FROM {landed}")
    if _count(con, table) != _count(con, f"(SELECT DISTINCT inference_id FROM {table})"):
        # Two landed copies with the same coordinates (the view keeps either): keep one, the same one every run
        # and in every read of the copy (`_txt` and `_intern`'s outputs), so by all its texts.
        con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT l.inference_id, {cols} FROM {landed} "
                    "QUALIFY row_number() OVER (PARTITION BY l.inference_id "
                    f"ORDER BY l.output, l.input, l.tools, {_MESSAGES}::VARCHAR) = 1")


def _landed(ids: str) -> str:
    """SQL: the landed copies `l` of the inferences in the table `ids` (`w`), joined by the coordinates of the copy
    the deduplicating view keeps."""
    return f"""lake_inferences l JOIN {ids} w
      ON l.inference_id = w.inference_id AND l._ingested_at IS NOT DISTINCT FROM w._ingested_at
         AND l._topic IS NOT DISTINCT FROM w._topic AND l._partition IS NOT DISTINCT FROM w._partition
         AND l._offset IS NOT DISTINCT FROM w._offset"""


def _count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return int(con.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0])


_SELECT_ROW = """
  SELECT NULL::VARCHAR AS id, NULL::VARCHAR AS split, {prompt} AS prompt, {messages} AS messages,
    {tools} AS tools, {completion}::VARCHAR AS completion, {label}::BOOLEAN AS label, {chosen}::VARCHAR AS chosen,
    {rejected}::VARCHAR AS rejected, {output}::VARCHAR AS output, {reference}::VARCHAR AS reference,
    {failure}::BOOLEAN AS failure, NULL::VARCHAR AS stratum, {a}.app, {origin}::VARCHAR AS origin,
    {a}.group_key, {a}.prompt_key, {a}.timestamp, {inference_ids}::VARCHAR[] AS inference_ids,
    {feedback_ids}::VARCHAR[] AS feedback_ids,
    {inf_ingested}::TIMESTAMPTZ[] AS inf_ingested, {fb_ingested}::TIMESTAMPTZ[] AS fb_ingested,
    {flagged}::BOOLEAN AS flagged{extra}"""


def _row(a: str = "s", v: str = "v", **cols: str) -> str:
    base = {"prompt": f"{a}.prompt", "messages": f"{a}.messages", "tools": f"{a}.tools", "completion": "NULL",
            "label": "NULL", "chosen": "NULL", "rejected": "NULL", "output": "NULL", "reference": "NULL",
            "failure": "NULL", "origin": "NULL", "inference_ids": f"[{a}.inference_id]",
            "feedback_ids": f"coalesce({v}.verdict_ids, [])", "inf_ingested": f"[{a}._ingested_at]",
            "fb_ingested": f"coalesce({v}.fb_ingested, [])", "flagged": f"coalesce({v}.flagged, false)",
            "extra": ""}
    base.update(cols)
    return _SELECT_ROW.format(a=a, **base)


def select(con: duckdb.DuckDBPyConnection, recipe: Recipe) -> StepReport:
    """Fill the temp table `rows` with the kind's rows from the window; the report's reasons count what the kind
    left out (e.g. `tie`, `different prompt`, `no verdict`)."""
    # sft and preference rows are built without their texts and refer to them (`_intern`): a copy of every needed
    # text into `src`, or into every row, cost more than the steps that read them.
    narrow = recipe.kind in LATE_TEXTS
    n = _prepare(con, recipe, narrow)
    if recipe.kind in ("preference", "kto"):  # read by the rows and by the reasons: computed once
        con.execute(f"CREATE OR REPLACE TEMP TABLE pref AS {_PREF_EVENTS}")
    sql, reasons_sql = {"sft": _sft, "preference": _preference, "kto": _kto, "eval": _eval}[recipe.kind]()
    con.execute(f"CREATE OR REPLACE TEMP TABLE rows AS {sql}")
    reasons = [(str(r), int(c)) for r, c in con.execute(reasons_sql).fetchall() if c]
    # The steps read `rows` only; gone before the texts are numbered, which need the memory they hold.
    con.execute("DROP TABLE src; DROP TABLE fbk; DROP TABLE verdicts; DROP TABLE IF EXISTS pref")
    if narrow:
        _intern(con, recipe.kind)
    if recipe.kind == "preference":  # a pair of two equal answers teaches nothing
        n_pairs = int(con.execute("SELECT count(*) FROM rows").fetchall()[0][0])
        # Normalized once per distinct answer (an output recurs in several pairs), compared exactly; a null answer
        # is compared as ''.
        con.execute(f"CREATE OR REPLACE TEMP TABLE _norm AS SELECT _t, {norm('t')} AS n FROM _td "
                    "SEMI JOIN (SELECT _chosen_t AS _t FROM rows UNION SELECT _rejected_t FROM rows) u USING (_t)")
        con.execute("DELETE FROM rows WHERE rowid IN (SELECT rows.rowid FROM rows "
                    "LEFT JOIN _norm c ON c._t = rows._chosen_t LEFT JOIN _norm r ON r._t = rows._rejected_t "
                    "WHERE coalesce(c.n, '') = coalesce(r.n, ''))")
        con.execute("DROP TABLE _norm")
        same = n_pairs - int(con.execute("SELECT count(*) FROM rows").fetchall()[0][0])
        reasons += [("chosen equals rejected", same)] if same else []
    out = int(con.execute("SELECT count(*) FROM rows").fetchall()[0][0])
    return StepReport("select", n, out, tuple(sorted(reasons)), f"{recipe.kind} rows from {n} inferences in the window")


LATE_TEXTS = ("sft", "preference")
"""The kinds whose rows `select` builds without texts and refers to them (`_late`, `_intern`): copying every
needed text into `src` and then into the rows cost 24 s and 29 s of the preference select at 5M events."""


def _late(kind: str, **outputs: str) -> dict[str, str]:
    """`_row` columns for an answer column named in `outputs`: the output of the inference of that alias (the
    other answer columns get the text the row gives them, e.g. a correction). For a kind in `LATE_TEXTS` the row
    is built without texts (prompt, messages and tools are those of `inference_ids[1]`) and `_intern` refers it to
    them; for the others the texts are read from the wide `src`."""
    if kind not in LATE_TEXTS:
        return {c: f"{a}.output" for c, a in outputs.items()}
    refs = "".join(f", {outputs[c] + '.inference_id' if c in outputs else 'NULL'}::VARCHAR AS _{c}_of"
                   for c in ANSWER_COLUMNS[kind])
    return {"prompt": "NULL", "messages": "NULL", "tools": "NULL", "extra": refs}


def _intern(con: duckdb.DuckDBPyConnection, kind: str) -> None:
    """Refer the rows built with `_late` to their texts, which are kept once each: `_pd` (`_p`: one entry per
    distinct app, prompt, messages and tools, from `_prepare`) and `_td` (`_t`: one per distinct answer text, an
    output or a text the row gives, e.g. a correction). A row's `_p` is its first inference's prompt entry and each
    answer column `c` has `_c_t` (null where the text is null). `_keys` and `_need` are dropped.

    The steps up to exact dedupe work on the entries and reach the rows by these numbers (`deferred`), and
    `materialize` writes the texts into the rows that are left: exact dedupe leaves few (3,052 of 668,160
    preference rows at 5M events), and writing every row's texts (its prompt, messages, tools and two outputs:
    13 s at 5M) cost more than all the steps.
    Outputs are read from the lake for the inferences whose output a row uses (about 1.4M of the 2M a 5M-event
    preference window needs: the output of an inference no row's answer refers to, such as an sft correction's,
    is never read)."""
    cols = ANSWER_COLUMNS[kind]
    # `_c_of` is null (the row gives the text, e.g. a correction) or one of the row's first two inference ids
    used = " UNION ".join(f"SELECT _{c}_of AS inference_id FROM rows" for c in cols)
    con.execute(f"CREATE OR REPLACE TEMP TABLE _used AS SELECT * FROM _need SEMI JOIN ({used}) u USING (inference_id)")
    con.execute("DROP TABLE _need")
    _read_landed(con, "_out", "_used", "l.output")
    con.execute("DROP TABLE _used")
    # Each group lists its inferences (or rows and columns), so the numbers reach them by id, not by a join on the
    # texts themselves.
    given = " ".join(f"UNION ALL SELECT {c}, NULL, {{'r': rowid, 'c': '{c}'}} FROM rows "
                     f"WHERE _{c}_of IS NULL AND {c} IS NOT NULL" for c in cols)
    con.execute(f"""
    CREATE OR REPLACE TEMP TABLE _td AS
    SELECT row_number() OVER () AS _t, * FROM (
      SELECT t, list(inference_id) FILTER (WHERE inference_id IS NOT NULL) AS _ids,
        list(g) FILTER (WHERE g IS NOT NULL) AS _given
      FROM (SELECT output AS t, inference_id, NULL::STRUCT(r BIGINT, c VARCHAR) AS g FROM _out
            WHERE output IS NOT NULL {given})
      GROUP BY t)""")
    con.execute("DROP TABLE _out")
    con.execute("CREATE OR REPLACE TEMP TABLE _tref AS SELECT unnest(_ids) AS inference_id, _t FROM _td")
    con.execute("CREATE OR REPLACE TEMP TABLE _given AS SELECT g.r, g.c, _t FROM "
                "(SELECT unnest(_given) AS g, _t FROM _td)")
    con.execute("ALTER TABLE _td DROP COLUMN _ids; ALTER TABLE _td DROP COLUMN _given")
    # One rewrite of the (narrow) rows, in their order: an UPDATE per column through a join cost several times it
    refs = "".join(f", CASE WHEN r._{c}_of IS NULL THEN g_{c}._t ELSE o_{c}._t END AS _{c}_t" for c in cols)
    joins = " ".join(f"LEFT JOIN _tref o_{c} ON o_{c}.inference_id = r._{c}_of "
                     f"LEFT JOIN _given g_{c} ON g_{c}.r = r.rowid AND g_{c}.c = '{c}'" for c in cols)
    con.execute(f"""
    CREATE OR REPLACE TEMP TABLE rows AS SELECT r.*, p._p{refs}
    FROM rows r LEFT JOIN _keys p ON p.inference_id = r.inference_ids[1] {joins} ORDER BY r.rowid""")
    con.execute("DROP TABLE _keys; DROP TABLE _tref; DROP TABLE _given")


def deferred(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether `rows` refers to its texts (`_intern`) rather than holding them."""
    return bool(con.execute("SELECT count(*) FROM duckdb_columns() WHERE database_name = 'temp' "
                            "AND table_name = 'rows' AND column_name = '_p'").fetchall()[0][0])


PROMPT_TEXT = "array_to_string(list_transform(messages, lambda m: m.content), ' ')"
"""SQL: the text of a row's messages (their contents, space-separated): what length, dedupe and decontamination
read as the prompt."""


def answer_refs(kind: str) -> tuple[str, ...]:
    """The columns of deferred rows (`_intern`) that number each answer column's text in `_td`."""
    return tuple(f"_{c}_t" for c in ANSWER_COLUMNS[kind])


def materialize(con: duckdb.DuckDBPyConnection, kind: str) -> None:
    """Write the texts into deferred rows (`_intern`), in their order, with `prompt_all` (the `length` step's
    column); nothing when the rows hold their texts."""
    if not deferred(con):
        return
    cols = ANSWER_COLUMNS[kind]
    internal = ", ".join(["_p"] + [f"_{c}_of" for c in cols] + [f"_{c}_t" for c in cols])
    answers = "".join(f", a_{c}.t AS {c}" for c in cols)
    joins = " ".join(f"LEFT JOIN _td a_{c} ON a_{c}._t = r._{c}_t" for c in cols)
    con.execute(f"""
    CREATE OR REPLACE TEMP TABLE rows AS
    SELECT r.* EXCLUDE ({internal}) REPLACE (p.input AS prompt, p.messages AS messages, p.tools AS tools{answers}),
      {PROMPT_TEXT.replace('messages', 'p.messages')} AS prompt_all
    FROM rows r LEFT JOIN _pd p ON p._p = r._p {joins} ORDER BY r.rowid""")
    con.execute("DROP TABLE _pd; DROP TABLE _td")


def _sft() -> tuple[str, str]:
    sql = f"""
    {_row(completion="v.correction", origin="'correction'",
          feedback_ids="[v.correction_id]", flagged="false", **_late("sft"))}
    FROM src s JOIN verdicts v USING (inference_id) WHERE v.correction IS NOT NULL
    UNION ALL
    {_row(origin="'positive feedback'", **_late("sft", completion="s"))}
    FROM src s JOIN verdicts v USING (inference_id) WHERE v.correction IS NULL AND v.verdict = 1"""
    reasons = """
    SELECT CASE WHEN v.inference_id IS NULL THEN 'no feedback'
                WHEN v.verdict IS NULL AND v.disputed THEN 'conflicting feedback (unanimous rule)'
                WHEN v.verdict IS NULL THEN 'no verdict (neutral feedback only)'
                ELSE 'negative verdict' END AS reason, count(*)
    FROM src s LEFT JOIN verdicts v USING (inference_id)
    WHERE v.correction IS NULL AND v.verdict IS DISTINCT FROM 1 GROUP BY 1 ORDER BY 1"""
    return sql, reasons


_PREF_EVENTS = """
    WITH p AS (
      SELECT least(inference_id, other_inference_id) AS x, greatest(inference_id, other_inference_id) AS y,
        arg_min(CASE WHEN inference_id < other_inference_id THEN value ELSE -value END,
                (src_rank, -epoch_us(timestamp), feedback_id)) AS value,
        list(feedback_id ORDER BY feedback_id) AS ids, list(_ingested_at) AS ing
      FROM fbk WHERE kind = 'preference' GROUP BY 1, 2)
    SELECT p.*, CASE WHEN p.value = 0 THEN 'tie' WHEN b.inference_id IS NULL THEN 'other inference not in window'
                     WHEN a.prompt_key <> b.prompt_key THEN 'different prompt' END AS out_reason,
      CASE WHEN p.value = 1 THEN p.x ELSE p.y END AS win, CASE WHEN p.value = 1 THEN p.y ELSE p.x END AS lose
    FROM p JOIN src a ON a.inference_id = p.x LEFT JOIN src b ON b.inference_id = p.y"""


def _preference() -> tuple[str, str]:
    opposite = """
    WITH ranked AS (
      SELECT s.inference_id, s.prompt_key, v.verdict,
        row_number() OVER (PARTITION BY s.prompt_key, v.verdict ORDER BY s.timestamp, s.inference_id) AS k
      FROM src s JOIN verdicts v USING (inference_id) WHERE v.correction IS NULL AND v.verdict IN (1, -1))
    SELECT g.inference_id AS win, b.inference_id AS lose FROM ranked g JOIN ranked b
      ON g.prompt_key = b.prompt_key AND g.k = b.k AND g.verdict = 1 AND b.verdict = -1"""
    pair = _row(a="w", v="vw", origin="{origin}", **_late("preference", chosen="w", rejected="l"),
                inference_ids="[w.inference_id, l.inference_id]",
                feedback_ids="list_sort(list_concat(coalesce(vw.verdict_ids, []), coalesce(vl.verdict_ids, [])))",
                inf_ingested="[w._ingested_at, l._ingested_at]",
                fb_ingested="list_concat(coalesce(vw.fb_ingested, []), coalesce(vl.fb_ingested, []))")
    sql = f"""
    WITH opp AS ({opposite}), pairs AS (
    {_row(chosen="v.correction", origin="'correction'", feedback_ids="[v.correction_id]", flagged="false",
          **_late("preference", rejected="s"))}
    FROM src s JOIN verdicts v USING (inference_id) WHERE v.correction IS NOT NULL
    UNION ALL
    {pair.format(origin="'preference'").replace("coalesce(vw.verdict_ids, [])", "pr.ids")
         .replace("coalesce(vw.fb_ingested, [])", "pr.ing")}
    FROM pref pr JOIN src w ON w.inference_id = pr.win JOIN src l ON l.inference_id = pr.lose
      LEFT JOIN verdicts vw ON vw.inference_id = w.inference_id
      LEFT JOIN verdicts vl ON vl.inference_id = l.inference_id
    WHERE pr.out_reason IS NULL
    UNION ALL
    {pair.format(origin="'opposite feedback'")}
    FROM opp o JOIN src w ON w.inference_id = o.win JOIN src l ON l.inference_id = o.lose
      LEFT JOIN verdicts vw ON vw.inference_id = w.inference_id
      LEFT JOIN verdicts vl ON vl.inference_id = l.inference_id)
    SELECT * FROM pairs"""
    reasons = """
    SELECT out_reason, count(*) FROM pref WHERE out_reason IS NOT NULL GROUP BY 1 ORDER BY 1"""
    return sql, reasons


def _kto() -> tuple[str, str]:
    pref_side = _row(a="x", v="vx", completion="x.output", label="{label}", origin="'preference'",
                     feedback_ids="pr.ids", fb_ingested="pr.ing")
    sql = f"""
    WITH labelled AS (
    {_row(completion="v.correction", label="true", origin="'correction'", feedback_ids="[v.correction_id]",
          flagged="false")}
    FROM src s JOIN verdicts v USING (inference_id) WHERE v.correction IS NOT NULL
    UNION ALL
    {_row(completion="s.output", label="false", origin="'correction'", feedback_ids="[v.correction_id]")}
    FROM src s JOIN verdicts v USING (inference_id)
    WHERE v.correction IS NOT NULL AND {norm("v.correction")} <> {norm("s.output")}
    UNION ALL
    {_row(completion="s.output", label="v.verdict = 1", origin="'feedback'")}
    FROM src s JOIN verdicts v USING (inference_id) WHERE v.correction IS NULL AND v.verdict IN (1, -1)
    UNION ALL
    {pref_side.format(label="true")}
    FROM pref pr JOIN src x ON x.inference_id = pr.win LEFT JOIN verdicts vx ON vx.inference_id = x.inference_id
    WHERE pr.value <> 0 AND vx.verdict IS NULL AND vx.correction IS NULL
    UNION ALL
    {pref_side.format(label="false")}
    FROM pref pr JOIN src x ON x.inference_id = pr.lose LEFT JOIN verdicts vx ON vx.inference_id = x.inference_id
    WHERE pr.value <> 0 AND vx.verdict IS NULL AND vx.correction IS NULL),
    contradicted AS (
      SELECT prompt_key, {norm("completion")} AS c FROM labelled GROUP BY ALL HAVING count(DISTINCT label) > 1)
    SELECT * FROM labelled l ANTI JOIN contradicted k ON l.prompt_key = k.prompt_key AND {norm("l.completion")} = k.c"""
    reasons = """
    SELECT 'tie', count(*) FROM pref WHERE value = 0
    UNION ALL
    SELECT 'no verdict', count(*) FROM src s LEFT JOIN verdicts v USING (inference_id)
    WHERE v.correction IS NULL AND v.verdict IS NULL"""
    return sql, reasons


def _eval() -> tuple[str, str]:
    sql = f"""
    {_row(output="s.output", reference="v.correction", failure="coalesce(v.verdict = -1, false)",
          origin="CASE WHEN v.verdict = -1 THEN 'failure' WHEN v.correction IS NOT NULL THEN 'corrected' "
                 "ELSE 'sample' END",
          feedback_ids="list_distinct(list_concat(coalesce(v.verdict_ids, []), "
                       "CASE WHEN v.correction_id IS NULL THEN [] ELSE [v.correction_id] END))")}
    , s.model, s.prompt_template
    FROM src s LEFT JOIN verdicts v USING (inference_id)"""
    return sql, "SELECT 'none', 0"
