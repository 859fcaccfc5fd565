"""`flowrouter eval workflows | retrieval`: the workflow and retrieval benchmarks over runbook cases."""

from __future__ import annotations

from pathlib import Path

from cluster.cli import CliError
from core.config import ConfigError, load_config
from core.paths import shared_data_dir
from leaderboard.workflow_cases import DEFAULT_CASES


def register(sub) -> None:
    p = sub.add_parser("eval", help="evaluate the service or its stages")
    esub = p.add_subparsers(dest="eval_command", metavar="WHAT")
    esub.required = True
    w = esub.add_parser("workflows", help="STEPScore P/R/F1, structure and grounding over runbook cases")
    _cases_args(w)
    w.add_argument("--url", help="evaluate a running service over HTTP instead of in-process")
    w.add_argument("--api-key", help="API key for --url (a ticket key)")
    w.add_argument("--route", default="live", choices=("live", "expert"),
                   help="live: classifier -> map -> the expert it picks, as the service routes (default); "
                        "expert: every case to --expert")
    w.add_argument("--expert", help="expert for --route expert (default: the config's first) or forced over --url")
    w.add_argument("--knowledge", default="service",
                   help="comma list of none,vector,graph,both,service (service: the config's own; in-process)")
    w.add_argument("--candidates", default="1,4", help="comma list of N for best-of-N")
    w.add_argument("--exclude-own-doc", action="store_true",
                   help="hide each case's own runbook from retrieval (held-out knowledge)")
    w.add_argument("--out", default="artifacts/eval-workflows", help="where results.json, table.md and the plot go")
    w.set_defaults(func=cmd_workflows)

    r = esub.add_parser("retrieval", help="hit@1/hit@3 of each case's own runbook for ticket-phrased queries, "
                                          "and the relevance threshold of 'none matched'")
    _cases_args(r)
    r.add_argument("--calibrate", action="store_true",
                   help="also pick knowledge.min_relevance on these cases against out-of-domain tickets")
    r.add_argument("--out", default="artifacts/eval-retrieval", help="where results.json goes")
    r.set_defaults(func=cmd_retrieval)


def _cases_args(p) -> None:
    p.add_argument("--cases", help=f"runbook folder (default: ../shared/data/{DEFAULT_CASES})")
    p.add_argument("--split", default="test", choices=("dev", "test", "all"),
                   help="which half of the cases (tune on dev, report on test; default test)")
    p.add_argument("--limit", type=int, default=0, help="a deterministic sample of this many cases of the split")
    p.add_argument("--config", help="config (default: configs/default.yaml)")
    p.add_argument("--kb", help="knowledge base directory (default: built from --cases with the config's "
                                "task filing, cached)")


def _ints(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise CliError(f"--candidates must be a comma list of integers, got {text!r}") from None
    if not values or any(v < 1 or v > 16 for v in values):
        raise CliError("--candidates values must be between 1 and 16")
    return values


def _cases(args):
    from leaderboard.workflow_cases import load_runbook_cases, sample_cases, split_cases

    cases_dir = Path(args.cases) if args.cases else shared_data_dir() / DEFAULT_CASES
    if not cases_dir.is_dir():
        raise CliError(f"runbook folder not found: {cases_dir}")
    cases = split_cases(load_runbook_cases(cases_dir), args.split)
    if not cases:
        raise CliError(f"no runbook in {cases_dir} ({args.split} split) has at least 3 reference steps")
    return cases_dir, sample_cases(cases, args.limit)


def _config(args):
    try:
        return load_config(args.config)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def _knowledge_dir(args, cfg, cases_dir: Path) -> str:
    if args.kb:
        return args.kb
    from leaderboard.workflow_eval import runbook_knowledge_dir

    return runbook_knowledge_dir(cfg, cases_dir)


def cmd_workflows(args) -> int:
    from core.embeddings import shared_embedder
    from leaderboard import workflow_eval as we

    cases_dir, cases = _cases(args)
    settings = [s.strip() for s in args.knowledge.split(",") if s.strip()]
    unknown = [s for s in settings if s not in we.KNOWLEDGE_SETTINGS]
    if unknown:
        raise CliError(f"unknown knowledge setting(s) {unknown}; choose from {sorted(we.KNOWLEDGE_SETTINGS)}")
    ns = _ints(args.candidates)
    embedder = shared_embedder()
    summaries = []
    meta = {"cases_dir": str(cases_dir), "split": args.split, "cases": len(cases),
            "exclude_own_doc": args.exclude_own_doc, "route": args.route}
    retrieval = None
    if args.url:
        if args.exclude_own_doc:
            raise CliError("--exclude-own-doc needs the in-process evaluation (a service cannot hide documents)")
        for n in ns:
            solve = we.http_solver(args.url.rstrip("/"), n, args.expert, api_key=args.api_key)
            summaries.append(we.evaluate(cases, solve, "service", n, embedder=embedder))
        meta["url"] = args.url
    else:
        cfg = _config(args)
        if args.expert and args.expert not in {e.name for e in cfg.experts}:
            raise CliError(f"no expert {args.expert!r} in {cfg.source}")
        kb_dir = _knowledge_dir(args, cfg, cases_dir) if any(s != "none" for s in settings) else None
        service = we.InProcessService(cfg, kb_dir)
        meta.update({"config": cfg.source, "knowledge_dir": kb_dir,
                     "expert": args.expert if args.route == "expert" else None})
        for setting in settings:
            for n in ns:
                solve = service.solver(setting, n, args.route, args.expert, args.exclude_own_doc)
                summaries.append(we.evaluate(cases, solve, setting, n, embedder=embedder,
                                             runbook_in_base=not args.exclude_own_doc))
        if service.kb is not None:
            from dataclasses import asdict

            from leaderboard.retrieval_eval import PHRASINGS, evaluate_retrieval

            retrieval = [asdict(evaluate_retrieval(service.kb, cases, ph)) for ph in PHRASINGS]
    bounds = we.reference_bounds(cases, embedder=embedder)
    out = we.write_report(summaries, bounds, args.out, meta, retrieval)
    print((out / "table.md").read_text())
    print(f"results: {out / 'results.json'}  plot: {out / 'stepscore.png'}")
    return 0


def cmd_retrieval(args) -> int:
    import json
    from dataclasses import asdict

    from experts.knowledge.retrieve import KnowledgeBase
    from leaderboard.retrieval_eval import (
        PHRASINGS,
        best_scores,
        calibrate_relevance,
        evaluate_retrieval,
        out_of_domain_queries,
        query_for,
        relevance_at,
    )

    cases_dir, cases = _cases(args)
    cfg = _config(args)
    kb = KnowledgeBase.open(_knowledge_dir(args, cfg, cases_dir))
    report: dict = {"cases_dir": str(cases_dir), "split": args.split, "cases": len(cases),
                    "min_relevance": cfg.knowledge.min_relevance}
    report["retrieval"] = [asdict(evaluate_retrieval(kb, cases, ph)) for ph in PHRASINGS]
    for r in report["retrieval"]:
        print(f"{r['phrasing']:>10}: hit@1 {r['hit_at_1']}%  hit@3 {r['hit_at_3']}%  ({r['cases']} cases)  "
              f"misses: {', '.join(r['misses'][:5]) or '-'}")
    if args.calibrate:
        inside = best_scores(kb, [q for c in cases for ph in PHRASINGS if (q := query_for(c, ph)) is not None])
        outside_queries = out_of_domain_queries(args.split)
        if not outside_queries:
            raise CliError("no out-of-domain tickets found in ../shared/data (it-service-tickets) to calibrate with")
        outside = best_scores(kb, outside_queries)
        cal = calibrate_relevance(inside, outside)
        report["calibration"] = cal
        now = report["configured"] = relevance_at(inside, outside, cfg.knowledge.min_relevance)
        print(f"configured threshold {cfg.knowledge.min_relevance}: in-domain kept {now['in_domain_kept']}% of "
              f"{now['in_domain']}, out-of-domain refused {now['out_of_domain_refused']}% of {now['out_of_domain']}")
        print(f"relevance threshold {cal['threshold']}: in-domain kept {cal['in_domain_kept']}% of "
              f"{cal['in_domain']}, out-of-domain refused {cal['out_of_domain_refused']}% of {cal['out_of_domain']} "
              f"(balanced accuracy {cal['balanced_accuracy']}%); set knowledge.min_relevance to use it")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(report, indent=2))
    print(f"results: {out / 'results.json'}")
    return 0
