"""Stage 4: the Scorer rates a workflow 1-5 on FlowXpert's five dimensions, against the knowledge.

Each dimension's score is the expected value of the judge's next-token distribution over the digits
1-5 (not free text, which small models do not produce reliably), so scores are continuous and
comparable across candidates. The judge sees the knowledge the Planner was given: FlowXpert's
relevance is consistency with the retrieved context. Structure counts too, measured on the graph
rather than asked of the judge: a decision with both branches, a reachable terminal, nothing
changed before anything is observed. And grounding, the STEPScore of the candidate against the
retrieved reference workflow. Best-of-N maximises `rank` = overall + weights * (structure, grounding).
"""

from __future__ import annotations

from core.embeddings import shared_embedder
from core.schemas import Scores, ScoringContext
from core.stepscore import step_scores
from core.workflow import Workflow, WorkflowError, render_lines
from experts.engines.base import Engine
from experts.prompts import SCORER_SYSTEM, scorer_user_message

LABELS = [" 1", " 2", " 3", " 4", " 5"]


def structure_score(workflow: Workflow) -> float:
    """0-1: 0.4 for a decision whose branches differ, 0.2 each for a terminal every step reaches, for
    observing before changing, and for not repeating steps (the share of distinct step texts)."""
    try:
        workflow.validate_graph()
        reachable = 1.0
    except WorkflowError:
        reachable = 0.0
    branching = 1.0 if workflow.branching_decisions() else 0.0
    observed = 0.0 if workflow.changes_before_observing() else 1.0
    texts = [" ".join(t.lower().split()) for t in workflow.action_steps()]
    distinct = len(set(texts)) / len(texts) if texts else 0.0
    return round(0.4 * branching + 0.2 * reachable + 0.2 * observed + 0.2 * distinct, 4)


def grounding_score(workflow: Workflow, reference_steps: list[str], embedder) -> float | None:
    """STEPScore F1 (0-1) of the workflow's steps against the retrieved reference workflow's, or None
    without one: FlowXpert's relevance as consistency with the retrieved context, measured."""
    if not reference_steps:
        return None
    return round(step_scores([(workflow.action_steps(), reference_steps)], embedder=embedder)[0].f1 / 100, 4)


def workflow_text(workflow: Workflow) -> str:
    """The workflow as the judge reads it: the line form the Planner writes."""
    try:
        return render_lines(workflow)
    except WorkflowError:  # a workflow from elsewhere whose steps jump: numbered text with branches
        return workflow.to_text()


class Scorer:
    def __init__(self, engine: Engine, dimensions: list[str], structure_weight: float = 0.5,
                 grounding_weight: float = 1.0, embedder=None):
        self.engine = engine
        self.dimensions = dimensions
        self.structure_weight = structure_weight
        self.grounding_weight = grounding_weight
        self._embedder = embedder

    @property
    def embedder(self):
        if self._embedder is None:
            self._embedder = shared_embedder()
        return self._embedder

    def prompts(self, ticket: str, workflow: Workflow, context: str = "") -> list[str]:
        text = workflow_text(workflow)
        return [self.engine.format_prompt(SCORER_SYSTEM, scorer_user_message(ticket, text, d, context),
                                          assistant_prefix="Score:") for d in self.dimensions]

    def score(self, items: list[tuple[str, Workflow] | tuple[str, Workflow, ScoringContext]]) -> list[Scores]:
        """Scores for (ticket, workflow[, context]) items; all dimensions of all items in one engine call."""
        items = [(it[0], it[1], it[2] if len(it) > 2 else ScoringContext()) for it in items]
        prompts = [p for ticket, wf, ctx in items for p in self.prompts(ticket, wf, ctx.text)]
        dists = self.engine.label_probs(prompts, LABELS)
        out = []
        k = len(self.dimensions)
        for i, (_, wf, ctx) in enumerate(items):
            values = {}
            for dim, dist in zip(self.dimensions, dists[i * k:(i + 1) * k]):
                values[dim] = round(sum((j + 1) * dist[lab] for j, lab in enumerate(LABELS)), 4)
            overall = round(sum(values.values()) / len(values), 4)
            structure = structure_score(wf)
            grounding = grounding_score(wf, ctx.reference_steps, self.embedder) if self.grounding_weight else None
            rank = overall + self.structure_weight * structure + self.grounding_weight * (grounding or 0.0)
            out.append(Scores(**values, overall=overall, structure=structure, grounding=grounding,
                              rank=round(rank, 4)))
        return out


def best_index(scores: list[Scores]) -> int:
    """Highest rank; ties go to the earlier candidate (the greedy one first, deterministic)."""
    return max(range(len(scores)), key=lambda i: (scores[i].rank, -i))
