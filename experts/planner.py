"""Stage 3: a Planner expert writes N candidate workflows for a ticket, grounded in retrieved knowledge.

The model writes the workflow's line form under the workflow grammar (`core.workflow.grammar`),
so every candidate is a valid workflow: typed steps, decisions with both branches, observe before
change. Of the N candidates the first is the greedy decode and the others are sampled, all in one
batch from one prefill. A candidate the token budget cut off is closed by the grammar's automaton
(its unfinished step dropped); only a budget that runs out inside the first step loses a sample.

Knowledge comes from the expert's scope, or the whole base when the scope holds nothing relevant;
below the calibrated relevance nothing is shown and the answer says "none matched".
"""

from __future__ import annotations

import logging
from typing import Protocol

from core.config import ModelSpec, PlannerConfig
from core.schemas import KnowledgeItem, KnowledgeUse, PlanCandidate, PlanRequest, ScoringContext
from core.workflow import GrammarSpec, WorkflowError, gbnf, read_workflow
from experts.engines.base import Engine, Generation, SamplingParams
from experts.knowledge.lexical import terms
from experts.prompts import format_context, node_workflow, planner_user_message, scorer_context

log = logging.getLogger(__name__)


class Retriever(Protocol):
    def retrieve(self, query: str, scope: list[str] | None = None, k_chunks: int = 3, k_nodes: int = 2,
                 min_relevance: float = 0.0, exclude_sources: tuple[str, ...] = (), **hints): ...


class Plan:
    """One ticket's candidates and the knowledge they were written from."""

    def __init__(self, candidates: list[PlanCandidate], dropped: int, knowledge: KnowledgeUse,
                 scoring: ScoringContext, prompt_tokens: int = 0):
        self.candidates = candidates
        self.dropped = dropped
        self.knowledge = knowledge
        self.scoring = scoring
        self.prompt_tokens = prompt_tokens  # of the one prompt all candidates continue

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


def step_sources(text: str, context) -> dict[int, str]:
    """Line number -> the shown knowledge item a written step comes from (most shared terms, at least half
    of the step's), so the answer shows where each step was grounded."""
    if context is None:
        return {}
    known: list[tuple[str, set[str]]] = []
    for node in context.nodes:
        wf = node_workflow(node)
        for step in (wf.action_steps() if wf is not None else [*node.diagnosis_steps, *node.mitigation_steps]):
            known.append((node.id, set(terms(step))))
    for chunk in context.chunks:
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
                 min_relevance: float = 0.0):
        self.spec = spec
        self.engine = engine
        self.cfg = cfg
        self.retriever = retriever
        self.min_relevance = min_relevance
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

    def prompt(self, ticket: str, context) -> str:
        user = planner_user_message(ticket, format_context(context) if context is not None and context.matched
                                    else "")
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
    def plan(self, requests: list[PlanRequest], contexts: list | None = None) -> list[Plan]:
        """Candidates for every request; one generate call per distinct (n, seed)."""
        if contexts is None:
            contexts = [self.context_for(r.ticket, tuple(r.exclude_sources), tuple(r.keys)) for r in requests]
        plans: list[Plan | None] = [None] * len(requests)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.n, r.seed), []).append(i)
        for (n, seed), idx in groups.items():
            prompts = [self.prompt(requests[i].ticket, contexts[i]) for i in idx]
            for i, prompt, gen in zip(idx, prompts, self.engine.generate(prompts, self.sampling(n, seed))):
                plans[i] = self._plan_of(gen, contexts[i], self.prompt_tokens(prompt))
        return plans  # type: ignore[return-value]

    def _plan_of(self, gen: Generation, context, prompt_tokens: int = 0) -> Plan:
        knowledge = knowledge_use(context, self.retriever is not None)
        shown = context if knowledge.status == "matched" else None
        candidates, dropped = [], 0
        finished = gen.finished or [True] * len(gen.texts)
        tokens = gen.tokens or [0] * len(gen.texts)
        for k, (text, toks, done) in enumerate(zip(gen.texts, tokens, finished)):
            try:
                wf = read_workflow(text, done, self.grammar_spec, step_sources(text, shown))
            except WorkflowError as exc:
                log.warning("%s: candidate %d dropped (%s): %r", self.spec.name, k, exc, text[-200:])
                dropped += 1
                continue
            decoding = "greedy" if k == 0 else "sampled"
            candidates.append(PlanCandidate(workflow=wf, decoding=decoding, tokens=toks, closed_early=not done,
                                            raw=text))
        return Plan(candidates, dropped, knowledge, scorer_context(shown) if shown is not None else ScoringContext(),
                    prompt_tokens)
