"""The OpenAI-compatible surface of the ingress: `POST /v1/chat/completions` and `GET /v1/models`.

What an OpenAI client gets (the official `openai` package is tested against it):
  - the last user message is the ticket (first line the title, the rest the description); other
    messages are context the pipeline does not read;
  - `model`: `flowrouter` routes by the live map; an expert's name forces that expert; anything else is a
    404 `model_not_found`;
  - `n`: best-of-N with N candidates, answered as N choices sorted best first (fewer when a sample could
    not become a workflow). Without `n` the service's own best-of-N (`planner.candidates`) runs and only
    the best candidate comes back, as OpenAI's default of one choice;
  - `temperature` and `max_tokens` are fixed by the expert's configuration (the planner samples with its
    settings per expert, not per request): the values that match it are accepted (temperature: the
    expert's, or 0 with n=1, which is the greedy decode; max_tokens: at least `planner.max_new_tokens`,
    so the cap holds), anything else is a 400 naming the accepted values. The other sampling parameters
    are accepted at their neutral value only;
  - `user` (or `safety_identifier`) and `metadata` are validated (OpenAI's limits) and stored with the ticket;
  - parameters this module does not know are ignored, so newer clients keep working;
  - `usage`: prompt tokens as the chosen expert's tokenizer counts its prompt, completion tokens of all
    candidates written;
  - `stream=true`: server-sent `chat.completion.chunk` events. The pipeline produces the workflow whole,
    so the role chunk goes out at once, comment lines keep the connection alive while the models work,
    and then every choice's content follows a line at a time, its finish chunk, the usage chunk when
    `stream_options.include_usage` is set, and `data: [DONE]`;
  - errors are `{"error": {"message", "type", "param", "code"}}`, validation errors included (400).

No `from __future__ import annotations`: FastAPI inside the Serve replica reads these models' annotations.
"""


import asyncio
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from core.config import FlowRouterConfig, ModelSpec
from core.schemas import METADATA_MAX_KEYS, MetadataKey, MetadataValue, Ticket, TicketResult
from core.task_map import TaskMap

log = logging.getLogger("flowrouter.openai")

AUTO_MODEL = "flowrouter"
OWNER = "flowrouter"
PATHS = ("/v1/chat/completions", "/v1/models")
HEARTBEAT_S = 10.0  # comment lines this often while the pipeline works: proxies drop idle connections
TICKET_SOURCE = "chat.completions"
_STARTED = int(time.time())  # `created` of every model card: when this replica loaded them


# ---- requests ------------------------------------------------------------------------------------
class ContentPart(BaseModel):
    """One part of a message's content; only text parts can be read as a ticket."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(max_length=64)
    text: str | None = Field(default=None, max_length=20000)


class ChatMessage(BaseModel):
    role: str = Field(pattern="^(system|user|assistant|tool|developer)$")
    content: Annotated[str, Field(max_length=20000)] | Annotated[list[ContentPart], Field(max_length=64)] | None = None
    name: str | None = Field(default=None, max_length=256)

    def text(self) -> str | None:
        """The message's text, or None when it holds something other than text."""
        if self.content is None or isinstance(self.content, str):
            return self.content
        if any(p.type != "text" for p in self.content):
            return None
        return "\n".join(p.text or "" for p in self.content)


class StreamOptions(BaseModel):
    include_usage: bool = Field(default=False, description="Send a last chunk with the request's usage.")


class ChatRequest(BaseModel):
    model_config = ConfigDict(strict=True)  # no bool-as-int coercion (`"n": true`), as the schema says
    model: str = Field(default=AUTO_MODEL, max_length=100,
                       description="'flowrouter' routes automatically; an expert's name forces that expert.")
    messages: list[ChatMessage] = Field(min_length=1, max_length=64,
                                        description="The last user message is the ticket (first line: title).")
    n: int | None = Field(default=None, ge=1, le=16,
                          description="Candidates to write (best-of-N), answered as n choices sorted best first; "
                                      "absent: the service's best-of-N, answered as one choice.")
    temperature: float | None = Field(default=None, ge=0, le=2,
                                      description="Fixed by the expert's configuration: absent or that value.")
    max_tokens: int | None = Field(default=None, ge=1,
                                   description="At least the planner's token budget per candidate "
                                               "(planner.max_new_tokens), which the service cannot lower.")
    max_completion_tokens: int | None = Field(default=None, ge=1, description="Same as max_tokens.")
    stream: bool = Field(default=False, description="Server-sent chat.completion.chunk events.")
    stream_options: StreamOptions | None = Field(default=None, description="Only with stream=true.")
    user: str | None = Field(default=None, min_length=1, max_length=256,
                             description="End user the ticket is for; stored with the ticket.")
    safety_identifier: str | None = Field(default=None, min_length=1, max_length=256,
                                          description="OpenAI's successor of `user`; stored as the ticket's user "
                                                      "when `user` is absent.")
    metadata: dict[MetadataKey, MetadataValue] | None = Field(
        default=None, max_length=METADATA_MAX_KEYS, description="Stored with the ticket (OpenAI's limits).")
    # Accepted at their neutral value only: the workflow grammar decides how the text is sampled and ends.
    top_p: float | None = Field(default=None, ge=0, le=1, description="Only 1 (or absent).")
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2, description="Only 0 (or absent).")
    presence_penalty: float | None = Field(default=None, ge=-2, le=2, description="Only 0 (or absent).")
    seed: int | None = Field(default=None, description="Not supported (absent only).")
    stop: str | list[str] | None = Field(default=None, description="Not supported (absent or empty).")
    logprobs: bool | None = Field(default=None, description="Only false (or absent).")
    top_logprobs: int | None = Field(default=None, ge=0, le=20, description="Only 0 (or absent).")
    logit_bias: dict[str, float] | None = Field(default=None, description="Only empty (or absent).")
    response_format: dict[str, Any] | None = Field(default=None, description="Only {'type': 'text'} (or absent).")
    tools: list[dict[str, Any]] | None = Field(default=None, description="Not supported (absent or empty).")
    tool_choice: str | dict[str, Any] | None = Field(default=None, description="Only 'none'/'auto' without tools.")


# ---- responses -----------------------------------------------------------------------------------
class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorResponse(BaseModel):
    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChoiceMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: ChoiceMessage
    logprobs: None = None
    finish_reason: Literal["stop", "length"] = Field(description="length: the token budget ran out and the "
                                                                  "workflow was closed early.")
    flowrouter: dict[str, Any] = Field(default_factory=dict, description="candidate: its index in "
                                                                         "flowrouter.candidates.")


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str = Field(description="The expert that wrote the workflow.")
    choices: list[Choice]
    usage: Usage
    flowrouter: TicketResult = Field(description="The whole ticket result (scores, knowledge, timings).")


class ModelFacts(BaseModel):
    kind: Literal["router", "expert"] = Field(description="router: routes each ticket by the live map.")
    base: str | None = Field(default=None, description="Base weights (embedded name or folder).")
    family: str | None = Field(default=None, description="Model family read from the base name.")
    size: str | None = Field(default=None, description="Parameter count read from the base name (135m, 0.5b).")
    engine: str | None = None
    dtype: str | None = None
    adapter: bool = Field(default=False, description="A LoRA adapter is applied to the base weights.")
    description: str = ""
    knowledge_scope: list[str] = Field(default_factory=list)
    tasks: list[str] = Field(description="Tasks the live map routes to it (router: every task).")
    default: bool = Field(description="It serves tickets classified unknown (the map's fallback).")
    map_version: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    flowrouter: ModelFacts


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- errors --------------------------------------------------------------------------------------
_TYPES = {429: "requests", 500: "server_error", 502: "server_error", 503: "server_error"}
_CODES = {409: "conflict", 413: "request_too_large", 429: "rate_limit_exceeded", 503: "service_unavailable"}


class OpenAIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code or _CODES.get(status)
        self.type = type or _TYPES.get(status, "invalid_request_error")
        self.headers = headers or {}

    @classmethod
    def of_http(cls, exc: HTTPException) -> "OpenAIError":
        return cls(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))

    def body(self) -> dict:
        return OpenAIErrorResponse(error=ErrorDetail(message=self.message, type=self.type, param=self.param,
                                                     code=self.code)).model_dump()

    def response(self) -> JSONResponse:
        return JSONResponse(status_code=self.status, content=self.body(), headers=self.headers)


def unsupported(param: str, message: str) -> OpenAIError:
    return OpenAIError(400, message, param=param, code="unsupported_value")


def model_not_found(model: str, experts: Sequence[str]) -> OpenAIError:
    return OpenAIError(404, f"The model {model!r} does not exist; use {AUTO_MODEL!r} or one of {sorted(experts)}",
                       param="model", code="model_not_found")


def deferred(ticket_id: str, reason: str) -> OpenAIError:
    """A streamed ticket that was accepted but finishes later (the models failed for now)."""
    return OpenAIError(503, f"{reason}; poll /v1/tickets/{ticket_id} for the result", code="deferred")


def check_room(flood) -> None:
    """Refuse a stream at once (429 + Retry-After) when the flood gate has no room for one more ticket, so
    overload is an HTTP status the client retries on rather than an error event after the stream began."""
    if not flood.admission.has_room(1):
        flood.metrics.observe_reject(429, "queue_full")
        raise OpenAIError(429, "over capacity; retry later", headers={"Retry-After": str(flood.admission.retry_after())})


def handles(path: str) -> bool:
    """Whether a request path is part of the OpenAI surface (its errors take OpenAI's shape)."""
    path = path.rstrip("/")
    return path in PATHS or path.startswith("/v1/models/")


def _is_tag(part: str) -> bool:
    """pydantic's names for union members and dict keys inside an error location, not parameters."""
    return part in ("str", "int", "float", "bool", "constrained-str", "[key]") or part.startswith(
        ("list[", "dict[", "function-"))


def _param(loc: Sequence[Any]) -> str | None:
    loc = [str(p) for p in loc]
    # An invalid dict key names its dict only: the key itself is untrusted input and is never echoed.
    loc = [p for i, p in enumerate(loc) if loc[i + 1:i + 2] != ["[key]"]]
    parts = [p for p in loc if p != "body" and not _is_tag(p)]
    if not parts:
        return None
    out = parts[0]
    for p in parts[1:]:
        out += f"[{p}]" if p.isdigit() else f".{p}"
    return out


def validation_error(exc: RequestValidationError) -> JSONResponse:
    """A 400 naming the first invalid parameter (all reasons in the message; the input is never echoed)."""
    errors = exc.errors()
    reasons = [f"{_param(e.get('loc', ())) or 'body'}: {e.get('msg', '')}" for e in errors]
    first = errors[0] if errors else {}
    err = OpenAIError(400, "Invalid request: " + "; ".join(reasons), param=_param(first.get("loc", ())),
                      code=first.get("type") or "invalid_value")
    return err.response()


# ---- request -> ticket ---------------------------------------------------------------------------
def expert_temperature(cfg: FlowRouterConfig, spec: ModelSpec) -> float:
    return spec.temperature if spec.temperature is not None else cfg.planner.temperature


def check_request(body: ChatRequest, cfg: FlowRouterConfig, experts: Sequence[str]) -> str | None:
    """Refuse what the service cannot honour; the forced expert (None: route by the map)."""
    if body.model != AUTO_MODEL and body.model not in experts:
        raise model_not_found(body.model, experts)
    expert = None if body.model == AUTO_MODEL else body.model
    specs = [s for s in cfg.experts if s.name in experts and (expert is None or s.name == expert)]
    if body.temperature is not None:
        fixed = sorted({expert_temperature(cfg, s) for s in specs})
        # One candidate is the greedy decode, so 0 describes it as well as the configured value does.
        allowed = set(fixed) | ({0.0} if body.n == 1 else set())
        if len(fixed) != 1 or body.temperature not in allowed:
            shown = " or ".join(str(t) for t in sorted(allowed)) if len(fixed) == 1 else "none (the experts differ)"
            raise unsupported("temperature", f"temperature is fixed by the expert's configuration; omit it or send "
                                             f"{shown} (got {body.temperature})")
    budget = cfg.planner.max_new_tokens
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(body, name)
        if value is not None and value < budget:
            raise unsupported(name, f"{name} must be at least {budget}: every candidate may use the planner's token "
                                    f"budget of {budget} tokens (planner.max_new_tokens), and a request cannot lower it")
    if body.stream_options is not None and not body.stream:
        raise OpenAIError(400, "stream_options is only allowed when stream is true", param="stream_options",
                          code="invalid_value")
    neutral = {
        "top_p": body.top_p in (None, 1), "frequency_penalty": body.frequency_penalty in (None, 0),
        "presence_penalty": body.presence_penalty in (None, 0), "seed": body.seed is None,
        "stop": not body.stop, "logprobs": not body.logprobs, "top_logprobs": not body.top_logprobs,
        "logit_bias": not body.logit_bias, "tools": not body.tools,
        "response_format": body.response_format in (None, {"type": "text"}),
        "tool_choice": body.tool_choice in (None, "none", "auto"),
    }
    for name, ok in neutral.items():
        if not ok:
            raise unsupported(name, f"{name} is not supported: the workflow grammar decides how the answer is "
                                    "sampled and where it ends; omit it or send its neutral value")
    return expert


def ticket_of(body: ChatRequest, ticket_id: str) -> Ticket:
    """The ticket a chat request asks about: the last user message with text, plus user and metadata."""
    users = [(i, m) for i, m in enumerate(body.messages) if m.role == "user"]
    for i, message in reversed(users):
        text = message.text()
        if text is None:
            raise OpenAIError(400, "only text content is supported", param=f"messages[{i}].content",
                              code="invalid_value")
        if text.strip():
            break
    else:
        raise OpenAIError(400, "messages must include a non-empty user message (the ticket)", param="messages",
                          code="invalid_value")
    title, _, description = text.strip().partition("\n")
    try:
        return Ticket(id=ticket_id, title=title[:500], description=(title[500:] + "\n" + description).strip(),
                      source=TICKET_SOURCE, user=body.user or body.safety_identifier, metadata=body.metadata or {})
    except ValueError as exc:
        raise OpenAIError(400, f"invalid ticket: {exc}", param=f"messages[{i}].content",
                          code="invalid_value") from None


# ---- answers -------------------------------------------------------------------------------------
def content_of(mermaid: str) -> str:
    return f"```mermaid\n{mermaid}\n```"


def ranked(result: TicketResult, n: int | None) -> list[int]:
    """Candidate indexes to answer with: the best first, then by rank; only the best without `n`."""
    order = sorted(range(len(result.candidates)), key=lambda i: (i != result.best_index,
                                                                 -result.candidates[i].scores.rank, i))
    return order[:1] if n is None else order[:n]


def usage_of(result: TicketResult) -> Usage:
    completion = sum(c.raw_tokens for c in result.candidates)
    return Usage(prompt_tokens=result.prompt_tokens, completion_tokens=completion,
                 total_tokens=result.prompt_tokens + completion)


def completion_id(ticket_id: str) -> str:
    return f"chatcmpl-{ticket_id}"


def completion(result: TicketResult, n: int | None) -> ChatCompletion:
    choices = []
    for k, i in enumerate(ranked(result, n)):
        cand = result.candidates[i]
        choices.append(Choice(index=k, message=ChoiceMessage(content=content_of(cand.workflow.mermaid)),
                              finish_reason="length" if cand.closed_early else "stop",
                              flowrouter={"candidate": cand.index}))
    return ChatCompletion(id=completion_id(result.ticket_id), created=int(time.time()), model=result.expert,
                          choices=choices, usage=usage_of(result), flowrouter=result)


# ---- streaming -----------------------------------------------------------------------------------
def sse(data: dict | str) -> bytes:
    """One server-sent event carrying `data` (JSON unless it is already a string)."""
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


HEARTBEAT = b": keep-alive\n\n"
DONE = sse("[DONE]")


def pieces(content: str) -> list[str]:
    """What a choice's content is streamed as: a line at a time (they concatenate to the content)."""
    return content.splitlines(keepends=True)


class ChunkBuilder:
    """chat.completion.chunk events of one completion (same id and created throughout)."""

    def __init__(self, ticket_id: str, model: str, include_usage: bool = False):
        self.id, self.model, self.include_usage = completion_id(ticket_id), model, include_usage
        self.created = int(time.time())

    def chunk(self, index: int, delta: dict, finish_reason: str | None = None, **extra) -> dict:
        out = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
               "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}
        if self.include_usage:
            out["usage"] = None
        return out | extra

    def role(self, index: int = 0) -> bytes:
        return sse(self.chunk(index, {"role": "assistant", "content": ""}))

    def answer(self, result: TicketResult, n: int | None) -> list[bytes]:
        """Every chunk after the pipeline: each choice's lines, finish chunks, usage."""
        self.model = result.expert
        order = ranked(result, n)
        events = [self.role(k) for k in range(1, len(order))]
        for k, i in enumerate(order):
            events += [sse(self.chunk(k, {"content": p})) for p in pieces(content_of(result.candidates[i].workflow.mermaid))]
        summary = {"ticket_id": result.ticket_id, "task": result.task, "expert": result.expert,
                   "decision_path": result.decision_path, "map_version": result.map_version,
                   "best_index": result.best_index, "candidates": [result.candidates[i].index for i in order]}
        for k, i in enumerate(order):
            extra = {"flowrouter": summary} if k == 0 else {}
            events.append(sse(self.chunk(k, {}, "length" if result.candidates[i].closed_early else "stop", **extra)))
        if self.include_usage:
            events.append(sse({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
                               "model": self.model, "choices": [], "usage": usage_of(result).model_dump()}))
        return events


def error_of(exc: BaseException) -> OpenAIError:
    if isinstance(exc, OpenAIError):
        return exc
    if isinstance(exc, HTTPException):
        return OpenAIError.of_http(exc)
    log.exception("streamed completion failed", exc_info=exc)
    return OpenAIError(500, f"internal error ({type(exc).__name__})", code="internal_error")


async def stream_events(builder: ChunkBuilder, solve: Awaitable[TicketResult], n: int | None,
                        heartbeat_s: float = HEARTBEAT_S) -> AsyncIterator[bytes]:
    """The event stream: role chunk now, heartbeats while `solve` runs, then the answer (or an error event).

    Closing the stream (the client went away) cancels `solve`, as a disconnected synchronous request does.
    """
    task = asyncio.ensure_future(solve)
    try:
        yield builder.role()
        while True:
            done, _ = await asyncio.wait({task}, timeout=heartbeat_s)
            if done:
                break
            yield HEARTBEAT
        try:
            result = task.result()
        except Exception as exc:
            yield sse(error_of(exc).body())
        else:
            for event in builder.answer(result, n):
                yield event
        yield DONE
    finally:
        if not task.done():
            task.cancel()


def streaming_response(builder: ChunkBuilder, solve: Awaitable[TicketResult], n: int | None,
                       heartbeat_s: float = HEARTBEAT_S) -> StreamingResponse:
    return StreamingResponse(stream_events(builder, solve, n, heartbeat_s), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


# ---- models --------------------------------------------------------------------------------------
_SIZE = re.compile(r"(?<![a-z0-9.])(\d+(?:\.\d+)?[mbk])(?![a-z0-9])", re.IGNORECASE)


def family_and_size(base: str) -> tuple[str, str | None]:
    """('smollm2', '135m') from 'smollm2-135m-instruct'; a folder is read by its name."""
    name = Path(base).name if ("/" in base or "\\" in base) else base
    m = _SIZE.search(name)
    if m is None:
        return name.lower(), None
    family = name[:m.start()].strip("-_. ") or name
    return family.lower(), m.group(1).lower()


def model_list(cfg: FlowRouterConfig, experts: Sequence[str], task_map: TaskMap, tasks: Sequence[str]) -> ModelList:
    """The auto model first, then every deployed expert with what it is and what the live map gives it."""
    cards = [ModelCard(id=AUTO_MODEL, created=_STARTED, owned_by=OWNER, flowrouter=ModelFacts(
        kind="router", description="Routes each ticket to the expert the live map names for its task.",
        tasks=list(tasks), default=False, map_version=task_map.version))]
    for spec in cfg.experts:
        if spec.name not in experts:
            continue
        family, size = family_and_size(spec.base)
        cards.append(ModelCard(id=spec.name, created=_STARTED, owned_by=OWNER, flowrouter=ModelFacts(
            kind="expert", base=spec.base, family=family, size=size, engine=spec.engine, dtype=spec.dtype,
            adapter=spec.adapter is not None, description=spec.description,
            knowledge_scope=list(spec.knowledge_scope),
            tasks=[t for t in tasks if task_map.routes.get(t) == spec.name],
            default=task_map.fallback == spec.name, map_version=task_map.version)))
    return ModelList(data=cards)


# ---- OpenAPI -------------------------------------------------------------------------------------
_RETRY = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 1}}}


def _either(description: str) -> dict:
    # Access control and the body-size guard answer before the route, in the service's own error shape.
    return {"description": description, "content": {"application/json": {"schema": {"anyOf": [
        {"$ref": "#/components/schemas/OpenAIErrorResponse"}, {"$ref": "#/components/schemas/Error"}]}}}}


CHAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": ChatCompletion, "description": "The completion (JSON), or with stream=true server-sent "
                                                  "chat.completion.chunk events ending with `data: [DONE]`.",
          "content": {"text/event-stream": {"schema": {"type": "string"}}}},
    400: _either("Invalid or unsupported parameter (validation errors included), or a malformed request."),
    404: {"model": OpenAIErrorResponse, "description": "Unknown model (code model_not_found)."},
    409: {"model": OpenAIErrorResponse, "description": "The ticket id was already submitted."},
    413: _either("Request body or ticket text over its size limit."),
    429: _either("Rate limit or admission limit reached; retry after Retry-After seconds.") | {"headers": _RETRY},
    503: {"model": OpenAIErrorResponse, "description": "Overloaded, or no usable workflow; retry later.",
          "headers": _RETRY},
}
