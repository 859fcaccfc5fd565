"""`flowrouter train`: plan one job per expert, run them on the actor pool, gate, optionally publish.

    cases  -> train / held-out split (hash of the case id)
    train  -> queries (+ accepted, corrected and rejected tickets from operator feedback, + a query file)
    feedback -> corrections as Planner targets and pairs (training/job.py), verdicts as Scorer rows
    jobs   -> training/pool.py (Ray actors) or in-process
    result -> gate per expert (training/gate.py) -> publish to the live service when asked

The serving cluster is only touched in the publish step, after every job has finished and only for
adapters that won their gate; a failed job leaves the cluster and its map exactly as they were.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.config import FlowRouterConfig, KnowledgeConfig
from core.paths import cache_dir, shared_data_dir
from experts.knowledge.build import ensure_knowledge_base
from leaderboard.workflow_cases import DEFAULT_CASES, load_runbook_cases
from training import data as tdata
from training.artifacts import expert_root, utc_now
from training.gate import GateDecision, Publisher, PublishReport, decide, publish, serving_spec
from training.job import TrainJob, run_job_payload
from training.pool import JobOutcome, run_local, run_pool

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot start (no cases, unknown expert, no service to publish to)."""


@dataclass
class TrainOptions:
    iterations: int = 1
    max_queries: int | None = None
    query_file: str | None = None
    rl_steps: int | None = None
    dpo_steps: int | None = None
    out_root: str | None = None
    local: bool = False
    address: str | None = None
    evaluate: bool = True
    show_progress: bool = True
    connect: Callable | None = None  # joins a Ray cluster at `address` (cluster.ray_connect.connect_ray)


@dataclass
class TrainReport:
    out_root: str
    outcomes: dict[str, dict] = field(default_factory=dict)
    decisions: list[dict] = field(default_factory=list)
    published: dict | None = None
    summary_file: str | None = None


def cases_dir(cfg: FlowRouterConfig) -> Path:
    return Path(cfg.training.cases) if cfg.training.cases else shared_data_dir() / DEFAULT_CASES


def plan_jobs(cfg: FlowRouterConfig, experts: list[str], opts: TrainOptions, live_map=None,
              feedback_rows: list[dict] | None = None, build_knowledge: bool = True) -> list[TrainJob]:
    """One TrainJob per expert name: its serving spec, the data split, queries and feedback. Without
    `build_knowledge` the jobs carry no knowledge base (a plan to look at, not to run)."""

    tc = cfg.training
    specs = {}
    for name in experts:
        try:
            specs[name] = serving_spec(cfg, live_map, name)
        except KeyError:
            raise TrainingError(f"no expert {name!r} in the config; have {[e.name for e in cfg.experts]}") from None
    folder = cases_dir(cfg)
    if not folder.is_dir():
        raise TrainingError(f"runbook folder not found: {folder} (set training.cases)")
    cases = load_runbook_cases(folder)
    if len(cases) < 2:
        raise TrainingError(f"{folder} yields {len(cases)} runbook case(s); training needs at least 2")
    train_cases, held = tdata.split_cases(cases, tc.gate.holdout_fraction, tc.seed)
    held = tdata.sample(held, tc.gate.holdout_limit, tc.seed)
    base_queries = tdata.sample(tdata.case_queries(train_cases), opts.max_queries or tc.max_queries, tc.seed)
    if opts.query_file:
        base_queries += tdata.read_query_file(opts.query_file)
    knowledge_dir = None
    if build_knowledge:
        docs = tc.knowledge_docs or [str(folder)]
        knowledge_dir = str(ensure_knowledge_base(KnowledgeConfig(docs=docs), progress=opts.show_progress))
    feedback = []
    if tc.feedback and feedback_rows:
        feedback = tdata.read_feedback(feedback_rows)
    # Operators' corrections (AOI's corrective signal): Planner targets, pairs and RL reward, Scorer rows.
    examples = tdata.planner_examples(feedback)
    out_root = opts.out_root or tc.output_dir or str(cache_dir() / "training")
    jobs = []
    for name in experts:
        spec = specs[name]
        family = {e.name for e in cfg.experts if expert_root(e.name) == expert_root(spec.name)}
        queries = base_queries + tdata.feedback_queries(feedback, spec.name, family) + \
            tdata.correction_queries(examples, spec.name, family)
        jobs.append(TrainJob(expert=spec, scorer=cfg.scorer.model, config=cfg.model_dump(mode="json",
                                                                                            exclude={"source"}),
                             iterations=opts.iterations, queries=queries, holdout=held, feedback=feedback,
                             corrections=tdata.correction_pairs(examples, spec.name, family),
                             knowledge_dir=knowledge_dir, out_root=out_root, rl_steps=opts.rl_steps,
                             dpo_steps=opts.dpo_steps, evaluate=opts.evaluate))
    return jobs


def describe_jobs(jobs: list[TrainJob]) -> list[dict]:
    """What each planned job trains on, as `flowrouter train --dry-run` shows it: where its queries come
    from, the held-out cases, the operator verdicts its Scorer rows come from, and each correction pair
    (the operator's workflow over the candidate it replaced) with its RL query."""
    out = []
    for job in jobs:
        origins: dict[str, int] = {}
        for q in job.queries:
            origins[q.origin] = origins.get(q.origin, 0) + 1
        verdicts: dict[str, int] = {}
        for f in job.feedback:
            verdicts[f.verdict] = verdicts.get(f.verdict, 0) + 1
        rl = {q.id: q for q in job.queries if q.origin == "correction"}
        out.append({
            "expert": job.expert.name, "queries": origins, "holdout": [c.id for c in job.holdout],
            "feedback_verdicts": verdicts,
            "corrections": [{"ticket_id": e.ticket_id, "kind": e.kind, "chosen": e.chosen, "rejected": e.rejected,
                             "rl_query": f"ticket:{e.ticket_id}" in rl} for e in job.corrections],
            "negatives": [q.id for q in rl.values() if q.target is None and q.negative is not None],
        })
    return out


Runner = Callable[[list[tuple[str, dict]], FlowRouterConfig, TrainOptions], dict[str, JobOutcome]]


def default_runner(jobs: list[tuple[str, dict]], cfg: FlowRouterConfig, opts: TrainOptions) -> dict[str, JobOutcome]:
    if opts.local:
        return run_local(jobs, run_job_payload, show_progress=opts.show_progress)
    tc = cfg.training
    return run_pool(jobs, run_job_payload, num_cpus=tc.num_cpus_per_job, num_gpus=tc.num_gpus_per_job,
                    threads=tc.threads, address=opts.address, show_progress=opts.show_progress,
                    connect=opts.connect)


def train(cfg: FlowRouterConfig, experts: list[str], opts: TrainOptions, *, publisher: Publisher | None = None,
          runner: Runner | None = None, feedback_rows: list[dict] | None = None) -> TrainReport:
    """Train `experts`, gate each against what serves, publish winners when a publisher is given."""
    if not experts:
        raise TrainingError("name at least one expert to train")
    live_cfg, live_map = cfg, None
    if publisher is not None:
        live_cfg = publisher.live_config()
        live_map = publisher.current_map()
        live_cfg.training = cfg.training  # the training settings come from the config given to train
    jobs = plan_jobs(live_cfg, experts, opts, live_map, feedback_rows)
    outcomes = (runner or default_runner)([(j.expert.name, j.model_dump(mode="json")) for j in jobs], live_cfg,
                                          opts)
    decisions: list[GateDecision] = []
    for job in jobs:
        out = outcomes.get(job.expert.name)
        metrics = out.result if out is not None and out.ok else {"status": "failed",
                                                                  "error": out.error if out else "not run"}
        decisions.append(decide(job.expert, metrics, cfg.training.gate.min_improvement))
    report = TrainReport(out_root=jobs[0].out_root,
                         outcomes={n: {"ok": o.ok, "seconds": o.seconds, "error": o.error,
                                       "dir": (o.result or {}).get("dir") if o.ok else None,
                                       "report": (o.result or {}).get("report") if o.ok else None}
                                   for n, o in outcomes.items()},
                         decisions=[d.as_dict() for d in decisions])
    if publisher is not None:
        if all(not o.ok for o in outcomes.values()):
            report.published = asdict(PublishReport(note="every training job failed: nothing was published"))
        else:
            report.published = asdict(publish(decisions, publisher))
    runs = Path(report.out_root) / "runs"
    runs.mkdir(parents=True, exist_ok=True)

    path = runs / f"{utc_now().replace(':', '')}-{'-'.join(experts)[:60]}.json"
    path.write_text(json.dumps({"experts": experts, "options": asdict(opts), **asdict(report)}, indent=2,
                               default=str))
    report.summary_file = str(path)
    return report
