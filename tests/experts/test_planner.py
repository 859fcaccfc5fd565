import pytest

from core.config import ModelSpec, PlannerConfig
from core.schemas import PlanRequest
from core.workflow import StepKind, parse_mermaid, to_mermaid
from experts.engines.base import Generation
from experts.knowledge.incident import NodeHit
from experts.knowledge.retrieve import ChunkHit, RetrievedContext
from experts.knowledge.workflows import reference_workflow
from experts.planner import Planner
from experts.prompts import format_context

WF = reference_workflow(["Check usage with df -h", "If the growth is from logs, rotate logs with logrotate -f"],
                        ["Extend the volume"], "A filesystem is above 90% and writes fail.", source="n-disk")
NODE = NodeHit(id="n-disk", key="disk full", incident="Disk full", score=0.9,
               failure_description="A filesystem is above 90% and writes fail.",
               diagnosis_steps=["Check usage with df -h", "If the growth is from logs, rotate logs with logrotate -f"],
               mitigation_steps=["Extend the volume"], members=["storage/disk-full.md#0"],
               workflow=[s.model_dump(mode="json", exclude_none=True) for s in WF.steps])
CONTEXT = RetrievedContext(nodes=[NODE], chunks=[ChunkHit(id="c-1", source="storage/disk-full.md", score=0.7,
                                                          text="Disks fill up when logs are not rotated.")])
GOOD = ("1. Check usage with df -h\n2. Is the growth from logs? yes 3, no 4\n3. [change] Rotate logs with logrotate -f\n"
        "4. [end] Resolved")


class FixedRetriever:
    def __init__(self, context=CONTEXT):
        self.calls = []
        self.context = context

    def retrieve(self, query, scope=None, k_chunks=3, k_nodes=2, min_relevance=0.0, exclude_sources=()):
        self.calls.append((query, scope, k_chunks, k_nodes, min_relevance, exclude_sources))
        return self.context


class ScriptedEngine:
    """Answers every prompt with the scripted texts; `finished` says which ones ended on their own."""

    def __init__(self, texts, finished=None):
        self.texts, self.finished = texts, finished
        self.calls = []

    def format_prompt(self, system, user, assistant_prefix=""):
        return f"{system}\n{user}\n{assistant_prefix}"

    def generate(self, prompts, params):
        self.calls.append((prompts, params))
        n = params.n
        texts = [self.texts[j % len(self.texts)] for j in range(n)]
        finished = [self.finished[j % len(self.finished)] for j in range(n)] if self.finished else [True] * n
        return [Generation(texts=texts, tokens=[40] * n, finished=finished) for _ in prompts]


def _planner(engine, retriever=None, scope=(), relevance=0.0, **cfg):
    spec = ModelSpec(name="x", base="smollm2-135m-instruct", knowledge_scope=list(scope))
    return Planner(spec, engine, PlannerConfig(**cfg), retriever, min_relevance=relevance)


def test_candidates_are_typed_workflows_written_under_the_grammar():
    engine = ScriptedEngine([GOOD])
    retriever = FixedRetriever()
    [plan] = _planner(engine, retriever, scope=["storage"], candidates=3, context_chunks=1, context_nodes=1,
                      relevance=0.4).plan([PlanRequest(ticket="db-01 disk 97%", n=3, seed=1)])
    assert plan.dropped == 0 and len(plan.candidates) == 3
    assert retriever.calls == [("db-01 disk 97%", ["storage"], 1, 1, 0.4, ())]
    prompts, params = engine.calls[0]
    assert params.grammar and params.grammar.startswith("root ::=") and not params.stop
    assert params.n == 3 and params.greedy_first and params.temperature > 0 and params.seed == 1
    assert [c.decoding for c in plan.candidates] == ["greedy", "sampled", "sampled"]
    wf = plan.candidates[0].workflow
    assert wf.branching_decisions() == 1 and wf.steps[2].action.value == "change"
    assert wf.steps[0].source == "n-disk"  # the step came from the shown incident
    parse_mermaid(to_mermaid(wf))
    assert plan.knowledge.status == "matched" and plan.context_ids == ["n-disk", "c-1"]
    assert plan.scoring.reference_steps == WF.action_steps()
    assert "Workflow:\n1. Check usage with df -h" in prompts[0] and "Ticket: db-01 disk 97%" in prompts[0]


def test_a_candidate_cut_by_the_budget_is_closed_not_dropped():
    cut = "1. Check usage with df -h\n2. Is the growth from logs? yes 3, no 4\n3. [change] Rotate lo"
    [plan] = _planner(ScriptedEngine([GOOD, cut], finished=[True, False]), FixedRetriever()).plan(
        [PlanRequest(ticket="disk full", n=2)])
    assert plan.dropped == 0
    closed = plan.candidates[1]
    assert closed.closed_early and closed.workflow.steps[-1].kind == StepKind.terminal
    first_step_only = ScriptedEngine(["1. Check the us"], finished=[False])
    [plan] = _planner(first_step_only, FixedRetriever()).plan([PlanRequest(ticket="disk full", n=1)])
    assert plan.candidates == [] and plan.dropped == 1


def test_none_matched_shows_no_runbook_and_says_so():
    none = RetrievedContext(matched=False, best_score=0.12)
    engine = ScriptedEngine([GOOD])
    [plan] = _planner(engine, FixedRetriever(none), relevance=0.5).plan([PlanRequest(ticket="printer jam", n=1)])
    assert plan.knowledge.status == "none matched" and plan.knowledge.items == []
    assert plan.knowledge.best_score == 0.12 and plan.scoring.reference_steps == []
    prompt = engine.calls[0][0][0]
    assert "No runbook matched this ticket" in prompt and "Reference knowledge" not in prompt
    [plan] = _planner(engine, None).plan([PlanRequest(ticket="printer jam", n=1)])
    assert plan.knowledge.status == "no knowledge base"


def test_best_of_one_is_greedy():
    engine = ScriptedEngine([GOOD])
    _planner(engine, None, candidates=4).plan([PlanRequest(ticket="t", n=1)])
    params = engine.calls[0][1]
    assert params.temperature == 0.0 and params.n == 1


def test_plan_counts_the_prompt_tokens_the_engine_reads():
    class Counting(ScriptedEngine):
        def count_prompt_tokens(self, prompt):
            return len(prompt.split())

    engine = Counting([GOOD])
    [a, b] = _planner(engine, None).plan([PlanRequest(ticket="disk full", n=2),
                                          PlanRequest(ticket="disk full on db-01 and db-02", n=2)])
    prompts = engine.calls[0][0]
    assert (a.prompt_tokens, b.prompt_tokens) == (len(prompts[0].split()), len(prompts[1].split()))
    assert b.prompt_tokens == a.prompt_tokens + 4
    [plan] = _planner(ScriptedEngine([GOOD]), None).plan([PlanRequest(ticket="t", n=1)])
    assert plan.prompt_tokens == 0  # an engine that cannot count


def test_context_shows_reference_workflows_best_last_never_cut():
    other = NODE.model_copy(update={"id": "n-inode", "incident": "Inode exhaustion", "workflow": [],
                                    "failure_description": "x " * 400})
    text = format_context(RetrievedContext(nodes=[NODE, other]))
    assert text.index("Inode exhaustion") < text.index("Disk full")
    assert "Workflow:\n1. Check usage with df -h\n2. Is the growth from logs? yes 3, no 4" in text
    assert "…" not in text


@pytest.mark.model
def test_real_planner_copies_the_reference_workflow_with_its_branches(smollm2):
    from core.stepscore import step_score

    planner = _planner(smollm2, FixedRetriever(), candidates=1, context_chunks=1, context_nodes=1)
    [plan] = planner.plan([PlanRequest(ticket="db-01 disk at 97%, postgres failing writes", n=1)])
    [cand] = plan.candidates
    assert cand.workflow.branching_decisions() >= 1
    assert step_score(cand.workflow.action_steps(), WF.action_steps()).f1 > 60


# ---- case memory --------------------------------------------------------------------------------
def _case_planner(tmp_path, engine, cases, reference=0.55, shown=0.3, **cfg):
    from core.config import CaseMemoryConfig
    from experts.knowledge.cases import CaseIndex, CaseStore
    from tests.experts.knowledge.test_cases import bag_embed

    store = CaseStore(tmp_path)
    for c in cases:
        store.put(c)

    class EmbeddingRetriever(FixedRetriever):
        def embed(self, texts):
            return bag_embed(texts)

    spec = ModelSpec(name="x", base="smollm2-135m-instruct")
    return Planner(spec, engine, PlannerConfig(**cfg), EmbeddingRetriever(), cases=CaseIndex(store, bag_embed),
                   case_cfg=CaseMemoryConfig(min_similarity=shown, reference_similarity=reference))


CORRECTED = ["Check the pg_wal size with du -sh", "Check replication slots with pg_replication_slots",
             "Drop the stale replication slot", "Confirm WAL segments are recycled"]


def _edited(tid="past-1", text="db-01 disk 97% full\npostgres cannot write WAL", verdict="edit"):
    from core.workflow import linear_workflow
    from experts.knowledge.cases import Case

    return Case(ticket_id=tid, text=text, verdict=verdict, workflow=linear_workflow(CORRECTED))


def test_a_corrected_case_above_the_reference_similarity_replaces_the_runbook(tmp_path):
    engine = ScriptedEngine([GOOD])
    planner = _case_planner(tmp_path, engine, [_edited()])
    [plan] = planner.plan([PlanRequest(ticket="db-01 disk 97% full postgres cannot write WAL", n=1)])
    prompt = engine.calls[0][0][0]
    assert "corrected by an operator: db-01 disk 97% full" in prompt
    assert "1. Check the pg_wal size with du -sh" in prompt  # the correction, in the form the model writes
    assert "Incident: Disk full" not in prompt and "Excerpt from" not in prompt, "the corrected runbook is not shown"
    assert plan.knowledge.reference == "case:past-1" and [i.kind for i in plan.knowledge.items] == ["case"]
    assert plan.scoring.reference_steps == CORRECTED, "the Scorer grounds candidates in the correction"
    [sim] = plan.similar_cases
    assert sim.ticket_id == "past-1" and sim.verdict == "edit" and sim.reference and sim.similarity >= 0.55
    # The correction itself competes in best-of-N, after the model's own candidates.
    assert [c.decoding for c in plan.candidates] == ["greedy", "case"]
    case = plan.candidates[-1]
    assert case.workflow.action_steps() == CORRECTED and case.tokens == 0
    assert {s.source for s in case.workflow.steps} == {"case:past-1"}
    assert case.raw.startswith("1. Check the pg_wal size with du -sh")


def test_a_case_below_the_reference_similarity_adds_no_candidate(tmp_path):
    engine = ScriptedEngine([GOOD])
    planner = _case_planner(tmp_path, engine, [_edited(text="postgres WAL volume filling on db-07")],
                            reference=0.99, shown=0.2)
    [plan] = planner.plan([PlanRequest(ticket="db-01 disk 97% full postgres cannot write WAL", n=1)])
    assert [c.decoding for c in plan.candidates] == ["greedy"]


def test_a_less_similar_case_is_shown_before_the_runbook_which_stays_the_reference(tmp_path):
    engine = ScriptedEngine([GOOD])
    planner = _case_planner(tmp_path, engine, [_edited(text="postgres WAL volume filling on db-07")],
                            reference=0.99, shown=0.2)
    [plan] = planner.plan([PlanRequest(ticket="db-01 disk 97% full postgres cannot write WAL", n=1)])
    prompt = engine.calls[0][0][0]
    assert prompt.index("corrected by an operator") < prompt.index("Incident: Disk full")
    assert plan.knowledge.reference == "n-disk" and plan.knowledge.items[0].id == "n-disk"
    assert [i.kind for i in plan.knowledge.items][-1] == "case" and not plan.similar_cases[0].reference
    assert plan.scoring.reference_steps == WF.action_steps()


def test_an_accepted_case_keeps_its_runbook_shown_and_unrelated_cases_are_not_cited(tmp_path):
    engine = ScriptedEngine([GOOD])
    accepted = _edited(verdict="accept")
    unrelated = _edited(tid="other", text="kafka consumer lag on the orders topic")
    planner = _case_planner(tmp_path, engine, [accepted, unrelated])
    [plan] = planner.plan([PlanRequest(ticket="db-01 disk 97% full postgres cannot write WAL", n=1)])
    prompt = engine.calls[0][0][0]
    assert prompt.index("Incident: Disk full") < prompt.index("an operator accepted: db-01")
    assert plan.knowledge.items[0].id == "n-disk" and plan.knowledge.reference == "case:past-1"
    assert [c.ticket_id for c in plan.similar_cases] == ["past-1"]


def test_without_cases_the_prompt_is_unchanged(tmp_path):
    plain, with_memory = ScriptedEngine([GOOD]), ScriptedEngine([GOOD])
    _planner(plain, FixedRetriever()).plan([PlanRequest(ticket="db-01 disk 97%", n=1)])
    [plan] = _case_planner(tmp_path, with_memory, []).plan([PlanRequest(ticket="db-01 disk 97%", n=1)])
    assert plain.calls[0][0] == with_memory.calls[0][0] and plan.similar_cases == []
    assert plan.knowledge.cases_version is not None and plan.knowledge.reference == "n-disk"
