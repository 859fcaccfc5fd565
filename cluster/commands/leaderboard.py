"""`flowrouter leaderboard`: build a leaderboard, add a model to it, show it, export a task set.

    flowrouter leaderboard build [--config FILE | --expert SPEC.yaml ...] [--taskset NAME|DIR]
                                 [--max-items N] [--out DIR]
    flowrouter leaderboard add-model SPEC.yaml [--out DIR | --taskset NAME]
    flowrouter leaderboard show [--out DIR | --taskset NAME] [--json]
    flowrouter leaderboard taskset NAME|DIR --out DIR

Results, the derived map (`maps/<version>.yaml`) and figures are written to the results folder
(default `<cache>/leaderboards/<task set name>`). Publishing a map to a running cluster is
`flowrouter map publish FILE`.
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
    a.set_defaults(func=cmd_add_model)

    s = sub.add_parser("show", help="print the score matrix, timings and the latest derived map")
    s.add_argument("--out", help="results folder of the leaderboard")
    s.add_argument("--taskset", default=DEFAULT_TASKSET, help="locates the default results folder")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.set_defaults(func=cmd_show)

    t = sub.add_parser("taskset", help="write a task set to a folder (YAML + JSONL) to inspect or edit it")
    t.add_argument("name", metavar="NAME|DIR")
    t.add_argument("--cases", help="folder of runbooks to add as workflow cases (starter task sets)")
    t.add_argument("--out", required=True, help="folder to write")
    t.set_defaults(func=cmd_taskset)


def _taskset_args(p) -> None:
    from leaderboard.tasksets import TASKSETS

    p.add_argument("--taskset", default=DEFAULT_TASKSET,
                   help=f"task set name ({', '.join(TASKSETS)}) or a folder (saved task set, or a starter-style "
                        f"pack with tasks.yaml); default {DEFAULT_TASKSET}")
    p.add_argument("--cases", help="folder of runbooks turned into workflow items (starter-style task sets)")


def _default_out(taskset_name: str) -> Path:
    from core.config import slug
    from core.paths import cache_dir

    return cache_dir() / "leaderboards" / slug(Path(taskset_name).name)


def _load_taskset(name: str, cases: str | None):
    from leaderboard.tasksets import TaskSetError, load_taskset

    try:
        return load_taskset(name, cases_dir=cases)
    except (TaskSetError, FileNotFoundError) as exc:
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
    from leaderboard.runner import LeaderboardError, build_leaderboard

    specs, cfg = _specs(args)
    taskset = _load_taskset(args.taskset, args.cases)
    out = Path(args.out) if args.out else _default_out(taskset.name)
    max_items = None if args.max_items == 0 else args.max_items
    if max_items is not None and max_items < 0:
        raise CliError("--max-items must be >= 0")
    try:
        run = build_leaderboard(taskset, specs, out, max_items, seed=args.seed,
                                settings=EvalSettings(batch_size=max(1, args.batch_size)),
                                progress=not args.quiet, plots=not args.no_plots)
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
    return 0


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
                          "seconds_per_item": run.seconds_per_item,
                          "missing": [list(m) for m in run.matrix.missing()],
                          "map": run.task_map.model_dump() if run.task_map else None,
                          "map_file": str(run.map_path) if run.map_path else None}, indent=2, ensure_ascii=False))
        return 0
    _print_run(run)
    return 0


def cmd_taskset(args) -> int:
    ts = _load_taskset(args.name, args.cases)
    path = ts.save(args.out)
    print(f"task set {ts.name} version {ts.version()} written to {path}")
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
    avg = averages(m)
    fb = run.task_map.fallback if run.task_map else None
    table.add_row("[italic]avg → unknown[/]",
                  *[("[bold]" if fb == e else "") + (f"{avg[e]:.3f}" if e in avg else "—") + ("[/]" if fb == e else "")
                    for e in m.experts], "", fb or "")
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
