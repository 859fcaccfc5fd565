"""`flowrouter train classifier`: fine-tune the classifier LLM (LoRA, trl SFT), gate it on dev accuracy, publish.

    labeled examples (the service's, or a shared set's train part)
        -> train / dev (stratified, seeded; dev is never trained on nor retrieved from)
        -> rows: the service's prompt (task list, retrieved examples without the example itself, ticket)
                 -> " <task>"                                                  (training/classifier_data.py)
        -> trl SFT, completion-only loss, LoRA on the classifier model            (training/classifier_sft.py)
        -> dev accuracy of the classifier with the serving LLM and with the adapter, through the evaluator
           `flowrouter leaderboard classifier` uses (leaderboard.classifier_eval.evaluate_modes)
        -> <out>/<classifier model>/vNNNN/ adapter + flowrouter-adapter.json + metrics.json + report.png
    gate (`decide`): the adapter serves only when its dev accuracy in `gate_mode` beats the serving
    classifier's by more than `classifier_sft.min_improvement` points
    publish (`publish`): the live config's classifier model gains `adapter=`; the classifier deployment
    loads it in its running replicas (Serve user_config -> reconfigure), nothing restarts.

The job runs through the training pool (training/pool.py: a Ray actor, or in-process with --local) like the
Planner/Scorer jobs, with the same progress bars and versioned output (training/artifacts.py).
"""

from __future__ import annotations

import gc
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from core.config import ClassifierConfig, FlowRouterConfig, ModelSpec
from core.embeddings import get_embedder
from core.paths import cache_dir
from experts.engines.registry import build_engine
from experts.engines.weights import resolve_weights
from leaderboard.classifier_eval import CachedEmbedder, EvalData, eval_config, evaluate_modes, load_eval_data
from router.classifier import TaskClassifier
from router.examples import ExampleIndex, load_examples, load_tasks
from training import artifacts
from training.classifier_data import sft_rows, split_examples, subset
from training.classifier_sft import train_classifier_sft
from training.gate import PublishError
from training.pool import JobOutcome, run_local, run_pool

log = logging.getLogger(__name__)

JOB = "classifier"
ADAPTER_DIR = "adapter"


class ClassifierTrainingError(RuntimeError):
    """Classifier training cannot start (no data, unknown dataset)."""


@dataclass
class ClassifierTrainOptions:
    dataset: str | None = None  # None: the config's own tasks and labeled examples (what the service serves)
    split: str = "dev"          # with a dataset: dev (train part of train, gate on dev) or test
    steps: int | None = None
    out_root: str | None = None
    local: bool = False
    address: str | None = None
    evaluate: bool = True
    show_progress: bool = True
    connect: Callable | None = None


# ---- data and settings ------------------------------------------------------------------------------
def load_data(cfg: FlowRouterConfig, dataset: str | None = None, split: str = "dev") -> EvalData:
    """(tasks, train, dev). The config's labeled examples split by `classifier_sft.dev_fraction`, or a shared
    set as the evaluator splits it (`--split dev`: its dev part is the gate's, the test part is not touched)."""
    sft, seed = cfg.training.classifier_sft, cfg.training.seed
    if dataset is None:
        examples = load_examples(cfg.tasks.examples)
        train, dev = split_examples(examples, sft.dev_fraction, seed, sft.max_examples, sft.dev_limit)
        return EvalData("service", "dev", load_tasks(cfg.tasks.tasks), train, dev,
                        meta={"examples": len(examples), "files": list(cfg.tasks.examples),
                              "dev_fraction": sft.dev_fraction, "seed": seed})
    data = load_eval_data(dataset, split)
    data.train = subset(data.train, sft.max_examples, seed)
    data.test = subset(data.test, sft.dev_limit, seed)
    return data


def classifier_settings(cfg: FlowRouterConfig, serving: ModelSpec, dataset: str | None = None) -> ClassifierConfig:
    """The classifier settings the gate evaluates: the service's own (config source), or the evaluator's tuned
    settings for a shared set (what `flowrouter leaderboard classifier --dataset` runs), with `serving` as LLM."""
    if dataset is None:
        return cfg.classifier.model_copy(update={"model": serving})
    return eval_config(model=serving, dataset=dataset)


def adapter_root(spec: ModelSpec, dataset: str | None) -> str:
    root = artifacts.expert_root(spec.name)
    return root if dataset is None else f"{root}-{dataset}"


def gate_modes(mode: str) -> list[str]:
    """The gate's mode first, then the other one (both are reported)."""
    return [mode, *(m for m in ("cascade", "llm+retrieval") if m != mode)]


def _mode_figures(report: dict) -> dict:
    out = {}
    for mode, r in report["modes"].items():
        if "accuracy" in r:
            out[mode] = {k: r.get(k) for k in ("accuracy", "macro_f1", "llm_share", "llm_decided", "seconds")}
    return out


# ---- the job ----------------------------------------------------------------------------------------
def run_classifier_job(payload: dict, progress=None) -> dict:
    """One classifier fine-tuning job (the pool's job function): data, SFT, dev evaluation before/after,
    versioned output. Returns the metrics (status ok) or raises; a failed run is kept as vNNNN.failed."""
    progress = progress or (lambda *a: None)
    cfg = FlowRouterConfig.model_validate(payload["config"])
    serving = ModelSpec.model_validate(payload["serving"])
    dataset, split = payload.get("dataset"), payload.get("split", "dev")
    sft, seed = cfg.training.classifier_sft, cfg.training.seed
    out_root = payload["out_root"]
    version, partial = artifacts.reserve_version(out_root, adapter_root(serving, dataset))
    t_start = time.perf_counter()
    try:
        progress("data", 0, 1)
        data = load_data(cfg, dataset, split)
        ccfg = classifier_settings(cfg, serving, dataset)
        embedder = CachedEmbedder(get_embedder(ccfg.embedder), progress=False)
        engine = build_engine(serving)
        index = ExampleIndex(data.train, embedder, ccfg.lexical_weight)
        embedder.save()
        # The prompt only needs the task list and the LLM's format: a plain classifier builds it (no fusion fit).
        plain = ccfg.model_copy(update={"fusion": "manual", "head_weight": 0.0,
                                        "cascade": ccfg.cascade.model_copy(update={"gate": "thresholds"})})
        rows = sft_rows(TaskClassifier(plain, data.tasks, index, engine).prompt, index, data.train, ccfg.top_k)
        progress("data", 1, 1)
        modes = gate_modes(sft.gate_mode)
        evaluate = payload.get("evaluate", True)
        before = None
        if evaluate:
            progress("dev: serving LLM", 0, 1)
            before = evaluate_modes(data, modes, ccfg, embedder=embedder, engine=engine, baseline=False,
                                    plots=False, progress=False)
            progress("dev: serving LLM", 1, 1)
        adapter_dir = partial / ADAPTER_DIR
        stage = train_classifier_sft(weights=resolve_weights(serving.base), init_adapter=None, out_dir=adapter_dir,
                                     rows=rows, encode=engine.split_continuation, cfg=sft, seed=seed,
                                     steps=payload.get("steps"), progress=progress)
        del engine
        gc.collect()
        after = None
        candidate = serving.model_copy(update={"adapter": str(adapter_dir)})
        if evaluate:
            progress("dev: with adapter", 0, 1)
            engine = build_engine(candidate)
            after = evaluate_modes(data, modes, ccfg.model_copy(update={"model": candidate}), embedder=embedder,
                                   engine=engine, baseline=False, plots=False, progress=False)
            del engine
            gc.collect()
            progress("dev: with adapter", 1, 1)
        metrics = {
            "status": "ok", "kind": "classifier", "version": version, "algorithm": sft.algorithm,
            "model": serving.name, "base": serving.base, "serving_adapter": serving.adapter,
            "tasks": [t.name for t in data.tasks], "data": {"source": dataset or "service", "split": data.split,
                                                            "train": len(data.train), "dev": len(data.test),
                                                            **data.meta, **stage.data},
            "gate_mode": sft.gate_mode, "min_improvement": sft.min_improvement,
            "sft": {"steps": stage.steps, "seconds": stage.seconds, "seconds_per_step": stage.seconds_per_step,
                    "history": stage.history, "settings": sft.model_dump(mode="json"), "seed": seed},
            "serving": _mode_figures(before) if before else None,
            "candidate": {**(_mode_figures(after) if after else {}), "adapter": str(adapter_dir)},
            "classifier_settings": ccfg.model_dump(mode="json", exclude={"model"}),
            "dir": str(partial), "seconds": round(time.perf_counter() - t_start, 1),
        }
        meta = {"kind": "classifier", "model": serving.name, "base": serving.base, "parent_adapter": serving.adapter,
                "version": version, "algorithm": sft.algorithm, "settings": sft.model_dump(mode="json"),
                "seed": seed, "tasks": metrics["tasks"], "data": metrics["data"],
                "train_ids": [q.id for q in data.train], "dev_ids": [q.id for q in data.test],
                "metrics": {"serving": metrics["serving"], "candidate": metrics["candidate"]},
                "created": artifacts.utc_now(), "libraries": artifacts.library_versions()}
        artifacts.write_metadata(adapter_dir, meta)
        (partial / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        artifacts.plot_classifier_report(metrics, partial / "report.png")
        final = artifacts.finish(partial, True)
        metrics = artifacts.rebase_paths(metrics, str(partial), str(final))
        metrics["report"] = str(final / "report.png")
        (final / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        return metrics
    except BaseException as exc:
        (partial / "error.txt").write_text(f"{type(exc).__name__}: {exc}")
        artifacts.finish(partial, False)
        raise


# ---- gate -------------------------------------------------------------------------------------------
@dataclass
class ClassifierDecision:
    model: str
    promote: bool
    reason: str
    mode: str = "cascade"
    serving_accuracy: float | None = None
    candidate_accuracy: float | None = None
    adapter: str | None = None
    tasks: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


def decide(serving: ModelSpec, metrics: dict | None, min_improvement: float = 0.0) -> ClassifierDecision:
    """Promote the adapter only when its dev accuracy (in the metrics' gate mode) is higher than the serving
    classifier's by more than `min_improvement` points; ties keep what serves."""
    if not metrics or metrics.get("status") != "ok":
        return ClassifierDecision(serving.name, False, f"training failed: {(metrics or {}).get('error', 'no result')}")
    mode = metrics.get("gate_mode", "cascade")
    s = ((metrics.get("serving") or {}).get(mode) or {}).get("accuracy")
    c = ((metrics.get("candidate") or {}).get(mode) or {}).get("accuracy")
    d = ClassifierDecision(serving.name, False, "", mode, s, c, (metrics.get("candidate") or {}).get("adapter"),
                           list(metrics.get("tasks") or []))
    if s is None or c is None:
        d.reason = "no dev evaluation (gate off): not promoted"
    elif 100 * c > 100 * s + min_improvement:
        d.promote = True
        d.reason = f"dev accuracy ({mode}) {100 * s:.1f}% -> {100 * c:.1f}% (needs > +{min_improvement:g} points)"
    else:
        d.reason = (f"dev accuracy ({mode}) {100 * s:.1f}% -> {100 * c:.1f}%: does not beat the serving classifier "
                    f"by more than {min_improvement:g} points; keeping {serving.adapter or 'the base weights'}")
    return d


# ---- publish ----------------------------------------------------------------------------------------
class ClassifierPublisher(Protocol):
    def live_config(self) -> FlowRouterConfig: ...

    def deploy(self, cfg: FlowRouterConfig) -> None: ...


@dataclass
class ClassifierPublishReport:
    published: bool = False
    adapter: str | None = None
    previous_adapter: str | None = None
    serving: list[dict] | None = None  # what the replicas report after the update (when the publisher can ask)
    note: str = ""


def set_adapter(publisher: ClassifierPublisher, adapter: str | None,
                tasks: list[str] | None = None) -> ClassifierPublishReport:
    """Make the running classifier serve `adapter` (None: the base weights). `tasks`: the task names the adapter
    was trained on, which must be the service's (its prompt lists them). Checks with the replicas when the
    publisher can ask them (`classifier_info`)."""
    live = publisher.live_config()
    if tasks is not None:
        live_tasks = [t.name for t in load_tasks(live.tasks.tasks)]
        if list(tasks) != live_tasks:
            raise PublishError(f"the adapter was trained on the tasks {tasks}, the service classifies into "
                               f"{live_tasks}: not published")
    report = ClassifierPublishReport(adapter=adapter, previous_adapter=live.classifier.model.adapter)
    if adapter == live.classifier.model.adapter:
        report.note = "the classifier already serves this adapter"
        return report
    raw = live.model_dump(mode="json", exclude={"source"})
    raw["classifier"]["model"]["adapter"] = adapter
    publisher.deploy(FlowRouterConfig.model_validate(raw))
    report.published = True
    ask = getattr(publisher, "classifier_info", None)
    if ask is not None:
        report.serving = ask()
        wrong = [i for i in report.serving if i.get("adapter") != adapter]
        if wrong:
            raise PublishError(f"the classifier replicas did not switch to {adapter}: {wrong}")
    return report


def publish(decision: ClassifierDecision, publisher: ClassifierPublisher) -> ClassifierPublishReport:
    """Publish a promoted adapter into the running classifier; anything else changes nothing."""
    if not decision.promote or not decision.adapter:
        return ClassifierPublishReport(note=f"not promoted ({decision.reason}): the classifier is unchanged")
    return set_adapter(publisher, decision.adapter, decision.tasks)


# ---- the driver -------------------------------------------------------------------------------------
@dataclass
class ClassifierTrainReport:
    out_root: str
    outcome: dict = field(default_factory=dict)
    decision: dict = field(default_factory=dict)
    published: dict | None = None
    summary_file: str | None = None


def train_classifier(cfg: FlowRouterConfig, opts: ClassifierTrainOptions, *,
                     publisher: ClassifierPublisher | None = None) -> ClassifierTrainReport:
    """Train, gate and (with a publisher) publish a classifier adapter; writes a run summary under <out>/runs/."""
    if opts.dataset is not None and publisher is not None:
        raise ClassifierTrainingError("an adapter trained on a shared set classifies into that set's tasks, not the "
                                      "service's: publish needs the service's own examples (no --dataset)")
    serving = (publisher.live_config() if publisher is not None else cfg).classifier.model
    out_root = opts.out_root or cfg.training.output_dir or str(cache_dir() / "training")
    payload = {"config": cfg.model_dump(mode="json", exclude={"source"}), "serving": serving.model_dump(mode="json"),
               "dataset": opts.dataset, "split": opts.split, "steps": opts.steps, "out_root": out_root,
               "evaluate": opts.evaluate}
    jobs = [(JOB, payload)]
    if opts.local:
        outcomes = run_local(jobs, run_classifier_job, show_progress=opts.show_progress)
    else:
        tc = cfg.training
        outcomes = run_pool(jobs, run_classifier_job, num_cpus=tc.num_cpus_per_job, num_gpus=tc.num_gpus_per_job,
                            threads=tc.threads, address=opts.address, show_progress=opts.show_progress,
                            connect=opts.connect)
    out: JobOutcome = outcomes[JOB]
    metrics = out.result if out.ok else {"status": "failed", "error": out.error}
    decision = decide(serving, metrics, cfg.training.classifier_sft.min_improvement)
    report = ClassifierTrainReport(out_root=out_root, decision=decision.as_dict(),
                                   outcome={"ok": out.ok, "seconds": out.seconds, "error": out.error,
                                            "dir": (out.result or {}).get("dir") if out.ok else None,
                                            "report": (out.result or {}).get("report") if out.ok else None,
                                            "metrics": out.result if out.ok else None})
    if publisher is not None:
        report.published = asdict(publish(decision, publisher))
    runs = Path(out_root) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    path = runs / f"{artifacts.utc_now().replace(':', '')}-classifier.json"
    path.write_text(json.dumps({"options": {k: v for k, v in asdict(opts).items() if k != "connect"},
                                **asdict(report)}, indent=2, default=str))
    report.summary_file = str(path)
    return report

