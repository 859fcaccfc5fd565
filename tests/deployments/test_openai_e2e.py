"""The official `openai` client against the real service: chat (JSON and streamed), models, errors.

Two tickets in all (n=1 each: one candidate, the greedy decode), since each costs tens of seconds of CPU.
"""

import pytest

from core.workflow import parse_mermaid
from deployments.ticket_store import TicketStore

openai = pytest.importorskip("openai")

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]

FENCE_OPEN, FENCE_CLOSE = "```mermaid\n", "\n```"


@pytest.fixture(scope="module")
def client(service):
    # No retries: a 409/429/5xx must show up as what it is.
    return openai.OpenAI(base_url=service.url + "/v1", api_key=service.keys["ticket"], max_retries=0, timeout=900)


def _flowchart(content: str):
    assert content.startswith(FENCE_OPEN) and content.endswith(FENCE_CLOSE), content
    return parse_mermaid(content.removeprefix(FENCE_OPEN).removesuffix(FENCE_CLOSE))


def test_models_and_errors(client, service):
    listing = client.models.list()
    ids = [m.id for m in listing.data]
    experts = [e.name for e in service.cfg.experts]
    assert ids == ["flowrouter", *experts]
    facts = {m.id: m.model_extra["flowrouter"] for m in listing.data}
    assert facts["flowrouter"]["kind"] == "router"
    fallback = service.get("/v1/map").json()["current"]["fallback"]
    assert [i for i in experts if facts[i]["default"]] == [fallback]
    assert all(facts[i]["engine"] == "transformers" and facts[i]["family"] for i in experts)
    assert client.models.retrieve(experts[0]).id == experts[0]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")

    ticket = [{"role": "user", "content": "disk full on db-01"}]
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="gpt-4o", messages=ticket)
    assert exc.value.code == "model_not_found" and exc.value.param == "model"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model="flowrouter", messages=ticket, max_tokens=8)
    assert exc.value.param == "max_tokens" and exc.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as exc:  # a validation error, in the same shape
        client.chat.completions.create(model="flowrouter", messages=ticket, n=99)
    assert exc.value.param == "n"


def test_chat_completion_counts_tokens_and_stores_user_and_metadata(client, service):
    out = client.chat.completions.create(
        model="flowrouter", n=1, user="e2e-user", metadata={"team": "dba", "alert": "DiskFull"},
        messages=[{"role": "system", "content": "You are an SRE."},
                  {"role": "user", "content": "db-01 disk 97% full\npostgres cannot write WAL since 10:00"}])
    assert out.object == "chat.completion" and len(out.choices) == 1
    assert out.choices[0].finish_reason in ("stop", "length")
    assert _flowchart(out.choices[0].message.content).branching_decisions() >= 1
    assert out.usage.prompt_tokens > 0 and out.usage.completion_tokens > 0
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    result = out.model_extra["flowrouter"]
    assert out.usage.completion_tokens == sum(c["raw_tokens"] for c in result["candidates"])
    row = TicketStore(service.state_dir / "tickets.sqlite").get(out.id.removeprefix("chatcmpl-"))
    assert row["status"] == "done"
    assert row["request"]["user"] == "e2e-user" and row["request"]["metadata"] == {"team": "dba", "alert": "DiskFull"}


def test_chat_streaming(client):
    stream = client.chat.completions.create(
        model="smollm2-generalist", n=1, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Pods crashlooping in prod\nOOMKilled after the 14:00 deploy"}])
    chunks = list(stream)  # the client stops at data: [DONE]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)
    content = "".join(ch.delta.content or "" for c in chunks for ch in c.choices)
    _flowchart(content)
    finishes = [ch.finish_reason for c in chunks for ch in c.choices if ch.finish_reason]
    assert len(finishes) == 1 and finishes[0] in ("stop", "length")
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens > 0 and chunks[-1].usage.completion_tokens > 0
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 3  # a line at a time
