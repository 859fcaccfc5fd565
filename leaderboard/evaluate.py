"""Evaluating one expert (a ModelSpec behind an Engine) on evaluation items.

How each item kind is answered and scored (score in [0, 1], averaged per task = CoE-Ops eq. 4):

- MC: one forward pass. The prompt lists the question and lettered options and ends with
  "Answer:"; `engine.label_probs` gives the distribution over the option letters as the next
  token. Single-answer items take the argmax. Multi-answer items (the prompt says more than one
  option is correct) take the top k when the question states k ("Choose two"), otherwise every
  option with probability >= `mc_threshold` x the top one (see `metrics.choose_letters`). The
  first-letter distribution ranks options by how readily the model names them; the relative
  threshold keeps every option the model rates close to its favourite. Exact set match scores 1.
  The distribution is stored with each result, so a different rule can be re-scored offline.
- Free text: greedy generation, then MiniLM cosine similarity to the reference (clipped to [0, 1]).
- Workflow: `plan_fn(query) -> list[str]` writes the steps (inject the real planner; the default
  asks the engine for a numbered list and parses it with `core.workflow.parse_step_list`), scored
  by STEPScore F1 (precision and recall are kept in `detail`).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field

from core.config import ModelSpec
from core.workflow import parse_step_list
from experts.engines.base import Engine, SamplingParams
from leaderboard.metrics import choose_letters, classification_report, cosine_scores, mc_correct, workflow_scores
from leaderboard.tasksets import FreeTextItem, MCItem, WorkflowItem

PlanFn = Callable[[str], list[str]]
SimilarityFn = Callable[[Sequence[str], Sequence[str]], list[float]]

MC_INSTRUCTION = "Answer with the letter of the correct option."
MC_MULTI_INSTRUCTION = "More than one option is correct. Answer with the letters of all correct options."
FREE_TEXT_INSTRUCTION = "Answer the question concisely."
PLAN_INSTRUCTION = "Write the troubleshooting steps for this incident as a numbered list, one short step per line."


@dataclass(frozen=True)
class EvalSettings:
    """Everything besides the expert and the item that changes a score; part of the results key."""

    mc_threshold: float = 0.5
    max_new_tokens: int = 128
    repetition_penalty: float = 1.1
    plan_max_new_tokens: int = 192
    batch_size: int = 4

    def key(self) -> str:
        scoring = {k: v for k, v in asdict(self).items() if k != "batch_size"}
        return hashlib.sha256(json.dumps(scoring, sort_keys=True).encode()).hexdigest()[:8]


@dataclass
class ItemResult:
    item_id: str
    task: str
    kind: str
    score: float
    correct: bool | None
    prediction: str
    reference: str
    latency_s: float
    detail: dict = field(default_factory=dict)


# ---- prompts ---------------------------------------------------------------------------------
def mc_user_text(item: MCItem) -> str:
    options = "\n".join(f"{k}. {v}" for k, v in item.options.items())
    instruction = MC_MULTI_INSTRUCTION if item.multi else MC_INSTRUCTION
    return f"{item.question}\n\n{options}\n\n{instruction}"


def mc_prompt(engine: Engine, spec: ModelSpec, item: MCItem) -> str:
    return engine.format_prompt(spec.system_prompt, mc_user_text(item), assistant_prefix="Answer:")


def free_text_prompt(engine: Engine, spec: ModelSpec, item: FreeTextItem) -> str:
    return engine.format_prompt(spec.system_prompt, f"{item.question}\n\n{FREE_TEXT_INSTRUCTION}")


def default_plan_fn(engine: Engine, spec: ModelSpec, settings: EvalSettings = EvalSettings()) -> PlanFn:
    """A minimal planner: greedy numbered steps from the expert, parsed by parse_step_list."""

    def plan(query: str) -> list[str]:
        prompt = engine.format_prompt(spec.system_prompt, f"Incident:\n{query}\n\n{PLAN_INSTRUCTION}",
                                      assistant_prefix="1.")
        out = engine.generate([prompt], SamplingParams(max_new_tokens=settings.plan_max_new_tokens,
                                                       repetition_penalty=settings.repetition_penalty))
        return parse_step_list("1." + out[0].texts[0])

    return plan


# ---- sampling --------------------------------------------------------------------------------
def sample_items(items: Iterable, max_items: int | None, seed: int = 0) -> list:
    """At most `max_items` items per task: per task, items ranked by sha256(f"{seed}:{id}"), first
    `max_items` kept; tasks in name order. Deterministic, independent of input order, and nested (raising `max_items`
    keeps every item chosen before, so earlier results stay reusable). None keeps all items."""
    by_task: dict[str, list] = {}
    for it in items:
        by_task.setdefault(it.task, []).append(it)
    out = []
    for task in sorted(by_task):
        ranked = sorted(by_task[task], key=lambda i: hashlib.sha256(f"{seed}:{i.id}".encode()).hexdigest())
        out.extend(ranked if max_items is None else ranked[:max_items])
    return out


# ---- evaluation ------------------------------------------------------------------------------
def evaluate_items(
    engine: Engine,
    spec: ModelSpec,
    items: Sequence,
    *,
    settings: EvalSettings = EvalSettings(),
    plan_fn: PlanFn | None = None,
    similarity_fn: SimilarityFn | None = None,
) -> Iterator[list[ItemResult]]:
    """Evaluate `items` with one expert, yielding results batch by batch (for checkpointing).

    Items are batched by kind (MC items also by option letters, as `label_probs` takes one label
    set per call) in input order within each group. Exceptions from the engine propagate: the
    caller keeps what was yielded before.
    """
    mc = [i for i in items if isinstance(i, MCItem)]
    free = [i for i in items if isinstance(i, FreeTextItem)]
    flows = [i for i in items if isinstance(i, WorkflowItem)]
    groups: dict[tuple[str, ...], list[MCItem]] = {}
    for i in mc:
        groups.setdefault(tuple(i.options), []).append(i)
    bs = max(1, settings.batch_size)
    for letters, group in groups.items():
        for start in range(0, len(group), bs):
            yield _eval_mc(engine, spec, group[start:start + bs], list(letters), settings)
    for start in range(0, len(free), bs):
        yield _eval_free(engine, spec, free[start:start + bs], settings, similarity_fn)
    if flows:
        plan = plan_fn or default_plan_fn(engine, spec, settings)
        for item in flows:
            yield [_eval_workflow(plan, item)]


def evaluate_expert(engine: Engine, spec: ModelSpec, items: Sequence, **kwargs) -> list[ItemResult]:
    """All results of `evaluate_items` as one list."""
    return [r for batch in evaluate_items(engine, spec, items, **kwargs) for r in batch]


def _eval_mc(engine, spec, batch: list[MCItem], letters: list[str], settings) -> list[ItemResult]:
    t0 = time.perf_counter()
    prompts = [mc_prompt(engine, spec, i) for i in batch]
    labels = [f" {k}" for k in letters]
    dists = engine.label_probs(prompts, labels)
    per = (time.perf_counter() - t0) / len(batch)
    out = []
    for item, dist in zip(batch, dists):
        probs = {k.strip(): float(v) for k, v in dist.items()}
        chosen = choose_letters(probs, item.multi, item.n_stated, settings.mc_threshold)
        ok = mc_correct(chosen, item.answer)
        out.append(ItemResult(item.id, item.task, "mc", float(ok), ok, ",".join(chosen), ",".join(item.answer),
                              per, {"probs": {k: round(v, 5) for k, v in probs.items()}, "multi": item.multi,
                                    "n_stated": item.n_stated}))
    return out


def _eval_free(engine, spec, batch: list[FreeTextItem], settings, similarity_fn) -> list[ItemResult]:
    t0 = time.perf_counter()
    prompts = [free_text_prompt(engine, spec, i) for i in batch]
    gens = engine.generate(prompts, SamplingParams(max_new_tokens=settings.max_new_tokens,
                                                   repetition_penalty=settings.repetition_penalty))
    texts = [g.texts[0].strip() for g in gens]
    refs = [i.reference for i in batch]
    sims = (similarity_fn or cosine_scores)(texts, refs)
    per = (time.perf_counter() - t0) / len(batch)
    return [ItemResult(i.id, i.task, "free_text", float(s), None, t, i.reference, per,
                       {"tokens": (g.tokens or [None])[0]})
            for i, t, s, g in zip(batch, texts, sims, gens)]


def _eval_workflow(plan: PlanFn, item: WorkflowItem) -> ItemResult:
    t0 = time.perf_counter()
    steps = [str(s) for s in plan(item.query)]
    s = workflow_scores(steps, item.reference_steps)
    return ItemResult(item.id, item.task, "workflow", s.f1, None, json.dumps(steps, ensure_ascii=False),
                      json.dumps(item.reference_steps, ensure_ascii=False), time.perf_counter() - t0,
                      {"precision": s.precision, "recall": s.recall, "f1": s.f1, "steps": len(steps)})


# ---- classifier ------------------------------------------------------------------------------
def evaluate_classifier(classify: Callable[[list[str]], list[str]], queries: Sequence, labels: Sequence[str],
                        batch_size: int = 16):
    """Classification report of `classify(texts) -> task names` (or `unknown`) on labeled queries
    (e.g. a task set's holdout). The classifier itself is injected."""
    preds: list[str] = []
    texts = [q.text for q in queries]
    for start in range(0, len(texts), batch_size):
        preds.extend(classify(texts[start:start + batch_size]))
    return classification_report([q.task for q in queries], preds, labels)
