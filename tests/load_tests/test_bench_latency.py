"""The latency benchmark's arithmetic and what it counts, against a fake service (no models)."""

import json

import httpx

from core.workflow import linear_workflow, parse_lines
from load_tests import bench_latency

BRANCHING = parse_lines("1. Check disk usage\n2. Is the WAL volume full? yes 3, no 4\n3. [change] Remove old WAL\n"
                        "4. [end] Escalate to the database team")


def _answer(i: int) -> dict:
    wf = BRANCHING if i % 2 else linear_workflow(["Check the logs", "Restart the exporter"])
    return {"expert": "e1", "workflow": {"steps": [s.model_dump(mode="json") for s in wf.steps]},
            "knowledge": {"status": "matched" if i % 2 else "none matched"},
            "timings_ms": {"classify": 10.0, "retrieve": 1.0, "plan": 80.0, "score": 9.0, "compute": 100.0,
                           "total": 101.0}}


def test_counts_branching_and_grounded_answers(tmp_path, monkeypatch):
    tickets = tmp_path / "tickets.jsonl"
    tickets.write_text("\n".join(json.dumps({"title": f"t{i}", "description": "d"}) for i in range(4)))
    sent = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(json.loads(request.content)["title"])
        return httpx.Response(200, json=_answer(len(sent)))

    real = httpx.Client
    monkeypatch.setattr(httpx, "Client", lambda **kw: real(transport=httpx.MockTransport(handler), **kw))
    result = bench_latency.run("http://svc", count=4, candidates=4, tickets_file=tickets)
    assert sent == ["t0", "t1", "t2", "t3", "t0"]  # one warm-up, then `count` tickets
    assert result["branching"] == 2 and result["matched"] == 2 and result["count"] == 4
    assert result["stages"]["plan"]["p50_ms"] == 80.0
    assert "decision having both branches: 2/4" in bench_latency.render(result)


def test_forced_experts_go_with_the_measured_tickets_not_the_warmup(tmp_path, monkeypatch):
    tickets = tmp_path / "tickets.jsonl"
    tickets.write_text("\n".join(json.dumps({"title": f"t{i}", "description": "d"}) for i in range(3)))
    params = []

    def handler(request: httpx.Request) -> httpx.Response:
        params.append(request.url.params.get("expert"))
        return httpx.Response(200, json=_answer(len(params)))

    real = httpx.Client
    monkeypatch.setattr(httpx, "Client", lambda **kw: real(transport=httpx.MockTransport(handler), **kw))
    result = bench_latency.run("http://svc", count=2, candidates=1, tickets_file=tickets, forced=["a", "b"])
    assert params == [None, "a", "b"] and result["routed"] == ["e1", "e1"]


def test_engine_variant_puts_every_model_on_the_engine_with_its_own_state(tmp_path):
    from core.config import load_config

    path = bench_latency.engine_variant(None, "vllm", tmp_path / "v")
    cfg = load_config(str(path))
    assert {m.engine for m in [cfg.classifier.model, cfg.scorer.model, *cfg.experts]} == {"vllm"}
    assert cfg.serve.state_dir == str(tmp_path / "v")
    same = load_config(str(bench_latency.engine_variant(None, None, tmp_path / "d")))
    assert [e.engine for e in same.experts] == [e.engine for e in load_config().experts]


def test_speedup_is_the_other_engines_plan_p50_over_the_defaults():
    fast, slow = {"stages": {"plan": {"p50_ms": 2000.0}}}, {"stages": {"plan": {"p50_ms": 6000.0}}}
    assert bench_latency.speedup(fast, slow) == 3.0
