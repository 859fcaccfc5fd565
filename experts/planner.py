"""Stage 3: a Planner expert writes N candidate workflows for a ticket, grounded in retrieved knowledge.

The model writes the workflow's line form under the workflow grammar (`core.workflow.grammar`),
so every candidate is a valid workflow: typed steps, decisions with both branches, observe before
change. Of the N candidates the first is the greedy decode and the others are sampled, all in one
batch from one prefill. A candidate the token budget cut off is closed by the grammar's automaton
(its unfinished step dropped); only a budget that runs out inside the first step loses a sample.

Knowledge comes from the expert's scope, or the whole base when the scope holds nothing relevant;
below the calibrated relevance nothing is shown and the answer says "none matched".

Case memory (`experts.knowledge.cases`) adds past tickets an operator accepted or corrected. A small
model copies the closest list it has seen, so what it is shown decides what it writes (`Grounding`):
- the best case at or above `reference_similarity` is the reference, shown last, right before the
  ticket. A corrected case (edit) is shown alone: it replaces the runbooks it corrected, and any other
  list in the prompt would only be blended in. An accepted case agrees with its runbooks, which stay
  shown before it. The reference case's own final workflow also joins the N candidates (decoding
  `case`): a small model paraphrases even a list it is shown, and an operator's correction of a ticket
  this close is usually the answer. The Scorer judges every candidate, the case included, against the
  case's workflow, so best-of-N prefers the correction or a candidate that follows it;
- below it, cases at or above `min_similarity` are shown before the runbooks (the runbook stays the
  closest list);
- every case retrieved is returned as `similar_cases`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from core.config import CaseMemoryConfig, ModelSpec, PlannerConfig
from core.embeddings import shared_embedder
from core.schemas import KnowledgeItem, KnowledgeUse, PlanCandidate, PlanRequest, ScoringContext, SimilarCase
from core.workflow import GrammarSpec, WorkflowError, gbnf, read_workflow, render_lines
from experts.engines.base import Engine, Generation, SamplingParams
from experts.knowledge.cases import CaseHit, CaseIndex
from experts.knowledge.lexical import terms
from experts.prompts import (
    case_scorer_context,
    format_case,
    format_context,
    node_workflow,
    planner_user_message,
    scorer_context,
)

log = logging.getLogger(__name__)


class Retriever(Protocol):
    def retrieve(self, query: str, scope: list[str] | None = None, k_chunks: int = 3, k_nodes: int = 2,
                 min_relevance: float = 0.0, exclude_sources: tuple[str, ...] = (), **hints): ...


class Plan:
    """One ticket's candidates and the knowledge they were written from."""

    def __init__(self, candidates: list[PlanCandidate], dropped: int, knowledge: KnowledgeUse,
                 scoring: ScoringContext, prompt_tokens: int = 0, similar_cases: list[SimilarCase] | None = None):
        self.candidates = candidates
        self.dropped = dropped
        self.knowledge = knowledge
        self.scoring = scoring
        self.prompt_tokens = prompt_tokens  # of the one prompt all candidates continue
        self.similar_cases = similar_cases or []

    @property
    def context_ids(self) -> list[str]:
        return [i.id for i in self.knowledge.items]


def knowledge_use(context, has_base: bool) -> KnowledgeUse:
    """The answer's account of what a retrieved context gave the Planner."""
    if context is None or not has_base:
        return KnowledgeUse(status="no knowledge base")
    items = [KnowledgeItem(id=n.id, kind="node", title=n.incident, source=(n.docs or [None])[0], score=n.score)
             for n in context.nodes]
    items += [KnowledgeItem(id=c.id, kind="chunk", title=" / ".join([c.source, *c.heading_path[-1:]]),
                            source=c.source, score=c.score) for c in context.chunks]
    return KnowledgeUse(status="matched" if context.matched and items else "none matched", scope=context.scope,
                        items=items, best_score=context.best_score, version=context.version)


@dataclass
class Grounding:
    """What one ticket's prompt shows: runbook knowledge and past cases, and which of them is the reference."""

    context: object | None  # the retrieved knowledge shown (None: none)
    before: list[CaseHit] = field(default_factory=list)  # cases shown before the runbooks
    reference: CaseHit | None = None  # the case shown last, the workflow to follow
    hits: list[CaseHit] = field(default_factory=list)  # every case retrieved
    revision: int | None = None  # case-memory revision (None: no case memory)

    @property
    def shown_cases(self) -> list[CaseHit]:
        return [*self.before, *([self.reference] if self.reference is not None else [])]


def ground(context, hits: list[CaseHit], cfg: CaseMemoryConfig, revision: int | None = None) -> Grounding:
    """The module doc's rules: a case above the reference similarity leads; a corrected one is shown alone."""
    shown_kb = context if context is not None and context.matched else None
    best = hits[0] if hits else None
    if best is not None and best.similarity >= cfg.reference_similarity:
        kb = None if best.case.verdict == "edit" else shown_kb
        return Grounding(kb, [], best, hits, revision)
    return Grounding(shown_kb, list(hits), None, hits, revision)


def case_item(hit: CaseHit) -> KnowledgeItem:
    return KnowledgeItem(id=hit.case.id, kind="case", title=hit.case.title[:200], source=None,
                         score=hit.similarity)


def grounded_use(context, has_base: bool, grounding: Grounding | None) -> KnowledgeUse:
    """`knowledge_use` with the cases shown: a reference case is what the answer names as its reference."""
    use = knowledge_use(context, has_base)
    if grounding is None:
        if use.status == "matched" and context is not None and context.nodes:
            use.reference = context.nodes[0].id
        return use
    cases = [case_item(h) for h in grounding.shown_cases]
    kb_items = use.items if grounding.context is not None else []
    use.items = kb_items + cases
    use.cases_version = str(grounding.revision) if grounding.revision is not None else None
    if grounding.reference is not None:
        use.reference = grounding.reference.case.id
    elif grounding.context is not None and grounding.context.nodes:
        use.reference = grounding.context.nodes[0].id
    if use.items:
        use.status = "matched"
    elif use.status == "matched":
        use.status = "none matched"
    return use


def similar_cases(grounding: Grounding | None) -> list[SimilarCase]:
    if grounding is None:
        return []
    ref = grounding.reference.case.ticket_id if grounding.reference is not None else None
    return [SimilarCase(ticket_id=h.case.ticket_id, similarity=h.similarity, verdict=h.case.verdict,
                        title=h.case.title[:200], reference=h.case.ticket_id == ref) for h in grounding.hits]


def case_candidate(case) -> PlanCandidate:
    """The reference case's final workflow as a candidate, every step citing the case."""
    wf = case.workflow.model_copy(deep=True)
    for step in wf.steps:
        step.source = case.id
    try:
        raw = render_lines(wf)
    except WorkflowError:
        raw = wf.to_text()
    return PlanCandidate(workflow=wf, decoding="case", tokens=0, raw=raw)


def step_sources(text: str, context, cases: list[CaseHit] = ()) -> dict[int, str]:
    """Line number -> the shown knowledge item a written step comes from (most shared terms, at least half
    of the step's), so the answer shows where each step was grounded."""
    known: list[tuple[str, set[str]]] = []
    for hit in cases:
        for step in hit.case.workflow.action_steps():
            known.append((hit.case.id, set(terms(step))))
    if context is None and not known:
        return {}
    for node in (context.nodes if context is not None else []):
        wf = node_workflow(node)
        for step in (wf.action_steps() if wf is not None else [*node.diagnosis_steps, *node.mitigation_steps]):
            known.append((node.id, set(terms(step))))
    for chunk in (context.chunks if context is not None else []):
        known.append((chunk.id, set(terms(chunk.text))))
    out = {}
    for i, line in enumerate(text.split("\n"), 1):
        words = set(terms(line.split(". ", 1)[-1]))
        if not words:
            continue
        best = max(known, key=lambda k: len(words & k[1]), default=None)
        if best is not None and len(words & best[1]) >= max(2, len(words) / 2):
            out[i] = best[0]
    return out


class Planner:
    def __init__(self, spec: ModelSpec, engine: Engine, cfg: PlannerConfig, retriever: Retriever | None = None,
                 min_relevance: float = 0.0, cases: CaseIndex | None = None,
                 case_cfg: CaseMemoryConfig | None = None):
        self.spec = spec
        self.engine = engine
        self.cfg = cfg
        self.retriever = retriever
        self.min_relevance = min_relevance
        self.cases = cases
        self.case_cfg = case_cfg or CaseMemoryConfig()
        self.grammar_spec = GrammarSpec(max_steps=cfg.max_steps, require_decision=cfg.require_decision)
        self.grammar = gbnf(self.grammar_spec)

    # ---- knowledge --------------------------------------------------------------------------
    def context_for(self, ticket: str, exclude_sources: tuple[str, ...] = (), keys: tuple[str, ...] = ()):
        """The knowledge for a ticket; `keys` (an alert name, a runbook file name) rank the runbook named
        exactly like one first. Passed only when given, so a retriever without key support still works."""
        if self.retriever is None or (self.cfg.context_chunks == 0 and self.cfg.context_nodes == 0):
            return None
        return self.retriever.retrieve(ticket, scope=self.spec.knowledge_scope or None,
                                       k_chunks=self.cfg.context_chunks, k_nodes=self.cfg.context_nodes,
                                       min_relevance=self.min_relevance, exclude_sources=exclude_sources,
                                       **({"keys": tuple(keys)} if keys else {}))

    def query_vectors(self, tickets: list[str]):
        """The tickets' vectors, from the retriever's cache when it has one (retrieval just embedded them)."""
        embed = getattr(self.retriever, "embed", None)
        return embed(tickets) if embed is not None else shared_embedder().encode(tickets)

    def cases_for(self, requests: list[PlanRequest], contexts: list) -> list[Grounding | None]:
        """Each request's grounding in the knowledge retrieved for it and the similar past cases."""
        if self.cases is None or not self.case_cfg.enabled:
            return [None] * len(requests)
        self.cases.refresh()
        revision = self.cases.revision
        if len(self.cases) == 0 or self.case_cfg.k == 0:
            return [ground(c, [], self.case_cfg, revision) for c in contexts]
        vecs = self.query_vectors([r.ticket for r in requests])
        return [ground(c, self.cases.search(r.ticket, v, self.case_cfg.k, self.case_cfg.min_similarity),
                       self.case_cfg, revision) for r, c, v in zip(requests, contexts, vecs)]

    def prompt(self, ticket: str, context, grounding: Grounding | None = None) -> str:
        if grounding is None:
            text = format_context(context) if context is not None and context.matched else ""
        else:
            parts = [format_case(h.case, self.grammar_spec) for h in reversed(grounding.before)]
            if grounding.context is not None:
                parts.append(format_context(grounding.context))
            if grounding.reference is not None:
                parts.append(format_case(grounding.reference.case, self.grammar_spec))
            text = "\n\n".join(p for p in parts if p)
        user = planner_user_message(ticket, text)
        return self.engine.format_prompt(self.spec.system_prompt, user)

    def prompt_tokens(self, prompt: str) -> int:
        """Tokens the engine feeds the model for `prompt`; 0 for an engine without a tokenizer."""
        count = getattr(self.engine, "count_prompt_tokens", None)  # stand-in engines need not have one
        try:
            return count(prompt) if count is not None else 0
        except NotImplementedError:
            return 0

    def sampling(self, n: int, seed: int | None) -> SamplingParams:
        temperature = self.spec.temperature if self.spec.temperature is not None else self.cfg.temperature
        return SamplingParams(n=n, max_new_tokens=self.cfg.max_new_tokens, temperature=temperature if n > 1 else 0.0,
                              top_p=self.cfg.top_p, repetition_penalty=self.cfg.repetition_penalty, seed=seed,
                              grammar=self.grammar, greedy_first=n > 1, line_chars=self.cfg.line_chars,
                              frequency_penalty=self.cfg.frequency_penalty,
                              no_repeat_ngram=self.cfg.no_repeat_ngram)

    # ---- writing ------------------------------------------------------------------------------
    def plan(self, requests: list[PlanRequest], contexts: list | None = None,
             groundings: list[Grounding | None] | None = None) -> list[Plan]:
        """Candidates for every request; one generate call per distinct (n, seed). `groundings` (from
        `cases_for`) are computed here when not given."""
        if contexts is None:
            contexts = [self.context_for(r.ticket, tuple(r.exclude_sources), tuple(r.keys)) for r in requests]
        if groundings is None:
            groundings = self.cases_for(requests, contexts)
        plans: list[Plan | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.n, r.seed), []).append(i)
        for (n, seed), idx in groups.items():
            prompts = [self.prompt(requests[i].ticket, contexts[i], groundings[i]) for i in idx]
            for i, prompt, gen in zip(idx, prompts, self.engine.generate(prompts, self.sampling(n, seed))):
                plans[i] = self._plan_of(gen, contexts[i], self.prompt_tokens(prompt), groundings[i])
        return plans  # type: ignore[return-value]

    def _plan_of(self, gen: Generation, context, prompt_tokens: int = 0, grounding: Grounding | None = None) -> Plan:
        knowledge = grounded_use(context, self.retriever is not None, grounding)
        if grounding is None:
            shown = context if knowledge.status == "matched" else None
            shown_cases: list[CaseHit] = []
        else:
            shown, shown_cases = grounding.context, grounding.shown_cases
        if grounding is not None and grounding.reference is not None:
            scoring = case_scorer_context(grounding.reference.case)
        else:
            scoring = scorer_context(shown) if shown is not None else ScoringContext()
        candidates, dropped = [], 0
        finished = gen.finished or [True] * len(gen.texts)
        tokens = gen.tokens or [0] * len(gen.texts)
        for k, (text, toks, done) in enumerate(zip(gen.texts, tokens, finished)):
            try:
                wf = read_workflow(text, done, self.grammar_spec, step_sources(text, shown, shown_cases))
            except WorkflowError as exc:
                log.warning("%s: candidate %d dropped (%s): %r", self.spec.name, k, exc, text[-200:])
                dropped += 1
                continue
            decoding = "greedy" if k == 0 else "sampled"
            candidates.append(PlanCandidate(workflow=wf, decoding=decoding, tokens=toks, closed_early=not done,
                                            raw=text))
        if grounding is not None and grounding.reference is not None:
            candidates.append(case_candidate(grounding.reference.case))
        return Plan(candidates, dropped, knowledge, scoring, prompt_tokens, similar_cases(grounding))
