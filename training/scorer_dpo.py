"""Scorer DPO: synthesized good / fair / poor workflows, consistency-validated pairs, one epoch of DPO.

For each training query the Planner writes one workflow (greedy) with three levels of knowledge:
the retrieved knowledge in its correct order (good), the same knowledge read backwards (fair), and
none (poor). Each workflow pair (g>f, g>p, f>p) is checked against the current Scorer: a pair the
Scorer already ranks the other way is discarded as likely mislabelled (a fair workflow can be as
good as a good one when the Planner ignored the knowledge).

The Scorer is a pointwise judge (one prompt per ticket, workflow and dimension, answered by one
digit), so a pair of workflows becomes two DPO rows on that judge's own prompts, anchored at the
levels' digits (good 5, fair 3, poor 1): on the better workflow's prompt the better level's digit
is chosen over the worse one's, on the worse workflow's prompt the reverse. Raising one and lowering
the other is exactly what moves the expected scores apart in the right order. Operator feedback
joins as rows of the same form: an accepted workflow prefers 5 over 1, a rejected one 1 over 5.
Each pair trains `dimensions_per_pair` of the five dimensions, cycled so all are covered.
"""

from __future__ import annotations

import gc
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from core.schemas import PlanRequest
from core.training_config import LoraSettings, PlannerCorrectionsConfig, ScorerDPOConfig
from core.workflow import Workflow
from experts.prompts import SCORER_SYSTEM, scorer_user_message
from experts.scorer import workflow_text
from training.data import LEVEL_SCORE, LEVELS, PAIRS, FeedbackItem, reversed_context
from training.lora import Progress, common_args, load_tokenizer, recorder, train_and_save, trainable_model
from training.planner_rl import StageResult


@dataclass
class Triple:
    """One query's workflows at the three knowledge levels (None where nothing parseable came out)."""

    query: str
    workflows: dict[str, Workflow | None] = field(default_factory=dict)
    query_id: str = ""

    def complete_pairs(self) -> list[tuple[str, str]]:
        return [(a, b) for a, b in PAIRS if self.workflows.get(a) is not None and self.workflows.get(b) is not None]


def synthesize(planner, queries: list, retrieve, k_chunks: int, k_nodes: int, seed: int = 0) -> list[Triple]:
    """Good / fair / poor workflows per query from `planner` (an experts.planner.Planner, greedy).

    `retrieve(query) -> RetrievedContext` gives the full, correctly ordered knowledge (the query's own
    runbook included); `queries` are TrainQuery-like (text, id).
    """
    out = []
    for q in queries:
        full = retrieve(q)
        if full is not None and not full.nodes and not full.chunks:
            full = None
        contexts = [full, reversed_context(full), None]
        plans = planner.plan([PlanRequest(ticket=q.text, n=1, seed=seed)] * 3, contexts=contexts)
        wfs = {}
        for level, plan in zip(LEVELS, plans):
            wfs[level] = plan.candidates[0].workflow if plan.candidates else None
        if full is None:
            wfs["good"] = wfs["fair"] = None  # no knowledge to order: no good/fair level
        out.append(Triple(query=q.text, workflows=wfs, query_id=getattr(q, "id", "")))
    return out


def score_triples(scorer, triples: list[Triple]) -> list[dict[str, float]]:
    """Overall Scorer score (1-5) of every workflow in every triple, batched in one call."""
    items, where = [], []
    for i, t in enumerate(triples):
        for level in LEVELS:
            wf = t.workflows.get(level)
            if wf is not None:
                items.append((t.query, wf))
                where.append((i, level))
    out: list[dict[str, float]] = [{} for _ in triples]
    for (i, level), s in zip(where, scorer.score(items) if items else []):
        out[i][level] = s.overall
    return out


def agreement(scores: list[dict[str, float]]) -> dict:
    """How often the Scorer orders workflows like their knowledge levels (good > fair > poor).

    pairwise: share of the comparable pairs ranked in the level order (ties count half);
    full_order: share of complete triples ranked entirely in order.
    """
    right = total = 0.0
    full = complete = 0
    for s in scores:
        ok_all = True
        for a, b in PAIRS:
            if a in s and b in s:
                total += 1
                right += 1.0 if s[a] > s[b] else 0.5 if s[a] == s[b] else 0.0
                ok_all &= s[a] > s[b]
        if all(level in s for level in LEVELS):
            complete += 1
            full += int(ok_all)
    return {"pairwise": round(right / total, 4) if total else None, "full_order": round(full / complete, 4)
            if complete else None, "pairs": int(total), "triples": complete}


def _prompt(engine, ticket: str, workflow: Workflow, dimension: str) -> str:
    return engine.format_prompt(SCORER_SYSTEM, scorer_user_message(ticket, workflow_text(workflow), dimension),
                                assistant_prefix="Score:")


def preference_rows(triples: list[Triple], scores: list[dict[str, float]], engine, dimensions: list[str],
                    cfg: ScorerDPOConfig) -> tuple[list[dict], dict]:
    """DPO rows from consistency-validated pairs, and counts (pairs, discarded, rows)."""
    rows, kept, discarded, k = [], 0, 0, 0
    for t, s in zip(triples, scores):
        for better, worse in t.complete_pairs():
            reversed_by = s.get(worse, 0.0) - s.get(better, 0.0)
            if reversed_by > 0 and reversed_by >= cfg.consistency_margin:
                discarded += 1
                continue
            kept += 1
            hi, lo = f" {LEVEL_SCORE[better]}", f" {LEVEL_SCORE[worse]}"
            for j in range(cfg.dimensions_per_pair):
                dim = dimensions[(k + j) % len(dimensions)]
                rows.append({"prompt": _prompt(engine, t.query, t.workflows[better], dim), "chosen": hi,
                             "rejected": lo, "kind": f"{better}>{worse}", "dimension": dim})
                rows.append({"prompt": _prompt(engine, t.query, t.workflows[worse], dim), "chosen": lo,
                             "rejected": hi, "kind": f"{worse}<{better}", "dimension": dim})
            k += cfg.dimensions_per_pair
    return rows, {"pairs": kept + discarded, "kept_pairs": kept, "discarded_pairs": discarded}


def feedback_rows(items: list[FeedbackItem], engine, dimensions: list[str], cfg: ScorerDPOConfig) -> list[dict]:
    """Operator verdicts as DPO rows: accepted prefers 5 over 1, rejected (and a corrected candidate) 1 over 5, an
    operator's correction 5 over 1 (not validated: an operator's verdict is the label)."""
    judged = []
    for f in items:
        judged.append((f.ticket, f.workflow, f.verdict == "accept", f"feedback:{f.verdict}"))
        if f.verdict == "edit" and f.correction:
            judged.append((f.ticket, f.correction, True, "feedback:correction"))
    rows, k = [], 0
    for ticket, workflow, good, kind in judged:
        try:
            wf = Workflow.model_validate(workflow).validate_graph()
        except Exception:
            continue
        for j in range(cfg.dimensions_per_pair):
            dim = dimensions[(k + j) % len(dimensions)]
            rows.append({"prompt": _prompt(engine, ticket, wf, dim), "chosen": " 5" if good else " 1",
                         "rejected": " 1" if good else " 5", "kind": kind, "dimension": dim})
        k += cfg.dimensions_per_pair
    return rows


def dpo_steps(n_rows: int, cfg: ScorerDPOConfig | PlannerCorrectionsConfig, steps: int | None) -> int:
    if steps:
        return steps
    if cfg.steps:
        return cfg.steps
    return max(1, math.ceil(n_rows / cfg.batch_size))


def train_scorer(*, weights: str | Path, init_adapter: str | None, out_dir: str | Path, rows: list[dict],
                 cfg: ScorerDPOConfig | PlannerCorrectionsConfig, seed: int, steps: int | None = None,
                 progress: Progress | None = None, stage: str = "scorer DPO", loss_type: tuple[str, ...] = ("sigmoid",),
                 loss_weights: tuple[float, ...] | None = None, lora: LoraSettings | None = None) -> StageResult:
    """One epoch of DPO on `rows` ({prompt, chosen, rejected}); saves the adapter to `out_dir`.

    The Scorer's stage; the Planner's corrections stage uses it too, with an SFT loss beside the DPO loss
    (`loss_type`, `loss_weights`) and the Planner's LoRA settings (`lora`, default `cfg.lora`)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    if not rows:
        raise ValueError("Scorer DPO has no preference rows (every pair was discarded and there is no feedback)")
    tok = load_tokenizer(weights)
    # Rows are never truncated (the end of a Scorer prompt is the question being answered): longer
    # rows are left out and counted.
    fits = [r for r in rows
            if len(tok(r["prompt"] + max(r["chosen"], r["rejected"], key=len))["input_ids"]) + 2 <= cfg.max_length]
    if not fits:
        raise ValueError(f"every {stage} row is longer than max_length={cfg.max_length} tokens")
    too_long, rows = len(rows) - len(fits), fits
    total = dpo_steps(len(rows), cfg, steps)
    model = trainable_model(weights, init_adapter, lora or cfg.lora, seed)
    rec = recorder(stage, total, progress)
    data = Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]}
                              for r in rows])
    with tempfile.TemporaryDirectory(prefix="dpo-") as tmp:
        args = DPOConfig(**common_args(tmp, seed, total, cfg),
                         per_device_train_batch_size=cfg.batch_size, beta=cfg.beta, max_length=cfg.max_length,
                         truncation_mode="keep_start", loss_type=list(loss_type),
                         loss_weights=list(loss_weights) if loss_weights else None)
        trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=[rec])
        seconds = train_and_save(trainer, out_dir)
    del trainer, model
    gc.collect()
    kinds: dict[str, int] = {}
    for r in rows:
        kind = r.get("kind", "other")
        kinds[kind] = kinds.get(kind, 0) + 1
    return StageResult(adapter=str(out_dir), steps=total, seconds=round(seconds, 2), history=rec.rows,
                       step_seconds=rec.step_seconds, data={"rows": len(rows), "too_long": too_long,
                                                            "kinds": kinds})
