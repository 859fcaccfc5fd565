"""Classifier evaluation on the shared labeled sets: every mode, a TF-IDF + LinearSVC baseline, LLM share.

    flowrouter leaderboard classifier --dataset owl-bench|it-tickets [--split test|dev]
        [--modes retrieval,llm,llm+retrieval,cascade] [--limit N] [--train-limit N] [--embedder minilm|e5-small]

The dataset's labeled queries are split as the leaderboard task sets split them (stratified,
`split_labeled(queries, 0.2, seed 0)`): the 80% train part is the classifier's retrieval examples
(and the supervised head's and the baseline's training data), the 20% test part is evaluated.
`--split dev` carves a development part out of train instead (`split_labeled(train, 0.2, seed 1)`),
for tuning settings without looking at the test part. `--limit` / `--train-limit` take stratified
subsets (deterministic) to keep a run affordable on a small CPU.

The classifier is the service's TaskClassifier (router/classifier.py) built on the dataset's own
tasks (names plus the short descriptions below) and examples; every ticket here belongs to some task,
so `unknown` is switched off (unknown_threshold 0, min_neighbour_similarity -1) and would count as
an error. The baseline is trained and tested on exactly the same texts in the same run.

With the defaults (`fusion: learned`, `cascade.gate: learned`) the classifier is fitted exactly as the
service fits it (router/fusion.py `load_or_fit`): vote + MiniLM head + calibrated lexical SVC with
weights learned out of fold on the training part, saved as a versioned artefact (its version and
weights are in the report), and the LLM gate learned on the same out-of-fold examples. The sentence
embedder is `cfg.embedder` (`--embedder`, else the set's tuned default); cached vectors are kept per
embedder. For every mode that asks the LLM the report gives `llm_decided`: the accuracy on the tickets
the LLM decided, next to what retrieval alone said on those same tickets. LLM answers persist per model
version in `<cache>/classifier-eval/llm-<fingerprint>.json`, so re-runs and other modes do not ask again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from core.config import CascadeConfig, ClassifierConfig, ModelSpec
from core.embeddings import get_embedder
from core.paths import cache_dir
from core.schemas import LabeledQuery
from leaderboard.metrics import classification_report
from router.classifier import MODES, TaskClassifier
from router.examples import EXAMPLE_ROLE, ExampleIndex, TaskInfo
from router.importers import (
    IT_TICKET_TASKS,
    OWL_DESCRIPTIONS,
    OWL_TASKS,
    LabeledDataError,
    import_it_tickets,
    import_owl_bench,
    load_labeled,
    split_labeled,
)

log = logging.getLogger(__name__)

IT_TICKET_DESCRIPTIONS = {
    "hardware": "laptops, desktops, monitors, printers, docking stations, broken or faulty equipment",
    "hr-support": "HR requests: leave, payroll, contracts, new starters and leavers, employee data",
    "access": "accounts, passwords, logins, permissions to systems, folders and mailboxes",
    "miscellaneous": "general requests and questions that fit no other topic",
    "storage": "disk space, shared drives, mailbox size, file storage and backups",
    "purchase": "ordering equipment, software licences, purchase orders and quotes",
    "internal-project": "work items and changes for internal projects",
    "administrative-rights": "local admin rights, software installation permissions",
}

DATASETS = ("owl-bench", "it-tickets")

# Settings used for the datasets unless the command line says otherwise (chosen on --split dev).
# fusion/gate "learned": vote + head + calibrated lexical SVC with out-of-fold weights and the learned LLM gate
# (router/fusion.py); "manual"/"thresholds" is the earlier vote + head_weight mix and agreement thresholds.
EVAL_DEFAULTS = {"top_k": 16, "lexical_weight": 0.5, "vote_temperature": 0.05, "head_weight": 0.7, "head_c": 4.0,
                 "llm_weight": 0.3, "prompt_examples": 4, "min_agreement": 0.5, "fusion": "learned",
                 "gate": "learned", "max_llm_share": 0.2, "components": ["vote", "head", "svc"], "svc_c": 1.0,
                 "fusion_method": "auto", "svc_calibration": "sigmoid", "embedder": "minilm"}
# Per-dataset settings over EVAL_DEFAULTS, chosen on that set's dev split (docs/benchmarks.md).
DATASET_DEFAULTS: dict[str, dict] = {}


@dataclass
class EvalData:
    name: str
    split: str
    tasks: list[TaskInfo]
    train: list[LabeledQuery]
    test: list[LabeledQuery]
    meta: dict = field(default_factory=dict)


def _subset(items: list[LabeledQuery], n: int | None, seed: int) -> list[LabeledQuery]:
    """A stratified, deterministic subset of about n items (all when n is None or larger)."""

    if n is None or n >= len(items):
        return items
    _, part = split_labeled(items, n / len(items), seed)
    return part


def load_eval_data(dataset: str, split: str = "test", limit: int | None = None, train_limit: int | None = None,
                   test_fraction: float = 0.2, seed: int = 0) -> EvalData:

    if dataset == "owl-bench":
        queries = import_owl_bench()
        tasks = [TaskInfo(t, OWL_DESCRIPTIONS.get(t, "")) for t in OWL_TASKS.values()]
    elif dataset in ("it-tickets", "it-service-tickets"):
        dataset = "it-tickets"
        queries = import_it_tickets()
        tasks = [TaskInfo(t, IT_TICKET_DESCRIPTIONS.get(t, "")) for t in IT_TICKET_TASKS.values()]
    else:
        raise ValueError(f"unknown dataset {dataset!r}; use one of {DATASETS}")
    present = {q.task for q in queries}
    tasks = [t for t in tasks if t.name in present]
    train, test = split_labeled(queries, test_fraction, seed)
    if split == "dev":
        train, test = split_labeled(train, test_fraction, seed + 1)
    elif split != "test":
        raise ValueError("split must be test or dev")
    full = (len(train), len(test))
    train, test = _subset(train, train_limit, seed), _subset(test, limit, seed)
    return EvalData(dataset, split, tasks, train, test,
                    meta={"queries": len(queries), "train_full": full[0], "test_full": full[1],
                          "test_fraction": test_fraction, "seed": seed})


def load_eval_files(train_path: str | Path, test_path: str | Path, *, text_col: str = "text",
                    task_col: str = "task", id_col: str = "id", limit: int | None = None,
                    train_limit: int | None = None, seed: int = 0) -> EvalData:
    """A team's own labeled tickets: train and test files in the formats `load_labeled` reads (JSONL, JSON,
    CSV, TSV). The tasks are the training file's labels; a test label the training file lacks is an error,
    since no classifier could answer it."""
    train = load_labeled(train_path, text_col, task_col, id_col)
    test = load_labeled(test_path, text_col, task_col, id_col)
    if not train or not test:
        empty = train_path if not train else test_path
        raise LabeledDataError(f"{empty}: no labeled rows")
    names = sorted({q.task for q in train})
    unseen = sorted({q.task for q in test} - set(names))
    if unseen:
        raise LabeledDataError(f"{test_path}: task(s) {unseen} never occur in {train_path}; the classifier can "
                               f"only answer {names}")
    full = (len(train), len(test))
    train, test = _subset(train, train_limit, seed), _subset(test, limit, seed)
    return EvalData(Path(test_path).stem, "file", [TaskInfo(n) for n in names], train, test,
                    meta={"train_file": str(train_path), "test_file": str(test_path), "train_full": full[0],
                          "test_full": full[1], "seed": seed})


CASCADE_OVERRIDES = ("min_agreement", "gate", "max_llm_share")


def service_config(base: ClassifierConfig, overrides: dict | None = None) -> ClassifierConfig:
    """The service's classifier settings with the command line's overrides (validated like the config)."""
    o = dict(overrides or {})
    cascade = {k: o.pop(k) for k in CASCADE_OVERRIDES if k in o}
    raw = base.model_dump()
    raw.update(o)
    raw["cascade"] = {**raw["cascade"], **cascade}
    return ClassifierConfig.model_validate(raw)


def baseline_svc(train: list[LabeledQuery], test: list[LabeledQuery]) -> list[str]:
    """TF-IDF (word 1-2 grams + char_wb 2-4 grams, sublinear tf) + LinearSVC(C=1): the usual strong
    linear text baseline (character n-grams make it work on Chinese too)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion, make_pipeline
    from sklearn.svm import LinearSVC

    features = FeatureUnion([
        ("word", TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True,
                                 token_pattern=r"(?u)\b\w+\b")),
        ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), sublinear_tf=True)),
    ])
    model = make_pipeline(features, LinearSVC(C=1.0))
    model.fit([q.text for q in train], [q.task for q in train])
    return list(model.predict([q.text for q in test]))


def cache_name(embedder) -> str:
    """The embedder's registry name (its class name for stand-ins): what keeps cached vectors apart."""
    return getattr(embedder, "name", None) or type(embedder).__name__


class CachedEmbedder:
    """Vectors memoised on disk per embedder (`<cache>/classifier-eval/embeddings.npz` for MiniLM,
    `embeddings-<name>.npz` for the others; keyed by text hash, and by role where the embedder has
    query/passage prefixes): re-running an evaluation (other modes, other settings) does not re-encode
    thousands of texts. A file written by another embedder is ignored and overwritten, never mixed in."""

    def __init__(self, embedder, path: str | Path | None = None, progress: bool = True):
        import numpy as np

        self.embedder, self.dim, self.progress = embedder, embedder.dim, progress
        self.name = cache_name(embedder)
        self.uses_roles = bool(getattr(embedder, "uses_roles", False))
        default = "embeddings.npz" if self.name == "minilm" else f"embeddings-{self.name}.npz"
        self.path = Path(path) if path else cache_dir() / "classifier-eval" / default
        self.vectors: dict[str, np.ndarray] = {}
        if self.path.exists():
            with np.load(self.path) as z:
                # Files from before the name was stored hold MiniLM vectors.
                stored = str(z["embedder"]) if "embedder" in z.files else "minilm"
                if stored == self.name:
                    self.vectors = dict(zip(z["keys"].tolist(), z["vectors"]))
                else:
                    log.warning("%s holds %s vectors, not %s: re-encoding", self.path, stored, self.name)
        self.dirty = False

    def _key(self, text: str, role: str = "query") -> str:
        blob = f"{role}\x00{text}" if self.uses_roles else text
        return hashlib.sha1(blob.encode("utf-8")).hexdigest()

    def encode(self, texts: list[str], **kw):
        import numpy as np

        role = kw.setdefault("role", "query")
        keys = [self._key(t, role) for t in texts]
        todo = list(dict.fromkeys(k for k in keys if k not in self.vectors))
        if todo:
            first = dict(zip(keys, texts))
            # Tens of thousands of training texts take minutes on a CPU: show the encoder's progress bar.
            kw.setdefault("progress", self.progress and len(todo) > 512)
            for k, v in zip(todo, self.embedder.encode([first[k] for k in todo], **kw)):
                self.vectors[k] = v
            self.dirty = True
        return np.ascontiguousarray(np.stack([self.vectors[k] for k in keys]) if keys
                                    else np.zeros((0, self.dim)), dtype=np.float32)

    def save(self) -> None:
        import numpy as np

        if not self.dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keys = list(self.vectors)
        tmp = self.path.with_name(self.path.stem + ".tmp.npz")
        np.savez(tmp, keys=np.array(keys), vectors=np.stack([self.vectors[k] for k in keys]),
                 embedder=np.array(self.name))
        tmp.replace(self.path)
        self.dirty = False


class _MemoLLM:
    """Memoises label_probs per prompt so modes that ask the same question share one forward pass."""

    def __init__(self, engine, path: str | Path | None = None):
        """`path`: a JSON file the answers persist in (keyed by prompt and labels; one file per model
        version), so a re-run does not ask the LLM again."""
        self.engine = engine
        self.memo: dict[str, dict] = {}
        self.forward = 0
        self.path = Path(path) if path else None
        if self.path and self.path.exists():
            try:
                self.memo = json.loads(self.path.read_text(encoding="utf-8"))
            except ValueError:
                self.memo = {}
        self.dirty = False

    @staticmethod
    def _key(prompt: str, labels) -> str:
        return hashlib.sha1("\x00".join([prompt, *labels]).encode("utf-8")).hexdigest()

    def format_prompt(self, *a, **kw):
        return self.engine.format_prompt(*a, **kw)

    def label_probs(self, prompts, labels):
        keys = [self._key(p, labels) for p in prompts]
        todo = list(dict.fromkeys((k, p) for k, p in zip(keys, prompts) if k not in self.memo))
        if todo:
            for (k, _), d in zip(todo, self.engine.label_probs([p for _, p in todo], labels)):
                self.memo[k] = d
            self.forward += len(todo)
            self.dirty = True
        return [self.memo[k] for k in keys]

    def save(self) -> None:
        if self.path and self.dirty:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists():  # another run may have added answers since this one read the file
                try:
                    self.memo = {**json.loads(self.path.read_text(encoding="utf-8")), **self.memo}
                except ValueError:
                    pass
            tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.memo), encoding="utf-8")
            tmp.replace(self.path)
            self.dirty = False


def _sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign (McNemar) test p-value over the discordant tickets."""
    from scipy.stats import binomtest

    return float(binomtest(wins, wins + losses, 0.5).pvalue) if wins + losses else 1.0


def eval_config(overrides: dict | None = None, model: ModelSpec | None = None,
                dataset: str | None = None) -> ClassifierConfig:
    """The evaluator's settings: EVAL_DEFAULTS, then the dataset's own (DATASET_DEFAULTS), then `overrides`."""
    o = {**EVAL_DEFAULTS, **DATASET_DEFAULTS.get(dataset or "", {}), **(overrides or {})}
    return ClassifierConfig(
        model=model or ModelSpec(name="classifier-smollm2", base="smollm2-135m-instruct"), embedder=o["embedder"],
        top_k=o["top_k"], prompt_examples=o["prompt_examples"], lexical_weight=o["lexical_weight"],
        llm_weight=o["llm_weight"], vote_temperature=o["vote_temperature"], head_weight=o["head_weight"],
        head_c=o["head_c"], unknown_threshold=0.0, min_neighbour_similarity=-1.0, fusion=o["fusion"],
        components=o["components"], svc_c=o["svc_c"], fusion_method=o["fusion_method"],
        svc_calibration=o["svc_calibration"],
        cascade=CascadeConfig(enabled=True, min_agreement=o["min_agreement"], min_similarity=-1.0, gate=o["gate"],
                              max_llm_share=o["max_llm_share"]))


def build_classifier(data: EvalData, cfg: ClassifierConfig, *, embedder=None, engine=None,
                     progress: bool = True, example_role: str = EXAMPLE_ROLE) -> TaskClassifier:
    """The service's classifier over `data.train`: it fits or loads the artefact (and the gate) as the service
    does, with the configured embedder (`cfg.embedder`) unless `embedder` is given. Embeddings of the train
    and test texts, and the LLM's answers, are cached on disk between runs. `example_role`: the role the
    labeled examples are encoded in (the tickets are queries)."""
    if embedder is None:
        embedder = get_embedder(cfg.embedder)
    if not isinstance(embedder, CachedEmbedder):
        embedder = CachedEmbedder(embedder, progress=progress)
    embedder.encode([q.text for q in data.test], role="query")  # encoded once, saved with the training texts
    index = ExampleIndex(data.train, embedder, cfg.lexical_weight, example_role=example_role)
    embedder.save()
    llm = None
    if engine is not None:
        llm = _MemoLLM(engine, cache_dir() / "classifier-eval" / f"llm-{cfg.model.fingerprint()}.json")
    clf = TaskClassifier(cfg, data.tasks, index, llm)
    if llm is not None:
        llm.save()
    return clf


def evaluate_modes(data: EvalData, modes: list[str], cfg: ClassifierConfig, *, embedder=None, engine=None,
                   out_dir: str | Path | None = None, batch_size: int = 16, progress: bool = True,
                   plots: bool = True, baseline: bool = True, example_role: str = EXAMPLE_ROLE) -> dict:
    """Accuracy, macro-F1, LLM share and time per mode (+ the baseline) on `data.test`, with the embedder
    `cfg.embedder` (or `embedder`)."""
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ValueError(f"unknown modes {bad}; use {', '.join(MODES)}")
    labels = [t.name for t in data.tasks]
    gold = [q.task for q in data.test]
    report: dict = {"dataset": data.name, "split": data.split, "n_train": len(data.train), "n_test": len(data.test),
                    "meta": data.meta, "config": cfg.model_dump(mode="json"), "modes": {}, "figures": []}
    out = Path(out_dir) if out_dir else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    base_pred: list[str] | None = None
    if baseline:
        t0 = time.perf_counter()
        pred = base_pred = baseline_svc(data.train, data.test)
        r = classification_report(gold, pred, labels)
        report["baseline"] = {"name": "TF-IDF (word 1-2 + char 2-4) + LinearSVC", "accuracy": r.accuracy,
                              "macro_f1": r.macro_f1, "seconds": time.perf_counter() - t0}
    t0 = time.perf_counter()
    clf = build_classifier(data, cfg, embedder=embedder, engine=engine, progress=progress, example_role=example_role)
    report["embedder"] = {"name": cache_name(getattr(clf.index.embedder, "embedder", clf.index.embedder)),
                          "example_role": example_role}
    llm = clf.llm
    report["setup_seconds"] = time.perf_counter() - t0
    if clf.fusion is not None:
        m = clf.fusion.manifest
        report["artefact"] = {"path": str(clf.artefact), "version": m["version"], "method": clf.fusion.method,
                              "weights": m["weights"],
                              "oof": m.get("oof"), "folds": m.get("folds"), "fit_seconds": m.get("fit_seconds")}
    if clf.gate is not None:
        report["gate"] = {k: v for k, v in clf.gate.items() if k != "settings"}
    texts = [q.text for q in data.test]
    batches = [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]
    memo: dict[int, tuple] = {}
    orig = clf.retrieve

    def retrieve(batch):  # the same batches in every mode: retrieval runs once per batch
        key = hash(tuple(batch))
        if key not in memo:
            memo[key] = orig(batch)
        return memo[key]

    clf.retrieve = retrieve

    if progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    else:
        bar = nullcontext(None)
    retrieval_pred: list[str] | None = None

    def retrieval_predictions() -> list[str]:
        nonlocal retrieval_pred
        if retrieval_pred is None:
            retrieval_pred = [r.task for batch in batches for r in clf.classify(batch, mode="retrieval")]
        return retrieval_pred

    with bar as b:
        for mode in modes:
            if mode != "retrieval" and llm is None:
                report["modes"][mode] = {"skipped": "no LLM (--no-llm)"}
                continue
            task = b.add_task(mode, total=len(texts)) if b else None
            t0 = time.perf_counter()
            before = llm.forward if llm else 0
            results = []
            for batch in batches:
                results.extend(clf.classify(batch, mode=mode))
                if b:
                    b.update(task, advance=len(batch))
            pred = [r.task for r in results]
            r = classification_report(gold, pred, labels)
            decided: dict[str, int] = {}
            for res in results:
                decided[res.decided_by] = decided.get(res.decided_by, 0) + 1
            used_llm = sum(v for k, v in decided.items() if k.startswith("llm"))
            report["modes"][mode] = {"accuracy": r.accuracy, "macro_f1": r.macro_f1,
                                     "llm_share": used_llm / max(1, len(results)), "decided_by": decided,
                                     "seconds": time.perf_counter() - t0,
                                     "new_llm_forward_passes": (llm.forward - before) if llm else 0,
                                     "confusion": r.as_dict()}
            if base_pred is not None:
                # Paired with the baseline on the same tickets: where exactly one of the two is right.
                wins = sum(p == g != b for p, g, b in zip(pred, gold, base_pred))
                losses = sum(b == g != p for p, g, b in zip(pred, gold, base_pred))
                report["modes"][mode]["vs_baseline"] = {"wins": wins, "losses": losses,
                                                        "p_two_sided": _sign_test(wins, losses)}
            if mode == "retrieval":
                retrieval_pred = pred
            elif used_llm:
                # The tickets the LLM decided: its accuracy there against what retrieval alone said on them.
                asked = [i for i, res in enumerate(results) if res.decided_by.startswith("llm")]
                ret = retrieval_predictions()
                report["modes"][mode]["llm_decided"] = {
                    "n": len(asked), "accuracy": sum(pred[i] == gold[i] for i in asked) / len(asked),
                    "retrieval_accuracy": sum(ret[i] == gold[i] for i in asked) / len(asked)}
            if llm is not None:
                llm.save()
            if out and plots:
                from leaderboard.plots import plot_confusion

                f = plot_confusion(r, out / f"confusion-{mode.replace('+', '-')}.png",
                                   title=f"{data.name} ({data.split}, n={len(texts)}): {mode}")
                report["figures"].append(str(f))
    if out:
        (out / "classifier_eval.json").write_text(json.dumps(report, indent=2, ensure_ascii=False), encoding="utf-8")
    return report
