"""One expert's coevolution job: K iterations of (Planner RL epoch, Scorer DPO epoch), then its report.

    iteration 0   the serving Planner and Scorer: held-out STEPScore, Scorer agreement
    iteration i   (operators' corrections, when there are any) Planner DPO + SFT on them
                  Planner GRPO with the current Scorer as reward (from the previous Planner adapter; tickets
                  operators corrected or rejected add a reward toward the correction, away from the rejected one)
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

import experts.planner  # noqa: F401
import experts.scorer  # noqa: F401
from core.config import FlowRouterConfig, ModelSpec
from core.embeddings import shared_embedder
from core.training_config import TrainingConfig
from experts.engines.registry import build_engine
from experts.engines.weights import resolve_weights
from experts.knowledge.retrieve import KnowledgeBase
from experts.planner import Planner
from experts.scorer import Scorer
from leaderboard.workflow_cases import WorkflowCase
from leaderboard.workflow_eval import InProcessService, evaluate
from training import artifacts
from training.data import ExcludingRetriever, FeedbackItem, PlannerExample, TrainQuery, sample
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
    corrections: list[PlannerExample] = Field(default_factory=list, description="Operators' corrections over the "
                                              "candidates they replaced: Planner SFT targets and DPO pairs.")
    knowledge_dir: str | None = Field(default=None, description="Knowledge base the Planner is grounded in.")
    out_root: str = Field(description="Root of versioned training output.")
    rl_steps: int | None = Field(default=None, description="Override: Planner RL steps per iteration.")
    dpo_steps: int | None = Field(default=None, description="Override: Scorer DPO steps per iteration.")
    evaluate: bool = Field(default=True, description="Measure held-out STEPScore (the gate needs it).")


def _engine(spec: ModelSpec, adapter: str | None, threads: int):
    # Training always runs transformers; the engine kind of the spec only matters for serving.
    return build_engine(spec.model_copy(update={"adapter": adapter, "threads": threads, "engine": "transformers"}))


def holdout_quality(cfg: FlowRouterConfig, expert: ModelSpec, engine, scorer_engine, knowledge_dir: str | None,
                    cases: list[WorkflowCase], candidates: int, exclude_own_doc: bool) -> dict:
    """STEPScore P/R/F1 of `engine` as `expert` on held-out cases (leaderboard.workflow_eval)."""

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


def _stage_metrics(summary: dict) -> dict:
    """The part of a stage summary that goes into the adapter's metadata: first/last values and step counts."""
    return {k: v for k, v in summary.items() if "@" in k or k in ("steps", "seconds_per_step")}


def _initial_metrics(job: TrainJob, tc: TrainingConfig, root: str, version: int, final_dir: Path) -> dict:
    """The metrics a job starts with: what is trained, on which data, from which serving adapters."""
    return {"expert": job.expert.name, "root": root, "version": version, "dir": str(final_dir),
            "iterations_planned": job.iterations, "seed": tc.seed, "created": artifacts.utc_now(),
            "algorithms": {"planner": tc.planner_rl.algorithm, "scorer": tc.scorer_dpo.algorithm},
            "data": {"train_queries": len(job.queries),
                     "feedback_queries": sum(q.origin == "feedback" for q in job.queries),
                     "feedback_verdicts": len(job.feedback),
                     "correction_queries": sum(q.origin == "correction" for q in job.queries),
                     "correction_pairs": len(job.corrections), "holdout_cases": len(job.holdout),
                     "holdout_ids": [c.id for c in job.holdout]},
            "serving": {"planner_adapter": job.expert.adapter, "scorer_adapter": job.scorer.adapter},
            "iterations": [], "libraries": artifacts.library_versions()}


def _import_training_libraries() -> None:
    """Import torch and the trainers up front, so a missing one fails before a version is reserved."""
    import torch  # noqa: F401

    import training.planner_rl  # noqa: F401
    import training.scorer_dpo  # noqa: F401


class _JobRun:
    """One job in progress: its settings, version folder, loaded models and the metrics so far.

    The methods are the stages of `run_job`, in the order it calls them.
    """

    def __init__(self, job: TrainJob, progress: Progress | None):
        """Reserve the next version folder, resolve both models' weights and start the metrics."""
        import torch

        self.job = job
        self.cfg = FlowRouterConfig.model_validate(job.config)
        self.tc = self.cfg.training
        self.rl, self.dpo = self.tc.planner_rl, self.tc.scorer_dpo
        torch.set_num_threads(self.tc.threads)
        self.progress = progress or (lambda stage, done, total: None)
        self.root = artifacts.expert_root(job.expert.name)
        self.version, self.partial = artifacts.reserve_version(job.out_root, self.root)
        self.final_dir = self.partial.with_name(f"v{self.version:04d}")
        self.t_job = time.perf_counter()
        # Knowledge scopes are tags of the service's own documents; training retrieves from the whole base.
        self.expert = job.expert.model_copy(update={"knowledge_scope": []})

        self.planner_weights = resolve_weights(self.expert.base)
        self.scorer_weights = resolve_weights(job.scorer.base)
        self.metrics: dict = _initial_metrics(job, self.tc, self.root, self.version, self.final_dir)
        self.metas: list[tuple[Path, dict]] = []

    # ---- data ------------------------------------------------------------------------------------
    def open_knowledge(self) -> None:
        """Open the knowledge base the Planner is grounded in (no retrieval without `knowledge_dir`)."""
        kb = None
        if self.job.knowledge_dir:
            kb = KnowledgeBase.open(self.job.knowledge_dir)
        self.retriever = ExcludingRetriever(kb, self.tc.exclude_own_doc) if kb is not None else None
        self.k_nodes_full = max(1, self.rl.context_nodes)

    def full_context(self, q: TrainQuery):
        """The "good" level: the correct knowledge, the query's own runbook included."""
        if self.retriever is None:
            return None
        return self.retriever.retrieve(q.text, q.source, self.rl.context_chunks, self.k_nodes_full, hide=False)

    def rl_context(self, q: TrainQuery):
        """The Planner's context during RL (its own runbook hidden when `exclude_own_doc`); None without RL context."""
        if self.retriever is None or (self.rl.context_chunks == 0 and self.rl.context_nodes == 0):
            return None
        return self.retriever.retrieve(q.text, q.source, self.rl.context_chunks, self.rl.context_nodes)

    # ---- models ----------------------------------------------------------------------------------
    def load_models(self) -> None:
        """Load the serving Planner and Scorer (with their adapters, if any): the starting point."""
        self.synth_cfg = self.cfg.planner.model_copy(update={"max_new_tokens": self.dpo.generation_tokens})
        self.planner_adapter, self.scorer_adapter = self.job.expert.adapter, self.job.scorer.adapter
        self.progress("loading models", 0, 1)
        self.planner_engine = _engine(self.expert, self.planner_adapter, self.tc.threads)
        self.scorer_engine = _engine(self.job.scorer, self.scorer_adapter, self.tc.threads)
        self.scorer = self._scorer()

    def _scorer(self):
        """The Scorer on the currently loaded Scorer engine."""

        sc = self.cfg.scorer
        return Scorer(self.scorer_engine, sc.dimensions, sc.structure_weight, sc.grounding_weight)

    def _synth_planner(self):
        """The current Planner with the token budget for synthesizing good / fair / poor workflows."""

        return Planner(self.expert, self.planner_engine, self.synth_cfg)

    def _holdout_quality(self) -> dict:
        """Held-out STEPScore of the currently loaded Planner and Scorer."""
        return holdout_quality(self.cfg, self.expert, self.planner_engine, self.scorer_engine, self.job.knowledge_dir,
                               self.job.holdout, self.tc.gate.candidates, self.tc.exclude_own_doc)

    def close_models(self) -> None:
        """Release both engines once the last iteration is done."""
        self.planner_engine.close()
        self.scorer_engine.close()

    # ---- iteration 0 -----------------------------------------------------------------------------
    def sample_held_out(self) -> None:
        """Synthesize the held-out triples every iteration's Scorer agreement is measured on."""
        from training.scorer_dpo import synthesize

        held_queries = [TrainQuery(id=c.id, text=c.query, source=c.source)
                        for c in sample(self.job.holdout, self.tc.gate.agreement_queries, self.tc.seed)]
        self.progress("held-out triples", 0, 1)
        self.held_triples = synthesize(self._synth_planner(), held_queries, self.full_context,
                                       self.rl.context_chunks, self.k_nodes_full, seed=self.tc.seed)

    def evaluate_serving(self) -> None:
        """Iteration 0: the serving models' Scorer agreement and (when asked) held-out STEPScore."""
        from training.scorer_dpo import agreement, score_triples

        it0: dict = {"iteration": 0, "agreement": agreement(score_triples(self.scorer, self.held_triples))}
        if self.job.evaluate and self.job.holdout:
            self.progress("evaluate serving", 0, 1)
            it0["holdout"] = self._holdout_quality()
        self.metrics["iterations"].append(it0)

    # ---- iteration i -----------------------------------------------------------------------------
    def coevolve(self, i: int) -> None:
        """Iteration i: the corrections stage (when operators corrected tickets), Planner RL, then Scorer DPO,
        then the gate's measurements of both."""
        tag = f"iteration {i}/{self.job.iterations}"
        it: dict = {"iteration": i}
        if self.job.corrections and self.tc.planner_corrections.enabled:
            it["corrections"] = self.train_corrections(i, tag)
        it["rl"] = self.train_planner(i, tag)
        it["dpo"] = self.train_scorer(i, tag)
        self.evaluate_iteration(it, tag)
        self.metrics["iterations"].append(it)
        self.attach_gate_metrics(it)

    def train_corrections(self, i: int, tag: str) -> dict:
        """Operators' corrections on the Planner's own prompts: DPO (correction over the candidate it replaced) plus
        SFT on the correction, from the previous Planner adapter; reload it."""
        from training.scorer_dpo import train_scorer

        cc = self.tc.planner_corrections
        planner = Planner(self.expert, self.planner_engine, self.cfg.planner)
        rows = [{"prompt": planner.prompt(e.ticket, self.rl_context(TrainQuery(id=e.ticket_id, text=e.ticket))),
                 "chosen": e.chosen, "rejected": e.rejected, "kind": f"correction:{e.kind}"}
                for e in self.job.corrections]
        self.planner_engine.close()
        del planner
        self.planner_engine = None
        stage = train_scorer(weights=self.planner_weights, init_adapter=self.planner_adapter,
                             out_dir=self.partial / f"iter-{i}" / "planner-corrections", rows=rows, cfg=cc,
                             seed=self.tc.seed + i, steps=cc.steps, progress=self.progress,
                             stage=f"{tag} planner corrections", loss_type=("sigmoid", "sft"),
                             loss_weights=(1.0, cc.sft_weight), lora=self.rl.lora)
        summary = _summary(stage)
        self.metas.append((Path(stage.adapter), {
            "kind": "planner-corrections", "expert": self.job.expert.name, "root": self.root,
            "base": self.expert.base, "parent_adapter": self.planner_adapter, "iteration": i,
            "version": self.version, "algorithm": "dpo+sft", "config": cc.model_dump(), "seed": self.tc.seed + i,
            "data": {"pairs": len(rows), "tickets": [e.ticket_id for e in self.job.corrections], **stage.data},
            "metrics": _stage_metrics(summary)}))
        self.planner_adapter = stage.adapter
        self.planner_engine = _engine(self.expert, self.planner_adapter, self.tc.threads)
        return summary

    def train_planner(self, i: int, tag: str) -> dict:
        """Planner GRPO with the current Scorer as reward, from the previous Planner adapter; reload it."""
        from training.planner_rl import train_planner

        planner = Planner(self.expert, self.planner_engine, self.cfg.planner)
        rows = [{"prompt": planner.prompt(q.text, self.rl_context(q)), "ticket": q.text} for q in self.job.queries]
        if any(q.target or q.negative for q in self.job.queries):  # the correction reward's columns
            for row, q in zip(rows, self.job.queries):
                row.update(target=q.target or "", negative=q.negative or "")
        # Training loads its own copy of the weights: drop the serving one first.
        self.planner_engine.close()
        del planner
        self.planner_engine = None
        stage = train_planner(weights=self.planner_weights, init_adapter=self.planner_adapter,
                              out_dir=self.partial / f"iter-{i}" / "planner", rows=rows, scorer=self.scorer,
                              cfg=self.rl, seed=self.tc.seed + i, steps=self.job.rl_steps, progress=self.progress,
                              stage=f"{tag} planner RL",
                              correction_weight=self.tc.planner_corrections.reward_weight)
        summary = _summary(stage)
        self.metas.append((Path(stage.adapter), {
            "kind": "planner", "expert": self.job.expert.name, "root": self.root, "base": self.expert.base,
            "parent_adapter": self.planner_adapter, "iteration": i, "version": self.version,
            "algorithm": self.rl.algorithm, "config": self.rl.model_dump(), "seed": self.tc.seed + i,
            "data": {"queries": len(rows), "query_ids": [q.id for q in self.job.queries]},
            "metrics": _stage_metrics(summary)}))
        self.planner_adapter = stage.adapter
        self.planner_engine = _engine(self.expert, self.planner_adapter, self.tc.threads)
        return summary

    def preference_pairs(self, i: int, tag: str) -> tuple[list[dict], dict]:
        """DPO rows: the new Planner's workflow pairs the current Scorer does not contradict, plus
        operator feedback; with their counts."""
        from training.scorer_dpo import agreement, feedback_rows, preference_rows, score_triples, synthesize

        self.progress(f"{tag} synthesize pairs", 0, 1)
        triples = synthesize(self._synth_planner(), self.job.queries, self.full_context,
                             self.rl.context_chunks, self.k_nodes_full, seed=self.tc.seed + i)
        before = score_triples(self.scorer, triples)
        dims = self.cfg.scorer.dimensions
        prefs, counts = preference_rows(triples, before, self.scorer_engine, dims, self.dpo)
        fb = feedback_rows(self.job.feedback, self.scorer_engine, dims, self.dpo) if self.tc.feedback else []
        counts.update({"train_agreement_before": agreement(before), "feedback_rows": len(fb),
                       "preference_rows": len(prefs)})
        return prefs + fb, counts

    def train_scorer(self, i: int, tag: str) -> dict:
        """Scorer DPO on this iteration's preference rows (skipped without any); reload the Scorer."""
        from training.scorer_dpo import train_scorer

        rows, counts = self.preference_pairs(i, tag)
        if not rows:
            return {"skipped": "no preference rows: the Scorer contradicted every pair and there is "
                               "no feedback", "pairs": counts, "steps": 0}
        stage = train_scorer(weights=self.scorer_weights, init_adapter=self.scorer_adapter,
                             out_dir=self.partial / f"iter-{i}" / "scorer", rows=rows, cfg=self.dpo,
                             seed=self.tc.seed + i, steps=self.job.dpo_steps, progress=self.progress,
                             stage=f"{tag} scorer DPO")
        summary = {**_summary(stage), "pairs": counts}
        self.metas.append((Path(stage.adapter), {
            "kind": "scorer", "expert": self.job.expert.name, "root": self.root, "base": self.job.scorer.base,
            "parent_adapter": self.scorer_adapter, "iteration": i, "version": self.version,
            "algorithm": self.dpo.algorithm, "config": self.dpo.model_dump(), "seed": self.tc.seed + i,
            "data": {**counts, **stage.data},
            "metrics": _stage_metrics(summary)}))
        self.scorer_adapter = stage.adapter
        self.scorer_engine.close()
        self.scorer_engine = _engine(self.job.scorer, self.scorer_adapter, self.tc.threads)
        self.scorer = self._scorer()
        return summary

    def evaluate_iteration(self, it: dict, tag: str) -> None:
        """The new Scorer's held-out agreement and, on the iterations the gate asks for, held-out STEPScore."""
        from training.scorer_dpo import agreement, score_triples

        i = it["iteration"]
        it["agreement"] = agreement(score_triples(self.scorer, self.held_triples))
        if self.job.evaluate and self.job.holdout and (self.tc.gate.eval_every_iteration or i == self.job.iterations):
            self.progress(f"{tag} evaluate", 0, 1)
            it["holdout"] = self._holdout_quality()

    def attach_gate_metrics(self, it: dict) -> None:
        """Copy the iteration's held-out F1 and agreement into the metadata of the adapters it trained."""
        for _adapter, meta in self.metas:
            if meta["iteration"] == it["iteration"]:
                meta["metrics"].update({"holdout_f1": (it.get("holdout") or {}).get("f1"),
                                        "agreement": it["agreement"]})

    # ---- result ----------------------------------------------------------------------------------
    def record_candidate(self) -> None:
        """Put the last iteration (the candidate) next to iteration 0 (what serves) for the gate."""
        metrics = self.metrics
        it0, last = metrics["iterations"][0], metrics["iterations"][-1]
        metrics["candidate"] = {"planner_adapter": self.planner_adapter, "scorer_adapter": self.scorer_adapter,
                                "f1": (last.get("holdout") or {}).get("f1"), "agreement": last["agreement"]}
        metrics["serving"].update({"f1": (it0.get("holdout") or {}).get("f1"), "agreement": it0["agreement"]})
        metrics["seconds"] = round(time.perf_counter() - self.t_job, 1)
        metrics["status"] = "ok"

    def write_outputs(self) -> dict:
        """Write the adapters' metadata, metrics.json and report.png with paths in the final folder,
        then rename the partial folder to it; the metrics."""
        old, new = str(self.partial), str(self.final_dir)
        for path, meta in self.metas:
            meta = artifacts.rebase_paths(meta, old, new)
            meta.update({"created": artifacts.utc_now(), "libraries": self.metrics["libraries"]})
            artifacts.write_metadata(path, meta)
        self.metrics = metrics = artifacts.rebase_paths(self.metrics, old, new)
        (self.partial / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        artifacts.plot_report(metrics, self.partial / "report.png")
        metrics["report"] = str(self.final_dir / "report.png")
        artifacts.finish(self.partial, ok=True)
        return metrics

    def record_failure(self, exc: BaseException) -> None:
        """Keep a failed run as `vNNNN.failed/` with its traceback and the metrics so far."""
        self.metrics.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                            seconds=round(time.perf_counter() - self.t_job, 1))
        try:
            (self.partial / "error.txt").write_text(traceback.format_exc())
            (self.partial / "metrics.json").write_text(json.dumps(self.metrics, indent=2, default=str))
            artifacts.finish(self.partial, ok=False)
        except OSError:
            log.exception("could not record the failed run in %s", self.partial)


def run_job(job: TrainJob | dict, progress: Progress | None = None) -> dict:
    """Train one expert; returns its metrics (also written to `<version>/metrics.json`)."""
    _import_training_libraries()
    run = _JobRun(TrainJob.model_validate(job), progress)
    try:
        run.open_knowledge()
        run.load_models()
        run.sample_held_out()
        run.evaluate_serving()
        for i in range(1, run.job.iterations + 1):
            run.coevolve(i)
        run.close_models()
        run.record_candidate()
        return run.write_outputs()
    except BaseException as exc:
        run.record_failure(exc)
        raise


def run_job_payload(payload: dict, progress: Callable | None = None) -> dict:
    """Entry point for pool workers (a module-level function: picklable by reference)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return run_job(TrainJob.model_validate(payload), progress)
