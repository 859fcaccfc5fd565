"""What prefix sharing saves the Scorer: N candidates x five dimension prompts per ticket, shared vs from scratch.

    python -m load_tests.bench_scorer --count 10 --candidates 4

The Scorer asks five questions about each candidate; the prompts put knowledge, ticket and workflow first
and the dimension last, so the five share all but a few tokens, and the N candidates of one ticket share
the knowledge and the ticket. The transformers engine runs such a group as one prefix plus short suffixes,
and keeps recent prefixes' KV caches (experts/engines/transformers_engine.py).

For each of --count starter tickets, the knowledge the Planner would get is retrieved from the service's
knowledge base, and the reference workflows of the top --candidates incidents stand in for the candidates
(real workflows of serving length, no generation needed). The same items are then scored twice, in
alternating order per ticket, starting cold each time:
  - shared:  all N x 5 prompts in one engine call, the call `Scorer.score` makes in serving;
  - scratch: every prompt alone, the prefix cache cleared before each (no sharing, no batching).
Prints per-ticket times, the speed-up with its spread, the largest score difference between the two
paths, and the speed-up (`N.Nx`) as its last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from core.config import load_config
from core.workflow import Workflow

STARTER_TICKETS = Path(__file__).resolve().parents[1] / "starter" / "tickets.jsonl"


def summarize(rows: list[dict]) -> dict:
    """Speed-up of shared over scratch: the ratio of total times, and the median and range of per-ticket ratios."""
    ratios = [r["scratch_s"] / r["shared_s"] for r in rows if r["shared_s"] > 0]
    shared, scratch = sum(r["shared_s"] for r in rows), sum(r["scratch_s"] for r in rows)
    return {"tickets": len(rows), "prompts": sum(r["prompts"] for r in rows),
            "shared_s": round(shared, 2), "scratch_s": round(scratch, 2),
            "speedup": round(scratch / shared, 2) if shared else None,
            "ticket_speedup_median": round(statistics.median(ratios), 2) if ratios else None,
            "ticket_speedup_min": round(min(ratios), 2) if ratios else None,
            "ticket_speedup_max": round(max(ratios), 2) if ratios else None,
            "max_score_diff": max((r["max_score_diff"] for r in rows), default=0.0)}


def scoring_items(kb, ticket: str, candidates: int, scope=None) -> list[tuple[str, Workflow, object]]:
    """(ticket, workflow, scoring context) for the ticket's top incidents' reference workflows."""
    from experts.prompts import node_workflow, scorer_context

    context = kb.retrieve(ticket, scope=scope, k_chunks=1, k_nodes=max(candidates, 1))
    ctx = scorer_context(context)
    workflows = [wf for wf in (node_workflow(n) for n in context.nodes) if wf is not None][:candidates]
    return [(ticket, wf, ctx) for wf in workflows]


def expectation(dist: dict[str, float]) -> float:
    """A dimension's score: the expected digit under the judge's distribution (as experts/scorer.py computes it)."""
    return sum(float(label) * p for label, p in dist.items())


def time_shared(engine, prompts: list[str]) -> tuple[float, list[dict]]:
    """All prompts in one engine call, as `Scorer.score` sends them."""
    from experts.scorer import LABELS

    engine.clear_prefix_cache()
    t0 = time.perf_counter()
    dists = engine.label_probs(prompts, LABELS)
    return time.perf_counter() - t0, dists


def time_scratch(engine, prompts: list[str]) -> tuple[float, list[dict]]:
    """Every prompt alone, with nothing cached."""
    from experts.scorer import LABELS

    dists = []
    t0 = time.perf_counter()
    for p in prompts:
        engine.clear_prefix_cache()
        dists.extend(engine.label_probs([p], LABELS))
    return time.perf_counter() - t0, dists


def run(config: str | None, count: int, candidates: int, tickets_file: Path = STARTER_TICKETS) -> dict:
    from core.embeddings import shared_embedder
    from experts.engines.registry import build_engine
    from experts.knowledge.build import ensure_knowledge_base
    from experts.knowledge.retrieve import KnowledgeBase
    from experts.scorer import Scorer
    from router.doc_tasks import assigner_for

    cfg = load_config(config)
    kb = KnowledgeBase.open(ensure_knowledge_base(cfg.knowledge, assign_tasks=assigner_for(cfg)),
                            embedder=shared_embedder())
    engine = build_engine(cfg.scorer.model)
    if not hasattr(engine, "clear_prefix_cache"):
        raise SystemExit(f"the Scorer's engine {type(engine).__name__} keeps no prefix cache to compare against")
    scorer = Scorer(engine, cfg.scorer.dimensions, embedder=shared_embedder())
    rows_in = [json.loads(x) for x in tickets_file.read_text().splitlines() if x.strip()]
    tickets = [" ".join(filter(None, (r.get("title"), r.get("description")))) for r in rows_in][:count]
    def prompts_for(items):
        return [p for ticket, wf, ctx in items for p in scorer.prompts(ticket, wf, ctx.text)]

    time_shared(engine, prompts_for(scoring_items(kb, tickets[0], 1)))  # one-off allocations: neither path pays
    rows = []
    for i, ticket in enumerate(tickets):
        items = scoring_items(kb, ticket, candidates)
        if not items:
            print(f"ticket {i}: no incident with a reference workflow matched; skipped", flush=True)
            continue
        prompts = prompts_for(items)
        if i % 2 == 0:  # alternate which path goes first, so drift in machine load hits both alike
            shared_s, shared = time_shared(engine, prompts)
            scratch_s, scratch = time_scratch(engine, prompts)
        else:
            scratch_s, scratch = time_scratch(engine, prompts)
            shared_s, shared = time_shared(engine, prompts)
        diff = max(abs(expectation(a) - expectation(b)) for a, b in zip(shared, scratch))
        rows.append({"ticket": i, "candidates": len(items), "prompts": len(prompts),
                     "shared_s": round(shared_s, 3), "scratch_s": round(scratch_s, 3), "max_score_diff": round(diff, 4)})
        print(f"ticket {i + 1}/{len(tickets)}: {len(items)} candidates, shared {shared_s:.2f} s, "
              f"scratch {scratch_s:.2f} s ({scratch_s / shared_s:.1f}x), max score diff {diff:.3f}", flush=True)
    return {"rows": rows, "summary": summarize(rows), "model": cfg.scorer.model.base,
            "dtype": cfg.scorer.model.dtype}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", help="FlowRouter config (default configs/default.yaml)")
    ap.add_argument("--count", type=int, default=10, help="starter tickets (default 10)")
    ap.add_argument("--candidates", type=int, default=4, help="candidates per ticket (default 4)")
    ap.add_argument("--json", help="write rows and summary here")
    args = ap.parse_args(argv)
    if args.count < 1 or args.candidates < 1:
        ap.error("--count and --candidates must be at least 1")
    out = run(args.config, args.count, args.candidates)
    s = out["summary"]
    if not s["tickets"]:
        print("no ticket could be scored", file=sys.stderr)
        return 1
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
    print(f"{s['tickets']} tickets, {s['prompts']} prompts ({out['model']}, {out['dtype']}): shared {s['shared_s']} s, "
          f"scratch {s['scratch_s']} s; per ticket {s['ticket_speedup_median']}x median "
          f"({s['ticket_speedup_min']}-{s['ticket_speedup_max']}x); largest score difference {s['max_score_diff']}")
    print(f"{s['speedup']:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
