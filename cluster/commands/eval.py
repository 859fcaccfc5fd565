"""`flowrouter eval workflows`: STEPScore, valid-Mermaid rate and latency over runbook cases."""

from __future__ import annotations

import random
from pathlib import Path

from cluster.cli import CliError
from core.config import ConfigError, load_config
from core.paths import shared_data_dir

DEFAULT_CASES = "prometheus-operator-runbooks"


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate the service or its stages")
    esub = p.add_subparsers(dest="eval_command", metavar="WHAT")
    esub.required = True
    w = esub.add_parser("workflows", help="STEPScore P/R/F1, valid Mermaid and latency over runbook cases")
    w.add_argument("--cases", help=f"runbook folder (default: ../shared/data/{DEFAULT_CASES})")
    w.add_argument("--limit", type=int, default=0, help="evaluate a deterministic sample of this many cases")
    w.add_argument("--url", help="evaluate a running service over HTTP instead of in-process")
    w.add_argument("--config", help="config for in-process evaluation (default: configs/default.yaml)")
    w.add_argument("--expert", help="expert to evaluate (default: the config's first expert)")
    w.add_argument("--knowledge", default="both",
                   help="comma list of none,vector,graph,both (in-process only)")
    w.add_argument("--candidates", default="1,4", help="comma list of N for best-of-N")
    w.add_argument("--kb", help="knowledge base directory (default: built from --cases, cached)")
    w.add_argument("--exclude-own-doc", action="store_true",
                   help="hide each case's own runbook from retrieval (held-out knowledge)")
    w.add_argument("--out", default="artifacts/eval-workflows", help="where results.json, table.md and the plot go")
    w.set_defaults(func=cmd_workflows)


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CliError(f"--candidates must be a comma list of integers, got {text!r}") from None
    if not values or any(v < 1 or v > 16 for v in values):
        raise CliError("--candidates values must be between 1 and 16")
    return values


def cmd_workflows(args) -> int:
    from core.embeddings import shared_embedder
    from leaderboard import workflow_eval as we
    from leaderboard.workflow_cases import load_runbook_cases

    cases_dir = Path(args.cases) if args.cases else shared_data_dir() / DEFAULT_CASES
    if not cases_dir.is_dir():
        raise CliError(f"runbook folder not found: {cases_dir}")
    cases = load_runbook_cases(cases_dir)
    if not cases:
        raise CliError(f"no runbook in {cases_dir} has at least 3 reference steps")
    if args.limit and args.limit < len(cases):
        cases = sorted(random.Random(0).sample(cases, args.limit), key=lambda c: c.id)
    settings = [s.strip() for s in args.knowledge.split(",") if s.strip()]
    unknown = [s for s in settings if s not in we.KNOWLEDGE_SETTINGS]
    if unknown:
        raise CliError(f"unknown knowledge setting(s) {unknown}; choose from {sorted(we.KNOWLEDGE_SETTINGS)}")
    ns = _ints(args.candidates)
    embedder = shared_embedder()
    summaries = []
    meta = {"cases_dir": str(cases_dir), "cases": len(cases), "exclude_own_doc": args.exclude_own_doc}
    if args.url:
        for n in ns:
            solve = we.http_solver(args.url.rstrip("/"), n, args.expert)
            summaries.append(we.evaluate(cases, solve, "service", n, embedder=embedder))
        meta["url"] = args.url
    else:
        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            raise CliError(str(exc)) from None
        try:
            expert = cfg.expert(args.expert) if args.expert else cfg.experts[0]
        except KeyError:
            raise CliError(f"no expert {args.expert!r} in {cfg.source}") from None
        # The benchmark grounds every expert in the whole base (its scope tags are the starter's).
        expert = expert.model_copy(update={"knowledge_scope": []})
        kb_dir = args.kb
        if kb_dir is None and any(s != "none" for s in settings):
            from core.config import KnowledgeConfig
            from experts.knowledge.build import ensure_knowledge_base

            kb_dir = str(ensure_knowledge_base(KnowledgeConfig(docs=[str(cases_dir)]), progress=True))
        engines: dict = {}
        meta.update({"config": cfg.source, "expert": expert.name, "knowledge_dir": kb_dir})
        for setting in settings:
            for n in ns:
                solve = we.in_process_solver(cfg, expert, kb_dir, setting, n, args.exclude_own_doc, engines)
                summaries.append(we.evaluate(cases, solve, setting, n, embedder=embedder))
    bounds = we.reference_bounds(cases, embedder=embedder)
    out = we.write_report(summaries, bounds, args.out, meta)
    print((out / "table.md").read_text())
    print(f"results: {out / 'results.json'}  plot: {out / 'stepscore.png'}")
    return 0
