"""The OpenAI-compatible surface without a service: request checks, error shapes, the SSE stream (read back
with the official client's own decoder and types), the models listing, and the ingress's thin wiring."""

import asyncio
import json
import types

import pytest
from fastapi import HTTPException
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.testclient import TestClient

from core.auth_config import AuthConfig
from core.config import load_config
from core.schemas import Candidate, KnowledgeUse, Scores, TicketResult, WorkflowOut
from core.task_map import TaskMap
from core.workflow import parse_lines
from deployments import auth, openai_api
from deployments.openai_api import ChatRequest, ChunkBuilder, OpenAIError

openai = pytest.importorskip("openai")
from openai._streaming import SSEDecoder  # noqa: E402  (the client's own parser of the event stream)
from openai.types import Model  # noqa: E402
from openai.types.chat import ChatCompletion, ChatCompletionChunk  # noqa: E402

LINES = ("1. Check usage with df -h\n2. Is it the log volume? yes 3, no 4\n3. [change] Rotate the logs\n"
         "4. [end] Escalate to storage\n")


@pytest.fixture(scope="module")
def cfg():
    return load_config()


def _result(ranks=(3.0, 4.5), closed_early=(False, True), prompt_tokens=120) -> TicketResult:
    wf = WorkflowOut.of(parse_lines(LINES))
    cands = [Candidate(index=i, workflow=wf, scores=Scores(overall=r, rank=r), raw_tokens=40 + i,
                       decoding="greedy" if i == 0 else "sampled", closed_early=closed_early[i])
             for i, r in enumerate(ranks)]
    best = max(range(len(ranks)), key=lambda i: ranks[i])
    return TicketResult(ticket_id="t1", task="storage", confidence=0.9, decision_path="retrieval",
                        expert="smollm2-generalist", map_version="m1", workflow=wf, best_index=best,
                        candidates=cands, retrieved_examples=[], knowledge=KnowledgeUse(status="none matched"),
                        context_ids=[], timings_ms={"total": 1.0}, prompt_tokens=prompt_tokens)


def _req(**kw) -> ChatRequest:
    return ChatRequest.model_validate({"messages": [{"role": "user", "content": "disk full\npostgres down"}], **kw})


def _events(raw: bytes) -> list:
    return list(SSEDecoder().iter_bytes(iter([raw])))


def _collect(gen) -> bytes:
    async def run():
        return b"".join([e async for e in gen])
    return asyncio.run(run())


# ---- errors --------------------------------------------------------------------------------------
def test_error_shape_and_codes():
    body = json.loads(openai_api.model_not_found("gpt-4", ["a", "b"]).response().body)
    assert body == {"error": {"message": body["error"]["message"], "type": "invalid_request_error",
                              "param": "model", "code": "model_not_found"}}
    err = OpenAIError.of_http(HTTPException(429, "full", headers={"Retry-After": "3"}))
    assert (err.status, err.type, err.code, err.headers) == (429, "requests", "rate_limit_exceeded", {"Retry-After": "3"})
    assert OpenAIError.of_http(HTTPException(503, "x")).type == "server_error"
    assert openai_api.error_of(RuntimeError("boom")).status == 500


@pytest.fixture
def open_app(tmp_path, cfg, monkeypatch):
    """The ingress's FastAPI app in open mode, its `self` a fake ingress (no Ray): real routing, validation,
    handlers and streaming."""
    from ray import serve

    from deployments.ingress import app

    auth.configure(AuthConfig(mode="open"), str(tmp_path), "127.0.0.1", environ={})
    _, fake = _ingress(cfg)
    # Serve's class-based view finds `self` through the replica context.
    monkeypatch.setattr(serve, "get_replica_context", lambda: types.SimpleNamespace(servable_object=fake))
    return TestClient(app, base_url="http://127.0.0.1:8000")


@pytest.mark.parametrize("body, param", [
    ({}, "messages"),
    ({"messages": [{"role": "user", "content": "x"}], "n": True}, "n"),
    ({"messages": [{"role": "user", "content": "x"}], "n": 17}, "n"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "x"}], "metadata": {str(i): "v" for i in range(17)}}, "metadata"),
    ({"messages": [{"role": "user", "content": "x"}], "metadata": {"k" * 65: "v"}}, "metadata"),
    ({"messages": [{"role": "user", "content": "x"}], "metadata": {"k": "v" * 513}}, "metadata.k"),
    ({"messages": [{"role": "user", "content": "x"}], "user": "u" * 257}, "user"),
])
def test_validation_errors_take_openai_shape_on_the_ingress(open_app, body, param):
    r = open_app.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["param"] == param and err["message"] and err["code"]
    with pytest.raises(openai.BadRequestError):  # what the official client makes of it
        raise openai.OpenAI(api_key="x")._make_status_error("bad", body=r.json(), response=r)


def test_chat_over_http_json_and_stream(open_app):
    r = open_app.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "disk full"}], "n": 2})
    assert r.status_code == 200, r.text
    body = ChatCompletion.model_validate(r.json())
    assert len(body.choices) == 2 and body.usage.total_tokens > 0
    with open_app.stream("POST", "/v1/chat/completions",
                         json={"messages": [{"role": "user", "content": "disk full"}], "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _events(r.read())
    assert events[0].json()["choices"][0]["delta"]["role"] == "assistant" and events[-1].data == "[DONE]"
    text = "".join(e.json()["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text.startswith("```mermaid\nflowchart TD") and text.endswith("\n```")
    r = open_app.post("/v1/chat/completions", json={"model": "nope", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    models = open_app.get("/v1/models").json()
    assert models["data"][0]["id"] == openai_api.AUTO_MODEL and "flowrouter" in models["data"][1]


def test_other_endpoints_keep_their_error_shape(open_app):
    r = open_app.post("/v1/tickets", json={})
    assert r.status_code == 422 and "detail" in r.json() and "error" not in r.json()


def test_openapi_documents_the_openai_shapes(open_app):
    doc = open_app.get("/openapi.json").json()
    post = doc["paths"]["/v1/chat/completions"]["post"]
    assert "text/event-stream" in post["responses"]["200"]["content"]
    assert post["responses"]["404"]["content"]["application/json"]["schema"]["$ref"].endswith("OpenAIErrorResponse")
    assert doc["paths"]["/v1/models"]["get"]["responses"]["200"]["content"]["application/json"]["schema"][
        "$ref"].endswith("ModelList")


# ---- request checks ------------------------------------------------------------------------------
def test_model_must_exist(cfg):
    experts = [e.name for e in cfg.experts]
    with pytest.raises(OpenAIError) as exc:
        openai_api.check_request(_req(model="gpt-4"), cfg, experts)
    assert exc.value.status == 404 and exc.value.code == "model_not_found"
    assert openai_api.check_request(_req(), cfg, experts) is None
    assert openai_api.check_request(_req(model=experts[0]), cfg, experts) == experts[0]


def test_temperature_only_the_configured_one(cfg):
    experts = [e.name for e in cfg.experts]
    gemma = next(e for e in cfg.experts if e.temperature is not None)
    smol = next(e for e in cfg.experts if e.temperature is None)
    assert openai_api.check_request(_req(model=gemma.name, temperature=gemma.temperature), cfg, experts)
    assert openai_api.check_request(_req(model=smol.name, temperature=cfg.planner.temperature), cfg, experts)
    assert openai_api.check_request(_req(model=smol.name, temperature=0, n=1), cfg, experts)  # n=1 is greedy
    for bad in (_req(model=smol.name, temperature=1.3), _req(model=smol.name, temperature=0, n=2),
                _req(temperature=cfg.planner.temperature)):  # auto: the experts' temperatures differ
        with pytest.raises(OpenAIError) as exc:
            openai_api.check_request(bad, cfg, experts)
        assert exc.value.status == 400 and exc.value.param == "temperature"


def test_max_tokens_and_neutral_parameters(cfg):
    experts = [e.name for e in cfg.experts]
    budget = cfg.planner.max_new_tokens
    assert openai_api.check_request(_req(max_tokens=budget, max_completion_tokens=4096, top_p=1, stop=[],
                                         frequency_penalty=0, response_format={"type": "text"}), cfg, experts) is None
    for kw, param in [({"max_tokens": budget - 1}, "max_tokens"), ({"max_completion_tokens": 16}, "max_completion_tokens"),
                      ({"stop": ["\n"]}, "stop"), ({"seed": 1}, "seed"), ({"top_p": 0.5}, "top_p"),
                      ({"tools": [{"type": "function"}]}, "tools"), ({"logprobs": True}, "logprobs"),
                      ({"response_format": {"type": "json_object"}}, "response_format"),
                      ({"stream_options": {"include_usage": True}}, "stream_options")]:
        with pytest.raises(OpenAIError) as exc:
            openai_api.check_request(_req(**kw), cfg, experts)
        assert exc.value.status == 400 and exc.value.param == param, kw
        assert str(budget) in exc.value.message or param not in ("max_tokens", "max_completion_tokens")


def test_ticket_from_the_last_user_message_with_user_and_metadata():
    body = ChatRequest.model_validate({
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "old ticket"},
                     {"role": "assistant", "content": "a flowchart"},
                     {"role": "user", "content": [{"type": "text", "text": "db-01 disk 97% full"},
                                                  {"type": "text", "text": "postgres cannot write WAL"}]}],
        "user": "alice@example.com", "metadata": {"team": "dba", "alert": "DiskFull"}})
    t = openai_api.ticket_of(body, "abc")
    assert (t.id, t.title, t.description) == ("abc", "db-01 disk 97% full", "postgres cannot write WAL")
    assert t.user == "alice@example.com" and t.metadata == {"team": "dba", "alert": "DiskFull"}
    assert t.source == openai_api.TICKET_SOURCE


@pytest.mark.parametrize("messages, param", [
    ([{"role": "assistant", "content": "x"}], "messages"),
    ([{"role": "user", "content": "   "}], "messages"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x"}}]}], "messages[0].content"),
])
def test_ticket_needs_a_text_user_message(messages, param):
    with pytest.raises(OpenAIError) as exc:
        openai_api.ticket_of(ChatRequest.model_validate({"messages": messages}), "abc")
    assert exc.value.status == 400 and exc.value.param == param


# ---- answers -------------------------------------------------------------------------------------
def test_completion_n_choices_best_first_with_real_usage():
    result = _result(ranks=(3.0, 4.5, 4.0), closed_early=(False, True, False))
    body = openai_api.completion(result, n=3).model_dump(mode="json")
    parsed = ChatCompletion.model_validate(body)
    assert [c.index for c in parsed.choices] == [0, 1, 2]
    assert [c["flowrouter"]["candidate"] for c in body["choices"]] == [1, 2, 0]
    assert [c.finish_reason for c in parsed.choices] == ["length", "stop", "stop"]
    assert parsed.choices[0].message.content == openai_api.content_of(result.workflow.mermaid)
    assert parsed.usage.prompt_tokens == 120 and parsed.usage.completion_tokens == 40 + 41 + 42
    assert parsed.usage.total_tokens == 120 + 123 and parsed.model == "smollm2-generalist"
    assert len(openai_api.completion(result, n=None).choices) == 1  # the service's best-of-N, one answer
    assert len(openai_api.completion(result, n=5).choices) == 3     # no more choices than candidates


def test_sse_framing():
    assert openai_api.sse({"a": 1}) == b'data: {"a":1}\n\n'
    assert openai_api.DONE == b"data: [DONE]\n\n"
    assert openai_api.HEARTBEAT.startswith(b":")  # an SSE comment: clients skip it
    content = openai_api.content_of("flowchart TD\n  A --> B")
    assert "".join(openai_api.pieces(content)) == content and len(openai_api.pieces(content)) == 4


def test_stream_role_first_heartbeats_lines_finish_usage_done():
    result = _result(ranks=(3.0, 4.5))

    async def slow():
        await asyncio.sleep(0.08)
        return result

    raw = _collect(openai_api.stream_events(ChunkBuilder("t1", "flowrouter", include_usage=True), slow(), n=2,
                                            heartbeat_s=0.01))
    assert raw.count(openai_api.HEARTBEAT) >= 2
    events = _events(raw)
    assert events[-1].data == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate(e.json()) for e in events[:-1]]
    first = chunks[0]
    assert first.model == "flowrouter" and first.choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and chunks[0].id == "chatcmpl-t1"
    texts: dict[int, str] = {}
    finish = {}
    for c in chunks[:-1]:
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
    assert texts == {0: openai_api.content_of(result.workflow.mermaid), 1: openai_api.content_of(result.workflow.mermaid)}
    assert finish == {0: "length", 1: "stop"}  # best (candidate 1, closed early) first
    usage = chunks[-1]
    assert usage.choices == [] and usage.usage.prompt_tokens == 120 and usage.usage.completion_tokens == 81
    assert all(c.usage is None for c in chunks[:-1])
    assert events[-2].json()["usage"]["total_tokens"] == 201


def test_stream_without_usage_has_no_usage_fields():
    raw = _collect(openai_api.stream_events(ChunkBuilder("t1", "flowrouter"), asyncio.sleep(0, _result()), n=None))
    payloads = [e.json() for e in _events(raw)[:-1]]
    assert all("usage" not in p for p in payloads)
    assert payloads[-1]["choices"][0]["finish_reason"] == "length" and payloads[-1]["flowrouter"]["ticket_id"] == "t1"


def test_stream_error_becomes_an_error_event_the_client_raises():
    async def failing():
        raise HTTPException(503, "expert produced no usable workflow")

    raw = _collect(openai_api.stream_events(ChunkBuilder("t1", "flowrouter"), failing(), n=None))
    events = _events(raw)
    assert events[-1].data == "[DONE]"
    err = events[-2].json()["error"]
    assert err["type"] == "server_error" and "no usable workflow" in err["message"]


def test_closing_the_stream_cancels_the_pipeline():
    started, cancelled = asyncio.Event(), []

    async def forever():
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def run():
        gen = openai_api.stream_events(ChunkBuilder("t1", "flowrouter"), forever(), n=None, heartbeat_s=0.01)
        assert (await gen.__anext__()).startswith(b"data: ")
        await started.wait()
        await gen.aclose()
        await asyncio.sleep(0)

    asyncio.run(run())
    assert cancelled == [True]


# ---- models --------------------------------------------------------------------------------------
@pytest.mark.parametrize("base, want", [("smollm2-135m-instruct", ("smollm2", "135m")),
                                        ("gemma3-270m", ("gemma3", "270m")),
                                        ("/models/Qwen2.5-0.5B-Instruct", ("qwen2.5", "0.5b")),
                                        ("mystery", ("mystery", None))])
def test_family_and_size(base, want):
    assert openai_api.family_and_size(base) == want


def test_model_list_has_the_router_and_every_expert(cfg):
    task_map = TaskMap.load(cfg.map)
    tasks = sorted(task_map.routes)
    experts = [e.name for e in cfg.experts]
    listing = openai_api.model_list(cfg, experts, task_map, tasks).model_dump(mode="json")
    assert listing["object"] == "list"
    ids = [m["id"] for m in listing["data"]]
    assert ids == [openai_api.AUTO_MODEL, *experts]
    for m in listing["data"]:
        Model.model_validate(m)
    auto, *cards = listing["data"]
    assert auto["flowrouter"]["kind"] == "router" and auto["flowrouter"]["tasks"] == tasks
    by_id = {c["id"]: c["flowrouter"] for c in cards}
    assert sorted(t for f in by_id.values() for t in f["tasks"]) == tasks  # every task mapped to one expert
    assert [i for i, f in by_id.items() if f["default"]] == [task_map.fallback]
    smol = by_id["smollm2-generalist"]
    assert (smol["family"], smol["size"], smol["engine"], smol["dtype"]) == ("smollm2", "135m", "transformers",
                                                                             "bfloat16")


# ---- the ingress's thin wiring ---------------------------------------------------------------------
class _Flood:
    def __init__(self, room=True):
        self.room, self.rejects = room, []
        self.admission = types.SimpleNamespace(has_room=lambda k=1: self.room, retry_after=lambda: 7)
        self.metrics = types.SimpleNamespace(observe_reject=lambda status, reason: self.rejects.append(status))


def _ingress(cfg, result=None, room=True):
    from deployments.ingress import Ingress

    cls = Ingress.func_or_class
    fake = types.SimpleNamespace(cfg=cfg, planners={e.name: None for e in cfg.experts}, flood=_Flood(room),
                                 experts=[e.name for e in cfg.experts], tasks=sorted(TaskMap.load(cfg.map).routes),
                                 calls=[])

    async def solve_http(ticket, n, expert):
        fake.calls.append((ticket, n, expert))
        return (result or _result()).model_copy(update={"ticket_id": ticket.id})

    async def current_map():
        return TaskMap.load(cfg.map)

    fake._solve_http, fake.current_map = solve_http, current_map
    fake.precheck = types.MethodType(cls.precheck, fake)
    return cls, fake


def test_ingress_chat_json_stream_and_errors(cfg):
    cls, fake = _ingress(cfg)
    body = _req(n=2, user="bob", metadata={"k": "v"})
    out = asyncio.run(cls.chat(fake, body))
    assert isinstance(out, openai_api.ChatCompletion) and len(out.choices) == 2
    ticket, n, expert = fake.calls[-1]
    assert (n, expert, ticket.user, ticket.metadata) == (2, None, "bob", {"k": "v"})
    assert out.id == f"chatcmpl-{ticket.id}"

    resp = asyncio.run(cls.chat(fake, _req(model="gpt-4")))
    assert isinstance(resp, JSONResponse) and resp.status_code == 404
    assert json.loads(resp.body)["error"]["code"] == "model_not_found"

    long = _req(messages=[{"role": "user", "content": "x" * (cfg.serve.max_ticket_chars + 1)}])
    resp = asyncio.run(cls.chat(fake, long))
    assert resp.status_code == 413 and json.loads(resp.body)["error"]["code"] == "request_too_large"

    async def streamed():
        resp = await cls.chat(fake, _req(stream=True, stream_options={"include_usage": True}))
        assert isinstance(resp, StreamingResponse) and resp.media_type == "text/event-stream"
        return b"".join([x if isinstance(x, bytes) else x.encode() async for x in resp.body_iterator])

    events = _events(asyncio.run(streamed()))
    assert events[-1].data == "[DONE]" and events[-2].json()["usage"]["prompt_tokens"] == 120

    _, full = _ingress(cfg, room=False)
    resp = asyncio.run(cls.chat(full, _req(stream=True)))
    assert resp.status_code == 429 and resp.headers["retry-after"] == "7" and full.flood.rejects == [429]


def test_ingress_models(cfg):
    cls, fake = _ingress(cfg)
    listing = asyncio.run(cls.models(fake))
    assert [m.id for m in listing.data] == [openai_api.AUTO_MODEL, *fake.experts]
