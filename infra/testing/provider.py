"""A test double of an OpenAI-compatible model provider on 127.0.0.1, answering with recorded real model outputs.

It stands in for the provider (OpenAI, vLLM, Ollama, LiteLLM, ...) in tests, benchmarks and the demo, never for
the code under test. `POST /v1/chat/completions` answers a request for model M with what M answered, in the
recorded data, to the request's last user message (the OpenAssistant sampling reports hold several model versions
answering the same prompts, so comparing two versions compares real answers); a prompt M never answered gets 404
with an OpenAI-style error body. `usage` counts tokens as characters / 4.

Misbehaviour on demand, for the tests of clients: `script` holds what the next requests get instead of an answer
(a status with headers such as 429 + Retry-After or 500, `"malformed"` for a 200 whose body is not JSON, `"reset"`
for a connection closed without an answer, `"slow"` for an answer after `slow_s`), then normal answers resume.
Every request is recorded in `requests` (its JSON body), so a test can count what arrived.

It can also stand in for an LLM judge (`add_judge`): a judge model answers a prompt that shows both answers of a
known pair (PandaLM's pairwise human preferences, in the bundled corpus) with the recorded human verdict for the
position each answer was shown in ("Verdict: A|B|tie"), and a prompt that shows one of them with a score (5 for
the preferred answer, 1 for the other, 3 on a tie). A judge `bias="first"` always prefers the first answer shown
(the order bias position swapping must cancel); a `garbled` one answers without any verdict.

It also speaks enough of the fine-tuning API (`POST /v1/files`, `POST /v1/fine_tuning/jobs`,
`GET /v1/fine_tuning/jobs/{id}`) for a fine-tune submission to be tested: a job succeeds on its second poll with
the model name `ft:<base>:flywheel:<job id>`.

    with RecordedProvider.from_records(records) as provider:
        provider.url  # http://127.0.0.1:<port>/v1
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Answer:
    """One recorded answer: what `model` said to `prompt`."""

    model: str
    prompt: str
    output: str


@dataclass(frozen=True)
class _Judge:
    pairs: tuple[tuple[str, str, str, int], ...]
    """(request, answer a, answer b, preference: 1 a, -1 b, 0 tie), whitespace collapsed."""
    bias: str | None
    garbled: bool


Action = tuple[int, dict[str, str]] | str
"""What a scripted request gets: (status, headers), or "malformed", "reset", "slow"."""


def sampling_report_answers(path: Path, model: str | None = None, per_prompt: int = 1) -> list[Answer]:
    """The answers of an OpenAssistant sampling report (JSON with `model_name` and `prompts[].results[].outputs`),
    `per_prompt` per prompt, under `model` (default: the report's model name without its organisation)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    name = model or str(data["model_name"]).split("/")[-1]
    out = []
    for p in data["prompts"]:
        outputs = [o.strip() for r in p["results"] for o in r["outputs"] if o.strip()]
        out += [Answer(name, p["prompt"], o) for o in outputs[:per_prompt]]
    return out


class RecordedProvider:
    def __init__(self, answers: Iterable[Answer], slow_s: float = 2.0) -> None:
        self.answers: dict[tuple[str, str], list[str]] = {}
        for a in answers:
            self.answers.setdefault((a.model, _norm(a.prompt)), []).append(a.output)
        self.models = sorted({m for m, _ in self.answers})
        self.script: list[Action] = []
        self.slow_s = slow_s
        self.delay_s = 0.0
        """Added to every answer (a slow endpoint)."""
        self.requests: list[dict[str, Any]] = []
        self.judges: dict[str, _Judge] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}
        self.filenames: dict[str, str] = {}
        """The name each uploaded file was sent under (a test checks which split was uploaded)."""
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real providers do
            # Headers and body go out in two writes: with Nagle's algorithm on, each answer waited for the client's
            # delayed ACK (about 40 ms), which capped the double at ~45 requests/s.
            disable_nagle_algorithm = True

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                route = self.path.split("?", 1)[0].rstrip("/")
                if route.endswith("/chat/completions"):
                    outer._chat(self, body)
                elif route.endswith("/files"):
                    outer._file(self, body, self.headers.get("Content-Type", ""))
                elif route.endswith("/fine_tuning/jobs"):
                    outer._create_job(self, body)
                else:
                    _send(self, 404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

            def do_GET(self) -> None:  # noqa: N802
                route = self.path.split("?", 1)[0].rstrip("/")
                if "/fine_tuning/jobs/" in route:
                    outer._poll_job(self, route.rsplit("/", 1)[-1])
                elif route.endswith("/models"):
                    _send(self, 200, {"object": "list", "data": [{"id": m, "object": "model"} for m in outer.models]})
                else:
                    _send(self, 404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})

            def log_message(self, *args: object) -> None:
                pass

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, str]], **kwargs: Any) -> RecordedProvider:
        """From dicts with `model`, `prompt`, `output` (a JSONL fixture, say)."""
        return cls([Answer(r["model"], r["prompt"], r["output"]) for r in records], **kwargs)

    def add_judge(self, model: str, pairs: Iterable[Mapping[str, Any]], bias: str | None = None,
                  garbled: bool = False) -> None:
        """Serve `model` as a judge of `pairs` (dicts with `prompt`, `a`, `b`, `preference` as `Corpus.pairs`).
        Pairs where one answer holds the other cannot be told apart by position and are left out."""
        kept = []
        for p in pairs:
            a, b = _norm(str(p["a"])), _norm(str(p["b"]))
            if a and b and a not in b and b not in a:
                kept.append((_norm(str(p["prompt"])), a, b, int(p["preference"])))
        self.judges[model] = _Judge(tuple(kept), bias, garbled)
        self.models = sorted(set(self.models) | {model})

    def _judge(self, judge: _Judge, prompt: str) -> str | None:
        text = _norm(prompt)
        if judge.garbled:
            return "Both answers have their merits; it depends on what the user values most."
        # The request first (answers can be short and common); the answers after it, where the judge shows them.
        for request, a, b, pref in judge.pairs:
            at = text.find(request)
            if at < 0:
                continue
            rest = text[at + len(request):]
            ia, ib = rest.find(a), rest.find(b)
            if ia >= 0 and ib >= 0:
                if judge.bias == "first":
                    return "The first answer is better.\nVerdict: A"
                preferred = "tie" if pref == 0 else ("A" if (ia < ib) == (pref == 1) else "B")
                return f"Judged as the human annotators did.\nVerdict: {preferred}"
            if ia >= 0 or ib >= 0:
                score = 3 if pref == 0 else 5 if (pref == 1) == (ia >= 0) else 1
                return f"Scored as the human annotators preferred.\nScore: {score}"
        return None

    # ------------------------------------------------------------------------------------------------ chat

    def _next_action(self) -> Action | None:
        with self.lock:
            return self.script.pop(0) if self.script else None

    def _chat(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        try:
            req = json.loads(body)
        except ValueError:
            _send(h, 400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
            return
        with self.lock:
            self.requests.append(req)
        action = self._next_action()
        if action == "reset":
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        if action == "malformed":
            _raw(h, 200, b'{"id": "chatcmpl-broken", "choices": [', "application/json")
            return
        if isinstance(action, tuple):
            status, headers = action
            _send(h, status, {"error": {"message": f"scripted {status}", "type": "server_error"}}, headers)
            return
        if action == "slow":
            time.sleep(self.slow_s)
        if self.delay_s:
            time.sleep(self.delay_s)
        status, obj = self.answer(req, body)
        _send(h, status, obj)

    def answer(self, req: Mapping[str, Any], body: bytes) -> tuple[int, dict[str, Any]]:
        """The status and JSON body the double answers a well-formed chat request with (no script applied)."""
        model = str(req.get("model", ""))
        messages = req.get("messages") or []
        users = [m.get("content", "") for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        prompt = users[-1] if users else ""
        judge = self.judges.get(model)
        verdict = self._judge(judge, str(prompt)) if judge is not None else None
        found = [verdict] if verdict is not None else self.answers.get((model, _norm(str(prompt))))
        if found is None:
            known = model in self.models
            return 404, {"error": {"message": (f"model {model!r} has no recorded answer to this prompt" if known
                                               else f"model {model!r} does not exist"),
                                   "type": "invalid_request_error", "code": "model_not_found"}}
        # Several recorded samples: pick one by the request, so the same request gets the same answer.
        digest = hashlib.sha256(body).digest()
        output = found[int.from_bytes(digest, "big") % len(found)]
        n_in = sum(len(str(m.get("content", ""))) for m in messages if isinstance(m, dict)) // 4 + 1
        return 200, {
            "id": "chatcmpl-" + hashlib.sha1(body).hexdigest()[:24], "object": "chat.completion",
            "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": output}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": n_in, "completion_tokens": len(output) // 4 + 1,
                      "total_tokens": n_in + len(output) // 4 + 1},
        }

    def asgi(self) -> Callable[..., Awaitable[None]]:
        """The chat endpoint alone as a lean ASGI app (for uvicorn), for benchmarks whose endpoint must not be the
        bottleneck: the same answers as the threaded server, without its script, request log or fine-tuning API."""

        async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                      send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
            if scope["type"] == "lifespan":  # nothing to set up or tear down
                for phase in ("startup", "shutdown"):
                    await receive()
                    await send({"type": f"lifespan.{phase}.complete"})
                return
            chunks, more = [], True
            while more:
                msg = await receive()
                chunks.append(msg.get("body", b""))
                more = msg.get("more_body", False)
            body = b"".join(chunks)
            try:
                req = json.loads(body)
                status, obj = (self.answer(req, body) if scope["path"].rstrip("/").endswith("/chat/completions")
                               else (404, {"error": {"message": f"no route {scope['path']}", "type": "not_found"}}))
            except ValueError:
                status, obj = 400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}}
            data = json.dumps(obj, ensure_ascii=False).encode()
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(data)).encode())]})
            await send({"type": "http.response.body", "body": data})

        return app

    # ------------------------------------------------------------------------------------------------ fine-tuning

    def _file(self, h: BaseHTTPRequestHandler, body: bytes, content_type: str) -> None:
        """`POST /files` as the API takes it: multipart/form-data with a `purpose` field and a `file` part."""
        parts = _form(content_type, body)
        if parts is None or "file" not in parts or parts.get("purpose", (b"", ""))[0] != b"fine-tune":
            _send(h, 400, {"error": {"message": "expected multipart/form-data with purpose=fine-tune and a file",
                                     "type": "invalid_request_error"}})
            return
        data, filename = parts["file"]
        fid = "file-" + hashlib.sha1(data).hexdigest()[:24]
        with self.lock:
            self.files[fid] = data
            self.filenames[fid] = filename
        _send(h, 200, {"id": fid, "object": "file", "bytes": len(data), "filename": filename,
                       "purpose": "fine-tune"})

    def _create_job(self, h: BaseHTTPRequestHandler, body: bytes) -> None:
        try:
            req = json.loads(body)
        except ValueError:
            _send(h, 400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
            return
        if req.get("training_file") not in self.files:
            _send(h, 400, {"error": {"message": "training_file does not exist", "type": "invalid_request_error"}})
            return
        with self.lock:
            jid = f"ftjob-{len(self.jobs) + 1}"
            self.jobs[jid] = {"id": jid, "object": "fine_tuning.job", "model": req.get("model"),
                              "training_file": req["training_file"], "status": "queued", "fine_tuned_model": None,
                              "polls": 0}
        _send(h, 200, {k: v for k, v in self.jobs[jid].items() if k != "polls"})

    def _poll_job(self, h: BaseHTTPRequestHandler, jid: str) -> None:
        with self.lock:
            job = self.jobs.get(jid)
            if job is not None:
                job["polls"] += 1
                if job["polls"] >= 2:
                    job.update(status="succeeded", fine_tuned_model=f"ft:{job['model']}:flywheel:{jid}")
                else:
                    job["status"] = "running"
        if job is None:
            _send(h, 404, {"error": {"message": f"no job {jid}", "type": "not_found"}})
            return
        _send(h, 200, {k: v for k, v in job.items() if k != "polls"})

    # ------------------------------------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> RecordedProvider:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default of 5 resets connections when a client opens 32 at once


def _norm(text: str) -> str:
    return " ".join(text.split())


def _send(h: BaseHTTPRequestHandler, status: int, obj: object, headers: Mapping[str, str] | None = None) -> None:
    _raw(h, status, json.dumps(obj, ensure_ascii=False).encode(), "application/json", headers)


def _raw(h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str,
         headers: Mapping[str, str] | None = None) -> None:
    try:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout): as a real server, carry on
        h.close_connection = True


def _form(content_type: str, body: bytes) -> dict[str, tuple[bytes, str]] | None:
    """The fields of a multipart/form-data body, name -> (value, filename); None when it is not one."""
    from email.parser import BytesParser
    from email.policy import HTTP

    if not content_type.startswith("multipart/form-data"):
        return None
    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body)
    if not msg.is_multipart():
        return None
    out = {}
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str):
            out[name] = (payload if isinstance(payload, bytes) else b"", part.get_filename() or "")
    return out
