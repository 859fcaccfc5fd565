"""`flowrouter leaderboard`: build a leaderboard, add a model to it, show it, export a task set.

    flowrouter leaderboard build [--config FILE | --expert SPEC.yaml ...] [--taskset NAME|DIR]
                                 [--max-items N] [--out DIR]
    flowrouter leaderboard add-model SPEC.yaml [--out DIR | --taskset NAME]
                                     [--publish [--url URL] [--config FILE] [--admin-key KEY]]
    flowrouter leaderboard show [--out DIR | --taskset NAME] [--json]
    flowrouter leaderboard taskset NAME|DIR --out DIR
    flowrouter leaderboard classifier (--dataset owl-bench|it-tickets [--split test|dev] | --train FILE --test FILE)
                                      [--modes ...]
                                      [--limit N] [--train-limit N] [--embedder minilm|e5-small]

Results, the derived map (`maps/<version>.yaml`) and figures are written to the results folder
(default `<cache>/leaderboards/<task set name>`). Publishing a map to a running cluster is
`flowrouter map publish FILE`; `add-model --publish` does it in one go: it evaluates only the new
model, deploys it into the running app when the new map routes a task to it (cluster/deploy.py),
then publishes the regenerated map and prints what changed.
"""

from __future__ import annotations

import json
from pathlib import Path

from cluster.cli import CliError

DEFAULT_TASKSET = "opseval-en"


def register(subparsers) -> None:
    p = subparsers.add_parser("leaderboard", help="score experts per task and derive the task->expert map",
                              description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="leaderboard_command", metavar="ACTION")
    sub.required = True

    b = sub.add_parser("build", help="evaluate every expert on every task (resumable)")
    b.add_argument("--config", help="FlowRouter config whose `experts` are evaluated (default configs/default.yaml)")
    b.add_argument("--expert", action="append", default=[], metavar="SPEC.yaml",
                   help="a model spec file to evaluate (repeatable; instead of or on top of --config)")
    b.add_argument("--experts", help="comma-separated names: evaluate only these experts of the config")
    _taskset_args(b)
    b.add_argument("--max-items", type=int, default=20, help="items sampled per task (default 20; 0 = all)")
    b.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    b.add_argument("--batch-size", type=int, default=4, help="items per engine call (default 4)")
    b.add_argument("--out", help="results folder (default <cache>/leaderboards/<task set>)")
    b.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    b.add_argument("--quiet", action="store_true", help="no progress bar")
    b.set_defaults(func=cmd_build)

    a = sub.add_parser("add-model", help="evaluate one new expert only and show how the map changes")
    a.add_argument("spec", metavar="SPEC.yaml", help="model spec file (replaces an expert of the same name)")
    a.add_argument("--out", help="results folder of the leaderboard")
    a.add_argument("--taskset", default=DEFAULT_TASKSET, help="locates the default results folder")
    a.add_argument("--no-plots", action="store_true")
    a.add_argument("--quiet", action="store_true")
    a.add_argument("--publish", action="store_true",
                   help="then deploy the expert into the running service if the new map routes a task to it, "
                        "and publish the new map there")
    from cluster.commands.map import add_service_args

    add_service_args(a)
    a.set_defaults(func=cmd_add_model)

    c = sub.add_parser("classifier", help="classifier accuracy / macro-F1 per mode on a shared labeled set or on "
                                          "your own labeled tickets (--train/--test)")
    source = c.add_mutually_exclusive_group(required=True)
    source.add_argument("--dataset", choices=["owl-bench", "it-tickets"],
                        help="a shared labeled set, with the settings tuned for it on its dev split")
    source.add_argument("--train", metavar="FILE",
                        help="your labeled tickets (JSONL, JSON, CSV or TSV; columns --text-col/--task-col/--id-col): "
                             "the classifier's examples; evaluated with the service's classifier settings (--config)")
    c.add_argument("--test", metavar="FILE", help="with --train: the labeled tickets to evaluate on")
    c.add_argument("--text-col", default="text", help="with --train/--test: the column holding the ticket text")
    c.add_argument("--task-col", default="task", help="with --train/--test: the column holding the task label")
    c.add_argument("--id-col", default="id", help="with --train/--test: the id column (default: file-row)")
    c.add_argument("--config", help="with --train/--test: the service config whose classifier settings are "
                                    "evaluated (default configs/default.yaml)")
    c.add_argument("--split", default="test", choices=["test", "dev"],
                   help="test: the 20%% stratified holdout (seed 0); dev: 20%% of the train part (for tuning)")
    c.add_argument("--modes", default="retrieval,llm,llm+retrieval,cascade",
                   help="comma-separated: retrieval, llm, llm+retrieval, cascade (default all)")
    c.add_argument("--limit", type=int, default=None, help="evaluate a stratified subset of N tickets")
    c.add_argument("--train-limit", type=int, default=None,
                   help="use a stratified subset of N training examples (retrieval, head and baseline)")
    c.add_argument("--no-llm", action="store_true", help="retrieval only (LLM modes are skipped)")
    c.add_argument("--adapter", metavar="DIR|none",
                   help="the classifier LLM's LoRA adapter (a `flowrouter train classifier` version's adapter/ "
                        "folder), or none for the base weights; default: the config's classifier.model.adapter with "
                        "--train/--test, none with --dataset")
    for flag, key, typ in (("--k", "top_k", int), ("--head-weight", "head_weight", float),
                           ("--lexical-weight", "lexical_weight", float), ("--llm-weight", "llm_weight", float),
                           ("--min-agreement", "min_agreement", float), ("--vote-temperature", "vote_temperature",
                                                                         float)):
        c.add_argument(flag, dest=key, type=typ, default=None, help=f"override {key} (see leaderboard/classifier_eval.py)")
    c.add_argument("--fusion", choices=["learned", "manual"], default=None,
                   help="learned (default): vote + head + calibrated lexical SVC, weights fitted out of fold and saved "
                        "as a versioned artefact; manual: the vote mixed with the head by --head-weight")
    c.add_argument("--gate", choices=["learned", "thresholds"], default=None,
                   help="learned (default): ask the LLM only below the confidence where it helped on dev (out-of-fold "
                        "examples); thresholds: --min-agreement")
    c.add_argument("--max-llm-share", dest="max_llm_share", type=float, default=None,
                   help="learned gate: most of the dev examples it may send to the LLM (default 0.2)")
    c.add_argument("--fusion-method", dest="fusion_method", choices=["auto", "single", "simplex", "stacker"],
                   default=None, help="learned fusion: the best component alone, a simplex mix, a logistic stacker, "
                                      "or auto (best held-out accuracy on out-of-fold outputs)")
    c.add_argument("--components", default=None, help="learned fusion: comma-separated subset of vote,head,svc")
    c.add_argument("--svc-calibration", dest="svc_calibration", choices=["sigmoid", "isotonic", "temperature"],
                   default=None, help="how the lexical SVC's margins become probabilities (default sigmoid)")
    c.add_argument("--svc-c", dest="svc_c", type=float, default=None, help="C of the lexical LinearSVC (default 1)")
    c.add_argument("--embedder", choices=["minilm", "e5-small"], default=None,
                   help="sentence embedder of the retrieval and the head: minilm (all-MiniLM-L6-v2, English) or "
                        "e5-small (multilingual-e5-small, 4-bit); default: the set's tuned one, or the config's")
    c.add_argument("--out", help="folder for classifier_eval.json and confusion PNGs "
                                 "(default <cache>/classifier-eval/<dataset>-<split>)")
    c.add_argument("--no-plots", action="store_true")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_classifier)

    u = sub.add_parser("unknown", help="how well the classifier answers unknown: AUROC of its unknown scores on "
                                       "tickets from another labeled set, thresholds calibrated on dev")
    u.add_argument("--dataset", required=True, choices=["owl-bench", "it-tickets"],
                   help="the classifier's labeled set (fitted on its train part, in-domain tickets from its splits)")
    u.add_argument("--ood", default=None, choices=["it-tickets", "opseval", "opseval-en", "opseval-zh"],
                   help="out-of-domain tickets (default: it-tickets for owl-bench, opseval-en for it-tickets)")
    u.add_argument("--ood-limit", type=int, default=600, help="out-of-domain tickets, split half dev / half test")
    u.add_argument("--limit", type=int, default=None, help="in-domain tickets per split (stratified subset)")
    u.add_argument("--train-limit", type=int, default=None, help="training examples (stratified subset)")
    u.add_argument("--embedder", choices=["minilm", "e5-small"], default=None,
                   help="sentence embedder (default: the set's tuned one); the thresholds are on its similarity scale")
    u.add_argument("--out", help="folder for unknown_eval.json (default <cache>/classifier-eval/unknown-<dataset>)")
    u.add_argument("--quiet", action="store_true")
    u.set_defaults(func=cmd_unknown)

    s = sub.add_parser("show", help="print the score matrix, timings and the latest derived map")
    s.add_argument("--out", help="results folder of the leaderboard")
    s.add_argument("--taskset", default=DEFAULT_TASKSET, help="locates the default results folder")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_show)

    t = sub.add_parser("taskset", help="write a task set to a folder (YAML + JSONL) to inspect or edit it")
    t.add_argument("name", metavar="NAME|DIR")
    t.add_argument("--cases", help="folder of runbooks to add as workflow cases (starter task sets)")
    t.add_argument("--case-tasks", metavar="FILE", help="YAML of runbook path globs -> task for --cases")
    t.add_argument("--out", required=True, help="folder to write")
    t.set_defaults(func=cmd_taskset)


def _taskset_args(p) -> None:
    from leaderboard.tasksets import TASKSETS

    p.add_argument("--taskset", default=DEFAULT_TASKSET,
                   help=f"task set name ({', '.join(TASKSETS)}) or a folder (saved task set, or a starter-style "
                        f"pack with tasks.yaml); default {DEFAULT_TASKSET}")
    p.add_argument("--cases", help="folder of runbooks turned into workflow items (starter-style task sets)")
    p.add_argument("--case-tasks", metavar="FILE", help="YAML of runbook path globs -> task for --cases (default: "
                   "a runbook's first folder when named like a task, else the classifier labels it)")


def _default_out(taskset_name: str) -> Path:
    from core.config import slug
    from core.paths import cache_dir

    return cache_dir() / "leaderboards" / slug(Path(taskset_name).name)


def _load_taskset(name: str, cases: str | None, case_tasks: str | None = None):
    from leaderboard.tasksets import TaskSetError, load_taskset

    try:
        return load_taskset(name, cases_dir=cases, case_tasks=case_tasks)
    except (TaskSetError, FileNotFoundError, ValueError) as exc:
        raise CliError(str(exc)) from exc


def _specs(args) -> tuple[list, object]:
    from core.config import ConfigError, load_config, load_model_spec

    specs, cfg = [], None
    if args.config or not args.expert:
        try:
            cfg = load_config(args.config)
        except ConfigError as exc:
            if args.config:
                raise CliError(str(exc)) from exc
            raise CliError(f"no experts to evaluate: {exc}; pass --config FILE or --expert SPEC.yaml") from exc
        specs.extend(cfg.experts)
    for path in args.expert:
        try:
            specs.append(load_model_spec(path))
        except ConfigError as exc:
            raise CliError(str(exc)) from exc
    if args.experts:
        wanted = [x.strip() for x in args.experts.split(",") if x.strip()]
        unknown = sorted(set(wanted) - {s.name for s in specs})
        if unknown:
            raise CliError(f"--experts names unknown experts {unknown}; have {[s.name for s in specs]}")
        specs = [s for s in specs if s.name in wanted]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise CliError(f"expert names must be unique, got {names}")
    return specs, cfg


def cmd_build(args) -> int:
    from core.task_map import MapError
    from leaderboard.evaluate import EvalSettings
    from leaderboard.runner import LeaderboardError, LeaderboardRunOptions, build_leaderboard

    specs, cfg = _specs(args)
    taskset = _load_taskset(args.taskset, args.cases, args.case_tasks)
    out = Path(args.out) if args.out else _default_out(taskset.name)
    max_items = None if args.max_items == 0 else args.max_items
    if max_items is not None and max_items < 0:
        raise CliError("--max-items must be >= 0")
    try:
        options = LeaderboardRunOptions(max_items=max_items, seed=args.seed,
                                        settings=EvalSettings(batch_size=max(1, args.batch_size)),
                                        progress=not args.quiet, plots=not args.no_plots)
        run = build_leaderboard(taskset, specs, out, options)
    except (LeaderboardError, MapError) as exc:
        raise CliError(str(exc)) from exc
    _print_run(run)
    if cfg is not None and run.task_map is not None:
        from router.examples import load_tasks

        try:
            service_tasks = [t.name for t in load_tasks(cfg.tasks.tasks)]
        except Exception:  # the config's task file is someone else's; only a hint here
            service_tasks = []
        if service_tasks and sorted(service_tasks) != sorted(run.task_map.routes):
            print(f"note: this map routes the {taskset.name} tasks, not the service's tasks "
                  f"({', '.join(service_tasks)}); `flowrouter map publish` will refuse it for that config")
    return 0


def cmd_add_model(args) -> int:
    from core.config import ConfigError, load_model_spec
    from core.task_map import MapError
    from leaderboard.runner import LeaderboardError, add_model

    try:
        spec = load_model_spec(args.spec)
    except ConfigError as exc:
        raise CliError(str(exc)) from exc
    out = Path(args.out) if args.out else _default_out(args.taskset)
    try:
        res = add_model(spec, out, progress=not args.quiet, plots=not args.no_plots)
    except (LeaderboardError, MapError) as exc:
        raise CliError(str(exc)) from exc
    if res.replaced is not None:
        print(f"replaced {spec.name} {res.replaced.fingerprint()} -> {spec.fingerprint()}")
    _print_run(res.run)
    if res.diff is not None:
        print("\n".join(res.diff.lines()))
    if args.publish:
        publish_with_expert(args, spec, res.new_map)
    return 0


def publish_with_expert(args, spec, new_map) -> None:
    """Deploy `spec` into the running app when `new_map` routes to it, then publish `new_map` there."""
    from cluster.commands.map import MapClient, publish_map, service_config

    if new_map is None:
        raise CliError("the leaderboard is incomplete, so there is no new map to publish; run it again to finish")
    client = MapClient.from_args(args)
    live = client.get()
    tasks = sorted(live.get("tasks") or [])
    if sorted(new_map.routes) != tasks:
        raise CliError(f"the new map routes the tasks {sorted(new_map.routes)}, the service serves {tasks}: build "
                       "the leaderboard on the service's task set (e.g. --taskset starter with --cases) to publish")
    named = set(new_map.routes.values()) | {new_map.fallback}
    missing = sorted(named - set(live.get("experts") or []) - {spec.name})
    if missing:
        raise CliError(f"the new map names experts the service does not deploy and this command cannot: {missing}")
    if spec.name in named:
        from cluster.deploy import DeployError, deployed_expert, upsert_expert

        cfg = service_config(args)
        try:
            current = deployed_expert(cfg, spec.name)
            if current is None or current.model_dump() != spec.model_dump():
                upsert_expert(cfg, spec, echo=print)
        except DeployError as exc:
            raise CliError(str(exc)) from exc
        live = client.get()
        if spec.name not in (live.get("experts") or []):
            raise CliError(f"expert {spec.name} was deployed but the service does not list it yet; "
                           "publish the map with `flowrouter map publish` once it does")
    else:
        print(f"the new map routes no task to {spec.name}: nothing to deploy")
    if new_map.version == live["current"]["version"]:
        print(f"map {new_map.version} is already live")
        return
    publish_map(client, new_map, live)


def cmd_classifier(args) -> int:
    from pydantic import ValidationError

    from core.paths import cache_dir
    from leaderboard.classifier_eval import evaluate_modes

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    overrides = {k: getattr(args, k) for k in ("top_k", "head_weight", "lexical_weight", "llm_weight",
                                               "min_agreement", "vote_temperature", "fusion", "gate",
                                               "max_llm_share", "svc_c", "fusion_method", "svc_calibration",
                                               "embedder")
                 if getattr(args, k) is not None}
    if args.components:
        overrides["components"] = [c.strip() for c in args.components.split(",") if c.strip()]
    try:
        data, cfg = _classifier_eval_inputs(args, overrides)
    except (ValueError, FileNotFoundError, ValidationError) as exc:
        raise CliError(str(exc)) from exc
    if args.adapter is not None:
        adapter = None if args.adapter.lower() == "none" else str(Path(args.adapter).resolve())
        if adapter is not None and not (Path(adapter) / "adapter_config.json").exists():
            raise CliError(f"--adapter {args.adapter}: no peft adapter there (adapter_config.json missing)")
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"adapter": adapter})})
    out = Path(args.out) if args.out else cache_dir() / "classifier-eval" / f"{data.name}-{data.split}"
    engine = None
    if not args.no_llm and any(m != "retrieval" for m in modes):
        from experts.engines.registry import build_engine

        engine = build_engine(cfg.model)
    print(f"{data.name} {data.split}: {len(data.train)} training examples, {len(data.test)} tickets evaluated, "
          f"{len(data.tasks)} tasks", flush=True)
    if engine is not None:
        print(f"classifier LLM {cfg.model.name} ({cfg.model.base}, adapter {cfg.model.adapter or 'none'}, "
              f"version {cfg.model.fingerprint()})", flush=True)
    try:
        report = evaluate_modes(data, modes, cfg, engine=engine, out_dir=out, progress=not args.quiet,
                                plots=not args.no_plots)
    except ValueError as exc:
        raise CliError(str(exc)) from exc
    _print_classifier(report)
    print(f"report: {out / 'classifier_eval.json'}")
    return 0


def cmd_unknown(args) -> int:
    from core.paths import cache_dir
    from leaderboard.classifier_eval import build_classifier, eval_config, load_eval_data
    from leaderboard.unknown_eval import OOD_SOURCES, evaluate_unknown, halves, ood_texts

    source = args.ood or OOD_SOURCES[args.dataset]
    cfg = eval_config({"embedder": args.embedder} if args.embedder else None, dataset=args.dataset)
    try:
        splits = {split: load_eval_data(args.dataset, split, limit=args.limit, train_limit=args.train_limit)
                  for split in ("dev", "test")}
        ood_dev, ood_test = halves(ood_texts(source, args.ood_limit))
    except (ValueError, FileNotFoundError) as exc:
        raise CliError(str(exc)) from exc
    print(f"{args.dataset}: in-domain dev {len(splits['dev'].test)}, test {len(splits['test'].test)}; out of domain "
          f"({source}) dev {len(ood_dev)}, test {len(ood_test)}", flush=True)
    clfs = {}
    for split, data in splits.items():
        clfs[split] = (build_classifier(data, cfg, progress=not args.quiet), data)
    report = evaluate_unknown(clfs["dev"], clfs["test"], ood_dev, ood_test)
    report.update(dataset=args.dataset, ood_source=source)
    out = Path(args.out) if args.out else cache_dir() / "classifier-eval" / f"unknown-{args.dataset}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "unknown_eval.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    for name, r in report["scores"].items():
        setting = ", ".join(f"{k} {v}" for k, v in r["service_setting"].items())
        print(f"{name:<15} AUROC dev {r['auroc_dev']:.3f}  test {r['auroc_test']:.3f}   at the dev threshold "
              f"({setting}): in-domain unknown {r['test_in_domain_unknown_rate']:.1%}, out-of-domain refused "
              f"{r['test_ood_unknown_rate']:.1%}")
    print(f"report: {out / 'unknown_eval.json'}")
    return 0


def _classifier_eval_inputs(args, overrides: dict):
    """(labeled data, classifier settings): a shared set with its tuned settings, or a team's own files with
    the settings the service runs."""
    from core.config import load_config
    from leaderboard.classifier_eval import eval_config, load_eval_data, load_eval_files, service_config

    if args.train is None:
        if args.test is not None:
            raise ValueError("--test goes with --train (with --dataset, use --split)")
        return (load_eval_data(args.dataset, args.split, limit=args.limit, train_limit=args.train_limit),
                eval_config(overrides, dataset=args.dataset))
    if args.test is None:
        raise ValueError("--train needs --test: the labeled tickets to evaluate on")
    data = load_eval_files(args.train, args.test, text_col=args.text_col, task_col=args.task_col,
                           id_col=args.id_col, limit=args.limit, train_limit=args.train_limit)
    return data, service_config(load_config(args.config).classifier, overrides)


def _print_classifier(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"classifier on {report['dataset']} ({report['split']}: {report['n_test']} tickets, "
                        f"{report['n_train']} examples, embedder {report['config'].get('embedder')})")
    for col in ("mode", "accuracy", "macro-F1", "LLM share", "s / ticket"):
        table.add_column(col, justify="left" if col == "mode" else "right")
    if "baseline" in report:
        b = report["baseline"]
        table.add_row("baseline: " + b["name"], f"{b['accuracy']:.3f}", f"{b['macro_f1']:.3f}", "0", "")
    for mode, r in report["modes"].items():
        if "skipped" in r:
            table.add_row(mode, "—", "—", "—", r["skipped"])
            continue
        table.add_row(mode, f"{r['accuracy']:.3f}", f"{r['macro_f1']:.3f}", f"{r['llm_share']:.2f}",
                      f"{r['seconds'] / max(1, report['n_test']):.2f}")
    Console().print(table)
    if "artefact" in report:
        a = report["artefact"]
        oof = a.get("oof") or {}
        cv = oof.get("cv_accuracy") or {}
        print(f"fitted classifier {a['version']} ({a['path']}): fusion {a.get('method')} (held-out accuracy on "
              f"out-of-fold outputs: " + ", ".join(f"{k} {v:.3f}" for k, v in cv.items()) + "); weights "
              + ", ".join(f"{k} {v:.2f}" for k, v in a["weights"].items())
              + (f"; out-of-fold accuracy fused {oof['fused_accuracy']:.3f} ("
                 + ", ".join(f"{k} {v:.3f}" for k, v in oof.get("accuracy", {}).items()) + ")"
                 if "fused_accuracy" in oof else ""))
    if "gate" in report:
        g = report["gate"]
        state = (f"open below confidence {g['threshold']:.3f}, llm_weight {g['llm_weight']}" if g["open"]
                 else f"shut (no confidence region where the LLM's net gain on dev reached {g.get('min_gain')} "
                      f"examples with McNemar p <= {g.get('alpha')}): the LLM is asked about no ticket")
        print(f"learned gate: {state}; on dev the LLM was asked about {g['llm_calls']} of {g['dev_examples']} "
              f"out-of-fold examples, best net gain {g['gain']} (per llm_weight: {g['per_weight']})")
    for mode, r in report["modes"].items():
        v = r.get("vs_baseline")
        if v:
            print(f"{mode} vs baseline on the same tickets: right where it is wrong {v['wins']}, wrong where it is "
                  f"right {v['losses']} (two-sided sign test p = {v['p_two_sided']:.3f})")
        d = r.get("llm_decided")
        if d:
            print(f"{mode}: the {d['n']} tickets the LLM decided: accuracy {d['accuracy']:.3f}; retrieval alone "
                  f"on the same tickets {d['retrieval_accuracy']:.3f}")
    for f in report.get("figures", []):
        print(f"figure: {f}")


def cmd_show(args) -> int:
    from leaderboard.runner import LeaderboardError, load_leaderboard

    out = Path(args.out) if args.out else _default_out(args.taskset)
    try:
        run = load_leaderboard(out)
    except LeaderboardError as exc:
        raise CliError(str(exc)) from exc
    if args.json:
        from leaderboard.derive import averages

        print(json.dumps({"out": str(out), "taskset": run.taskset_name, "taskset_version": run.taskset_version,
                          "matrix": run.matrix.to_rows(), "averages": averages(run.matrix),
                          "macro_averages": averages(run.matrix, "macro"),
                          "seconds_per_item": run.seconds_per_item,
                          "missing": [list(m) for m in run.matrix.missing()],
                          "map": run.task_map.model_dump() if run.task_map else None,
                          "map_file": str(run.map_path) if run.map_path else None}, indent=2, ensure_ascii=False))
        return 0
    _print_run(run)
    return 0


def cmd_taskset(args) -> int:
    ts = _load_taskset(args.name, args.cases, args.case_tasks)
    path = ts.save(args.out)
    print(f"task set {ts.name} version {ts.version()} written to {path}")
    decided = ts.meta.get("case_tasks") or {}
    if decided:
        by: dict[str, int] = {}
        for v in decided.values():
            key = v["by"] if v["task"] else "dropped (unknown)"
            by[key] = by.get(key, 0) + 1
        print("workflow cases filed by: " + ", ".join(f"{k} {n}" for k, n in sorted(by.items())))
    for row in ts.summary():
        kinds = ", ".join(f"{k} {v}" for k, v in row["items"].items()) or "no items"
        print(f"  {row['task']:<24} examples {row['examples']:>6}  holdout {row['holdout']:>5}  {kinds}")
    return 0


def _print_run(run) -> None:
    from rich.console import Console
    from rich.table import Table

    from leaderboard.derive import averages

    m = run.matrix
    console = Console()
    table = Table(title=f"{run.taskset_name} @ {run.taskset_version}  (settings {run.settings_key})")
    table.add_column("task")
    for e in m.experts:
        table.add_column(e, justify="right")
    table.add_column("items", justify="right")
    table.add_column("route")
    routes = run.task_map.routes if run.task_map else {}
    for t in m.tasks:
        cells = []
        for e in m.experts:
            v = m.scores.get(t, {}).get(e)
            n = m.counts.get(t, {}).get(e, 0)
            txt = "—" if v is None else f"{v:.3f}" + ("" if n == m.expected.get(t, 0) else f" ({n})")
            cells.append(f"[bold]{txt}[/]" if routes.get(t) == e else txt)
        table.add_row(t, *cells, str(m.expected.get(t, 0)), routes.get(t, ""))
    avg, macro = averages(m), averages(m, "macro")
    fb = run.task_map.fallback if run.task_map else None
    table.add_row("[italic]micro avg → unknown[/]",
                  *[("[bold]" if fb == e else "") + (f"{avg[e]:.3f}" if e in avg else "—") + ("[/]" if fb == e else "")
                    for e in m.experts], str(sum(m.expected.get(t, 0) for t in m.eval_tasks())), fb or "")
    table.add_row("[italic]macro avg[/]", *[f"{macro[e]:.3f}" if e in macro else "—" for e in m.experts], "", "")
    table.add_row("[italic]s / item[/]", *[f"{run.seconds_per_item[e]:.2f}" if e in run.seconds_per_item else "—"
                                          for e in m.experts], "", "")
    console.print(table)
    if run.evaluated:
        done = ", ".join(f"{e}: {run.evaluated.get(e, 0)} evaluated, {run.reused.get(e, 0)} reused"
                         for e in m.experts)
        console.print(done)
    missing = m.missing()
    if missing:
        console.print(f"[yellow]incomplete: {len(missing)} cells short of items; run build again to finish[/]")
    if run.task_map is not None:
        state = "new" if run.map_is_new else "latest"
        console.print(f"map ({state}): {run.task_map.version} -> {run.map_path}")
    for f in run.figures:
        console.print(f"figure: {f}")
    console.print(f"results: {run.out_dir}")
