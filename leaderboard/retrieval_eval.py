"""Does retrieval hand the Planner the right runbook? hit@1 / hit@3 on ticket-phrased queries.

For each runbook case the ticket is phrased three ways: the alert name with what it means (what an
Alertmanager ticket says); that meaning without the alert name; and a ticket the team wrote by hand
(leaderboard/data/runbook_tickets.jsonl: other words, made-up hosts and numbers, no alert name).
A hit is the case's own runbook among the top-k incident nodes. The relevance of the best node is
also what decides "none matched": `calibrate_relevance` picks the threshold on dev queries that
keeps in-domain tickets matched and sends out-of-domain tickets to the model's own workflow.
"""

from __future__ import annotations

import random
import statistics
from dataclasses import asdict, dataclass, field

from leaderboard.workflow_cases import WorkflowCase, case_tickets, paraphrase_query
from router.importers import LabeledDataError, import_it_tickets, split_labeled

PHRASINGS = ("alert", "paraphrase", "ticket")


@dataclass
class RetrievalSummary:
    phrasing: str
    cases: int
    hit_at_1: float
    hit_at_3: float
    mean_best_score: float
    misses: list[str] = field(default_factory=list)


def query_for(case: WorkflowCase, phrasing: str) -> str | None:
    """The case's ticket in `phrasing`; None when the case has no team-written ticket."""
    if phrasing == "alert":
        return case.query
    if phrasing == "paraphrase":
        return paraphrase_query(case)
    return case_tickets().get(case.id)


def own_rank(kb, case: WorkflowCase, query: str, k: int = 3) -> tuple[int | None, float | None]:
    """(1-based rank of the case's own runbook among the top-k nodes or None, best node score)."""
    ctx = kb.retrieve(query, k_chunks=2, k_nodes=k)
    for rank, node in enumerate(ctx.nodes, 1):
        if case.source in node.sources:
            return rank, ctx.best_score
    return None, ctx.best_score


def evaluate_retrieval(kb, cases: list[WorkflowCase], phrasing: str) -> RetrievalSummary:
    ranks, best, misses = [], [], []
    cases = [c for c in cases if query_for(c, phrasing) is not None]
    for case in cases:
        rank, score = own_rank(kb, case, query_for(case, phrasing))
        ranks.append(rank)
        best.append(score or 0.0)
        if rank is None:
            misses.append(case.id)
    n = len(cases) or 1
    return RetrievalSummary(
        phrasing=phrasing, cases=len(cases),
        hit_at_1=round(100 * sum(r == 1 for r in ranks) / n, 1),
        hit_at_3=round(100 * sum(r is not None for r in ranks) / n, 1),
        mean_best_score=round(statistics.fmean(best), 4) if best else 0.0, misses=misses)


def best_scores(kb, queries: list[str]) -> list[float]:
    """The best node score of each query (what the relevance threshold is compared with)."""
    return [ctx.best_score or 0.0 for ctx in (kb.retrieve(q, k_chunks=0, k_nodes=1) for q in queries)]


def calibrate_relevance(in_domain: list[float], out_of_domain: list[float]) -> dict:
    """The threshold on the best node score that maximises balanced accuracy (in-domain kept, out sent away).

    Ties prefer the lower threshold: a false "none matched" costs an in-domain ticket its runbook.
    """
    candidates = sorted(set(in_domain) | set(out_of_domain))
    best = (0.0, 0.0)
    for i, t in enumerate(candidates):
        cut = t if i == 0 else (candidates[i - 1] + t) / 2
        kept = sum(s >= cut for s in in_domain) / max(1, len(in_domain))
        sent = sum(s < cut for s in out_of_domain) / max(1, len(out_of_domain))
        score = (kept + sent) / 2
        if score > best[0] + 1e-9:
            best = (score, cut)
    threshold = round(best[1], 4)
    return {"threshold": threshold, "balanced_accuracy": round(100 * best[0], 1),
            **relevance_at(in_domain, out_of_domain, threshold)}


def relevance_at(in_domain: list[float], out_of_domain: list[float], threshold: float) -> dict:
    """How a "none matched" threshold splits the queries: in-domain kept and out-of-domain refused, in %."""
    return {"in_domain_kept": round(100 * sum(s >= threshold for s in in_domain) / max(1, len(in_domain)), 1),
            "out_of_domain_refused": round(100 * sum(s < threshold for s in out_of_domain)
                                           / max(1, len(out_of_domain)), 1),
            "in_domain": len(in_domain), "out_of_domain": len(out_of_domain)}


def summaries_json(summaries: list[RetrievalSummary]) -> list[dict]:
    return [asdict(s) for s in summaries]


def out_of_domain_queries(split: str, limit: int = 200) -> list[str]:
    """IT service-desk tickets (HR, purchases, laptops, access requests: not alert runbook material), a
    fixed sample of the `split` part of ../shared/data/it-service-tickets; empty when the data is absent."""

    try:
        tickets = import_it_tickets(limit=20000)
    except LabeledDataError:
        return []
    dev, test = split_labeled(tickets, 0.2, seed=0)  # dev: the part tuning may look at
    part = test if split == "test" else dev if split == "dev" else tickets
    rng = random.Random(0)
    return [q.text for q in rng.sample(part, min(limit, len(part)))]
