"""`flowrouter kb`: build, extend, inspect and query the knowledge base of operation documents."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DEFAULT_LLM = "smollm2-135m-instruct"


def register(subparsers) -> None:
    kb = subparsers.add_parser("kb", help="knowledge base from operation documents (build, add, info, query)",
                               description="Knowledge base of operation documents: MiniLM-indexed chunks plus "
                                           "incident nodes (description, diagnosis and mitigation steps).")
    sub = kb.add_subparsers(dest="kb_command", metavar="ACTION")
    sub.required = True

    b = sub.add_parser("build", help="build (or update) a knowledge base from document folders")
    b.add_argument("docs", nargs="+", metavar="DOCS_DIR", help="folders of .md/.txt documents (folder name = tag)")
    _common(b)
    b.add_argument("--chunk-chars", type=int, default=None, help="target characters per chunk (default: "
                                                                 "config knowledge.chunk_chars, else 900)")
    b.set_defaults(func=cmd_build)

    a = sub.add_parser("add", help="add new or changed documents to an existing base (incremental)")
    a.add_argument("docs", nargs="+", metavar="DOCS_DIR")
    _common(a)
    a.set_defaults(func=cmd_add)

    i = sub.add_parser("info", help="version, counts and documents of a base")
    _base_options(i)
    i.add_argument("--docs", action="store_true", help="list every document with its method, counts and tasks")
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.set_defaults(func=cmd_info)

    q = sub.add_parser("query", help="retrieve chunks and incident nodes for a text")
    q.add_argument("text", help="ticket or question")
    _base_options(q)
    q.add_argument("--scope", action="append", metavar="TAG", help="only documents filed under this task or with "
                                                                  "this tag (repeatable)")
    q.add_argument("--min-relevance", type=float, default=None, help="relevance the best incident needs (default: "
                                                                       "the config's knowledge.min_relevance)")
    q.add_argument("-k", "--chunks", type=int, default=3, help="chunks to return (default 3)")
    q.add_argument("-n", "--nodes", type=int, default=2, help="incident nodes to return (default 2)")
    q.add_argument("--json", action="store_true", help="print the RetrievedContext as JSON")
    q.set_defaults(func=cmd_query)

    c = sub.add_parser("consolidate", help="propose new or revised incident nodes from case memory; approve or "
                                           "reject a proposal",
                       description="Turn corrected and repeated cases (the service's case memory) into new or "
                                   "revised incident nodes. Without an action: write a pending proposal and print "
                                   "its diff; the base changes only with --approve ID.")
    c.add_argument("--config", metavar="FILE", help="FlowRouter config: the knowledge base, the case store "
                                                    "(cases.directory or <serve.state_dir>/cases) and cases.consolidate")
    c.add_argument("--out", metavar="DIR", help="knowledge-base directory (default: the config's)")
    c.add_argument("--cases", metavar="DIR", help="case store folder (default: the config's)")
    act = c.add_mutually_exclusive_group()
    act.add_argument("--approve", metavar="ID", help="apply a pending proposal: a new version becomes current")
    act.add_argument("--reject", metavar="ID", help="close a pending proposal without applying it")
    act.add_argument("--show", metavar="ID", help="print a proposal's diff")
    act.add_argument("--list", action="store_true", help="list the proposals")
    act.add_argument("--dry-run", action="store_true", help="print what would be proposed, write nothing")
    c.add_argument("--by", metavar="NAME", help="who approves or rejects (default: cli:<user>)")
    c.add_argument("--json", action="store_true", help="print the proposal(s) as JSON")
    c.set_defaults(func=cmd_consolidate)

    r = sub.add_parser("rollback", help="make the version the current one was made from current again")
    _base_options(r)
    r.set_defaults(func=cmd_rollback)


def _base_options(p: argparse.ArgumentParser) -> None:
    """Which base a reading or rollback command acts on."""
    p.add_argument("--out", metavar="DIR", help="knowledge-base directory")
    p.add_argument("--config", metavar="FILE", help="FlowRouter config whose knowledge section names the base")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="DIR", help="knowledge-base directory (default: config knowledge.directory, "
                                                "else <cache>/knowledge/<hash of the folders>)")
    p.add_argument("--llm", action=argparse.BooleanOptionalAction, default=True,
                   help="use the small LLM for documents without runbook structure (loaded only if needed)")
    p.add_argument("--llm-model", default=DEFAULT_LLM, metavar="NAME",
                   help=f"embedded model name or weights folder for --llm (default {DEFAULT_LLM})")
    p.add_argument("--config", metavar="FILE", help="FlowRouter config (knowledge.directory, chunk_chars, and the "
                                                   "task set documents are filed under; default configs/default.yaml)")
    p.add_argument("--tasks", action=argparse.BooleanOptionalAction, default=True,
                   help="file documents under the config's tasks (folder tags as hints, else its classifier), so "
                        "experts' knowledge scopes reach them")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _quiet_logs() -> None:
    import logging

    for name in ("faiss.loader", "sentence_transformers", "httpx"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _errors():
    from cluster.cli import CliError

    return CliError


def _config(path: str | None):
    from core.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        raise _errors()(str(exc)) from exc


def _knowledge_cfg(path: str | None):
    return _config(path).knowledge if path else None


def _check_dirs(dirs: list[str]) -> None:
    for d in dirs:
        if not Path(d).expanduser().exists():
            raise _errors()(f"document folder not found: {d}")


def _llm(args):
    if not args.llm:
        return None
    import torch

    from experts.knowledge.build import LazyEngine

    def factory():
        from experts.engines.transformers_engine import TransformersEngine
        from experts.engines.weights import resolve_weights

        return TransformersEngine(resolve_weights(args.llm_model), name=args.llm_model, chat=True, threads=1)

    torch.set_num_threads(1)
    return LazyEngine(factory, name=args.llm_model)


def _resolve_out(args, doc_dirs: list[str] | None = None) -> Path:
    if getattr(args, "out", None):
        return Path(args.out).expanduser()
    kcfg = _knowledge_cfg(getattr(args, "config", None))
    if kcfg is not None and kcfg.directory:
        return Path(kcfg.directory)
    from experts.knowledge.build import default_directory

    dirs = doc_dirs or (list(kcfg.docs) if kcfg is not None else [])
    if dirs:
        return default_directory(dirs)
    from core.paths import cache_dir

    bases = sorted(p for p in (cache_dir() / "knowledge").glob("*") if (p / "current").exists())
    if len(bases) == 1:
        return bases[0]
    if not bases:
        raise _errors()("no knowledge base found; pass --out DIR or build one with `flowrouter kb build DOCS_DIR`")
    raise _errors()("several knowledge bases in the cache; pass --out DIR:\n  " + "\n  ".join(map(str, bases)))


def _run(args, mode: str) -> int:
    from experts.knowledge.build import run_build
    from experts.knowledge.documents import KnowledgeError

    _quiet_logs()
    _check_dirs(args.docs)
    kcfg = _knowledge_cfg(args.config)
    out = _resolve_out(args, args.docs)
    if mode == "add" and not (out / "current").exists():
        raise _errors()(f"no knowledge base in {out} to add to; run `flowrouter kb build` first")
    chunk_chars = getattr(args, "chunk_chars", None) or (kcfg.chunk_chars if kcfg else None)
    if mode == "sync" and chunk_chars is None:
        chunk_chars = 900
    llm = _llm(args)
    assign = None
    if args.tasks:
        from router.doc_tasks import assigner_for

        assign = assigner_for(_config(args.config))
    t = time.perf_counter()
    try:
        report = run_build(args.docs, out, llm=llm, chunk_chars=chunk_chars, progress=not args.quiet, mode=mode,
                           assign_tasks=assign)
    except KnowledgeError as exc:
        raise _errors()(str(exc)) from exc
    s = report.stats
    state = "built" if report.changed else "already up to date:"
    print(f"{state} {report.version} in {out} ({time.perf_counter() - t:.1f}s)")
    if s:
        print(f"  documents {s.get('documents')}  chunks {s.get('chunks')}  nodes {s.get('nodes')}  "
              f"links {s.get('links')}")
        if report.changed:
            print(f"  processed {s.get('processed')}  from cache {s.get('from_cache')}  reused {s.get('reused')}  "
                  f"removed {s.get('removed')}  new/changed nodes {s.get('new_or_changed_nodes')}")
            print(f"  methods {json.dumps(s.get('methods', {}))}"
                  + (f"  (LLM loaded: {llm.loaded})" if llm is not None else ""))
        if s.get("tasks"):
            print("  tasks " + ", ".join(f"{t or '(none)'} ({n})" for t, n in s["tasks"].items()))
    return 0


def cmd_build(args) -> int:
    return _run(args, "sync")


def cmd_add(args) -> int:
    return _run(args, "add")


def cmd_info(args) -> int:
    from experts.knowledge.store import KnowledgeStore

    out = _resolve_out(args)
    store = KnowledgeStore(out)
    version = store.current_version()
    if version is None:
        raise _errors()(f"no knowledge base in {out}")
    m = store.manifest(version)
    if args.json:
        print(json.dumps(m, indent=1))
        return 0
    s = m.get("stats", {})
    print(f"{out}\n  version {version} (of {', '.join(store.versions())}), built {m.get('created')}")
    print(f"  documents {s.get('documents')}  chunks {s.get('chunks')}  nodes {s.get('nodes')}  links {s.get('links')}")
    print(f"  methods {json.dumps(s.get('methods', {}))}  chunk_chars {m.get('chunk_chars')}  "
          f"embedder {m.get('embedder')}  llm {m.get('llm')}")
    tags: dict[str, int] = {}
    for e in m["docs"].values():
        for t in e.get("tags", []):
            tags[t] = tags.get(t, 0) + 1
    print("  tags " + ", ".join(f"{t} ({n})" for t, n in sorted(tags.items())))
    if s.get("tasks"):
        print("  tasks " + ", ".join(f"{t or '(none)'} ({n})" for t, n in s["tasks"].items()))
    print("  roots " + ", ".join(m.get("roots", [])))
    from experts.knowledge.consolidate import Consolidator

    cons = m.get("consolidation") or {}
    if cons:
        print(f"  consolidated from case memory: {len(cons.get('nodes', {}))} node(s); last proposal "
              f"{cons.get('proposal')} approved by {cons.get('approved_by')} on {m.get('previous')}")
    pending = [p.id for p in Consolidator(out).proposals() if p.status == "pending"]
    if pending:
        print(f"  pending proposals: {', '.join(pending)} (flowrouter kb consolidate --show ID)")
    if args.config:
        from router.doc_tasks import scope_coverage

        for name, n in scope_coverage(m, _config(args.config).experts).items():
            print(f"  expert {name}: scope covers {n} document(s)" + ("  <- none: retrieval falls back to the "
                                                                       "whole base" if n == 0 else ""))
    if args.docs:
        for src, e in sorted(m["docs"].items()):
            tasks = ",".join(e.get("tasks", [])) or "-"
            print(f"    {src}  [{e['method']}] chunks {e['chunks']} raw nodes {e['raw_nodes']}  tasks {tasks} "
                  f"({e.get('tasks_by', 'none')})")
    return 0


def cmd_query(args) -> int:
    from experts.knowledge.documents import KnowledgeError
    from experts.knowledge.retrieve import KnowledgeBase

    _quiet_logs()
    out = _resolve_out(args)
    try:
        kb = KnowledgeBase.open(out)
    except KnowledgeError as exc:
        raise _errors()(str(exc)) from exc
    if args.scope:
        unknown = sorted(set(args.scope) - set(kb.tags()))
        if unknown:
            raise _errors()(f"unknown tag(s) {', '.join(unknown)}; known: {', '.join(kb.tags())}")
    relevance = args.min_relevance
    if relevance is None:
        relevance = _config(args.config).knowledge.min_relevance
    kb.embedder.encode(["warm-up"])  # model load is not retrieval time
    t = time.perf_counter()
    ctx = kb.retrieve(args.text, scope=args.scope, k_chunks=args.chunks, k_nodes=args.nodes, min_relevance=relevance)
    ms = (time.perf_counter() - t) * 1000
    if args.json:
        print(ctx.model_dump_json(indent=1))
        return 0
    status = "matched" if ctx.matched else f"none matched (best {ctx.best_score} < {relevance})"
    print(f"{kb.version} ({ms:.0f} ms): {status}; scope {ctx.scope}")
    from core.workflow import render_lines
    from experts.prompts import node_workflow

    for n in ctx.nodes:
        print(f"\n[node {n.score:.3f}] {n.incident}  ({n.id}; tags {', '.join(n.tags)})")
        if n.failure_description:
            print(f"  {n.failure_description[:300]}")
        wf = node_workflow(n)
        if wf is not None:
            print("  " + render_lines(wf).replace("\n", "\n  "))
        if n.related:
            print(f"  related: {', '.join(n.related)}")
        docs = [s for s in n.sources if not s.startswith("c-")]
        print(f"  sources: {', '.join(docs)}")
    for c in ctx.chunks:
        print(f"\n[chunk {c.score:.3f}] {c.source} > {' > '.join(c.heading_path)}  ({c.id})")
        print("  " + c.text[:400].replace("\n", "\n  "))
    return 0


def _base_dir(args) -> Path:
    """The base of --out, else of the config (its knowledge.directory or the folder its documents hash to)."""
    if args.out:
        return Path(args.out).expanduser()
    kcfg = _config(args.config).knowledge
    if kcfg.directory:
        return Path(kcfg.directory).expanduser()
    if not kcfg.docs:
        raise _errors()("the config names no knowledge documents; pass --out DIR")
    from experts.knowledge.build import default_directory

    return default_directory(list(kcfg.docs))


def _consolidator(args):
    from cluster.local import resolve_state_dir
    from experts.knowledge.cases import CaseStore
    from experts.knowledge.consolidate import Consolidator

    cfg = _config(args.config)
    folder = args.cases or cfg.cases.store_dir(resolve_state_dir(cfg.model_copy(deep=True)).serve.state_dir)
    cases = CaseStore(folder) if folder and Path(folder).is_dir() else None
    return Consolidator(_base_dir(args), cases, cfg.cases.consolidate)


def cmd_consolidate(args) -> int:
    import getpass

    from experts.knowledge.consolidate import ConsolidationError

    _quiet_logs()
    c = _consolidator(args)
    by = args.by or f"cli:{getpass.getuser()}"
    try:
        if args.list:
            ps = c.proposals()
            if args.json:
                print(json.dumps([p.summary() for p in ps], indent=1))
            for p in [] if args.json else ps:
                s = p.summary()
                print(f"{p.id}  {p.status:<8} on {p.base_version}  +{s['added']} ~{s['revised']}  {p.origin}"
                      + (f"  -> {p.version}" if p.version else ""))
            if not ps and not args.json:
                print(f"no proposals in {c.folder}")
            return 0
        if args.show:
            p = c.get(args.show)
        elif args.approve:
            p = c.approve(args.approve, by=by)
        elif args.reject:
            p = c.reject(args.reject, by=by)
        else:
            if c.cases is None:
                raise _errors()("no case store found (pass --cases DIR or the service's --config)")
            p = c.propose(origin="cli", save=not args.dry_run)
    except ConsolidationError as exc:
        raise _errors()(str(exc)) from exc
    if args.json:
        print(p.model_dump_json(indent=1, exclude={"changes": {"__all__": {"name_vector", "desc_vector"}}}))
        return 0
    print(p.diff())
    if args.approve:
        print(f"\n{p.version} is current in {c.store.root} (running Planners pick it up with their next batch; "
              f"undo with `flowrouter kb rollback`)")
    elif p.status == "pending" and p.changes and not args.dry_run:
        print(f"\napprove with: flowrouter kb consolidate --approve {p.id}   (or --reject {p.id})")
    return 0


def cmd_rollback(args) -> int:
    from experts.knowledge.consolidate import ConsolidationError, Consolidator

    c = Consolidator(_base_dir(args))
    try:
        old, new = c.rollback()
    except ConsolidationError as exc:
        raise _errors()(str(exc)) from exc
    print(f"rolled back {c.store.root}: {old} -> {new} (running Planners pick it up with their next batch)")
    return 0
