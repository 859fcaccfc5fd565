"""Building a leaderboard: every expert on every task, checkpointed, resumable, incremental.

`build_leaderboard(taskset, specs, out_dir, LeaderboardRunOptions(max_items=...))` samples at most
`max_items` items per task (deterministic), skips every (expert version, item) that already has a
result under the same evaluation settings, evaluates the rest with a progress bar and appends
results to Parquet part files every `flush_every` items (and on any exception), then derives the
score matrix, the map (eq. 5 / eq. 8) and the heatmap. Interrupt it, or let an engine fail, and the
next call continues with the items that have no result yet.

`add_model(spec, out_dir)` adds (or replaces, by name) one expert in an existing leaderboard:
only that expert is evaluated, the others' results are reused, and the map diff is returned.
"""

from __future__ import annotations

import csv
import gc
import json
import logging
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.config import ModelSpec
from core.task_map import MapError, TaskMap
from experts.engines.base import Engine
from experts.engines.registry import build_engine
from leaderboard.derive import MapDiff, ScoreMatrix, averages, content_hash, derive_map, diff_maps, matrix_from_rows
from leaderboard.evaluate import EvalSettings, ItemResult, PlanFn, SimilarityFn, evaluate_classifier, evaluate_items, sample_items
from leaderboard.results import ResultStore, read_manifest, utc_now, write_manifest
from leaderboard.tasksets import TaskSet, WorkflowItem

log = logging.getLogger(__name__)

EngineFactory = Callable[[ModelSpec], Engine]
PlanFnFactory = Callable[[ModelSpec, Engine], PlanFn]
Classifier = Callable[[list[str]], list[str]]


class LeaderboardError(RuntimeError):
    """A leaderboard that cannot be built or read (no items, no experts, no results folder)."""


def default_engine_factory(spec: ModelSpec) -> Engine:
    """The engine the service would build for `spec` (experts.engines.registry)."""
    return build_engine(spec)


@dataclass
class LeaderboardRun:
    """What a build (or `load_leaderboard`) produced."""

    out_dir: Path
    taskset_name: str
    taskset_version: str
    settings_key: str
    matrix: ScoreMatrix
    task_map: TaskMap | None
    map_path: Path | None
    map_is_new: bool = False
    evaluated: dict[str, int] = field(default_factory=dict)  # expert -> items evaluated in this call
    reused: dict[str, int] = field(default_factory=dict)  # expert -> items already present
    seconds_per_item: dict[str, float] = field(default_factory=dict)
    figures: list[Path] = field(default_factory=list)
    classification: dict | None = None

    @property
    def complete(self) -> bool:
        return not self.matrix.missing()


@dataclass
class AddModelResult:
    run: LeaderboardRun
    old_map: TaskMap | None
    new_map: TaskMap | None
    diff: MapDiff | None
    replaced: ModelSpec | None  # the spec of the same name that the new one replaced


def _progress(enabled: bool):
    if not enabled:
        return nullcontext(None)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn())


def _row(r: ItemResult, spec: ModelSpec, fp: str, key: str, tv: str, item_key: str) -> dict:
    return {"expert_version": fp, "expert": spec.name, "settings_key": key, "taskset_version": tv,
            "task": r.task, "item_id": r.item_id, "item_key": item_key, "kind": r.kind, "score": r.score,
            "correct": r.correct, "prediction": r.prediction, "reference": r.reference,
            "latency_s": r.latency_s, "detail": json.dumps(r.detail, ensure_ascii=False), "created": utc_now()}


@dataclass(frozen=True)
class LeaderboardRunOptions:
    """How a build samples items, what it evaluates, how often it checkpoints and what it draws."""

    max_items: int | None = None  # per task; None evaluates every item
    seed: int = 0  # item sampling
    settings: EvalSettings = field(default_factory=EvalSettings)
    only: frozenset[str] | None = None  # expert versions (fingerprints) to evaluate; None: all
    progress: bool = True
    flush_every: int = 8  # results buffered before a Parquet part file is written
    plots: bool = True

    def __post_init__(self) -> None:
        # Any iterable is accepted (a generator too); frozen so it can be read once per expert.
        if self.only is not None and not isinstance(self.only, frozenset):
            object.__setattr__(self, "only", frozenset(self.only))


@dataclass(frozen=True)
class LeaderboardHooks:
    """Injectable pieces of a build; every one left None uses the real implementation."""

    engine_factory: EngineFactory | None = None  # spec -> Engine; default: `default_engine_factory`
    plan_fn_factory: PlanFnFactory | None = None  # (spec, engine) -> planner for workflow items
    similarity_fn: SimilarityFn | None = None  # free-text scorer; default: MiniLM cosine
    classify: Classifier | None = None  # texts -> tasks, scored on the task set's holdout


@dataclass(frozen=True)
class _Build:
    """What the steps of one build share: the results folder, the item sample and the results key."""

    out: Path
    store: ResultStore
    taskset: TaskSet
    taskset_version: str
    settings_key: str
    options: LeaderboardRunOptions
    items: list
    item_keys: dict[str, str]


class _OverallBar:
    """One progress bar across all experts; every call is a no-op when there is no bar."""

    def __init__(self, bar, total: int):
        self._bar = bar
        self._task = bar.add_task("leaderboard", total=total) if bar else None

    def loading(self, spec: ModelSpec) -> None:
        if self._bar:
            self._bar.update(self._task, description=f"{spec.name}: loading")

    def advance(self, spec: ModelSpec, batch: list[ItemResult]) -> None:
        if self._bar:
            self._bar.update(self._task, advance=len(batch), description=f"{spec.name} · {batch[0].task}")


def build_leaderboard(
    taskset: TaskSet,
    specs: Sequence[ModelSpec],
    out_dir: str | Path,
    options: LeaderboardRunOptions | None = None,
    *,
    hooks: LeaderboardHooks | None = None,
) -> LeaderboardRun:
    """Evaluate every expert in `specs` on at most `options.max_items` items per task of `taskset`.

    `options.only` (expert versions) restricts evaluation to those experts; the others' stored
    results are still used for the matrix. `hooks.engine_factory(spec)` loads an expert (default:
    the registry / TransformersEngine), only when it has items left to evaluate.
    `hooks.plan_fn_factory(spec, engine)` gives the planner for workflow items.
    `hooks.classify(texts) -> tasks`, when given, is scored on the task set's holdout (confusion
    matrix figure and classification.json).
    """
    options = options or LeaderboardRunOptions()
    hooks = hooks or LeaderboardHooks()
    specs = list(specs)
    _check_inputs(taskset, specs)
    build = _start_build(taskset, specs, Path(out_dir), options)
    pending, reused = _pending_items(build, specs)
    evaluated = _evaluate_pending(build, specs, pending, hooks)
    run = _collect(build.out, build.store, taskset, build.items, build.item_keys, specs, build.settings_key)
    run.evaluated, run.reused = evaluated, reused
    _finish(run, taskset, options, hooks.classify)
    return run


def _check_inputs(taskset: TaskSet, specs: list[ModelSpec]) -> None:
    """Refuse a build without experts, with duplicate expert names or without evaluation items."""
    if not specs:
        raise LeaderboardError("no experts to evaluate")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise LeaderboardError(f"expert names must be unique: {names}")
    if not taskset.items:
        raise LeaderboardError(f"task set {taskset.name!r} has no evaluation items (classification only): "
                               "experts cannot be ranked on it; use it to evaluate the classifier, or add "
                               "items (MC, free text or workflow cases)")


def _start_build(taskset: TaskSet, specs: list[ModelSpec], out: Path, options: LeaderboardRunOptions) -> _Build:
    """Create the results folder, store the task set and the manifest, and sample the items."""
    out.mkdir(parents=True, exist_ok=True)
    store = ResultStore(out)
    tv, key = taskset.version(), options.settings.key()
    ts_dir = out / "tasksets" / tv
    if not (ts_dir / "taskset.yaml").exists():
        taskset.save(ts_dir)
    write_manifest(out, {
        "taskset": {"name": taskset.name, "version": tv, "dir": str(ts_dir.relative_to(out))},
        "settings": asdict(options.settings), "settings_key": key, "max_items": options.max_items,
        "seed": options.seed, "experts": [s.model_dump(mode="json") for s in specs], "updated": utc_now(),
    })
    items = sample_items(taskset.items, options.max_items, options.seed)
    return _Build(out=out, store=store, taskset=taskset, taskset_version=tv, settings_key=key, options=options,
                  items=items, item_keys={i.id: i.key() for i in items})


def _pending_items(build: _Build, specs: list[ModelSpec]) -> tuple[dict[str, list], dict[str, int]]:
    """Per expert to evaluate, the sampled items without a stored result; per expert, how many have one."""
    pending: dict[str, list] = {}
    reused: dict[str, int] = {}
    only = build.options.only
    for spec in specs:
        done = build.store.done(spec.fingerprint(), build.settings_key)
        todo = [i for i in build.items if build.item_keys[i.id] not in done]
        reused[spec.name] = len(build.items) - len(todo)
        if only is None or spec.fingerprint() in only:
            pending[spec.name] = todo
    return pending, reused


def _evaluate_pending(build: _Build, specs: list[ModelSpec], pending: dict[str, list],
                      hooks: LeaderboardHooks) -> dict[str, int]:
    """Evaluate every expert's pending items, one loaded engine at a time; items evaluated per expert."""
    evaluated = {s.name: 0 for s in specs}
    total = sum(len(v) for v in pending.values())
    log.info("leaderboard %s@%s: %d items/task selected, %d evaluations to run", build.taskset.name,
             build.taskset_version, build.options.max_items or -1, total)
    engine_factory = hooks.engine_factory or default_engine_factory
    with _progress(build.options.progress and total > 0) as bar:
        overall = _OverallBar(bar, total)
        for spec in specs:
            todo = pending.get(spec.name) or []
            if todo:
                overall.loading(spec)
                evaluated[spec.name] = _evaluate_expert(build, spec, todo, engine_factory, hooks, overall)
    return evaluated


def _evaluate_expert(build: _Build, spec: ModelSpec, todo: list, engine_factory: EngineFactory,
                     hooks: LeaderboardHooks, overall: _OverallBar) -> int:
    """Load `spec`'s engine, evaluate and store its pending items, and free the engine again."""
    engine = engine_factory(spec)
    try:
        plan_fn = None
        if hooks.plan_fn_factory and any(isinstance(i, WorkflowItem) for i in todo):
            plan_fn = hooks.plan_fn_factory(spec, engine)
        return _evaluate_and_store(build, spec, engine, todo, plan_fn, hooks.similarity_fn, overall)
    finally:
        engine.close()
        del engine
        gc.collect()


def _evaluate_and_store(build: _Build, spec: ModelSpec, engine: Engine, todo: list, plan_fn: PlanFn | None,
                        similarity_fn: SimilarityFn | None, overall: _OverallBar) -> int:
    """Evaluate `todo` in batches, writing results every `flush_every` rows; the number evaluated."""
    fp = spec.fingerprint()
    count = 0
    buffer: list[dict] = []
    try:
        for batch in evaluate_items(engine, spec, todo, settings=build.options.settings, plan_fn=plan_fn,
                                    similarity_fn=similarity_fn):
            buffer.extend(_row(r, spec, fp, build.settings_key, build.taskset_version, build.item_keys[r.item_id])
                          for r in batch)
            count += len(batch)
            overall.advance(spec, batch)
            if len(buffer) >= build.options.flush_every:
                build.store.write(buffer)
                buffer = []
    finally:
        # Whatever finished before a failure or an interrupt is kept for the next run.
        build.store.write(buffer)
    return count


def _collect(out: Path, store: ResultStore, taskset: TaskSet, items: list, item_keys: dict, specs, key) -> LeaderboardRun:
    wanted = {item_keys[i.id] for i in items}
    rows, latency = [], {}
    for spec in specs:
        own = [r for r in store.rows([spec.fingerprint()], key) if r["item_key"] in wanted]
        rows.extend({**r, "expert": spec.name} for r in own)
        if own:
            latency[spec.name] = sum(r["latency_s"] or 0.0 for r in own) / len(own)
    expected: dict[str, int] = {}
    for i in items:
        expected[i.task] = expected.get(i.task, 0) + 1
    matrix = matrix_from_rows(rows, taskset.task_names, [s.name for s in specs], expected)
    return LeaderboardRun(out_dir=out, taskset_name=taskset.name, taskset_version=taskset.version(),
                          settings_key=key, matrix=matrix, task_map=None, map_path=None,
                          seconds_per_item=latency)


def latest_map(out_dir: str | Path) -> tuple[TaskMap, Path] | None:
    """The most recently derived map in `<out_dir>/maps`, with its file."""
    folder = Path(out_dir) / "maps"
    found = []
    for p in folder.glob("*.yaml") if folder.exists() else []:
        try:
            m = TaskMap.load(p)
        except MapError:
            continue
        found.append((m.created, p.name, m, p))
    if not found:
        return None
    found.sort(key=lambda x: (x[0], x[1]))
    return found[-1][2], found[-1][3]


def _finish(run: LeaderboardRun, taskset: TaskSet, options: LeaderboardRunOptions,
            classify: Classifier | None) -> None:
    """Write scores.csv, derive the map when every cell is complete, score the classifier, draw the
    figures and write summary.json."""
    _write_scores(run.out_dir / "scores.csv", run.matrix, run.seconds_per_item)
    if run.complete:
        _store_map(run, taskset, options.max_items)
    else:
        log.warning("leaderboard incomplete (%d cells short of items): no map derived", len(run.matrix.missing()))
    if classify is not None and taskset.holdout:
        _score_classifier(run, taskset, classify, options.plots)
    if options.plots and run.matrix.eval_tasks():
        _plot_matrix(run, taskset, options.max_items)
    _write_summary(run, taskset)


def _store_map(run: LeaderboardRun, taskset: TaskSet, max_items: int | None) -> None:
    """Derive the map from the matrix; reuse the latest stored map when it is the same, else write it."""
    out, matrix = run.out_dir, run.matrix
    source = (f"leaderboard {taskset.name}@{run.taskset_version} settings {run.settings_key} "
              f"max_items {max_items if max_items is not None else 'all'}; experts "
              + ", ".join(matrix.experts))
    new = derive_map(matrix, source=source)
    prev = latest_map(out)
    if prev and content_hash(prev[0]) == content_hash(new) and prev[0].routes == new.routes:
        run.task_map, run.map_path = prev
    else:
        (out / "maps").mkdir(exist_ok=True)
        path = out / "maps" / f"{new.version}.yaml"
        new.dump(path)
        run.task_map, run.map_path, run.map_is_new = new, path, True


def _score_classifier(run: LeaderboardRun, taskset: TaskSet, classify: Classifier, plots: bool) -> None:
    """Score `classify` on the holdout into classification.json (and confusion.png with plots)."""

    report = evaluate_classifier(classify, taskset.holdout, taskset.task_names)
    run.classification = report.as_dict()
    (run.out_dir / "classification.json").write_text(json.dumps(run.classification, indent=2), encoding="utf-8")
    if plots:
        from leaderboard.plots import plot_confusion

        run.figures.append(plot_confusion(report, run.out_dir / "confusion.png",
                                          title=f"Classifier on {taskset.name} holdout"))


def _plot_matrix(run: LeaderboardRun, taskset: TaskSet, max_items: int | None) -> None:
    """Draw the score matrix into leaderboard.png."""
    from leaderboard.plots import plot_leaderboard

    title = f"{taskset.name} @ {run.taskset_version} (max {max_items or 'all'} items/task)"
    run.figures.append(plot_leaderboard(run.matrix, run.out_dir / "leaderboard.png", title=title))


def _write_summary(run: LeaderboardRun, taskset: TaskSet) -> None:
    """Write summary.json: matrix, averages, latency, the current map and the missing cells."""
    out, matrix = run.out_dir, run.matrix
    summary = {"taskset": taskset.name, "taskset_version": run.taskset_version, "settings_key": run.settings_key,
               "matrix": matrix.to_rows(), "averages": averages(matrix),
               "macro_averages": averages(matrix, "macro"), "seconds_per_item": run.seconds_per_item,
               "map": run.task_map.version if run.task_map else None,
               "map_file": str(run.map_path.relative_to(out)) if run.map_path else None,
               "missing": [list(m) for m in matrix.missing()], "updated": utc_now()}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")


def _write_scores(path: Path, matrix: ScoreMatrix, latency: dict[str, float]) -> None:
    avg = averages(matrix)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["task", *matrix.experts, "items"])
        for t in matrix.eval_tasks():
            w.writerow([t, *[f"{matrix.scores[t][e]:.4f}" if e in matrix.scores[t] else "" for e in matrix.experts],
                        matrix.expected.get(t, 0)])
        w.writerow(["average", *[f"{avg[e]:.4f}" if e in avg else "" for e in matrix.experts], ""])
        w.writerow(["seconds_per_item", *[f"{latency[e]:.3f}" if e in latency else "" for e in matrix.experts], ""])
    tmp.replace(path)


def _manifest_or_fail(out_dir: str | Path) -> dict:
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise LeaderboardError(f"no leaderboard in {out_dir} (no leaderboard.json): run `leaderboard build` first")
    return manifest


def _manifest_taskset(out_dir: Path, manifest: dict) -> TaskSet:
    return TaskSet.load(out_dir / manifest["taskset"]["dir"])


def load_leaderboard(out_dir: str | Path, plots: bool = False) -> LeaderboardRun:
    """The current matrix and latest map of an existing results folder, without evaluating."""
    out = Path(out_dir)
    manifest = _manifest_or_fail(out)
    taskset = _manifest_taskset(out, manifest)
    specs = [ModelSpec.model_validate(s) for s in manifest["experts"]]
    items = sample_items(taskset.items, manifest.get("max_items"), manifest.get("seed", 0))
    item_keys = {i.id: i.key() for i in items}
    run = _collect(out, ResultStore(out), taskset, items, item_keys, specs, manifest["settings_key"])
    found = latest_map(out)
    if found:
        run.task_map, run.map_path = found
    if plots and run.matrix.eval_tasks():
        from leaderboard.plots import plot_leaderboard

        run.figures.append(plot_leaderboard(run.matrix, out / "leaderboard.png", title=f"{taskset.name}"))
    return run


def add_model(
    spec: ModelSpec,
    out_dir: str | Path,
    *,
    taskset: TaskSet | None = None,
    engine_factory: EngineFactory | None = None,
    plan_fn_factory: PlanFnFactory | None = None,
    similarity_fn: SimilarityFn | None = None,
    progress: bool = True,
    plots: bool = True,
) -> AddModelResult:
    """Add `spec` to the leaderboard in `out_dir` (replacing an expert of the same name), evaluating
    only it: the task set, item sample, settings and other experts come from the folder's
    manifest. Returns the previous latest map, the new one and their diff."""
    out = Path(out_dir)
    manifest = _manifest_or_fail(out)
    taskset = taskset or _manifest_taskset(out, manifest)
    old_specs = [ModelSpec.model_validate(s) for s in manifest["experts"]]
    replaced = next((s for s in old_specs if s.name == spec.name), None)
    specs = [s for s in old_specs if s.name != spec.name] + [spec]
    prev = latest_map(out)
    options = LeaderboardRunOptions(max_items=manifest.get("max_items"), seed=manifest.get("seed", 0),
                                    settings=EvalSettings(**manifest["settings"]), only=frozenset([spec.fingerprint()]),
                                    progress=progress, plots=plots)
    hooks = LeaderboardHooks(engine_factory=engine_factory, plan_fn_factory=plan_fn_factory,
                             similarity_fn=similarity_fn)
    run = build_leaderboard(taskset, specs, out, options, hooks=hooks)
    old_map = prev[0] if prev else None
    diff = diff_maps(old_map, run.task_map) if run.task_map else None
    return AddModelResult(run=run, old_map=old_map, new_map=run.task_map, diff=diff, replaced=replaced)
