"""`flowrouter train`: coevolution training of experts' Planner and Scorer adapters (docs/training.md).

    flowrouter train --expert NAME [--expert NAME ...] --iterations K [--config FILE] [--training FILE]
                     [--queries N|FILE] [--steps N] [--rl-steps N] [--dpo-steps N]
                     [--out DIR] [--local] [--address RAY] [--no-gate] [--publish [--api-key KEY]] [--dry-run]

One Ray actor per expert runs K iterations of (one Planner GRPO epoch, one Scorer DPO epoch) from
queries only, writes versioned adapters with metadata and a report (reward/loss curves) under
`<out>/<expert>/vNNNN/`, and measures held-out STEPScore against the serving adapter. With
--publish, an adapter that beats the serving one is deployed to the running service as a new expert
and the regenerated map is published; one that does not leaves the service untouched.

    flowrouter train classifier [--config FILE] [--training FILE] [--dataset owl-bench|it-tickets [--split dev|test]]
                                [--steps N] [--out DIR] [--local] [--address RAY] [--no-gate]
                                [--publish [--api-key KEY]] [--rollback]

fine-tunes the classifier LLM instead (a LoRA adapter, trl SFT on the labeled queries with the service's
prompt), gates it on dev accuracy and with --publish loads it into the running classifier deployment
without a restart (docs/training.md, "flowrouter train classifier").
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from cluster.cli import CliError


def register(sub) -> None:
    p = sub.add_parser("train", help="tune experts' Planner (GRPO) and Scorer (DPO) adapters; gate and publish",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--expert", action="append", metavar="NAME",
                   help="expert to train (repeatable: one Ray actor per expert); `flowrouter train classifier` "
                        "trains the classifier LLM instead")
    p.add_argument("--iterations", type=int, default=1, help="coevolution iterations (default 1)")
    p.add_argument("--config", help="FlowRouter config (default configs/default.yaml); its `training:` section "
                                    "holds the training settings")
    p.add_argument("--training", metavar="FILE", help="YAML holding only training settings (the `training:` "
                                                        "section's fields); replaces the config's section")
    p.add_argument("--queries", help="N: use at most N training queries; FILE: add queries from a .txt/.jsonl file")
    p.add_argument("--steps", type=int, help="cap both stages at N optimizer steps per iteration")
    p.add_argument("--rl-steps", type=int, help="Planner RL steps per iteration (default: one epoch)")
    p.add_argument("--dpo-steps", type=int, help="Scorer DPO steps per iteration (default: one epoch)")
    p.add_argument("--dry-run", action="store_true",
                   help="train nothing: print, as JSON, what each expert's job would train on (query sources, "
                        "held-out cases, operator verdicts, corrections with the candidates they replaced)")
    add_run_options(p, jobs="the jobs", local="in this process, one after another (no Ray)",
                    gate="the held-out evaluation",
                    publish="deploy winning adapters to the service running this config and publish the new map")
    p.set_defaults(func=cmd_train)
    targets = p.add_subparsers(dest="target", metavar="classifier", required=False)
    c = targets.add_parser("classifier", help="fine-tune the classifier LLM (LoRA, trl SFT); gate on dev accuracy; "
                                              "publish into the running classifier",
                           description="Fine-tune the classifier LLM on the labeled queries with the service's "
                                       "prompt (LoRA, trl SFT, completion-only loss), gate it on held-out dev "
                                       "accuracy, and with --publish load it into the running classifier "
                                       "deployment without a restart.")
    c.add_argument("--config", help="FlowRouter config (default configs/default.yaml): its tasks, labeled examples, "
                                    "classifier and `training.classifier_sft` settings")
    c.add_argument("--training", metavar="FILE", help="YAML holding only training settings; replaces the config's "
                                                        "`training:` section")
    c.add_argument("--dataset", choices=["owl-bench", "it-tickets"],
                   help="train and gate on a shared labeled set (with the evaluator's settings) instead of the "
                        "config's examples; such an adapter cannot be published (other tasks)")
    c.add_argument("--split", default="dev", choices=["dev", "test"],
                   help="with --dataset: dev (default) trains on the train part of train and gates on the dev part; "
                        "test trains on the whole train part and gates on the test part (final figures only)")
    c.add_argument("--steps", type=int, help="optimizer steps (default classifier_sft.steps, else epochs over the rows)")
    add_run_options(c, jobs="the job", local="in this process (no Ray)", gate="the dev evaluation",
                    publish="load a winning adapter into the classifier of the service running this config "
                            "(no restart)")
    c.add_argument("--rollback", action="store_true",
                   help="no training: the running classifier serves its base weights again (no restart)")
    c.set_defaults(func=cmd_train_classifier)


def add_run_options(p, *, jobs: str, local: str, gate: str, publish: str) -> None:
    """Where a training run goes, how it is gated and published: shared by `train` and `train classifier`."""
    p.add_argument("--out", help="root of versioned adapters (default training.output_dir or <cache>/training)")
    p.add_argument("--local", action="store_true", help=f"run {jobs} {local}")
    p.add_argument("--address", help=f"Ray cluster to run {jobs} on (default: a private local Ray)")
    p.add_argument("--no-gate", action="store_true", help=f"skip {gate} (nothing can be published)")
    p.add_argument("--publish", action="store_true", help=publish)
    p.add_argument("--ray-address", help="the running service's Ray (default: from its pid file)")
    p.add_argument("--url", help="the running service's URL (default: from its pid file)")
    p.add_argument("--api-key", default=os.environ.get("FLOWROUTER_API_KEY"),
                   help="admin API key (default $FLOWROUTER_API_KEY; not needed in open mode)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def load_training(path: str):
    """A training-only YAML file (paths relative to the file, as in a full config)."""
    from pathlib import Path

    import yaml

    from core.config import ConfigError, resolve_paths
    from core.training_config import TrainingConfig

    p = Path(path)
    if not p.exists():
        raise ConfigError(f"training settings not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
        raw = raw.get("training", raw) if isinstance(raw, dict) else raw
        resolved = resolve_paths({"training": raw}, p.resolve().parent)["training"]
        return TrainingConfig.model_validate(resolved)
    except Exception as exc:
        raise ConfigError(f"{p} is not valid training settings:\n{exc}") from exc


def _positive(value, flag):
    if value is not None and value < 1:
        raise CliError(f"{flag} must be >= 1")
    return value


def cmd_train(args) -> int:
    from core.config import ConfigError, load_config
    from training.coevolve import TrainingError, TrainOptions, train
    from training.gate import PublishError

    if not args.expert:
        raise CliError("name the expert(s) to train with --expert NAME, or train the classifier LLM with "
                       "`flowrouter train classifier`")
    try:
        cfg = load_config(args.config)
        if args.training:
            cfg.training = load_training(args.training)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    _positive(args.iterations, "--iterations")
    steps = _positive(args.steps, "--steps")
    opts = TrainOptions(iterations=args.iterations, rl_steps=_positive(args.rl_steps, "--rl-steps") or steps,
                        dpo_steps=_positive(args.dpo_steps, "--dpo-steps") or steps, out_root=args.out,
                        local=args.local, address=args.address, evaluate=not args.no_gate,
                        show_progress=not args.quiet)
    if args.queries:
        if args.queries.isdigit():
            opts.max_queries = _positive(int(args.queries), "--queries")
        elif os.path.exists(args.queries):
            opts.query_file = args.queries
        else:
            raise CliError(f"--queries takes a number or a query file; {args.queries!r} is neither")
    if args.publish and args.no_gate:
        raise CliError("--publish needs the gate (drop --no-gate)")
    if args.publish and args.dry_run:
        raise CliError("--dry-run trains nothing, so there is nothing to --publish")
    from cluster.local import resolve_state_dir
    from cluster.ray_connect import connect_ray
    from deployments.ticket_store import TicketStore

    opts.connect = connect_ray
    publisher = None
    state_dir = resolve_state_dir(cfg.model_copy(deep=True)).serve.state_dir
    store = Path(state_dir) / "tickets.sqlite"
    feedback_rows = TicketStore(store).feedback() if store.exists() else []
    if feedback_rows and cfg.training.feedback and not args.quiet:
        from collections import Counter

        counts = Counter(r["verdict"] for r in feedback_rows)
        print(f"operator feedback from {store}: " + ", ".join(f"{n} {v}" for v, n in sorted(counts.items()))
              + " (edits: Planner targets and pairs; rejects: negatives; all: Scorer rows)", file=sys.stderr)
    if args.dry_run:
        return _print_plan(cfg, args.expert, opts, feedback_rows)
    if args.publish:
        from cluster.publish import ServicePublisher

        publisher = ServicePublisher(cfg, api_key=args.api_key, url=args.url, ray_address=args.ray_address)
        try:
            publisher.check()  # fail before hours of training, not after
        except PublishError as exc:
            raise CliError(str(exc)) from None
    try:
        report = train(cfg, args.expert, opts, publisher=publisher, feedback_rows=feedback_rows)
    except (TrainingError, PublishError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from None
    _print(report)
    failed = [n for n, o in report.outcomes.items() if not o["ok"]]
    return 1 if failed else 0


def _print_plan(cfg, experts, opts, feedback_rows) -> int:
    import json

    from training.coevolve import TrainingError, describe_jobs, plan_jobs

    try:
        jobs = plan_jobs(cfg, experts, opts, feedback_rows=feedback_rows, build_knowledge=False)
    except TrainingError as exc:
        raise CliError(str(exc)) from None
    print(json.dumps(describe_jobs(jobs), indent=2))
    return 0


def _print(report) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="coevolution training")
    for col in ("expert", "job", "held-out F1 serving -> new", "Scorer agreement", "gate", "adapters"):
        table.add_column(col)
    for d in report.decisions:
        o = report.outcomes.get(d["expert"], {})
        f1 = "—" if d["serving_f1"] is None else f"{d['serving_f1']:.2f} -> {d['candidate_f1']:.2f}"
        ag = "—" if d["serving_agreement"] is None else f"{d['serving_agreement']:.3f} -> {d['candidate_agreement']:.3f}"
        job = f"ok ({o.get('seconds', 0):.0f}s)" if o.get("ok") else "[red]failed[/]"
        gate = ("[green]promote[/]" if d["promote"] else "keep serving") + \
               (" + scorer" if d["promote_scorer"] else "")
        table.add_row(d["expert"], job, f1, ag, gate, o.get("dir") or "—")
    console.print(table)
    for d in report.decisions:
        console.print(f"{d['expert']}: {d['reason']}; {d['scorer_reason']}")
        o = report.outcomes.get(d["expert"], {})
        if o.get("error"):
            console.print(f"[red]{d['expert']} failed:[/] {o['error'].splitlines()[0]}")
        if o.get("report"):
            console.print(f"report: {o['report']}")
    if report.published is not None:
        p = report.published
        if p.get("deployed") or p.get("map_version"):
            console.print(f"published: deployed {p['deployed']}, retired {p['retired']}, map "
                          f"{p['previous_map']} -> {p['map_version']}"
                          + (f", scorer adapter {p['scorer_adapter']}" if p.get("scorer_adapter") else ""))
        if p.get("note"):
            console.print(p["note"])
    console.print(f"summary: {report.summary_file}")


def cmd_train_classifier(args) -> int:
    from core.config import ConfigError, load_config
    from training.classifier_job import ClassifierTrainingError, ClassifierTrainOptions, set_adapter, train_classifier
    from training.gate import PublishError

    try:
        cfg = load_config(args.config)
        if args.training:
            cfg.training = load_training(args.training)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    if args.publish and args.no_gate:
        raise CliError("--publish needs the gate (drop --no-gate)")
    if args.publish and args.dataset:
        raise CliError("--publish needs the service's own examples: an adapter trained on --dataset classifies into "
                       "that set's tasks")
    if args.rollback and (args.publish or args.dataset):
        raise CliError("--rollback trains nothing: it goes without --publish and --dataset")
    publisher = None
    if args.publish or args.rollback:
        from cluster.publish import ServicePublisher

        publisher = ServicePublisher(cfg, api_key=args.api_key, url=args.url, ray_address=args.ray_address)
        try:
            publisher.check()  # fail before training, not after
        except PublishError as exc:
            raise CliError(str(exc)) from None
    if args.rollback:
        try:
            r = set_adapter(publisher, None)
        except PublishError as exc:
            raise CliError(str(exc)) from None
        print(r.note or f"the classifier serves its base weights again (was {r.previous_adapter})")
        return 0
    from cluster.ray_connect import connect_ray

    opts = ClassifierTrainOptions(dataset=args.dataset, split=args.split, steps=_positive(args.steps, "--steps"),
                                  out_root=args.out, local=args.local, address=args.address,
                                  evaluate=not args.no_gate, show_progress=not args.quiet, connect=connect_ray)
    try:
        report = train_classifier(cfg, opts, publisher=publisher)
    except (ClassifierTrainingError, PublishError, FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from None
    _print_classifier(report)
    return 0 if report.outcome.get("ok") else 1


def _print_classifier(report) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    o, d = report.outcome, report.decision
    m = o.get("metrics") or {}
    if o.get("ok"):
        data, sft = m.get("data", {}), m.get("sft", {})
        console.print(f"classifier {m.get('model')} v{m.get('version')}: {data.get('rows')} training rows "
                      f"({data.get('too_long', 0)} too long) from {data.get('train')} examples, dev {data.get('dev')}; "
                      f"{sft.get('steps')} SFT steps in {sft.get('seconds')}s ({sft.get('seconds_per_step')} s/step)")
        if m.get("serving"):
            table = Table(title="dev accuracy: serving LLM -> with the adapter")
            for col in ("mode", "accuracy", "macro-F1", "LLM share", "LLM-decided tickets (acc., retrieval alone)"):
                table.add_column(col)
            for mode, after in m["candidate"].items():
                if not isinstance(after, dict):
                    continue
                before = m["serving"].get(mode) or {}
                dec = after.get("llm_decided") or {}
                table.add_row(mode + (" (gate)" if mode == m.get("gate_mode") else ""),
                              f"{100 * before.get('accuracy', 0):.1f}% -> {100 * after['accuracy']:.1f}%",
                              f"{100 * before.get('macro_f1', 0):.1f} -> {100 * after['macro_f1']:.1f}",
                              f"{100 * before.get('llm_share', 0):.0f}% -> {100 * after['llm_share']:.0f}%",
                              f"n={dec['n']}: {100 * dec['accuracy']:.1f}% vs {100 * dec['retrieval_accuracy']:.1f}%"
                              if dec else "—")
            console.print(table)
    else:
        console.print(f"[red]training failed:[/] {(o.get('error') or '').splitlines()[0] if o.get('error') else ''}")
    console.print(("[green]promote[/]: " if d.get("promote") else "keep serving: ") + d.get("reason", ""))
    if o.get("dir"):
        console.print(f"adapter: {o['dir']}/adapter   report: {o.get('report')}")
    if report.published is not None:
        p = report.published
        if p.get("published"):
            console.print(f"published: the classifier now serves {p['adapter']} (was {p['previous_adapter'] or 'base'})"
                          + (f"; replicas report {[i.get('fingerprint') for i in p['serving']]}" if p.get("serving")
                             else ""))
        elif p.get("note"):
            console.print(p["note"])
    console.print(f"summary: {report.summary_file}")
