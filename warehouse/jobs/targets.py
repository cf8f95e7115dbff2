"""What a job can start, each a function of the job's parameters that returns its result or raises `TargetFailed`
with the output to keep:

- `webhook`: POST the parameters as JSON, signed in the Standard Webhooks style (`webhook-id`,
  `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`), retried with backoff
  on 5xx and network errors; the secret comes from the environment variable the policy names.
- `shell`: a command, with the dataset's name, version, path and manifest in its environment (`DATASET_NAME`,
  `DATASET_VERSION`, `DATASET_PATH`, `DATASET_MANIFEST`); its output's tail is kept; a non-zero exit fails it.
  A local TRL run is a shell target (see the README's Triggers section).
- `fine_tune`: an OpenAI-compatible fine-tuning API: upload the export, create the job, poll it until it ends,
  and record the resulting model name.
- `prefect`: `run_deployment` on the configured Prefect API, with the policy's `parameters:` and the event's
  fields the deployment's flow accepts; with `timeout_s`, a run that ends failed fails the job.
Secrets are resolved by the caller (an edge) into `Secret`s and never appear in results, errors or output.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import httpx

from flywheel.errors import FlywheelError
from flywheel.warehouse.evaluation.targets import Secret


class TargetFailed(FlywheelError):
    """A job's target failed; `output` is what it printed or answered (for the job's record)."""

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.output = output


@dataclass(frozen=True)
class Outcome:
    result: str
    """What the job produced: a run id, a model name, a flow run id, an HTTP status."""
    output: str = ""


def sign(secret: Secret, msg_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks signature header value for `body` (a `whsec_` secret is base64 after its prefix)."""
    raw = secret.reveal()
    key = base64.b64decode(raw.removeprefix("whsec_")) if raw.startswith("whsec_") else raw.encode()
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def webhook(url: str, params: Mapping[str, object], secret: Secret, attempts: int = 4, backoff_s: float = 0.5,
            timeout_s: float = 10.0) -> Outcome:
    body = json.dumps(params, sort_keys=True, default=str).encode()
    msg_id = f"msg_{uuid.uuid4().hex}"
    last = ""
    for attempt in range(1, attempts + 1):
        ts = int(time.time())
        headers = {"content-type": "application/json", "webhook-id": msg_id, "webhook-timestamp": str(ts)}
        if secret:
            headers["webhook-signature"] = sign(secret, msg_id, ts, body)
        try:
            res = httpx.post(url, content=body, headers=headers, timeout=timeout_s)
            if 200 <= res.status_code < 300:
                return Outcome(f"HTTP {res.status_code}", res.text[-2000:])
            last = f"HTTP {res.status_code}: {res.text[:300]}"
            if res.status_code < 500 and res.status_code != 429:
                raise TargetFailed(f"webhook answered {last}", res.text[-2000:])
        except httpx.HTTPError as exc:
            last = f"network error: {type(exc).__name__}"
        if attempt < attempts:
            time.sleep(backoff_s * 2 ** (attempt - 1))
    raise TargetFailed(f"webhook failed after {attempts} attempts: {last}")


Started = Callable[[str], None]
"""Told the running target's handle as soon as it has one (see `stop`), for `flywheel jobs cancel` to stop it."""


def ignore(_handle: str) -> None:
    pass


def shell(command: str, params: Mapping[str, object], timeout_s: float = 3600.0, cwd: Path | None = None,
          started: Started = ignore, grace_s: float = 10.0) -> Outcome:
    """Run `command` with the dataset in its environment; on timeout its process group gets SIGTERM, then
    SIGKILL after `grace_s` if anything of it is still holding its output."""
    env = {**os.environ, "DATASET_NAME": str(params.get("dataset", "")),
           "DATASET_VERSION": str(params.get("version", "")), "DATASET_PATH": str(params.get("path", "")),
           "DATASET_MANIFEST": str(params.get("manifest", ""))}
    # its own process group, so that cancelling or a timeout stops what the command started too
    proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=cwd, start_new_session=True)
    started(f"pgid:{proc.pid}@{socket.gethostname()}")
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _killpg(proc.pid)
        try:
            out, _ = proc.communicate(timeout=grace_s)
        except subprocess.TimeoutExpired:  # something of it ignored SIGTERM (and holds the output open)
            _killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
        raise TargetFailed(f"command timed out after {timeout_s:g} s", (out or "")[-4000:]) from None
    output = (out or "")[-4000:]
    if proc.returncode != 0:
        raise TargetFailed(f"command exited with code {proc.returncode}", output)
    return Outcome("exit 0", output)


def _killpg(pgid: int, sig: signal.Signals = signal.SIGTERM) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop(handle: str) -> str:
    """Stop the target a job's handle names; says what it did (a handle of another host is left alone)."""
    kind, _, rest = handle.partition(":")
    if kind == "pgid":
        pgid, _, host = rest.partition("@")
        if host != socket.gethostname():
            return f"its command runs on {host}: stop process group {pgid} there"
        return f"stopped its command (process group {pgid})" if _killpg(int(pgid)) else "its command had ended"
    if kind == "prefect":
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelling

        try:
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(uuid.UUID(rest), Cancelling(message="cancelled by `flywheel jobs cancel`"))
        except Exception as exc:  # the job is cancelled either way: say how to stop the run by hand
            return f"could not ask Prefect to cancel flow run {rest} ({exc}); `prefect flow-run cancel {rest}`"
        return f"asked Prefect to cancel flow run {rest}"
    return f"its target ({kind}) cannot be stopped from here"


def fine_tune(base_url: str, model: str, training_file: Path, key: Secret, poll_s: float = 5.0,
              timeout_s: float = 86_400.0) -> Outcome:
    headers = {"Authorization": f"Bearer {key.reveal()}"} if key else {}
    with httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=60) as http:
        # the Files API takes multipart/form-data (a `file` part and a `purpose` field), not a raw body
        up = http.post("/files", data={"purpose": "fine-tune"},
                       files={"file": (training_file.name, training_file.read_bytes(), "application/jsonl")})
        if up.status_code != 200:
            raise TargetFailed(f"uploading {training_file.name} failed: HTTP {up.status_code}", up.text[-2000:])
        job = http.post("/fine_tuning/jobs", json={"model": model, "training_file": up.json()["id"]})
        if job.status_code != 200:
            raise TargetFailed(f"creating the fine-tuning job failed: HTTP {job.status_code}", job.text[-2000:])
        jid = job.json()["id"]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = http.get(f"/fine_tuning/jobs/{jid}").json()
            if state.get("status") == "succeeded":
                return Outcome(str(state.get("fine_tuned_model")), json.dumps(state)[-2000:])
            if state.get("status") in ("failed", "cancelled"):
                raise TargetFailed(f"fine-tuning job {jid} {state['status']}", json.dumps(state)[-2000:])
            time.sleep(poll_s)
    raise TargetFailed(f"fine-tuning job {jid} did not finish within {timeout_s:g} s")


def prefect(deployment: str, params: Mapping[str, object], fixed: Mapping[str, object] | None = None,
            timeout_s: float = 0.0, poll_s: float = 2.0, started: Started = ignore) -> Outcome:
    """Start the Prefect deployment `flow/deployment`. It gets the policy's `fixed` parameters, and those of the
    event's `params` its flow accepts (its parameter schema, read from the API: a flow is not handed fields it
    does not take, which would fail its run before it starts). With `timeout_s` 0 the job records the run as
    started; otherwise it waits that long for the run to end, and fails when it ends failed, crashed or cancelled
    or does not end in time."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import FlowRun
    from prefect.deployments import run_deployment

    try:
        with get_client(sync_client=True) as client:
            schema = client.read_deployment_by_name(deployment).parameter_openapi_schema or {}
    except Exception as exc:  # Prefect raises many types (unknown deployment, API unreachable)
        raise TargetFailed(f"reading Prefect deployment {deployment!r} failed: {exc}; check the name "
                           "(`prefect deployment ls`) and PREFECT_API_URL") from exc
    accepted = set(schema.get("properties") or {})
    refused = sorted(set(fixed or {}) - accepted)
    if refused:
        raise TargetFailed(f"Prefect deployment {deployment!r} takes no parameter {refused[0]!r} (its parameters: "
                           f"{', '.join(sorted(accepted)) or 'none'}); fix the policy's `parameters:`")
    given = {**{k: v for k, v in params.items() if k in accepted}, **(fixed or {})}
    try:
        # called outside an event loop it runs synchronously: the union with a coroutine is for async callers
        run = cast("FlowRun", run_deployment(deployment, parameters=given, timeout=0))
    except Exception as exc:
        raise TargetFailed(f"starting Prefect deployment {deployment!r} failed: {exc}") from exc
    started(f"prefect:{run.id}")
    deadline = time.monotonic() + timeout_s
    while timeout_s > 0 and not (run.state and run.state.is_final()) and time.monotonic() < deadline:
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0)))
        with get_client(sync_client=True) as client:
            run = client.read_flow_run(run.id)
    state = run.state
    summary = json.dumps({"flow_run": str(run.id), "parameters": given, "state": run.state_name}, default=str)
    if state is not None and state.is_final() and not state.is_completed():
        raise TargetFailed(f"Prefect flow run {run.id} of {deployment!r} ended {state.name}: "
                           f"{state.message or 'no message'}", summary)
    if timeout_s > 0 and not (state and state.is_final()):
        raise TargetFailed(f"Prefect flow run {run.id} of {deployment!r} did not end within {timeout_s:g} s "
                           f"(it goes on, {run.state_name}); raise the policy's timeout_s or set it to 0 not to "
                           "wait", summary)
    return Outcome(f"flow run {run.id}", summary)
