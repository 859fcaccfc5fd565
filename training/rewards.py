"""Reward functions for Planner RL, in trl's form: `fn(prompts, completions, **columns) -> list[float]`.

trl passes every dataset column as a keyword list aligned with `completions` (here `ticket`), plus
`completion_ids`. Both rewards are graded in [0, 1] so a group of completions almost never ties
(a reward that is always the same gives GRPO no advantage to learn from):

- `ScorerReward`: the Scorer's sentence-level judgment, the mean of its five dimension scores
  (each an expected value over the digits 1-5), mapped from 1..5 to 0..1; a completion that does
  not parse into a workflow gets 0.
- `workflow_format_reward`: whether the completion is a valid, parseable workflow of the shape the
  service wants (4 to 8 short steps, nothing rambling after the list), with partial credit.

A completion is what the Planner wrote after the prompt's "1.", so the text is re-prefixed before
parsing and cut at the Planner's stop strings, exactly as the serving path does.
"""

from __future__ import annotations

from typing import Sequence

from core.workflow import Workflow, WorkflowError, parse_step_list, workflow_from_steps
from experts.planner import ASSISTANT_PREFIX, STOP

MIN_STEPS, MAX_STEPS = 4, 8
LONG_STEP_WORDS = 25


def completion_text(completion) -> str:
    """The completion as plain text (trl gives strings, or message lists for conversational data)."""
    if isinstance(completion, list):
        completion = "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    text = str(completion)
    cut = len(text)
    for s in STOP:
        k = text.find(s)
        if k != -1:
            cut = min(cut, k)
    return ASSISTANT_PREFIX + text[:cut]


def _truncated(ids, max_tokens: int | None) -> bool:
    return bool(max_tokens) and ids is not None and len(ids) >= max_tokens


def completion_workflow(completion, truncated: bool = False, max_steps: int = 10) -> Workflow | None:
    """The workflow the serving Planner would keep from this completion, or None."""
    steps = parse_step_list(completion_text(completion), max_steps=max_steps, truncated=truncated)
    if len(steps) < 2:
        return None
    try:
        return workflow_from_steps(steps)
    except WorkflowError:
        return None


def format_score(text: str, truncated: bool = False) -> float:
    """Graded validity of one Planner output (already prefixed with "1."), in [0, 1].

    0.4 for a valid workflow (at least two parseable steps), up to 0.3 for the step count (full
    inside 4-8, less for fewer or more), up to 0.2 for short steps, up to 0.1 for how much of the
    text is the list (rambling after it, loops, prose lose this part). 1 parseable step earns 0.1.
    """
    steps = parse_step_list(text, max_steps=30, truncated=truncated)
    if not steps:
        return 0.0
    if len(steps) < 2:
        return 0.1
    try:
        workflow_from_steps(steps)
    except WorkflowError:
        return 0.1
    n = len(steps)
    score = 0.4
    if n < MIN_STEPS:
        score += 0.3 * n / MIN_STEPS
    elif n <= MAX_STEPS:
        score += 0.3
    else:
        score += 0.3 * max(0.0, 1 - (n - MAX_STEPS) / MAX_STEPS)
    short = sum(len(s.split()) <= LONG_STEP_WORDS for s in steps) / n
    score += 0.2 * short
    lines = [x for x in text.splitlines() if x.strip()]
    if truncated and lines:
        lines = lines[:-1]
    score += 0.1 * min(1.0, n / max(1, len(lines)))
    return round(min(1.0, score), 4)


def make_format_reward(max_tokens: int | None = None):
    """The valid-workflow reward; `max_tokens` lets it treat completions that hit the limit as cut off."""

    def workflow_format_reward(prompts: Sequence | None = None, completions: Sequence = (),
                               completion_ids: Sequence | None = None, **_) -> list[float]:
        ids = completion_ids or [None] * len(completions)
        return [format_score(completion_text(c), _truncated(i, max_tokens)) for c, i in zip(completions, ids)]

    return workflow_format_reward


workflow_format_reward = make_format_reward()


class ScorerReward:
    """The Scorer as a reward model: mean of the five dimension scores, 1..5 mapped to 0..1.

    `scorer` is an `experts.scorer.Scorer` (any engine); its score calls are batched over all the
    completions of a step. Tickets come from the dataset's `ticket` column.
    """

    __name__ = "scorer_reward"  # trl logs rewards under their function names

    def __init__(self, scorer, max_tokens: int | None = None, max_steps: int = 10):
        self.scorer = scorer
        self.max_tokens = max_tokens
        self.max_steps = max_steps
        self.calls = 0

    def __call__(self, prompts: Sequence | None = None, completions: Sequence = (), ticket: Sequence | None = None,
                 completion_ids: Sequence | None = None, **_) -> list[float]:
        if ticket is None:
            raise ValueError("ScorerReward needs a `ticket` column in the training dataset")
        ids = completion_ids or [None] * len(completions)
        workflows = [completion_workflow(c, _truncated(i, self.max_tokens), self.max_steps)
                     for c, i in zip(completions, ids)]
        items = [(t, wf) for t, wf in zip(ticket, workflows) if wf is not None]
        scores = iter(self.scorer.score(items)) if items else iter(())
        self.calls += 1
        out = []
        for wf in workflows:
            out.append(0.0 if wf is None else round((next(scores).overall - 1.0) / 4.0, 6))
        return out

