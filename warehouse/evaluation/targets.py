"""Evaluation targets: OpenAI-compatible chat endpoints (OpenAI, vLLM, Ollama, LiteLLM and most hosted models),
declared in reviewable YAML files and validated on load.

    # targets.yaml
    targets:
      candidate:
        base_url: http://127.0.0.1:8000/v1
        model: oasst-rlhf-1-llama-30b-8k-steps
        model_version: 2023-05-02        # optional: as the application logs it (for the online evidence)
        prompt_version: v3               # optional: the prompt version the system prompt stands for
        api_key_env: OPENAI_API_KEY      # the key is read from this variable at the edge, never stored
        params: {temperature: 0.0, max_tokens: 512}
        system_prompt: You are a helpful assistant.
        price_per_1k_input_usd: 0.0005
        price_per_1k_output_usd: 0.0015

A target carries the *name* of the variable holding its key, not the key: the key is resolved by the caller at an
edge (`resolve_key`) into a `Secret`, which never shows itself in logs, runs or reprs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Mapping

import yaml

from flywheel.config import Secret
from flywheel.errors import FileSpecError

__all__ = ["Secret", "Target", "TargetError", "load_targets", "parse_target", "resolve_key"]

KEYS = {"base_url", "model", "api_key_env", "params", "system_prompt", "price_per_1k_input_usd",
        "price_per_1k_output_usd", "timeout_s", "model_version", "prompt_version"}
PARAMS = {"temperature", "top_p", "max_tokens", "stop", "seed", "presence_penalty", "frequency_penalty"}


class TargetError(FileSpecError):
    """A target file or entry is malformed; the message names the file, the key and the fix (also `file`, `key`)."""


@dataclass(frozen=True)
class Target:
    name: str
    base_url: str
    model: str
    api_key_env: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    system_prompt: str = ""
    price_per_1k_input_usd: float | None = None
    price_per_1k_output_usd: float | None = None
    timeout_s: float = 60.0
    model_version: str = ""
    """The model version as the application logs it in its inferences (empty: any version of `model`)."""
    prompt_version: str = ""
    """The prompt version as logged (empty: any): with the model, what the online evidence is looked up for."""

    def cost(self, input_tokens: int | None, output_tokens: int | None) -> float | None:
        """The call's cost in USD when the target is priced and the endpoint reported usage."""
        if self.price_per_1k_input_usd is None or self.price_per_1k_output_usd is None \
                or input_tokens is None or output_tokens is None:
            return None
        return (input_tokens * self.price_per_1k_input_usd + output_tokens * self.price_per_1k_output_usd) / 1000

    def describe(self) -> dict[str, Any]:
        """What a run records about its target: everything but the key (not even the variable's value)."""
        out = {"name": self.name, "base_url": self.base_url, "model": self.model, "params": dict(self.params),
               "system_prompt": self.system_prompt, "api_key_env": self.api_key_env}
        # Only when set, so the key that resumes a run is the same as before these fields existed.
        out.update({k: v for k, v in (("model_version", self.model_version),
                                      ("prompt_version", self.prompt_version)) if v})
        return out


def resolve_key(target: Target, environ: Mapping[str, str]) -> Secret:
    """The target's API key from `environ` (an edge passes `os.environ`); empty when it names none."""
    if not target.api_key_env:
        return Secret("")
    value = environ.get(target.api_key_env, "")
    if not value:
        raise TargetError(f"target {target.name!r} reads its API key from ${target.api_key_env}, which is not set: "
                          f"export it (or remove `api_key_env` for an endpoint without keys)",
                          key=f"targets.{target.name}.api_key_env")
    return Secret(value)


def load_targets(path: Path) -> dict[str, Target]:
    """Every target of a YAML file (`targets: {name: {...}}`), validated; errors name the file, key and fix."""
    src = str(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise TargetError(f"cannot read target file {src}: {exc}", file=src) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("targets"), dict) or not doc["targets"]:
        raise TargetError(f"target file {src} must be a mapping with a non-empty `targets:` mapping of names to "
                          "targets", file=src, key="targets")
    return {str(name): parse_target(str(name), spec, src) for name, spec in doc["targets"].items()}


def parse_target(name: str, spec: Any, src: str = "<config>") -> Target:
    where = f"targets.{name}"
    if not isinstance(spec, dict):
        raise TargetError(f"{src}: `{where}` must be a mapping with at least `base_url` and `model`", file=src,
                          key=where)
    unknown = sorted(set(spec) - KEYS)
    if unknown:
        raise TargetError(f"{src}: unknown key `{where}.{unknown[0]}`; the keys are {', '.join(sorted(KEYS))}",
                          file=src, key=f"{where}.{unknown[0]}")
    for key in ("base_url", "model"):
        if not isinstance(spec.get(key), str) or not spec[key]:
            raise TargetError(f"{src}: `{where}.{key}` is required (a string)", file=src, key=f"{where}.{key}")
    if not spec["base_url"].startswith(("http://", "https://")):
        raise TargetError(f"{src}: `{where}.base_url` must be an http(s) URL ending at the API root, e.g. "
                          "https://api.openai.com/v1", file=src, key=f"{where}.base_url")
    params = spec.get("params") or {}
    if not isinstance(params, dict) or set(params) - PARAMS:
        bad = sorted(set(params) - PARAMS) if isinstance(params, dict) else ["(not a mapping)"]
        raise TargetError(f"{src}: `{where}.params` has {bad[0]}; generation parameters are "
                          f"{', '.join(sorted(PARAMS))}", file=src, key=f"{where}.params")
    numbers = {}
    for key in ("price_per_1k_input_usd", "price_per_1k_output_usd", "timeout_s"):
        value = spec.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise TargetError(f"{src}: `{where}.{key}` must be a non-negative number, got {value!r}", file=src,
                              key=f"{where}.{key}")
        if value is not None:
            numbers[key] = float(value)
    spec = dict(spec)
    for key in ("model_version", "prompt_version"):
        # YAML reads `model_version: 2023-05-02` as a date and `prompt_version: 3` as a number: the version is
        # what the application logs, the text written.
        if isinstance(spec.get(key), (date, int)) and not isinstance(spec[key], bool):
            spec[key] = str(spec[key])
    for key in ("api_key_env", "system_prompt", "model_version", "prompt_version"):
        if key in spec and not isinstance(spec[key], str):
            raise TargetError(f"{src}: `{where}.{key}` must be a string", file=src, key=f"{where}.{key}")
    return Target(name, spec["base_url"].rstrip("/"), spec["model"], spec.get("api_key_env", ""), dict(params),
                  spec.get("system_prompt", ""), **numbers, model_version=spec.get("model_version", ""),
                  prompt_version=spec.get("prompt_version", ""))
