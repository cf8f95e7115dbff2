"""Recipes: one reviewable YAML file per dataset, validated on load into frozen dataclasses.

Only `yaml.safe_load` reads them. Every mistake is a `RecipeError` naming the file, the key and the fix; unknown
keys are mistakes (a typo must not silently turn a step off). The README's "Datasets" section is the reference;
`infra/recipes/*.yaml` are worked examples.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import yaml

from flywheel.errors import FlywheelError
from flywheel.schemas.contract import FEEDBACK_SOURCES
from flywheel.warehouse.pii import KINDS as PII_KINDS

KINDS = ("sft", "preference", "kto", "eval")
GROUP_KEYS = ("session_id", "user_id", "prompt")
STRATA = ("app", "prompt_template", "model", "script")
SCRIPTS = ("latin", "cyrillic", "greek", "arabic", "hebrew", "devanagari", "cjk")
OUTPUT_FORMATS = ("text", "json")
"""What an eval set's answers are expected to be (`eval.output_format`); evaluation scores JSON validity only for
`json` (the same values as `flywheel.warehouse.evaluation.metrics.OUTPUT_FORMATS`, which this room cannot import)."""
FORMATS: dict[str, tuple[str, ...]] = {
    "sft": ("parquet", "jsonl", "openai_chat", "trl", "hf"),
    "preference": ("parquet", "jsonl", "openai_dpo", "trl", "hf"),
    "kto": ("parquet", "jsonl", "trl", "hf"),
    "eval": ("parquet", "jsonl", "hf"),
}
"""The export formats each kind can be written in (`parquet` is always written: it is the version's data)."""
NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
Kind = Literal["sft", "preference", "kto", "eval"]


class RecipeError(FlywheelError):
    """A recipe file is malformed: `path` and `key` say where, the message says what to write instead."""

    def __init__(self, message: str, *, path: str = "", key: str = "") -> None:
        self.path = path
        self.key = key
        where = f"{path}: " if path else ""
        where += f"`{key}`: " if key else ""
        super().__init__(where + message)


@dataclass(frozen=True)
class Source:
    """Which landed inferences a recipe reads: a time window on the inference's own timestamp, `[since, until)`,
    and optional allow-lists (an empty tuple allows every value)."""

    since: datetime | None = None
    until: datetime | None = None
    app: tuple[str, ...] = ()
    model: tuple[str, ...] = ()
    model_version: tuple[str, ...] = ()
    prompt_template: tuple[str, ...] = ()
    prompt_version: tuple[str, ...] = ()


@dataclass(frozen=True)
class FeedbackRule:
    """How feedback events become a verdict on one inference.

    Each event is positive (thumbs up, a rating whose position on its scale is at least `min_rating`, an implicit
    signal in `accept_signals`), negative (thumbs down, a rating at most `max_negative_rating`, a signal in
    `reject_signals`, a flag) or neutral. When events on one inference disagree, `precedence` decides: the event
    of the earliest-listed source wins, and among those the latest. `unanimous` instead drops any inference whose
    positive and negative events disagree."""

    min_rating: float = 0.75
    max_negative_rating: float = 0.25
    accept_signals: tuple[str, ...] = ("accept", "copy")
    reject_signals: tuple[str, ...] = ("regenerate", "abandon")
    precedence: tuple[str, ...] = ("expert", "user", "judge")
    conflicts: Literal["precedence", "unanimous"] = "precedence"


@dataclass(frozen=True)
class Steps:
    """The curation steps and their parameters. They always run in this order (each reports rows in and out):
    quality_gate, flags, length, script, pii, exact_dedupe, near_dedupe, decontaminate, then the split."""

    quality_gate: bool = True
    flags: bool = True
    min_chars: int = 1
    max_chars: int = 32_000
    scripts: tuple[str, ...] = ()
    pii: tuple[str, ...] = PII_KINDS
    exact_dedupe: bool = True
    near_dedupe: float | None = 0.9
    decontaminate: float | None = 0.8


@dataclass(frozen=True)
class Splits:
    """Split fractions (summing to 1) and the key whose rows always land in the same split."""

    fractions: tuple[tuple[str, float], ...] = (("train", 0.9), ("test", 0.1))
    by: Literal["session_id", "user_id", "prompt"] = "session_id"
    seed: str = "flywheel"


@dataclass(frozen=True)
class EvalSampling:
    """eval only: at most `per_stratum` rows per value of `stratify_by`, of which up to `failure_share` are the
    most recent failures (negative verdicts), so a regression shows; the rest a stable-hash sample.
    `output_format` is what the answers should be (`text` or `json`), kept in the manifest: an evaluation of the
    set scores JSON validity only for `json`."""

    stratify_by: str = "app"
    per_stratum: int = 50
    failure_share: float = 0.5
    output_format: Literal["text", "json"] = "text"


@dataclass(frozen=True)
class Recipe:
    name: str
    kind: Kind
    description: str = ""
    source: Source = field(default_factory=Source)
    feedback: FeedbackRule = field(default_factory=FeedbackRule)
    steps: Steps = field(default_factory=Steps)
    splits: Splits = field(default_factory=Splits)
    eval: EvalSampling = field(default_factory=EvalSampling)
    exports: tuple[str, ...] = ("parquet",)
    path: str = ""

    def to_json(self) -> dict[str, Any]:
        """The recipe as plain JSON (what the manifest keeps); `path` is where it was read, not part of it."""
        out = asdict(self)
        out.pop("path")
        return json.loads(json.dumps(out, default=_iso))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(self.to_json(), sort_keys=True).encode()).hexdigest()


def _iso(v: object) -> str:
    if isinstance(v, datetime):
        return v.isoformat()
    raise TypeError(type(v).__name__)


def check_name(name: str, *, path: str = "", key: str = "name") -> str:
    """A dataset name is a directory name under the registry: lower-case letters, digits, `.`, `_`, `-`; no path
    separators, no `..`."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or ".." in name:  # match() lets "a\n" through
        raise RecipeError(f"{name!r} is not a dataset name: use 1-64 lower-case letters, digits, `.`, `_` or `-` "
                          "(no `/`, no `..`), starting with a letter or digit", path=path, key=key)
    return name


# ---------------------------------------------------------------------------------------------------- loading


def load_recipe(path: str | Path) -> Recipe:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise RecipeError(f"cannot read the recipe: {exc.strerror}; check the path", path=str(p)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"not valid YAML: {exc}", path=str(p)) from None
    return parse_recipe(data, path=str(p))


def parse_recipe(data: object, *, path: str = "") -> Recipe:
    r = _Reader(path)
    top = r.mapping(data, "", {"name", "kind", "description", "source", "feedback", "steps", "splits", "eval",
                               "exports"})
    name = check_name(r.required(top, "name"), path=path)
    kind = r.choice(r.required(top, "kind"), "kind", KINDS)
    src = r.mapping(top.get("source", {}), "source", {"since", "until", "app", "model", "model_version",
                                                     "prompt_template", "prompt_version"})
    source = Source(since=r.time(src.get("since"), "source.since"), until=r.time(src.get("until"), "source.until"),
                    **{k: r.strings(src.get(k, []), f"source.{k}") for k in
                       ("app", "model", "model_version", "prompt_template", "prompt_version")})
    if source.since and source.until and source.since >= source.until:
        raise RecipeError("the window is empty: `since` must be before `until`", path=path, key="source.until")
    fb = r.mapping(top.get("feedback", {}), "feedback", {"min_rating", "max_negative_rating", "accept_signals",
                                                        "reject_signals", "precedence", "conflicts"})
    d = FeedbackRule()
    feedback = FeedbackRule(
        min_rating=r.fraction(fb.get("min_rating", d.min_rating), "feedback.min_rating"),
        max_negative_rating=r.fraction(fb.get("max_negative_rating", d.max_negative_rating),
                                       "feedback.max_negative_rating"),
        accept_signals=r.strings(fb.get("accept_signals", list(d.accept_signals)), "feedback.accept_signals"),
        reject_signals=r.strings(fb.get("reject_signals", list(d.reject_signals)), "feedback.reject_signals"),
        precedence=tuple(r.choice(s, "feedback.precedence", FEEDBACK_SOURCES) for s in
                         r.strings(fb.get("precedence", list(d.precedence)), "feedback.precedence")),
        conflicts=r.choice(fb.get("conflicts", d.conflicts), "feedback.conflicts", ("precedence", "unanimous")))
    st = r.mapping(top.get("steps", {}), "steps", {"quality_gate", "flags", "length", "script", "pii",
                                                  "exact_dedupe", "near_dedupe", "decontaminate"})
    ds = Steps()
    length = r.mapping(st.get("length", {}), "steps.length", {"min_chars", "max_chars"})
    steps = Steps(
        quality_gate=r.boolean(st.get("quality_gate", ds.quality_gate), "steps.quality_gate"),
        flags=r.boolean(st.get("flags", ds.flags), "steps.flags"),
        min_chars=r.integer(length.get("min_chars", ds.min_chars), "steps.length.min_chars"),
        max_chars=r.integer(length.get("max_chars", ds.max_chars), "steps.length.max_chars"),
        scripts=tuple(r.choice(s, "steps.script", SCRIPTS) for s in r.strings(st.get("script", []), "steps.script")),
        pii=_pii(r, st.get("pii", True)),
        exact_dedupe=r.boolean(st.get("exact_dedupe", ds.exact_dedupe), "steps.exact_dedupe"),
        near_dedupe=_threshold(r, st.get("near_dedupe", ds.near_dedupe), "steps.near_dedupe"),
        decontaminate=_threshold(r, st.get("decontaminate", ds.decontaminate), "steps.decontaminate"))
    sp = r.mapping(top.get("splits", {}), "splits", {"fractions", "by", "seed"})
    fractions = sp.get("fractions", {"test": 1.0} if kind == "eval" else dict(Splits().fractions))
    fr = r.mapping(fractions, "splits.fractions", None)
    pairs = tuple((check_name(str(k), path=path, key="splits.fractions"), r.fraction(v, f"splits.fractions.{k}"))
                  for k, v in fr.items())
    if not pairs or abs(sum(v for _, v in pairs) - 1.0) > 1e-9:
        raise RecipeError(f"the fractions sum to {sum(v for _, v in pairs):g}; make them sum to 1 "
                          "(for example `train: 0.9, test: 0.1`)", path=path, key="splits.fractions")
    splits = Splits(fractions=pairs, by=r.choice(sp.get("by", "session_id"), "splits.by", GROUP_KEYS),
                    seed=str(sp.get("seed", "flywheel")))
    ev = r.mapping(top.get("eval", {}), "eval", {"stratify_by", "per_stratum", "failure_share", "output_format"})
    if ev and kind != "eval":
        raise RecipeError("only an eval recipe samples; remove `eval` or set `kind: eval`", path=path, key="eval")
    de = EvalSampling()
    evs = EvalSampling(stratify_by=r.choice(ev.get("stratify_by", de.stratify_by), "eval.stratify_by", STRATA),
                       per_stratum=r.integer(ev.get("per_stratum", de.per_stratum), "eval.per_stratum", 1),
                       failure_share=r.fraction(ev.get("failure_share", de.failure_share), "eval.failure_share"),
                       output_format=r.choice(ev.get("output_format", de.output_format), "eval.output_format",
                                              OUTPUT_FORMATS))
    exports = tuple(dict.fromkeys(("parquet", *(r.choice(f, "exports", FORMATS[kind]) for f in
                                               r.strings(top.get("exports", []), "exports")))))
    return Recipe(name=name, kind=kind, description=str(top.get("description", "")), source=source,
                  feedback=feedback, steps=steps, splits=splits, eval=evs, exports=exports, path=path)


def _pii(r: _Reader, value: object) -> tuple[str, ...]:
    if value is True:
        return PII_KINDS
    if value is False:
        return ()
    return tuple(r.choice(k, "steps.pii", PII_KINDS) for k in r.strings(value, "steps.pii"))


def _threshold(r: _Reader, value: object, key: str) -> float | None:
    if value is False or value is None:
        return None
    if value is True:
        return {"steps.near_dedupe": 0.9, "steps.decontaminate": 0.8}[key]
    return r.fraction(value, key)


class _Reader:
    """Typed reads of YAML values, each failing with the file, the key and what to write instead."""

    def __init__(self, path: str) -> None:
        self.path = path

    def fail(self, key: str, message: str) -> RecipeError:
        return RecipeError(message, path=self.path, key=key)

    def mapping(self, value: object, key: str, allowed: set[str] | None) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a mapping of keys to values, got {type(value).__name__}")
        if allowed is not None:
            unknown = sorted(str(k) for k in value if k not in allowed)
            if unknown:
                where = f"{key}." if key else ""
                # An empty key (`"": 1`) is named by its quotes, so the error still says which key.
                raise self.fail(where + (unknown[0] or '""'),
                                f"unknown key; the keys here are {', '.join(sorted(allowed))}")
        return value

    def required(self, m: dict[str, Any], key: str) -> Any:
        if m.get(key) in (None, ""):
            raise self.fail(key, "is required")
        return m[key]

    def choice(self, value: object, key: str, choices: tuple[str, ...]) -> Any:
        if value not in choices:
            raise self.fail(key, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def strings(self, value: object, key: str) -> tuple[str, ...]:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, (str, int, float)) for v in value):
            raise self.fail(key, "expected a string or a list of strings")
        return tuple(str(v) for v in value)

    def boolean(self, value: object, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {value!r}")
        return value

    def integer(self, value: object, key: str, minimum: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.fail(key, f"expected a whole number of at least {minimum}, got {value!r}")
        return value

    def fraction(self, value: object, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise self.fail(key, f"expected a number between 0 and 1, got {value!r}")
        return float(value)

    def time(self, value: object, key: str) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, datetime):
            t = value
        else:
            try:
                t = datetime.fromisoformat(str(value))
            except ValueError:
                raise self.fail(key, f"{value!r} is not an ISO 8601 time; write e.g. 2026-11-01T00:00:00Z") from None
        return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def recipe_files(directory: str | Path) -> list[Path]:
    """The recipes of a directory (`*.yaml`, `*.yml`), in name order."""
    d = Path(directory)
    if not d.is_dir():
        raise RecipeError(f"recipes directory {d} does not exist; set FLYWHEEL_RECIPES_DIR", path=str(d))
    return sorted([*d.glob("*.yaml"), *d.glob("*.yml")])


def find_recipe(path_or_name: str, directory: str | Path) -> Recipe:
    """A recipe by file path, or by its `name` among the recipes of `directory`."""
    p = Path(path_or_name)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        return load_recipe(p)
    check_name(path_or_name, key="recipe")
    for f in recipe_files(directory):
        recipe = load_recipe(f)
        if recipe.name == path_or_name:
            return recipe
    raise RecipeError(f"no recipe named {path_or_name!r} in {directory} (the `name:` of each *.yaml there)",
                      path=str(directory))
