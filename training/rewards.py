"""Reward functions for Planner RL, in trl's form: `fn(prompts, completions, **columns) -> list[float]`.

trl passes every dataset column as a keyword list aligned with `completions` (here `ticket`), plus
`completion_ids`. Both rewards are graded in [0, 1] so a group of completions almost never ties
(a reward that is always the same gives GRPO no advantage to learn from):

- `ScorerReward`: the serving Scorer's judgment (its `rank`: the mean of its five dimension scores,
  structure and grounding), mapped onto 0..1; a completion that is not a workflow gets 0.
- `workflow_format_reward`: how much of the completion is a workflow of the serving grammar, with
  credit for its structure (a decision with both branches, observe before change, distinct steps).
- `correction_reward`: for tickets an operator corrected or rejected, how closely the workflow follows the
  correction minus how closely it follows the rejected candidate (step-matched word overlap, -1..1; 0 for
  tickets without either). Used only when some training query has one.

Completions are read exactly as the serving Planner reads a sample (`core.workflow.read_workflow`
with the Planner's grammar), so a reward never disagrees with serving about what parses.
"""

from __future__ import annotations

from collections.abc import Sequence

from core.stepscore import lexical_step_f1
from core.workflow import GrammarSpec, Workflow, WorkflowError, parse_lines, read_workflow
from core.workflow.grammar import grammar_lines

MIN_STEPS, MAX_STEPS = 4, 9
SERVING_GRAMMAR = GrammarSpec()


def completion_text(completion) -> str:
    """The completion as plain text (trl gives strings, or message lists for conversational data)."""
    if isinstance(completion, list):
        completion = "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion).strip("\n")


def _truncated(ids, max_tokens: int | None) -> bool:
    return bool(max_tokens) and ids is not None and len(ids) >= max_tokens


def completion_workflow(completion, truncated: bool = False, spec: GrammarSpec = SERVING_GRAMMAR) -> Workflow | None:
    """The workflow the serving Planner would keep from this completion, or None."""
    try:
        return read_workflow(completion_text(completion), not truncated, spec)
    except WorkflowError:
        return None


def format_score(text: str, truncated: bool = False, spec: GrammarSpec = SERVING_GRAMMAR) -> float:
    """Graded validity of one Planner output, in [0, 1].

    A workflow earns 0.4, plus 0.2 for 4-9 action steps (less outside), 0.2 for a decision with both
    branches, 0.1 for observing before changing and 0.1 for the share of distinct steps, less 0.1 when
    the budget cut it and it had to be closed. A text that is not one earns up to 0.3 for the leading
    lines the grammar accepts.
    """
    wf = completion_workflow(text, truncated, spec)
    if wf is None:
        return round(0.3 * min(1.0, grammar_lines(text, spec) / MIN_STEPS), 4)
    n = len(wf.action_steps())
    count = 1.0 if MIN_STEPS <= n <= MAX_STEPS else n / MIN_STEPS if n < MIN_STEPS else MAX_STEPS / n
    texts = [" ".join(t.lower().split()) for t in wf.action_steps()]
    distinct = len(set(texts)) / len(texts) if texts else 0.0
    score = (0.4 + 0.2 * count + 0.2 * (wf.branching_decisions() > 0)
             + 0.1 * (not wf.changes_before_observing()) + 0.1 * distinct - 0.1 * truncated)
    return round(min(1.0, score), 4)


def make_format_reward(max_tokens: int | None = None, spec: GrammarSpec = SERVING_GRAMMAR):
    """The valid-workflow reward; `max_tokens` lets it treat completions that hit the limit as cut off."""

    def workflow_format_reward(prompts: Sequence | None = None, completions: Sequence = (),
                               completion_ids: Sequence | None = None, **_) -> list[float]:
        ids = completion_ids or [None] * len(completions)
        return [format_score(completion_text(c), _truncated(i, max_tokens), spec) for c, i in zip(completions, ids)]

    return workflow_format_reward


workflow_format_reward = make_format_reward()


class ScorerReward:
    """The Scorer as a reward model: its `rank` (overall 1-5 plus weighted structure and grounding) on 0..1.

    `scorer` is an `experts.scorer.Scorer` (any engine); its score calls are batched over all the
    completions of a step. Tickets come from the dataset's `ticket` column.
    """

    __name__ = "scorer_reward"  # trl logs rewards under their function names

    def __init__(self, scorer, max_tokens: int | None = None, spec: GrammarSpec = SERVING_GRAMMAR):
        self.scorer = scorer
        self.max_tokens = max_tokens
        self.spec = spec
        self.calls = 0

    def _span(self) -> tuple[float, float]:
        top = 5.0 + getattr(self.scorer, "structure_weight", 0.0) + getattr(self.scorer, "grounding_weight", 0.0)
        return 1.0, top

    def __call__(self, prompts: Sequence | None = None, completions: Sequence = (), ticket: Sequence | None = None,
                 completion_ids: Sequence | None = None, **_) -> list[float]:
        if ticket is None:
            raise ValueError("ScorerReward needs a `ticket` column in the training dataset")
        ids = completion_ids or [None] * len(completions)
        workflows = [completion_workflow(c, _truncated(i, self.max_tokens), self.spec)
                     for c, i in zip(completions, ids)]
        items = [(t, wf) for t, wf in zip(ticket, workflows) if wf is not None]
        scores = iter(self.scorer.score(items)) if items else iter(())
        self.calls += 1
        low, high = self._span()
        out = []
        for wf in workflows:
            out.append(0.0 if wf is None else round(max(0.0, (next(scores).rank - low) / (high - low)), 6))
        return out


def _reference_steps(lines: str | None) -> list[str]:
    if not lines:
        return []
    try:
        return parse_lines(lines).action_steps()
    except WorkflowError:
        return []


def make_correction_reward(max_tokens: int | None = None, spec: GrammarSpec = SERVING_GRAMMAR):
    """Reward toward a ticket's correction (`target` column) and away from its rejected candidate (`negative`)."""

    def correction_reward(prompts: Sequence | None = None, completions: Sequence = (), target: Sequence | None = None,
                          negative: Sequence | None = None, completion_ids: Sequence | None = None,
                          **_) -> list[float]:
        ids = completion_ids or [None] * len(completions)
        targets = target or [None] * len(completions)
        negatives = negative or [None] * len(completions)
        out = []
        for c, i, t, n in zip(completions, ids, targets, negatives):
            good, bad = _reference_steps(t), _reference_steps(n)
            wf = completion_workflow(c, _truncated(i, max_tokens), spec) if good or bad else None
            steps = wf.action_steps() if wf is not None else []
            out.append(round(lexical_step_f1(steps, good) - lexical_step_f1(steps, bad), 6) if steps else 0.0)
        return out

    return correction_reward
