"""Stage 4: the Scorer rates a workflow 1-5 on FlowXpert's five dimensions.

Each dimension's score is the expected value of the judge's next-token distribution over the digits
1-5 (not free text, which small models do not produce reliably), so scores are continuous and
comparable across candidates. The overall score is the mean of the dimensions.
"""

from __future__ import annotations

from core.schemas import Scores
from core.workflow import Workflow
from experts.engines.base import Engine
from experts.prompts import SCORER_SYSTEM, scorer_user_message

LABELS = [" 1", " 2", " 3", " 4", " 5"]


class Scorer:
    def __init__(self, engine: Engine, dimensions: list[str]):
        self.engine = engine
        self.dimensions = dimensions

    def prompts(self, ticket: str, workflow: Workflow) -> list[str]:
        text = workflow.to_text()
        return [self.engine.format_prompt(SCORER_SYSTEM, scorer_user_message(ticket, text, d),
                                          assistant_prefix="Score:") for d in self.dimensions]

    def score(self, items: list[tuple[str, Workflow]]) -> list[Scores]:
        """Scores for (ticket, workflow) pairs; all dimensions of all pairs in one engine call."""
        prompts = [p for ticket, wf in items for p in self.prompts(ticket, wf)]
        dists = self.engine.label_probs(prompts, LABELS)
        out = []
        k = len(self.dimensions)
        for i in range(len(items)):
            values = {}
            for dim, dist in zip(self.dimensions, dists[i * k:(i + 1) * k]):
                values[dim] = round(sum((j + 1) * dist[lab] for j, lab in enumerate(LABELS)), 4)
            overall = round(sum(values.values()) / len(values), 4)
            out.append(Scores(**values, overall=overall))
        return out


def best_index(scores: list[Scores]) -> int:
    """Highest overall; ties go to the earlier candidate (deterministic)."""
    return max(range(len(scores)), key=lambda i: (scores[i].overall, -i))
