"""Workflow quality: run evaluation cases through a Planner (+ Scorer) and measure STEPScore.

Two ways to solve a case: in-process (a Planner and a Scorer built from a config, with the knowledge
base switched between none / vector chunks / graph nodes / both), or through a live service over
HTTP. Either way every case yields the returned workflow's steps, whether its Mermaid parsed, and
the latency; the report is STEPScore P/R/F1, the valid-Mermaid rate and latency percentiles.
"""

from __future__ import annotations

import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from core.config import FlowRouterConfig, ModelSpec
from core.stepscore import step_scores
from core.workflow import MermaidError, parse_mermaid
from leaderboard.workflow_cases import WorkflowCase

# How much knowledge the Planner sees: (chunks, nodes).
KNOWLEDGE_SETTINGS = {"none": (0, 0), "vector": (2, 0), "graph": (0, 2), "both": (2, 2)}


@dataclass
class CaseResult:
    case_id: str
    steps: list[str]
    valid_mermaid: bool
    latency_s: float
    origin: str = "model"
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
    knowledge_fallback_rate: float = 0.0
    errors: int = 0
    per_case: list[dict] = field(default_factory=list)


Solver = Callable[[WorkflowCase], CaseResult]


class _ExcludeSource:
    """Retriever wrapper hiding the case's own runbook (held-out evaluation)."""

    def __init__(self, kb):
        self.kb = kb
        self.source: str | None = None

    def retrieve(self, query, scope=None, k_chunks=3, k_nodes=2):
        if self.source is None:
            return self.kb.retrieve(query, scope=scope, k_chunks=k_chunks, k_nodes=k_nodes)
        ctx = self.kb.retrieve(query, scope=scope, k_chunks=k_chunks + 4 if k_chunks else 0,
                               k_nodes=k_nodes + 2 if k_nodes else 0)
        ctx.chunks = [c for c in ctx.chunks if c.source != self.source][:k_chunks]
        ctx.nodes = [n for n in ctx.nodes if self.source not in n.sources][:k_nodes]
        return ctx


def in_process_solver(cfg: FlowRouterConfig, expert: ModelSpec, knowledge_dir: str | None, setting: str,
                      candidates: int, exclude_own_doc: bool = False, engines: dict | None = None) -> Solver:
    """A solver running the Planner (and the Scorer for N > 1) in this process."""
    from experts.engines.registry import build_engine
    from experts.planner import Planner
    from experts.scorer import Scorer, best_index

    engines = engines if engines is not None else {}
    chunks, nodes = KNOWLEDGE_SETTINGS[setting]
    pcfg = cfg.planner.model_copy(update={"context_chunks": chunks, "context_nodes": nodes,
                                          "candidates": candidates})
    retriever = None
    if knowledge_dir and setting != "none":
        from experts.knowledge.retrieve import KnowledgeBase

        retriever = _ExcludeSource(KnowledgeBase.open(knowledge_dir))
    if expert.name not in engines:
        engines[expert.name] = build_engine(expert)
    planner = Planner(expert, engines[expert.name], pcfg, retriever)
    scorer = None
    if candidates > 1:
        key = "scorer:" + cfg.scorer.model.name
        if key not in engines:
            engines[key] = build_engine(cfg.scorer.model)
        scorer = Scorer(engines[key], cfg.scorer.dimensions)

    def solve(case: WorkflowCase) -> CaseResult:
        if retriever is not None:
            retriever.source = case.source if exclude_own_doc else None
        t0 = time.perf_counter()
        [plan] = planner.plan([case.query], n=candidates, seed=0)
        if not plan.candidates:
            return CaseResult(case.id, [], False, time.perf_counter() - t0, error="no parseable candidate")
        best = 0
        if scorer is not None and len(plan.candidates) > 1:
            scores = scorer.score([(case.query, c.workflow) for c in plan.candidates])
            best = best_index(scores)
        chosen = plan.candidates[best]
        latency = time.perf_counter() - t0
        try:
            parsed = parse_mermaid(chosen.workflow.to_mermaid())
            return CaseResult(case.id, parsed.action_steps(), True, latency, chosen.origin)
        except MermaidError as exc:
            return CaseResult(case.id, chosen.workflow.action_steps(), False, latency, chosen.origin, str(exc))

    return solve


def http_solver(url: str, candidates: int, expert: str | None = None, timeout_s: float = 900) -> Solver:
    """A solver sending each case as a ticket to a running service."""
    import httpx

    def solve(case: WorkflowCase) -> CaseResult:
        title, _, rest = case.query.partition(": ")
        params = {"candidates": candidates}
        if expert:
            params["expert"] = expert
        t0 = time.perf_counter()
        try:
            r = httpx.post(f"{url}/v1/tickets", params=params, timeout=timeout_s,
                           json={"title": title[:500], "description": rest[:8000]})
        except httpx.HTTPError as exc:
            return CaseResult(case.id, [], False, time.perf_counter() - t0, error=str(exc))
        latency = time.perf_counter() - t0
        if r.status_code != 200:
            return CaseResult(case.id, [], False, latency, error=f"HTTP {r.status_code}: {r.text[:200]}")
        body = r.json()
        try:
            parsed = parse_mermaid(body["workflow"]["mermaid"])
            origin = body["candidates"][body["best_index"]].get("origin", "model")
            return CaseResult(case.id, parsed.action_steps(), True, latency, origin)
        except MermaidError as exc:
            return CaseResult(case.id, [], False, latency, error=str(exc))

    return solve


def evaluate(cases: list[WorkflowCase], solve: Solver, setting: str, candidates: int, embedder=None,
             progress: bool = True) -> EvalSummary:
    results: list[CaseResult] = []
    iterator = cases
    if progress:
        from tqdm import tqdm

        iterator = tqdm(cases, desc=f"{setting} best-of-{candidates}", unit="case")
    for case in iterator:
        results.append(solve(case))
    scores = step_scores([(r.steps, c.reference_steps) for r, c in zip(results, cases)], embedder=embedder)
    lat = sorted(r.latency_s for r in results)
    per_case = [
        {**asdict(r), "precision": s.precision, "recall": s.recall, "f1": s.f1}
        for r, s in zip(results, scores)
    ]
    return EvalSummary(
        setting=setting, candidates=candidates, cases=len(cases),
        precision=round(statistics.fmean(s.precision for s in scores), 2),
        recall=round(statistics.fmean(s.recall for s in scores), 2),
        f1=round(statistics.fmean(s.f1 for s in scores), 2),
        valid_mermaid_rate=round(100 * sum(r.valid_mermaid for r in results) / len(results), 1),
        latency_p50_s=round(lat[len(lat) // 2], 2),
        latency_p95_s=round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 2),
        knowledge_fallback_rate=round(100 * sum(r.origin == "knowledge-base" for r in results) / len(results), 1),
        errors=sum(r.error is not None for r in results),
        per_case=per_case,
    )


def reference_bounds(cases: list[WorkflowCase], embedder=None, seed: int = 0) -> dict[str, float]:
    """STEPScore F1 of the reference against itself (100) and against another runbook's steps (a floor)."""
    import random

    rng = random.Random(seed)
    own = step_scores([(c.reference_steps, c.reference_steps) for c in cases], embedder=embedder)
    others = []
    for i, c in enumerate(cases):
        j = rng.randrange(len(cases) - 1)
        others.append((cases[j + (j >= i)].reference_steps, c.reference_steps))
    floor = step_scores(others, embedder=embedder)
    return {"self_f1": round(statistics.fmean(s.f1 for s in own), 2),
            "random_other_f1": round(statistics.fmean(s.f1 for s in floor), 2)}


def write_report(summaries: list[EvalSummary], bounds: dict, out_dir: str | Path, meta: dict) -> Path:
    """results.json, a Markdown table and a bar chart of P/R/F1 per setting."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(
        {"meta": meta, "bounds": bounds, "summaries": [asdict(s) for s in summaries]}, indent=2))
    lines = ["| knowledge | best-of | cases | P | R | F1 | valid Mermaid % | KB fallback % | p50 s | p95 s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s.setting} | {s.candidates} | {s.cases} | {s.precision} | {s.recall} | {s.f1} | "
                     f"{s.valid_mermaid_rate} | {s.knowledge_fallback_rate} | {s.latency_p50_s} | {s.latency_p95_s} |")
    lines.append(f"| reference vs itself | – | {summaries[0].cases if summaries else 0} | – | – | "
                 f"{bounds.get('self_f1')} | – | – | – | – |")
    lines.append(f"| random other runbook | – | {summaries[0].cases if summaries else 0} | – | – | "
                 f"{bounds.get('random_other_f1')} | – | – | – | – |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    _plot(summaries, bounds, out / "stepscore.png")
    return out


def _plot(summaries: list[EvalSummary], bounds: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{s.setting}\nN={s.candidates}" for s in summaries]
    xs = range(len(summaries))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(summaries)), 4))
    width = 0.27
    for k, (name, attr) in enumerate([("precision", "precision"), ("recall", "recall"), ("F1", "f1")]):
        ax.bar([x + (k - 1) * width for x in xs], [getattr(s, attr) for s in summaries], width, label=name)
    if "random_other_f1" in bounds:
        ax.axhline(bounds["random_other_f1"], color="grey", linestyle="--", label="random other runbook (F1)")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels)
    ax.set_ylim(0, 100)
    ax.set_ylabel("STEPScore")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("Workflow quality by knowledge setting and best-of-N")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
