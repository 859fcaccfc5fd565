"""Workflow quality against the Planner's context length: where the knee is.

    python -m load_tests.bench_context --split dev --limit 40 --contexts 0:1,1:1,1:2,3:2 --jobs 2

Each CHUNKS:NODES setting is how many knowledge chunks and incident nodes the Planner's prompt holds. For each,
the same runbook cases go through the live path in this machine's processes (classifier -> map -> the expert it
picks -> best-of-N, `leaderboard.workflow_eval.InProcessService`), grounded in a knowledge base built from the
runbook folder (each case's own runbook is in it, as a team's own runbooks are in theirs). Settings run in
--jobs worker processes side by side, each with its own models.

Prints per setting: STEPScore F1, the paired difference to the largest context with its standard error over the
cases, the prompt's mean length in tokens and the plan stage's p50; then the knee, the shortest context whose F1 is
within --tolerance points of the largest context's, as its last line. Writes --out (JSON) and a plot beside it.
Tune on dev; the test split is for reporting a chosen setting.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

from core.paths import shared_data_dir
from leaderboard.workflow_cases import DEFAULT_CASES


def parse_contexts(text: str) -> list[tuple[int, int]]:
    """`C:N,C:N` -> [(chunks, nodes)], refusing anything else with a message that says what is wrong."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        chunks, sep, nodes = part.partition(":")
        if not sep or not chunks.isdigit() or not nodes.isdigit():
            raise ValueError(f"--contexts takes CHUNKS:NODES pairs like 1:2, got {part!r}")
        if int(chunks) + int(nodes) == 0:
            raise ValueError("0:0 is no knowledge at all; the workflow benchmark's `none` setting measures that")
        out.append((int(chunks), int(nodes)))
    if not out:
        raise ValueError("--contexts is empty")
    return out


def paired_difference(f1: list[float], reference: list[float]) -> tuple[float, float]:
    """Mean of f1 - reference over the same cases, and its standard error."""
    d = [a - b for a, b in zip(f1, reference)]
    if len(d) < 2:
        return (d[0] if d else 0.0), 0.0
    return statistics.fmean(d), statistics.stdev(d) / math.sqrt(len(d))


def knee(rows: list[dict], tolerance: float) -> dict:
    """The row with the fewest prompt tokens whose F1 is within `tolerance` of the largest context's."""
    largest = max(rows, key=lambda r: r["prompt_tokens_mean"])
    fits = [r for r in rows if r["f1"] >= largest["f1"] - tolerance]
    return min(fits, key=lambda r: r["prompt_tokens_mean"])


def run_setting(args: dict, chunks: int, nodes: int) -> dict:
    """One setting's EvalSummary (as a dict), in a worker process of its own."""
    import torch

    torch.set_num_threads(1)
    from core.config import load_config
    from core.embeddings import shared_embedder
    from leaderboard import workflow_eval as we
    from leaderboard.workflow_cases import load_runbook_cases, sample_cases, split_cases

    cfg = load_config(args["config"])
    cfg.planner.context_chunks, cfg.planner.context_nodes = chunks, nodes
    cases = sample_cases(split_cases(load_runbook_cases(args["cases"]), args["split"]), args["limit"])
    service = we.InProcessService(cfg, args["kb"])
    solve = service.solver("service", args["candidates"], "live")
    summary = we.evaluate(cases, solve, f"{chunks}:{nodes}", args["candidates"], embedder=shared_embedder(),
                          progress=args["progress"])
    return asdict(summary)


def report(summaries: list[dict], tolerance: float) -> list[dict]:
    largest = max(summaries, key=lambda s: s["prompt_tokens_mean"])
    ref = [c["f1"] for c in largest["per_case"]]
    rows = []
    for s in sorted(summaries, key=lambda s: s["prompt_tokens_mean"]):
        diff, se = paired_difference([c["f1"] for c in s["per_case"]], ref)
        rows.append({"context": s["setting"], "cases": s["cases"], "f1": s["f1"], "diff_vs_largest": round(diff, 2),
                     "diff_se": round(se, 2), "prompt_tokens_mean": s["prompt_tokens_mean"],
                     "plan_p50_s": s["plan_p50_s"], "branching_rate": s["branching_rate"],
                     "unparseable_rate": s["unparseable_rate"], "none_matched_rate": s["none_matched_rate"],
                     "own_runbook_shown_rate": s["own_runbook_shown_rate"], "errors": s["errors"]})
    return rows


def plot(rows: list[dict], chosen: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["prompt_tokens_mean"] for r in rows]
    ax.errorbar(xs, [r["f1"] for r in rows], yerr=[r["diff_se"] for r in rows], marker="o", capsize=3)
    for r in rows:
        ax.annotate(r["context"], (r["prompt_tokens_mean"], r["f1"]), textcoords="offset points", xytext=(4, 4),
                    fontsize=8)
    ax.axvline(chosen["prompt_tokens_mean"], color="grey", linestyle="--", label=f"knee: {chosen['context']}")
    ax.set_xlabel("Planner prompt, mean tokens")
    ax.set_ylabel("STEPScore F1")
    ax.set_title("Workflow quality against context length (chunks:nodes)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=str(shared_data_dir() / DEFAULT_CASES), help="runbook folder")
    ap.add_argument("--split", default="dev", choices=("dev", "test", "all"), help="tune on dev (default)")
    ap.add_argument("--limit", type=int, default=40, help="a fixed sample of this many cases (0: all)")
    ap.add_argument("--contexts", default="0:1,1:1,1:2,3:2", help="CHUNKS:NODES settings to compare")
    ap.add_argument("--candidates", type=int, default=1, help="best-of-N per case (default 1: greedy)")
    ap.add_argument("--config", help="config (default configs/default.yaml)")
    ap.add_argument("--jobs", type=int, default=2, help="settings evaluated side by side (one process each)")
    ap.add_argument("--tolerance", type=float, default=2.0, help="F1 points the knee may give up (default 2)")
    ap.add_argument("--out", default="runs/bench-context.json", help="JSON report; the plot goes beside it")
    args = ap.parse_args(argv)
    try:
        contexts = parse_contexts(args.contexts)
    except ValueError as exc:
        ap.error(str(exc))
    if not Path(args.cases).is_dir():
        print(f"runbook folder not found: {args.cases} (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    from core.config import load_config
    from leaderboard.workflow_eval import runbook_knowledge_dir

    cfg = load_config(args.config)
    work = {"config": args.config, "cases": args.cases, "split": args.split, "limit": args.limit,
            "candidates": args.candidates, "kb": runbook_knowledge_dir(cfg, args.cases), "progress": True}
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    summaries = []
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(run_setting, work, c, n): f"{c}:{n}" for c, n in contexts}
        for done in as_completed(futures):
            s = done.result()
            summaries.append(s)
            print(f"{futures[done]}: F1 {s['f1']}, prompt {s['prompt_tokens_mean']} tokens, plan p50 "
                  f"{s['plan_p50_s']} s ({len(summaries)}/{len(contexts)} settings)", flush=True)
    rows = report(summaries, args.tolerance)
    chosen = knee(rows, args.tolerance)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "rows": rows, "knee": chosen["context"],
                               "summaries": summaries}, indent=2))
    plot(rows, chosen, out.with_suffix(".png"))
    print("| context (chunks:nodes) | cases | F1 | vs largest (± SE) | prompt tokens | plan p50 s | branching % | "
          "unparseable % | own runbook shown % |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['context']} | {r['cases']} | {r['f1']} | {r['diff_vs_largest']:+.2f} ± {r['diff_se']} | "
              f"{r['prompt_tokens_mean']} | {r['plan_p50_s']} | {r['branching_rate']} | {r['unparseable_rate']} | "
              f"{r['own_runbook_shown_rate']} |")
    print(f"report: {out}  plot: {out.with_suffix('.png')}")
    print(f"knee: {chosen['context']} ({chosen['prompt_tokens_mean']} tokens, F1 {chosen['f1']}, within "
          f"{args.tolerance} of the largest context)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
