"""The event contract, version 1: the single source of truth for flywheel's two event types.

Everything else is derived from the `Field` lists below: the per-event validator the SDK runs at the edge and the
vectorized validator the landing worker runs (`flywheel.schemas.validation`), the Arrow/Parquet schema of the lake
tables (`flywheel.schemas.arrow`), and the reference docs and JSON Schema (`flywheel.schemas.docs`, `flywheel schema`).

Wire format: JSON (UTF-8), one event per Kafka message.

Evolution policy (tested in tests/schemas/test_evolution.py):
- Field names are public: fields are added, never renamed or removed, and a new field is always optional.
- A known optional field that is absent (an older producer) lands as null, or its stated default.
- An unknown field (a newer producer, or a typo) does not reject the event: it lands, and the unknown fields are
  kept verbatim in the `extra` column (a JSON object), so nothing is lost and an upgrade can promote them.
- A missing or null required field, a wrong type, a value out of its range or set, a duplicate key, invalid JSON or
  UTF-8, or a payload over the size limit rejects the event: it goes to the dead-letter topic and the quarantine
  table with every reason found.
- `schema_version` above the version this build knows is accepted: later versions only add optional fields.

Chat messages and tools follow OpenAI's chat format (the shape of its Chat Completions API and chat fine-tuning
files), so a tool-calling app's traffic lands as its trainer will read it:
- A message is `{role, content, name?, tool_call_id?, tool_calls?}`. `content` is a string; only an `assistant`
  message with a non-empty `tool_calls` may leave it null or out. A `tool` message needs a non-empty
  `tool_call_id` (the `id` of the call it answers).
- `tool_calls` (assistant messages only) is a list of `{id, type: "function", function: {name, arguments}}`.
  `arguments` is the JSON string the model produced, as OpenAI sends it: it is stored verbatim, never parsed or
  re-serialized (a model may emit invalid JSON there, and training on its own traffic must see exactly that).
- `tools` (on the inference) is a non-empty list of `{type: "function", function: {name, description?,
  parameters?}}`, `parameters` a JSON Schema object. It lands as its JSON text, like `metadata`; keys beyond these
  (such as `strict`) are kept.
- Other keys of a message are not part of the contract and are not kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

SCHEMA_VERSION = 1

Kind = Literal["id", "string", "text", "timestamp", "number", "integer", "object", "input", "enum", "scale", "tools"]

ID_MAX_LENGTH = 256
NAME_MAX_LENGTH = 1024


@dataclass(frozen=True)
class Field:
    name: str
    kind: Kind
    doc: str
    required: bool = False
    minimum: float | None = None
    choices: tuple[str, ...] = ()
    default: object = None

    @property
    def max_length(self) -> int | None:
        return {"id": ID_MAX_LENGTH, "string": NAME_MAX_LENGTH, "enum": NAME_MAX_LENGTH}.get(self.kind)


Test = Literal["one_of", "present", "non_empty", "less", "within"]


@dataclass(frozen=True)
class Rule:
    """A rule across fields of one feedback kind, as a test on the typed values that each validator renders in its
    own terms (SQL in the batch query, Arrow compute on the fast path, Python per event): `one_of` (`args[0]` is one
    of `args[1:]`), `present` (not null), `non_empty` (a non-empty string), `less` (`args[0] < args[1]`) and
    `within` (`args[0]` is null or between `args[1]` and `args[2]`). `fields` are those a rule is about: when one of
    them is already wrong, the rule is not reported too."""

    kind: str
    reason: str
    test: Test
    args: tuple[str | float, ...]
    fields: tuple[str, ...] = ()

    @property
    def sql(self) -> str:
        a = self.args
        if self.test == "one_of":
            return f"{a[0]} IN ({', '.join(f'{v:g}' for v in a[1:])})"
        if self.test == "present":
            return f"{a[0]} IS NOT NULL"
        if self.test == "non_empty":
            return f"{a[0]} IS NOT NULL AND length({a[0]}) > 0"
        if self.test == "less":
            return f"{a[0]} < {a[1]}"
        return f"{a[0]} IS NULL OR {a[0]} BETWEEN {a[1]} AND {a[2]}"


@dataclass(frozen=True)
class EventType:
    name: Literal["inference", "feedback"]
    id_field: str
    fields: tuple[Field, ...]
    rules: tuple[Rule, ...] = field(default=())

    @property
    def field_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def get(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)


_COMMON_TAIL = (
    Field("metadata", "object", "Free-form JSON object for anything the contract does not name."),
    Field("schema_version", "integer", "Contract version the producer wrote.", minimum=1, default=SCHEMA_VERSION),
    Field("type", "enum", "Optional tag naming the event type; must match the topic when present.",
          choices=("inference", "feedback")),
)

INFERENCE = EventType(
    name="inference",
    id_field="inference_id",
    fields=(
        Field("inference_id", "id", "Unique id of the inference; the idempotency key.", required=True),
        Field("timestamp", "timestamp", "When the inference happened: RFC 3339 with an offset.", required=True),
        Field("app", "string", "Application (product surface) that called the model.", required=True),
        Field("model", "string", "Model name as the provider knows it.", required=True),
        Field("input", "input", "The prompt: a string, or a list of chat messages `{role, content}` (with "
              "`name`, `tool_call_id`, `tool_calls` as OpenAI's chat format has them).", required=True),
        Field("output", "text", "What the model answered.", required=True),
        Field("model_version", "string", "Model version or snapshot."),
        Field("provider", "string", "Model provider (openai, anthropic, self-hosted, ...)."),
        Field("prompt_template", "string", "Name of the prompt template."),
        Field("prompt_version", "string", "Version of the prompt template."),
        Field("latency_ms", "number", "End-to-end latency in milliseconds.", minimum=0),
        Field("input_tokens", "integer", "Prompt tokens.", minimum=0),
        Field("output_tokens", "integer", "Completion tokens.", minimum=0),
        Field("cost_usd", "number", "Cost of the call in US dollars.", minimum=0),
        Field("user_id", "string", "End user (pseudonymous id)."),
        Field("session_id", "string", "Conversation or session."),
        Field("trace_id", "string", "Distributed-tracing id, to join with traces."),
        Field("tools", "tools", "The tools offered to the model: OpenAI-style `[{type: \"function\", function: "
              "{name, description?, parameters?}}]`."),
        *_COMMON_TAIL,
    ),
)

FEEDBACK_KINDS = ("thumbs", "rating", "correction", "preference", "flag", "implicit")
FEEDBACK_SOURCES = ("user", "expert", "judge")
DEFAULT_RATING_SCALE = (1.0, 5.0)

FEEDBACK = EventType(
    name="feedback",
    id_field="feedback_id",
    fields=(
        Field("feedback_id", "id", "Unique id of the feedback event; the idempotency key.", required=True),
        Field("inference_id", "id", "The inference this feedback is about.", required=True),
        Field("timestamp", "timestamp", "When the feedback was given: RFC 3339 with an offset.", required=True),
        Field("kind", "enum", "What sort of feedback this is.", required=True, choices=FEEDBACK_KINDS),
        Field("value", "number", "thumbs: 1 or -1; rating: a number on `scale`; preference: 1, -1 or 0 (tie)."),
        Field("scale", "scale", "rating only: `[min, max]` of the rating scale, default `[1, 5]`."),
        Field("correction", "text", "correction only: the human-edited output."),
        Field("other_inference_id", "id", "preference only: the inference compared against (value 1 prefers "
              "`inference_id`, -1 prefers this one, 0 is a tie)."),
        Field("reason", "string", "flag only: why the output was flagged."),
        Field("signal", "string", "implicit only: the behaviour seen (copy, regenerate, abandon, accept, ...)."),
        Field("comment", "text", "Free-text comment from whoever gave the feedback."),
        Field("source", "enum", "Who gave it.", choices=FEEDBACK_SOURCES, default="user"),
        Field("annotator_id", "string", "Annotator (expert or judge model) id."),
        *_COMMON_TAIL,
    ),
    rules=(
        Rule("thumbs", "thumbs feedback needs value 1 or -1", "one_of", ("value", 1, -1), ("value",)),
        Rule("rating", "rating feedback needs a value", "present", ("value",), ("value",)),
        Rule("rating", "rating scale must have min < max", "less", ("scale_min", "scale_max"), ("scale",)),
        Rule("rating", "rating value must lie within its scale", "within", ("value", "scale_min", "scale_max"),
             ("value", "scale")),
        Rule("correction", "correction feedback needs a non-empty `correction`", "non_empty", ("correction",),
             ("correction",)),
        Rule("preference", "preference feedback needs `other_inference_id`", "present", ("other_inference_id",),
             ("other_inference_id",)),
        Rule("preference", "preference feedback needs value 1, -1 or 0", "one_of", ("value", 1, -1, 0), ("value",)),
        Rule("flag", "flag feedback needs a `reason`", "non_empty", ("reason",), ("reason",)),
        Rule("implicit", "implicit feedback needs a `signal`", "non_empty", ("signal",), ("signal",)),
    ),
)

EVENT_TYPES: dict[str, EventType] = {"inference": INFERENCE, "feedback": FEEDBACK}


def event_type_of(obj: dict[str, object]) -> EventType | None:
    """Tell an inference from a feedback event by its `type` tag, or else by its id fields."""
    tag = obj.get("type")
    if tag in EVENT_TYPES:
        return EVENT_TYPES[str(tag)]
    if "feedback_id" in obj or "kind" in obj:
        return FEEDBACK
    if "inference_id" in obj and ("output" in obj or "model" in obj):
        return INFERENCE
    return None
