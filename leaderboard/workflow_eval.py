"""Workflow quality: run runbook cases through the path users get and measure what comes back.

Two ways to solve a case. In process (`InProcessService`): the same stages the service runs,
classifier -> map -> the expert it picks -> Scorer (`route="live"`), or one chosen expert
(`route="expert"`), each expert with its own knowledge scope and the relevance threshold of the
config. Or a running service over HTTP (`http_solver`). Either way every case yields the chosen
workflow and what the answer said about it; the report is STEPScore P/R/F1 plus the structure and
grounding figures: unparseable samples, decisions with both branches, change steps before any
observation, budget-closed candidates, knowledge none-matched, latency.
"""

from __future__ import annotations

import json
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.config import FlowRouterConfig, KnowledgeConfig, ModelSpec
from core.embeddings import get_embedder
from core.schemas import PlanRequest
from core.stepscore import step_scores
from core.task_map import TaskMap
from core.workflow import MermaidError, Workflow, parse_mermaid, to_mermaid
from experts.engines.registry import build_engine
from experts.knowledge.build import ensure_knowledge_base
from experts.knowledge.retrieve import KnowledgeBase
from experts.planner import Planner
from experts.scorer import Scorer, best_index
from leaderboard.workflow_cases import WorkflowCase
from router.classifier import TaskClassifier
from router.doc_tasks import assigner_for
from router.examples import ExampleIndex, load_examples, load_tasks
from router.routing import get_router

# How much knowledge the Planner sees: (chunks, nodes); "service" is the config's own setting.
KNOWLEDGE_SETTINGS = {"none": (0, 0), "vector": (2, 0), "graph": (0, 2), "graph-1": (0, 1), "both": (2, 2),
                      "both-1": (1, 1), "service": None}
ROUTES = ("live", "expert")


@dataclass
class CaseResult:
    case_id: str
    steps: list[str]
    valid_mermaid: bool
    latency_s: float
    plan_s: float = 0.0
    expert: str = ""
    task: str = ""
    sampled: int = 0
    dropped: int = 0
    branching: bool = False
    change_first: bool = False
    closed_early: bool = False
    cut_steps: int = 0
    knowledge: str = "no knowledge base"
    knowledge_scope: str = "unscoped"
    own_runbook_shown: bool = False
    prompt_tokens: int = 0
    error: str | None = None


@dataclass
class EvalSummary:
    setting: str
    candidates: int
    cases: int
    precision: float
    recall: float
    f1: float
    valid_mermaid_rate: float
    latency_p50_s: float
    latency_p95_s: float
    plan_p50_s: float = 0.0
    prompt_tokens_mean: float = 0.0
    unparseable_rate: float = 0.0
    branching_rate: float = 0.0
    change_first_rate: float = 0.0
    closed_early_rate: float = 0.0
    cut_steps: int = 0
    none_matched_rate: float = 0.0
    whole_base_rate: float = 0.0
    own_runbook_shown_rate: float = 0.0
    no_knowledge_with_runbook: int = 0
    errors: int = 0
    experts: dict[str, int] = field(default_factory=dict)
    per_case: list[dict] = field(default_factory=list)


Solver = Callable[[WorkflowCase], CaseResult]


def _result_of(case: WorkflowCase, wf: Workflow, latency: float, **info) -> CaseResult:
    try:
        parsed = parse_mermaid(to_mermaid(wf))
        steps, valid = parsed.action_steps(), True
    except MermaidError as exc:
        steps, valid, info["error"] = wf.action_steps(), False, str(exc)
    return CaseResult(case.id, steps, valid, latency, branching=wf.branching_decisions() > 0,
                      change_first=bool(wf.changes_before_observing()), cut_steps=cut_steps(wf), **info)


def cut_steps(wf: Workflow) -> int:
    """Steps whose text was cut off with an ellipsis (a truncated copy of a longer step)."""
    return sum(s.text.rstrip().endswith(("…", "...")) for s in wf.steps)


def runbook_knowledge_dir(cfg: FlowRouterConfig, cases_dir: str | Path, progress: bool = True) -> str:
    """The knowledge base built from a runbook folder with the config's chunking and task filing (cached)."""
    kcfg = KnowledgeConfig(docs=[str(cases_dir)], chunk_chars=cfg.knowledge.chunk_chars)
    return str(ensure_knowledge_base(kcfg, progress=progress, assign_tasks=assigner_for(cfg)))


class InProcessService:
    """The service's stages in this process, sharing engines across settings."""

    def __init__(self, cfg: FlowRouterConfig, knowledge_dir: str | None, engines: dict | None = None):
        """`engines` (model name -> engine) replaces what would be loaded, e.g. an expert under training."""

        self.cfg = cfg
        self.kb = KnowledgeBase.open(knowledge_dir) if knowledge_dir else None
        self.engines: dict = dict(engines or {})
        self._classifier = None

    def engine(self, spec: ModelSpec):
        if spec.name not in self.engines:
            self.engines[spec.name] = build_engine(spec)
        return self.engines[spec.name]

    @property
    def classifier(self):
        if self._classifier is None:
            c = self.cfg.classifier
            index = ExampleIndex(load_examples(self.cfg.tasks.examples), get_embedder(c.embedder), c.lexical_weight)
            self._classifier = TaskClassifier(c, load_tasks(self.cfg.tasks.tasks), index, self.engine(c.model))
        return self._classifier

    def route(self, text: str) -> tuple[str, str]:
        """(task, expert) the service would choose for `text`."""

        [cls] = self.classifier.classify([text])
        return cls.task, get_router("map").route(cls.task, TaskMap.load(self.cfg.map))

    def solver(self, setting: str, candidates: int, route: str = "live", expert: str | None = None,
               exclude_own_doc: bool = False) -> Solver:

        counts = KNOWLEDGE_SETTINGS[setting] or (self.cfg.planner.context_chunks, self.cfg.planner.context_nodes)
        pcfg = self.cfg.planner.model_copy(update={"context_chunks": counts[0], "context_nodes": counts[1],
                                                   "candidates": candidates})
        retriever = self.kb if setting != "none" else None
        relevance = self.cfg.knowledge.min_relevance
        planners: dict[str, Planner] = {}

        def planner(name: str) -> Planner:
            if name not in planners:
                spec = self.cfg.expert(name)
                planners[name] = Planner(spec, self.engine(spec), pcfg, retriever, relevance)
            return planners[name]

        s = self.cfg.scorer
        scorer = Scorer(self.engine(s.model), s.dimensions, s.structure_weight, s.grounding_weight) \
            if candidates > 1 else None

        def solve(case: WorkflowCase) -> CaseResult:
            t0 = time.perf_counter()
            task, chosen = self.route(case.query) if route == "live" else ("", expert or self.cfg.experts[0].name)
            t1 = time.perf_counter()
            exclude = [case.source] if exclude_own_doc else []
            [plan] = planner(chosen).plan([PlanRequest(ticket=case.query, n=candidates, seed=0,
                                                        exclude_sources=exclude)])
            plan_s = time.perf_counter() - t1
            info = dict(plan_s=plan_s, expert=chosen, task=task, sampled=candidates, dropped=plan.dropped,
                        knowledge=plan.knowledge.status, knowledge_scope=plan.knowledge.scope,
                        own_runbook_shown=any(i.source == case.source for i in plan.knowledge.items),
                        prompt_tokens=plan.prompt_tokens)
            if not plan.candidates:
                return CaseResult(case.id, [], False, time.perf_counter() - t0, error="no candidate", **info)
            best = 0
            if scorer is not None and len(plan.candidates) > 1:
                scores = scorer.score([(case.query, c.workflow, plan.scoring) for c in plan.candidates])
                best = best_index(scores)
            chosen_c = plan.candidates[best]
            return _result_of(case, chosen_c.workflow, time.perf_counter() - t0,
                              closed_early=chosen_c.closed_early, **info)

        return solve


def http_solver(url: str, candidates: int, expert: str | None = None, timeout_s: float = 900,
                api_key: str | None = None) -> Solver:
    """A solver sending each case as a ticket to a running service (cache off: every case computes)."""
    import httpx

    headers = {"x-api-key": api_key} if api_key else {}

    def solve(case: WorkflowCase) -> CaseResult:
        title, _, rest = case.query.partition(": ")
        params = {"candidates": candidates, "cache": "false"}
        if expert:
            params["expert"] = expert
        t0 = time.perf_counter()
        try:
            r = httpx.post(f"{url}/v1/tickets", params=params, timeout=timeout_s, headers=headers,
                           json={"title": title[:500], "description": rest[:8000]})
        except httpx.HTTPError as exc:
            return CaseResult(case.id, [], False, time.perf_counter() - t0, error=str(exc))
        latency = time.perf_counter() - t0
        if r.status_code != 200:
            return CaseResult(case.id, [], False, latency, error=f"HTTP {r.status_code}: {r.text[:200]}")
        body = r.json()
        chosen = body["candidates"][body["best_index"]]
        knowledge = body.get("knowledge", {})
        info = dict(plan_s=body["timings_ms"].get("plan", 0.0) / 1000, expert=body["expert"], task=body["task"],
                    sampled=body.get("n_requested", candidates), dropped=body.get("dropped_candidates", 0),
                    closed_early=chosen.get("closed_early", False), knowledge=knowledge.get("status", "?"),
                    knowledge_scope=knowledge.get("scope", "?"),
                    own_runbook_shown=any(i.get("source") == case.source for i in knowledge.get("items", [])))
        try:
            wf = parse_mermaid(body["workflow"]["mermaid"])
        except MermaidError as exc:
            return CaseResult(case.id, [], False, latency, error=str(exc), **info)
        return _result_of(case, wf, latency, **info)

    return solve


def _pct(values: list[bool]) -> float:
    return round(100 * sum(values) / len(values), 1) if values else 0.0


def evaluate(cases: list[WorkflowCase], solve: Solver, setting: str, candidates: int, embedder=None,
             progress: bool = True, runbook_in_base: bool = True) -> EvalSummary:
    """`runbook_in_base`: each case's own runbook is in the knowledge base (not hidden), so an answer
    without knowledge is a retrieval failure."""
    results: list[CaseResult] = []
    iterator = cases
    if progress:
        from tqdm import tqdm

        iterator = tqdm(cases, desc=f"{setting} best-of-{candidates}", unit="case")
    for case in iterator:
        results.append(solve(case))
    scores = step_scores([(r.steps, c.reference_steps) for r, c in zip(results, cases)], embedder=embedder)
    lat = sorted(r.latency_s for r in results)
    plan = sorted(r.plan_s for r in results)
    per_case = [{**asdict(r), "precision": s.precision, "recall": s.recall, "f1": s.f1}
                for r, s in zip(results, scores)]
    experts: dict[str, int] = {}
    for r in results:
        experts[r.expert] = experts.get(r.expert, 0) + 1
    sampled = sum(r.sampled for r in results) or 1
    return EvalSummary(
        setting=setting, candidates=candidates, cases=len(cases),
        precision=round(statistics.fmean(s.precision for s in scores), 2),
        recall=round(statistics.fmean(s.recall for s in scores), 2),
        f1=round(statistics.fmean(s.f1 for s in scores), 2),
        valid_mermaid_rate=_pct([r.valid_mermaid for r in results]),
        latency_p50_s=round(lat[len(lat) // 2], 2),
        latency_p95_s=round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 2),
        plan_p50_s=round(plan[len(plan) // 2], 2),
        prompt_tokens_mean=round(statistics.fmean(r.prompt_tokens for r in results), 1),
        unparseable_rate=round(100 * sum(r.dropped for r in results) / sampled, 1),
        branching_rate=_pct([r.branching for r in results]),
        change_first_rate=_pct([r.change_first for r in results]),
        closed_early_rate=_pct([r.closed_early for r in results]),
        cut_steps=sum(r.cut_steps for r in results),
        none_matched_rate=_pct([r.knowledge == "none matched" for r in results]),
        whole_base_rate=_pct([r.knowledge_scope == "whole base" for r in results]),
        own_runbook_shown_rate=_pct([r.own_runbook_shown for r in results]),
        no_knowledge_with_runbook=sum(r.knowledge != "matched" for r in results) if runbook_in_base and
        setting != "none" else 0,
        errors=sum(r.error is not None for r in results),
        experts=experts, per_case=per_case,
    )


def reference_bounds(cases: list[WorkflowCase], embedder=None, seed: int = 0) -> dict[str, float]:
    """STEPScore F1 of the reference against itself (100) and against another runbook's steps (a floor)."""

    rng = random.Random(seed)
    own = step_scores([(c.reference_steps, c.reference_steps) for c in cases], embedder=embedder)
    others = []
    for i, c in enumerate(cases):
        j = rng.randrange(len(cases) - 1)
        others.append((cases[j + (j >= i)].reference_steps, c.reference_steps))
    floor = step_scores(others, embedder=embedder)
    return {"self_f1": round(statistics.fmean(s.f1 for s in own), 2),
            "random_other_f1": round(statistics.fmean(s.f1 for s in floor), 2)}


TABLE_HEAD = ("| setting | best-of | cases | P | R | F1 | valid Mermaid % | unparseable samples % | "
              "decision w/ both branches % | change before observe % | budget-closed % | steps cut with … | "
              "none matched % | "
              "scope fell back % | own runbook shown % | no knowledge though runbook in base | plan p50 s | "
              "experts |")


def table_rows(summaries: list[EvalSummary]) -> list[str]:
    rows = [TABLE_HEAD, "|" + "---|" * (TABLE_HEAD.count("|") - 1)]
    for s in summaries:
        experts = ", ".join(f"{k} {v}" for k, v in sorted(s.experts.items()))
        rows.append(f"| {s.setting} | {s.candidates} | {s.cases} | {s.precision} | {s.recall} | {s.f1} | "
                    f"{s.valid_mermaid_rate} | {s.unparseable_rate} | {s.branching_rate} | {s.change_first_rate} | "
                    f"{s.closed_early_rate} | {s.cut_steps} | {s.none_matched_rate} | {s.whole_base_rate} | "
                    f"{s.own_runbook_shown_rate} | {s.no_knowledge_with_runbook} | {s.plan_p50_s} | {experts} |")
    return rows


def write_report(summaries: list[EvalSummary], bounds: dict, out_dir: str | Path, meta: dict,
                 retrieval: list[dict] | None = None) -> Path:
    """results.json, a Markdown table and a bar chart of P/R/F1 per setting."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(
        {"meta": meta, "bounds": bounds, "retrieval": retrieval or [], "summaries": [asdict(s) for s in summaries]},
        indent=2))
    lines = table_rows(summaries)
    lines.append(f"\nReference vs itself: F1 {bounds.get('self_f1')}; a random other runbook's steps: F1 "
                 f"{bounds.get('random_other_f1')} ({summaries[0].cases if summaries else 0} cases).")
    for r in retrieval or []:
        lines.append(f"Retrieval, {r['phrasing']}-phrased tickets: hit@1 {r['hit_at_1']}%, hit@3 {r['hit_at_3']}% "
                     f"({r['cases']} cases).")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    _plot(summaries, bounds, out / "stepscore.png")
    return out


def _plot(summaries: list[EvalSummary], bounds: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{s.setting}\nN={s.candidates}" for s in summaries]
    xs = range(len(summaries))
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(summaries)), 4))
    width = 0.27
    for k, (name, attr) in enumerate([("precision", "precision"), ("recall", "recall"), ("F1", "f1")]):
        ax.bar([x + (k - 1) * width for x in xs], [getattr(s, attr) for s in summaries], width, label=name)
    if "random_other_f1" in bounds:
        ax.axhline(bounds["random_other_f1"], color="grey", linestyle="--", label="random other runbook (F1)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylim(0, 100)
    ax.set_ylabel("STEPScore")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Workflow quality by setting and best-of-N")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
