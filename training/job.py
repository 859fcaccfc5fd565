"""One expert's coevolution job: K iterations of (Planner RL epoch, Scorer DPO epoch), then its report.

    iteration 0   the serving Planner and Scorer: held-out STEPScore, Scorer agreement
    iteration i   Planner GRPO with the current Scorer as reward (from the previous Planner adapter)
                  -> the new Planner writes good / fair / poor workflows for the training queries
                  -> pairs the current Scorer does not contradict (+ operator feedback) -> Scorer DPO
                  -> agreement of the new Scorer on held-out triples (and STEPScore when asked)

Runs the same in a Ray actor (training/pool.py) or in-process (tests, `--local`). Everything is
written under a partial version folder that becomes `vNNNN/` only when the whole job succeeded.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel, Field

from core.config import FlowRouterConfig, ModelSpec
from leaderboard.workflow_cases import WorkflowCase
from training import artifacts
from training.data import ExcludingRetriever, FeedbackItem, TrainQuery, sample
from training.lora import Progress

log = logging.getLogger(__name__)


class TrainJob(BaseModel):
    """Everything one expert's job needs; plain data so it crosses into a Ray actor."""

    expert: ModelSpec = Field(description="The serving Planner expert (its adapter, if any, is the start).")
    scorer: ModelSpec = Field(description="The serving Scorer (its adapter, if any, is the start).")
    config: dict = Field(description="The FlowRouter config (JSON dump): planner, scorer and training sections.")
    iterations: int = Field(ge=1, description="Coevolution iterations.")
    queries: list[TrainQuery] = Field(description="Training queries (no references needed).")
    holdout: list[WorkflowCase] = Field(default_factory=list, description="Held-out cases for the gate.")
    feedback: list[FeedbackItem] = Field(default_factory=list, description="Operator verdicts for Scorer DPO.")
    knowledge_dir: str | None = Field(default=None, description="Knowledge base the Planner is grounded in.")
    out_root: str = Field(description="Root of versioned training output.")
    rl_steps: int | None = Field(default=None, description="Override: Planner RL steps per iteration.")
    dpo_steps: int | None = Field(default=None, description="Override: Scorer DPO steps per iteration.")
    evaluate: bool = Field(default=True, description="Measure held-out STEPScore (the gate needs it).")


def _engine(spec: ModelSpec, adapter: str | None, threads: int):
    from experts.engines.registry import build_engine

    # Training always runs transformers; the engine kind of the spec only matters for serving.
    return build_engine(spec.model_copy(update={"adapter": adapter, "threads": threads, "engine": "transformers"}))


def holdout_quality(cfg: FlowRouterConfig, expert: ModelSpec, engine, scorer_engine, knowledge_dir: str | None,
                    cases: list[WorkflowCase], candidates: int, exclude_own_doc: bool) -> dict:
    """STEPScore P/R/F1 of `engine` as `expert` on held-out cases (leaderboard.workflow_eval)."""
    from core.embeddings import shared_embedder
    from leaderboard.workflow_eval import InProcessService, evaluate

    setting = "service" if knowledge_dir else "none"
    service = InProcessService(cfg.model_copy(update={"experts": [expert]}), knowledge_dir,
                               engines={expert.name: engine, cfg.scorer.model.name: scorer_engine})
    solve = service.solver(setting, candidates, route="expert", expert=expert.name, exclude_own_doc=exclude_own_doc)
    t0 = time.perf_counter()
    s = evaluate(cases, solve, setting, candidates, embedder=shared_embedder(), progress=False)
    return {"precision": s.precision, "recall": s.recall, "f1": s.f1, "cases": s.cases,
            "valid_mermaid_rate": s.valid_mermaid_rate, "candidates": candidates, "setting": setting,
            "seconds": round(time.perf_counter() - t0, 1),
            "per_case": {c["case_id"]: round(c["f1"], 2) for c in s.per_case}}


def _summary(stage) -> dict:
    hist = stage.history
    out = {"steps": stage.steps, "seconds": stage.seconds, "seconds_per_step": stage.seconds_per_step,
           "step_seconds": [round(x, 2) for x in stage.step_seconds], "history": hist, "data": stage.data,
           "adapter": stage.adapter}
    for key in ("reward", "rewards/scorer_reward/mean", "rewards/format_reward/mean", "loss", "kl",
                "rewards/accuracies", "rewards/margins"):
        vals = [r[key] for r in hist if key in r]
        if vals:
            out[f"{key}@first"], out[f"{key}@last"] = round(vals[0], 4), round(vals[-1], 4)
    return out


def run_job(job: TrainJob | dict, progress: Progress | None = None) -> dict:
    """Train one expert; returns its metrics (also written to `<version>/metrics.json`)."""
    import torch

    from experts.planner import Planner
    from experts.scorer import Scorer
    from training.planner_rl import train_planner
    from training.scorer_dpo import agreement, feedback_rows, preference_rows, score_triples, synthesize, train_scorer

    job = TrainJob.model_validate(job)
    cfg = FlowRouterConfig.model_validate(job.config)
    tc = cfg.training
    torch.set_num_threads(tc.threads)
    progress = progress or (lambda stage, done, total: None)
    root = artifacts.expert_root(job.expert.name)
    version, partial = artifacts.reserve_version(job.out_root, root)
    final_dir = partial.with_name(f"v{version:04d}")
    t_job = time.perf_counter()
    # Knowledge scopes are tags of the service's own documents; training retrieves from the whole base.
    expert = job.expert.model_copy(update={"knowledge_scope": []})
    from experts.engines.weights import resolve_weights

    planner_weights = resolve_weights(expert.base)
    scorer_weights = resolve_weights(job.scorer.base)
    metrics: dict = {"expert": job.expert.name, "root": root, "version": version, "dir": str(final_dir),
                     "iterations_planned": job.iterations, "seed": tc.seed, "created": artifacts.utc_now(),
                     "algorithms": {"planner": tc.planner_rl.algorithm, "scorer": tc.scorer_dpo.algorithm},
                     "data": {"train_queries": len(job.queries),
                              "feedback_queries": sum(q.origin == "feedback" for q in job.queries),
                              "feedback_verdicts": len(job.feedback), "holdout_cases": len(job.holdout),
                              "holdout_ids": [c.id for c in job.holdout]},
                     "serving": {"planner_adapter": job.expert.adapter, "scorer_adapter": job.scorer.adapter},
                     "iterations": [], "libraries": artifacts.library_versions()}
    metas: list[tuple[Path, dict]] = []
    try:
        kb = None
        if job.knowledge_dir:
            from experts.knowledge.retrieve import KnowledgeBase

            kb = KnowledgeBase.open(job.knowledge_dir)
        retriever = ExcludingRetriever(kb, tc.exclude_own_doc) if kb is not None else None
        rl, dpo = tc.planner_rl, tc.scorer_dpo
        k_nodes_full = max(1, rl.context_nodes)

        def full_context(q):
            # The "good" level: the correct knowledge, the query's own runbook included.
            if retriever is None:
                return None
            return retriever.retrieve(q.text, q.source, rl.context_chunks, k_nodes_full, hide=False)

        def rl_context(q):
            if retriever is None or (rl.context_chunks == 0 and rl.context_nodes == 0):
                return None
            return retriever.retrieve(q.text, q.source, rl.context_chunks, rl.context_nodes)

        synth_cfg = cfg.planner.model_copy(update={"max_new_tokens": dpo.generation_tokens})
        planner_adapter, scorer_adapter = job.expert.adapter, job.scorer.adapter
        progress("loading models", 0, 1)
        planner_engine = _engine(expert, planner_adapter, tc.threads)
        scorer_engine = _engine(job.scorer, scorer_adapter, tc.threads)
        scorer = Scorer(scorer_engine, cfg.scorer.dimensions, cfg.scorer.structure_weight, cfg.scorer.grounding_weight)

        # ---- iteration 0: what serves now ------------------------------------------------------
        held_queries = [TrainQuery(id=c.id, text=c.query, source=c.source)
                        for c in sample(job.holdout, tc.gate.agreement_queries, tc.seed)]
        progress("held-out triples", 0, 1)
        held_triples = synthesize(Planner(expert, planner_engine, synth_cfg), held_queries, full_context,
                                  rl.context_chunks, k_nodes_full, seed=tc.seed)
        it0: dict = {"iteration": 0, "agreement": agreement(score_triples(scorer, held_triples))}
        if job.evaluate and job.holdout:
            progress("evaluate serving", 0, 1)
            it0["holdout"] = holdout_quality(cfg, expert, planner_engine, scorer_engine, job.knowledge_dir,
                                             job.holdout, tc.gate.candidates, tc.exclude_own_doc)
        metrics["iterations"].append(it0)

        for i in range(1, job.iterations + 1):
            tag = f"iteration {i}/{job.iterations}"
            it: dict = {"iteration": i}
            # ---- Planner RL ---------------------------------------------------------------------
            planner = Planner(expert, planner_engine, cfg.planner)
            rows = [{"prompt": planner.prompt(q.text, rl_context(q)), "ticket": q.text} for q in job.queries]
            planner_engine.close()
            del planner_engine, planner
            stage = train_planner(weights=planner_weights, init_adapter=planner_adapter,
                                  out_dir=partial / f"iter-{i}" / "planner", rows=rows, scorer=scorer, cfg=rl,
                                  seed=tc.seed + i, steps=job.rl_steps, progress=progress,
                                  stage=f"{tag} planner RL")
            it["rl"] = _summary(stage)
            metas.append((Path(stage.adapter), {
                "kind": "planner", "expert": job.expert.name, "root": root, "base": expert.base,
                "parent_adapter": planner_adapter, "iteration": i, "version": version,
                "algorithm": rl.algorithm, "config": rl.model_dump(), "seed": tc.seed + i,
                "data": {"queries": len(rows), "query_ids": [q.id for q in job.queries]},
                "metrics": {k: v for k, v in it["rl"].items() if "@" in k or k in ("steps", "seconds_per_step")}}))
            planner_adapter = stage.adapter
            planner_engine = _engine(expert, planner_adapter, tc.threads)

            # ---- Scorer DPO ---------------------------------------------------------------------
            progress(f"{tag} synthesize pairs", 0, 1)
            triples = synthesize(Planner(expert, planner_engine, synth_cfg), job.queries, full_context,
                                 rl.context_chunks, k_nodes_full, seed=tc.seed + i)
            before = score_triples(scorer, triples)
            prefs, counts = preference_rows(triples, before, scorer_engine, cfg.scorer.dimensions, dpo)
            fb = feedback_rows(job.feedback, scorer_engine, cfg.scorer.dimensions, dpo) if tc.feedback else []
            counts.update({"train_agreement_before": agreement(before), "feedback_rows": len(fb),
                           "preference_rows": len(prefs)})
            if prefs or fb:
                stage = train_scorer(weights=scorer_weights, init_adapter=scorer_adapter,
                                     out_dir=partial / f"iter-{i}" / "scorer", rows=prefs + fb, cfg=dpo,
                                     seed=tc.seed + i, steps=job.dpo_steps, progress=progress,
                                     stage=f"{tag} scorer DPO")
                it["dpo"] = {**_summary(stage), "pairs": counts}
                metas.append((Path(stage.adapter), {
                    "kind": "scorer", "expert": job.expert.name, "root": root, "base": job.scorer.base,
                    "parent_adapter": scorer_adapter, "iteration": i, "version": version,
                    "algorithm": dpo.algorithm, "config": dpo.model_dump(), "seed": tc.seed + i,
                    "data": {**counts, **stage.data},
                    "metrics": {k: v for k, v in it["dpo"].items() if "@" in k or k in ("steps", "seconds_per_step")}}))
                scorer_adapter = stage.adapter
                scorer_engine.close()
                scorer_engine = _engine(job.scorer, scorer_adapter, tc.threads)
                scorer = Scorer(scorer_engine, cfg.scorer.dimensions, cfg.scorer.structure_weight, cfg.scorer.grounding_weight)
            else:
                it["dpo"] = {"skipped": "no preference rows: the Scorer contradicted every pair and there is "
                                        "no feedback", "pairs": counts, "steps": 0}
            it["agreement"] = agreement(score_triples(scorer, held_triples))
            if job.evaluate and job.holdout and (tc.gate.eval_every_iteration or i == job.iterations):
                progress(f"{tag} evaluate", 0, 1)
                it["holdout"] = holdout_quality(cfg, expert, planner_engine, scorer_engine, job.knowledge_dir,
                                                job.holdout, tc.gate.candidates, tc.exclude_own_doc)
            metrics["iterations"].append(it)
            for _adapter, meta in metas:
                if meta["iteration"] == i:
                    meta["metrics"].update({"holdout_f1": (it.get("holdout") or {}).get("f1"),
                                            "agreement": it["agreement"]})
        planner_engine.close()
        scorer_engine.close()

        # ---- result ------------------------------------------------------------------------------
        last = metrics["iterations"][-1]
        metrics["candidate"] = {"planner_adapter": planner_adapter, "scorer_adapter": scorer_adapter,
                                "f1": (last.get("holdout") or {}).get("f1"), "agreement": last["agreement"]}
        metrics["serving"].update({"f1": (it0.get("holdout") or {}).get("f1"), "agreement": it0["agreement"]})
        metrics["seconds"] = round(time.perf_counter() - t_job, 1)
        metrics["status"] = "ok"
        old, new = str(partial), str(final_dir)
        for path, meta in metas:
            meta = artifacts.rebase_paths(meta, old, new)
            meta.update({"created": artifacts.utc_now(), "libraries": metrics["libraries"]})
            artifacts.write_metadata(path, meta)
        metrics = artifacts.rebase_paths(metrics, old, new)
        (partial / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        artifacts.plot_report(metrics, partial / "report.png")
        metrics["report"] = str(final_dir / "report.png")
        artifacts.finish(partial, ok=True)
        return metrics
    except BaseException as exc:
        metrics.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                       seconds=round(time.perf_counter() - t_job, 1))
        try:
            (partial / "error.txt").write_text(traceback.format_exc())
            (partial / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
            artifacts.finish(partial, ok=False)
        except OSError:
            log.exception("could not record the failed run in %s", partial)
        raise


def run_job_payload(payload: dict, progress: Callable | None = None) -> dict:
    """Entry point for pool workers (a module-level function: picklable by reference)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run_job(TrainJob.model_validate(payload), progress)
