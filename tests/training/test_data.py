"""Training data: the held-out split, feedback from the ticket store, knowledge levels, DPO rows."""

from __future__ import annotations

import json

import pytest

from core.config import DIMENSIONS
from core.schemas import WorkflowOut
from core.training_config import ScorerDPOConfig
from core.workflow import linear_workflow
from experts.knowledge.retrieve import ChunkHit, NodeHit, RetrievedContext
from leaderboard.workflow_cases import WorkflowCase
from training.data import FeedbackItem, feedback_queries, read_feedback, read_query_file, reversed_context, split_cases
from training.scorer_dpo import Triple, agreement, feedback_rows, preference_rows


def _case(i: int) -> WorkflowCase:
    return WorkflowCase(id=f"case-{i:03d}", query=f"alert {i}", reference_steps=["a b", "c d", "e f"],
                        source=f"r{i}.md")


def test_split_is_stable_and_keeps_cases_out():
    cases = [_case(i) for i in range(50)]
    train, held = split_cases(cases, 0.2, seed=0)
    assert held and train and len(train) + len(held) == 50
    assert not {c.id for c in train} & {c.id for c in held}
    # Adding cases never moves an existing case to the other side.
    train2, held2 = split_cases(cases + [_case(i) for i in range(50, 80)], 0.2, seed=0)
    assert {c.id for c in held} <= {c.id for c in held2}
    assert {c.id for c in train} <= {c.id for c in train2}
    assert split_cases(cases, 0.2, seed=0) == (train, held)
    assert split_cases([_case(1), _case(2)], 0.01)[1]  # tiny sets still hold one case out


def test_reversed_context_reads_knowledge_backwards_without_touching_the_original():
    ctx = RetrievedContext(
        chunks=[ChunkHit(id="c1", text="first line\nsecond line", source="a.md", score=0.9),
                ChunkHit(id="c2", text="other", source="b.md", score=0.5)],
        nodes=[NodeHit(id="n1", incident="DiskFull", diagnosis_steps=["d1", "d2"], mitigation_steps=["m1"],
                       score=0.8)])
    rev = reversed_context(ctx)
    assert rev.nodes[0].diagnosis_steps == ["m1", "d2", "d1"] and rev.nodes[0].mitigation_steps == []
    assert [c.id for c in rev.chunks] == ["c2", "c1"]
    assert rev.chunks[1].text == "second line\nfirst line"
    assert ctx.nodes[0].diagnosis_steps == ["d1", "d2"] and ctx.chunks[0].text == "first line\nsecond line"
    assert reversed_context(None) is None


def test_feedback_comes_from_the_ticket_store(tmp_path):
    from deployments.ticket_store import TicketStore

    store = TicketStore(tmp_path / "tickets.sqlite")
    wf = linear_workflow(["Check disk usage with df", "Delete old images", "Verify usage"])
    result = {"expert": "smollm2-generalist", "best_index": 0,
              "candidates": [{"workflow": WorkflowOut.of(wf).model_dump(mode="json")}]}
    for tid, verdict in (("t1", "accept"), ("t2", "reject"), ("t3", "accept")):
        store.accept(tid, {"title": f"Disk full {tid}", "description": "node-3 at 95%"}, {})
        store.complete(tid, result)
        store.add_feedback(tid, verdict)
    store.accept("t4", {"title": "never finished"}, {})  # no result: skipped
    store.add_feedback("t1", "accept")  # repeated verdict: counted once
    items = read_feedback(store.feedback())
    assert sorted((f.ticket_id, f.verdict) for f in items) == [("t1", "accept"), ("t2", "reject"), ("t3", "accept")]
    assert items[0].ticket.startswith("Disk full") and "node-3" in items[0].ticket
    queries = feedback_queries(items, "smollm2-generalist")
    assert [q.id for q in queries] == ["ticket:t1", "ticket:t3"] and all(q.origin == "feedback" for q in queries)
    assert feedback_queries(items, "other-expert") == []
    assert feedback_queries(items, "smollm2-generalist-v2", roots={"smollm2-generalist"})
    assert read_feedback([]) == []


def test_query_files(tmp_path):
    (tmp_path / "q.txt").write_text("Disk full on node-3\n\nDNS fails in eu-west\n")
    (tmp_path / "q.jsonl").write_text(json.dumps({"id": "x", "title": "VPN down", "description": "all users"}) + "\n")
    assert [q.text for q in read_query_file(tmp_path / "q.txt")] == ["Disk full on node-3", "DNS fails in eu-west"]
    [q] = read_query_file(tmp_path / "q.jsonl")
    assert q.id == "x" and q.text == "VPN down\nall users" and q.origin == "file"
    with pytest.raises(FileNotFoundError):
        read_query_file(tmp_path / "none.txt")


def _wf(*steps):
    return linear_workflow(list(steps))


def test_preference_rows_drop_pairs_the_scorer_contradicts(fake_engine_cls):
    engine = fake_engine_cls()
    t = Triple(query="disk full", workflows={"good": _wf("Check df -h", "Delete images"),
                                             "fair": _wf("Delete images", "Check df -h"),
                                             "poor": _wf("Roll back checkout", "Check 502 rate")})
    # The current Scorer ranks fair above good: that pair is discarded, the two others kept.
    scores = [{"good": 3.0, "fair": 3.4, "poor": 2.0}]
    rows, counts = preference_rows([t], scores, engine, list(DIMENSIONS), ScorerDPOConfig())
    assert counts == {"pairs": 3, "kept_pairs": 2, "discarded_pairs": 1}
    assert len(rows) == 4  # two rows per kept pair, one dimension each
    kinds = [r["kind"] for r in rows]
    assert kinds == ["good>poor", "poor<good", "fair>poor", "poor<fair"]
    assert (rows[0]["chosen"], rows[0]["rejected"]) == (" 5", " 1")  # on the good workflow's prompt
    assert (rows[1]["chosen"], rows[1]["rejected"]) == (" 1", " 5")  # on the poor workflow's prompt
    assert (rows[2]["chosen"], rows[2]["rejected"]) == (" 3", " 1")
    assert rows[0]["prompt"].endswith("Score:") and "Check df -h" in rows[0]["prompt"]
    assert rows[0]["dimension"] != rows[2]["dimension"]  # dimensions cycle across pairs
    # A margin tolerates small contradictions.
    _, counts = preference_rows([t], scores, engine, list(DIMENSIONS), ScorerDPOConfig(consistency_margin=0.5))
    assert counts["discarded_pairs"] == 0
    rows, _ = preference_rows([t], scores, engine, list(DIMENSIONS), ScorerDPOConfig(dimensions_per_pair=5))
    assert len(rows) == 2 * 5 * 2
    # Missing workflows make no pairs.
    t2 = Triple(query="q", workflows={"good": None, "fair": _wf("a b", "c d"), "poor": _wf("e f", "g h")})
    assert t2.complete_pairs() == [("fair", "poor")]


def test_feedback_rows_follow_the_verdict(fake_engine_cls):
    wf = _wf("Check df -h", "Delete images").model_dump(mode="json")
    items = [FeedbackItem(ticket_id="a", ticket="disk", workflow=wf, verdict="accept"),
             FeedbackItem(ticket_id="b", ticket="disk", workflow=wf, verdict="reject"),
             FeedbackItem(ticket_id="c", ticket="disk", workflow={"steps": []}, verdict="accept")]
    rows = feedback_rows(items, fake_engine_cls(), list(DIMENSIONS), ScorerDPOConfig())
    assert [(r["chosen"], r["rejected"]) for r in rows] == [(" 5", " 1"), (" 1", " 5")]


def test_agreement_counts_pairs_in_level_order():
    scores = [{"good": 4.0, "fair": 3.0, "poor": 2.0},  # 3/3, fully ordered
              {"good": 3.0, "fair": 3.5, "poor": 2.0},  # 2/3
              {"fair": 2.0, "poor": 2.0}]  # a tie counts half; no full triple
    a = agreement(scores)
    assert a["pairs"] == 7 and a["pairwise"] == pytest.approx(5.5 / 7, abs=1e-4)
    assert a["triples"] == 2 and a["full_order"] == 0.5
    assert agreement([])["pairwise"] is None


def test_a_rejected_then_edited_ticket_becomes_planner_targets_and_negatives(tmp_path):
    from deployments.ticket_store import TicketStore
    from training.data import planner_examples

    store = TicketStore(tmp_path / "t.sqlite")
    candidate = linear_workflow(["Check the pod logs", "Restart the pod"])
    correction = linear_workflow(["Check the PVC usage", "Expand the volume"])
    steps = [s.model_dump(mode="json") for s in candidate.steps]
    for tid in ("t1", "t2"):
        store.accept(tid, {"title": f"ticket {tid}"}, {})
        store.complete(tid, {"best_index": 0, "expert": "smollm2-generalist",
                             "candidates": [{"workflow": {"steps": steps, "edges": []}}]})
    store.add_feedback("t1", "reject", 0)
    store.add_feedback("t1", "edit", 0, workflow={"steps": [s.model_dump(mode="json") for s in correction.steps]})
    store.add_feedback("t2", "reject", 0)
    items = read_feedback(store.feedback())
    [edit] = [f for f in items if f.ticket_id == "t1"]
    assert edit.verdict == "edit" and edit.correction["steps"][0]["text"] == "Check the PVC usage"
    examples = {e.ticket_id: e for e in planner_examples(items)}
    assert examples["t1"].kind == "edit" and examples["t1"].is_pair
    assert examples["t1"].chosen.startswith("1. Check the PVC usage") and "Restart the pod" in examples["t1"].rejected
    assert examples["t2"].kind == "reject" and examples["t2"].chosen is None and examples["t2"].rejected


def _store_with_corrections(tmp_path):
    """t1 rejected then corrected, t2 rejected only, t3 accepted, t4 corrected by another expert's family."""
    from deployments.ticket_store import TicketStore

    store = TicketStore(tmp_path / "t.sqlite")
    candidate = linear_workflow(["Check the pod logs", "Restart the pod"])
    correction = linear_workflow(["Check the PVC usage with kubectl", "Expand the volume"])
    for tid, expert in (("t1", "smollm2-generalist"), ("t2", "smollm2-generalist"), ("t3", "smollm2-generalist"),
                        ("t4", "gemma-ops")):
        store.accept(tid, {"title": f"ticket {tid}", "description": "pvc full"}, {})
        store.complete(tid, {"best_index": 0, "expert": expert,
                             "candidates": [{"workflow": WorkflowOut.of(candidate).model_dump(mode="json")}]})
    fixed = {"steps": [s.model_dump(mode="json") for s in correction.steps]}
    store.add_feedback("t1", "reject", 0)
    store.add_feedback("t1", "edit", 0, workflow=fixed)
    store.add_feedback("t2", "reject", 0)
    store.add_feedback("t3", "accept", 0)
    store.add_feedback("t4", "edit", 0, workflow=fixed)
    return store


def test_corrections_become_planner_queries_targets_and_pairs(tmp_path):
    from training.data import correction_pairs, correction_queries, planner_examples

    items = read_feedback(_store_with_corrections(tmp_path).feedback())
    examples = planner_examples(items)
    queries = {q.id: q for q in correction_queries(examples, "smollm2-generalist")}
    assert sorted(queries) == ["ticket:t1", "ticket:t2"]  # t3 is an accept (feedback_queries), t4 another expert
    assert queries["ticket:t1"].origin == "correction" and queries["ticket:t1"].target.startswith("1. Check the PVC")
    assert "Restart the pod" in queries["ticket:t1"].negative
    assert queries["ticket:t2"].target is None and "Restart the pod" in queries["ticket:t2"].negative
    assert [q.id for q in feedback_queries(items, "smollm2-generalist")] == ["ticket:t3"]
    pairs = correction_pairs(examples, "smollm2-generalist")
    assert [(p.ticket_id, p.kind) for p in pairs] == [("t1", "edit")]
    assert {p.ticket_id for p in correction_pairs(examples)} == {"t1", "t4"}  # no expert: every family


def test_correction_reward_follows_the_correction_and_leaves_the_rejected_candidate():
    from core.stepscore import lexical_step_f1
    from training.rewards import make_correction_reward

    reward = make_correction_reward()
    target = "1. Check the PVC usage with kubectl\n2. Expand the volume\n3. [end] Resolved"
    negative = "1. Check the pod logs\n2. Restart the pod\n3. [end] Resolved"
    good = "1. Check the PVC usage with kubectl\n2. Expand the volume\n3. [end] Resolved: space is back"
    bad = "1. Check the pod logs\n2. Restart the pod\n3. [end] Resolved: the pod runs"
    r = reward(completions=[good, bad, "not a workflow", good], target=[target, target, target, ""],
               negative=[negative, negative, negative, ""])
    assert r[0] > 0.5 and r[1] < -0.5 and r[2] == 0.0 and r[3] == 0.0
    assert lexical_step_f1(["check disk usage"], ["check disk usage"]) == 1.0 and lexical_step_f1([], ["x"]) == 0.0


def test_a_correction_is_a_scorer_positive_and_its_candidate_a_negative(tmp_path, fake_engine_cls):
    items = read_feedback(_store_with_corrections(tmp_path).feedback())
    rows = feedback_rows(items, fake_engine_cls(), list(DIMENSIONS), ScorerDPOConfig())
    kinds = [(r["kind"], r["chosen"]) for r in rows]
    assert kinds.count(("feedback:correction", " 5")) == 2 and kinds.count(("feedback:edit", " 1")) == 2
    assert ("feedback:reject", " 1") in kinds and ("feedback:accept", " 5") in kinds
    correction = [r for r in rows if r["kind"] == "feedback:correction"][0]
    assert "Expand the volume" in correction["prompt"]


def test_train_plans_corrections_into_the_job(tmp_path, monkeypatch, tiny_config):
    from training import coevolve
    from training.job import TrainJob

    monkeypatch.setattr(coevolve, "ensure_knowledge_base", lambda *a, **k: tmp_path / "kb")
    rows = _store_with_corrections(tmp_path).feedback()
    [job] = coevolve.plan_jobs(tiny_config, ["smollm2-generalist"], coevolve.TrainOptions(show_progress=False),
                               feedback_rows=rows)
    job = TrainJob.model_validate(job.model_dump(mode="json"))  # what crosses into the Ray actor
    by_origin = {}
    for q in job.queries:
        by_origin.setdefault(q.origin, []).append(q.id)
    assert by_origin["feedback"] == ["ticket:t3"] and sorted(by_origin["correction"]) == ["ticket:t1", "ticket:t2"]
    assert [e.ticket_id for e in job.corrections] == ["t1"] and job.corrections[0].is_pair
    assert len(job.holdout) >= 1 and not {c.id for c in job.holdout} & {q.id for q in job.queries}
    no_feedback = tiny_config.model_copy(deep=True)
    no_feedback.training.feedback = False
    [plain] = coevolve.plan_jobs(no_feedback, ["smollm2-generalist"], coevolve.TrainOptions(show_progress=False),
                                 feedback_rows=rows)
    assert plain.corrections == [] and all(q.origin == "runbook" for q in plain.queries)
