"""Stage 3: a Planner expert writes N candidate workflows for a ticket, grounded in retrieved knowledge.

Small models do not write Mermaid; they are asked for a numbered step list (one worked example,
retrieved diagnosis/mitigation steps), which the parser turns into a typed flowchart. Samples that
do not yield at least two usable steps are dropped; if every sample fails, the top retrieved
incident's own steps are offered as a candidate (marked as such) rather than nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from core.config import ModelSpec, PlannerConfig
from core.workflow import Workflow, WorkflowError, parse_step_list, workflow_from_steps
from experts.engines.base import Engine, SamplingParams
from experts.prompts import format_context, planner_user_message

ASSISTANT_PREFIX = "1."
STOP = ("\nTicket:", "\n\n\n", "\nWorkflow:", "\nReference knowledge:")


class Retriever(Protocol):
    def retrieve(self, query: str, scope: list[str] | None = None, k_chunks: int = 3, k_nodes: int = 2) -> Any: ...


@dataclass
class PlanCandidate:
    workflow: Workflow
    origin: str  # "model" or "knowledge-base"
    raw: str
    tokens: int = 0


@dataclass
class Plan:
    candidates: list[PlanCandidate]
    dropped: int
    context_ids: list[str] = field(default_factory=list)
    prompt_tokens: int = 0


class Planner:
    def __init__(self, spec: ModelSpec, engine: Engine, cfg: PlannerConfig, retriever: Retriever | None = None):
        self.spec = spec
        self.engine = engine
        self.cfg = cfg
        self.retriever = retriever

    def context_for(self, ticket: str):
        if self.retriever is None or (self.cfg.context_chunks == 0 and self.cfg.context_nodes == 0):
            return None
        return self.retriever.retrieve(ticket, scope=self.spec.knowledge_scope or None,
                                       k_chunks=self.cfg.context_chunks, k_nodes=self.cfg.context_nodes)

    def prompt(self, ticket: str, context) -> str:
        user = planner_user_message(ticket, format_context(context))
        return self.engine.format_prompt(self.spec.system_prompt, user, assistant_prefix=ASSISTANT_PREFIX)

    def plan(self, tickets: list[str], n: int | None = None, seed: int | None = None,
             contexts: list | None = None) -> list[Plan]:
        """N candidates per ticket, one batched generate call for all tickets."""
        n = n or self.cfg.candidates
        if contexts is None:
            contexts = [self.context_for(t) for t in tickets]
        prompts = [self.prompt(t, c) for t, c in zip(tickets, contexts)]
        params = SamplingParams(
            n=n,
            max_new_tokens=self.cfg.max_new_tokens,
            temperature=(self.spec.temperature if self.spec.temperature is not None else self.cfg.temperature)
            if n > 1 else 0.0,
            top_p=self.cfg.top_p,
            repetition_penalty=self.cfg.repetition_penalty,
            stop=STOP,
            seed=seed,
        )
        generations = self.engine.generate(prompts, params)
        plans = []
        for ctx, gen in zip(contexts, generations):
            cands, dropped = [], 0
            for text, toks in zip(gen.texts, gen.tokens or [0] * len(gen.texts)):
                wf = self.parse(ASSISTANT_PREFIX + text, truncated=toks >= params.max_new_tokens)
                if wf is None:
                    dropped += 1
                else:
                    cands.append(PlanCandidate(wf, "model", text, toks))
            if not cands:
                fallback = self.knowledge_candidate(ctx)
                if fallback is not None:
                    cands.append(fallback)
            plans.append(Plan(cands, dropped, context_ids=ctx.ids() if ctx is not None else []))
        return plans

    def parse(self, text: str, truncated: bool = False) -> Workflow | None:
        steps = parse_step_list(text, max_steps=self.cfg.max_steps, truncated=truncated)
        if len(steps) < 2:
            return None
        try:
            return workflow_from_steps(steps)
        except WorkflowError:
            return None

    def knowledge_candidate(self, context) -> PlanCandidate | None:
        nodes = getattr(context, "nodes", None) or []
        if not nodes:
            return None
        node = nodes[0]
        steps = list(node.diagnosis_steps or []) + list(node.mitigation_steps or [])
        steps = steps[: self.cfg.max_steps]
        if len(steps) < 2:
            return None
        try:
            return PlanCandidate(workflow_from_steps(steps), "knowledge-base", "\n".join(steps))
        except WorkflowError:
            return None
