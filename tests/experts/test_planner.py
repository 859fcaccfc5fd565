from types import SimpleNamespace as NS

from core.config import ModelSpec, PlannerConfig
from core.workflow import StepKind, parse_mermaid
from experts.planner import Planner
from experts.prompts import format_context

NODE = NS(incident="Disk full", failure_description="A filesystem is above 90% and writes fail.",
          diagnosis_steps=["Check usage with df -h", "Is the growth from logs?"],
          mitigation_steps=["Rotate logs with logrotate -f", "Extend the volume"])
CONTEXT = NS(nodes=[NODE], chunks=[NS(source="storage/disk-full.md", text="Disks fill up when ...")],
             ids=lambda: ["chunk-1", "node-1"])


class FixedRetriever:
    def __init__(self):
        self.calls = []

    def retrieve(self, query, scope=None, k_chunks=3, k_nodes=2):
        self.calls.append((query, scope, k_chunks, k_nodes))
        return CONTEXT


def _planner(engine, retriever=None, scope=(), **cfg):
    spec = ModelSpec(name="x", base="smollm2-135m-instruct", knowledge_scope=list(scope))
    return Planner(spec, engine, PlannerConfig(**cfg), retriever)


def test_candidates_are_parsed_workflows(fake_engine_cls):
    engine = fake_engine_cls(texts=[" Check disk usage with df -h\n2. Is usage above 90%?\n3. Rotate logs\n",
                                    " just some prose without steps",
                                    " Check the volume\n2. Extend the volume by 20 GB"])
    retriever = FixedRetriever()
    [plan] = _planner(engine, retriever, scope=["storage"], candidates=3).plan(["db-01 disk 97%"], seed=1)
    assert plan.dropped == 1 and len(plan.candidates) == 2
    assert plan.context_ids == ["chunk-1", "node-1"]
    assert retriever.calls == [("db-01 disk 97%", ["storage"], 3, 2)]
    for c in plan.candidates:
        assert c.origin == "model"
        parse_mermaid(c.workflow.to_mermaid())
    kinds = [s.kind for s in plan.candidates[0].workflow.steps]
    assert StepKind.decision in kinds and kinds[-1] == StepKind.terminal
    prompts, params = engine.calls[0][1]
    assert params.n == 3 and params.temperature > 0 and params.seed == 1
    assert "Steps:\n1. Check usage with df -h" in prompts[0] and "Ticket: db-01 disk 97%" in prompts[0]


def test_knowledge_candidate_when_every_sample_fails(fake_engine_cls):
    engine = fake_engine_cls(texts=[" I cannot help with that."])
    [plan] = _planner(engine, FixedRetriever(), candidates=2).plan(["disk full"])
    assert plan.dropped == 2
    [cand] = plan.candidates
    assert cand.origin == "knowledge-base"
    assert cand.workflow.action_steps()[:2] == ["Check usage with df -h", "Is the growth from logs?"]


def test_no_candidates_without_knowledge(fake_engine_cls):
    [plan] = _planner(fake_engine_cls(texts=[" nothing"]), None, candidates=1).plan(["disk full"])
    assert plan.candidates == [] and plan.dropped == 1


def test_best_of_one_is_greedy(fake_engine_cls):
    engine = fake_engine_cls()
    _planner(engine, None, candidates=4).plan(["t"], n=1)
    assert engine.calls[0][1][1].temperature == 0.0


def test_context_puts_best_node_last_with_numbered_steps():
    other = NS(incident="Inode exhaustion", failure_description="", diagnosis_steps=["Run df -i"],
               mitigation_steps=[])
    text = format_context(NS(nodes=[NODE, other], chunks=[]))
    assert text.index("Inode exhaustion") < text.index("Disk full")
    assert "1. Check usage with df -h\n2. Is the growth from logs?\n3. Rotate logs" in text


def test_real_planner_grounds_in_retrieved_steps(smollm2):
    """SmolLM2 copies the retrieved runbook steps into a valid workflow."""
    from core.stepscore import step_score

    planner = _planner(smollm2, FixedRetriever(), candidates=1, max_new_tokens=96)
    [plan] = planner.plan(["db-01 disk at 97%, postgres failing writes"])
    [cand] = plan.candidates
    parse_mermaid(cand.workflow.to_mermaid())
    reference = NODE.diagnosis_steps + NODE.mitigation_steps
    assert step_score(cand.workflow.action_steps(), reference).f1 > 60
