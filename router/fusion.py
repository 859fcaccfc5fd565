"""Learned retrieval-side fusion and the learned LLM gate, saved as one versioned artefact.

The retrieval side has up to three components, each a distribution over the tasks:

- `vote`: the similarity-weighted vote of the k nearest labeled neighbours (router/classifier.py);
- `head`: the logistic head over the embedder's vectors (MiniLM or e5-small) + n-grams (router/head.py);
- `svc`: word + char n-gram TF-IDF with a LinearSVC, calibrated to probabilities (router/lexical.py).

Their mixing weights are not set by hand. The labeled examples are split in `fusion_folds`
stratified folds; every component is fitted on the other folds and predicts the held-out one (the
vote only sees neighbours from other folds), which gives out-of-fold (OOF) outputs for every
example: an honest dev set as large as the training set. Three fusions are candidates: the best
single component (`single`), a weighted mix (`simplex`: the point of a grid over the simplex,
`fusion_step`, with the best OOF accuracy, ties: lowest log-loss) and a multinomial logistic
stacker over the components' log-probabilities (`stacker`). With `fusion_method: auto` the one with
the best held-out accuracy (each chosen or fitted on the other folds' OOF outputs, scored on the
held-out fold) is kept, a tie going to the simpler one. The components are then refitted on all
examples.

The learned gate (`cascade.gate: learned`) works on the same OOF examples: the LLM is asked, with
the prompt the service uses and neighbours from other folds, about the least confident ones (at most
`cascade.max_llm_share` of them); the gate is the confidence threshold, and the LLM weight, with the
largest measured net gain of llm+retrieval over retrieval alone on those examples. Below `min_gain`,
or when the gain could be luck (one-sided exact McNemar test over the examples where the two disagree,
p above `gate_alpha`), the gate stays shut: the LLM is asked about no ticket.

Artefact: a folder with `model.joblib` (components, weights, OOF outputs) and `manifest.json`
(format, version, sha256 of the examples, settings, embedder, weights, OOF figures), plus one
`gate-<llm fingerprint>.json` per LLM. The version hashes the examples and every setting the fit
depends on; an artefact whose manifest does not match is refitted and overwritten, never used.
The service's classifier and the evaluator both go through `load_or_fit`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from core.config import ClassifierConfig
from core.paths import cache_dir
from router.examples import Neighbour
from router.head import LinearHead
from router.lexical import LexicalSVC

log = logging.getLogger(__name__)

FORMAT = 2  # 2: the best single component is a fusion candidate
COMPONENTS = ("vote", "head", "svc")
MODEL_FILE = "model.joblib"
MANIFEST = "manifest.json"


# ---- components ---------------------------------------------------------------------------------
def vote_row(neighbours, names: list[str], temperature: float) -> np.ndarray:
    """Softmax over neighbour similarities, summed per task, in `names` order (uniform without neighbours)."""
    if not neighbours:
        return np.full(len(names), 1 / len(names))
    top = max(n.similarity for n in neighbours)
    weights: dict[str, float] = defaultdict(float)
    for n in neighbours:
        weights[n.task] += math.exp((n.similarity - top) / temperature)
    total = sum(weights.values())
    return np.array([weights.get(t, 0.0) / total for t in names])


def examples_sha(examples) -> str:
    """sha256 over the examples in order (id, task, text): any change to the labeled set changes it."""
    h = hashlib.sha256()
    for e in examples:
        h.update(json.dumps([e.id, e.task, e.text], ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def fit_settings(cfg: ClassifierConfig) -> dict:
    """Every setting the fitted fusion depends on (part of its version)."""
    return {"components": list(cfg.components), "top_k": cfg.top_k, "lexical_weight": cfg.lexical_weight,
            "vote_temperature": cfg.vote_temperature, "head_c": cfg.head_c, "svc_c": cfg.svc_c,
            "svc_char_ngrams": list(cfg.svc_char_ngrams), "svc_calibration": cfg.svc_calibration,
            "calibration_folds": cfg.calibration_folds, "fusion_folds": cfg.fusion_folds,
            "fusion_step": cfg.fusion_step, "fusion_method": cfg.fusion_method, "stacker_c": cfg.stacker_c}


def embedder_id(embedder, example_role: str = "query") -> str:
    """What the fitted head and OOF neighbours were computed from: the embedder's registry name (its class
    name for stand-ins), dimension and, for an embedder with query/passage prefixes, the examples' role."""
    inner = getattr(embedder, "embedder", embedder)  # the evaluator's CachedEmbedder wraps the real one
    name = getattr(inner, "name", None) or type(inner).__name__
    role = f":{example_role}" if getattr(inner, "uses_roles", False) else ""
    return f"{name}:{getattr(inner, 'dim', '?')}{role}"


def index_embedder_id(index) -> str:
    return embedder_id(index.embedder, index.example_role)


def fusion_version(examples, names: list[str], cfg: ClassifierConfig, embedder, example_role: str = "query") -> str:
    blob = json.dumps([FORMAT, examples_sha(examples), list(names), fit_settings(cfg),
                       embedder_id(embedder, example_role)])
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def simplex_grid(n: int, step: float) -> list[tuple[float, ...]]:
    """Every weight vector of n non-negative multiples of `step` summing to 1."""
    m = max(1, round(1 / step))

    def parts(k, left):
        if k == 1:
            yield (left,)
            return
        for i in range(left + 1):
            for rest in parts(k - 1, left - i):
                yield (i, *rest)

    return [tuple(p / m for p in w) for w in parts(n, m)]


def fit_weights(oof: dict[str, np.ndarray], y: np.ndarray, step: float) -> tuple[dict[str, float], dict]:
    """Simplex weights with the best accuracy of the mix on (y, oof), ties broken by log-loss, then by
    the more even mix. Returns (weights, figures)."""
    comps = list(oof)
    stack = np.stack([oof[c] for c in comps])  # (C, n, T)
    best, best_key = None, None
    rows = np.arange(len(y))
    for w in simplex_grid(len(comps), step):
        p = np.tensordot(np.array(w), stack, axes=1)
        acc = float((p.argmax(1) == y).mean())
        nll = float(-np.log(np.clip(p[rows, y], 1e-9, None)).mean())
        key = (acc, -round(nll, 9), -max(w))
        if best_key is None or key > best_key:
            best, best_key = w, key
    weights = dict(zip(comps, best))
    figures = {"accuracy": {c: float((oof[c].argmax(1) == y).mean()) for c in comps},
               "fused_accuracy": best_key[0], "fused_log_loss": -best_key[1]}
    return weights, figures


def stack_features(probs: dict[str, np.ndarray], comps: list[str]) -> np.ndarray:
    """Stacker input: the log-probabilities of every component side by side."""
    return np.hstack([np.log(np.clip(probs[c], 1e-4, None)) for c in comps])


def fit_stacker(x: np.ndarray, y: np.ndarray, c: float):
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=2000).fit(x, y)


def stacker_probs(model, x: np.ndarray, n_names: int) -> np.ndarray:
    out = np.zeros((x.shape[0], n_names))
    out[:, model.classes_] = model.predict_proba(x)
    return out


METHODS = ("single", "simplex", "stacker")  # simplest first: a tie in held-out accuracy keeps the simpler


def cv_methods(oof: dict[str, np.ndarray], y: np.ndarray, folds: np.ndarray, cfg: ClassifierConfig,
               n_names: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Held-out accuracy of each fusion method over the OOF outputs, with the examples' own folds: the
    fusion is fitted on the other folds' OOF outputs and scored on the held-out fold."""
    comps = list(oof)
    methods = list(METHODS) if cfg.fusion_method == "auto" else [cfg.fusion_method]
    probs = {m: np.zeros((len(y), n_names)) for m in methods}
    x = stack_features(oof, comps)
    for f in range(int(folds.max()) + 1):
        held, rest = folds == f, folds != f
        if "single" in methods:
            best = max(comps, key=lambda c: float((oof[c][rest].argmax(1) == y[rest]).mean()))
            probs["single"][held] = oof[best][held]
        if "simplex" in methods:
            w, _ = fit_weights({c: oof[c][rest] for c in comps}, y[rest], cfg.fusion_step)
            probs["simplex"][held] = sum(w[c] * oof[c][held] for c in comps)
        if "stacker" in methods:
            probs["stacker"][held] = stacker_probs(fit_stacker(x[rest], y[rest], cfg.stacker_c), x[held], n_names)
    return {m: float((p.argmax(1) == y).mean()) for m, p in probs.items()}, probs


# ---- the fitted classifier ----------------------------------------------------------------------
@dataclass
class FittedFusion:
    version: str
    names: list[str]
    weights: dict[str, float]
    head: object | None = None  # router.head.LinearHead
    svc: object | None = None  # router.lexical.LexicalSVC
    oof_probs: np.ndarray | None = None  # fused OOF distribution per example (n, T)
    oof_neighbours: list[list[tuple[int, float]]] = field(default_factory=list)  # other-fold (index, similarity)
    manifest: dict = field(default_factory=dict)
    oof_components: dict[str, np.ndarray] = field(default_factory=dict)  # each component's OOF output (n, T)
    stacker: object | None = None  # fusion by a logistic stacker over the components' log-probabilities

    @property
    def method(self) -> str:
        """single, simplex or stacker (as chosen when fitted)."""
        return (self.manifest.get("oof") or {}).get("method") or ("stacker" if self.stacker is not None else "simplex")

    def component_probs(self, texts: list[str], q: np.ndarray, votes: np.ndarray) -> dict[str, np.ndarray]:
        out = {}
        for c, w in self.weights.items():
            if w <= 0 and self.stacker is None:
                continue  # a zero-weight component is not computed on the request path
            if c == "vote":
                out[c] = votes
            elif c == "head":
                out[c] = self.head.probs_matrix(texts, q)
            elif c == "svc":
                out[c] = self.svc.probs_matrix(texts)
        return out

    def fuse(self, probs: dict[str, np.ndarray]) -> np.ndarray:
        if self.stacker is not None:
            return stacker_probs(self.stacker, stack_features(probs, list(self.weights)), len(self.names))
        n = next(iter(probs.values())).shape[0] if probs else 0
        p = np.zeros((n, len(self.names)))
        for c, m in probs.items():
            p += self.weights[c] * m
        return p


def _fit_components(comps, texts, tasks, names, vectors, lexical, cfg: ClassifierConfig):
    head = svc = None
    if "head" in comps:
        head = LinearHead(texts, tasks, names, vectors, lexical, c=cfg.head_c)
    if "svc" in comps:
        svc = LexicalSVC(texts, tasks, names, c=cfg.svc_c, calibration=cfg.svc_calibration,
                         folds=cfg.calibration_folds, char_range=tuple(cfg.svc_char_ngrams))
    return head, svc


def fold_ids(tasks: list[str], folds: int, seed: int = 0) -> np.ndarray:
    """Stratified fold of every example (deterministic); -1 everywhere when a task has a single example."""
    from sklearn.model_selection import StratifiedKFold

    counts: dict[str, int] = defaultdict(int)
    for t in tasks:
        counts[t] += 1
    k = min(folds, min(counts.values()))
    ids = np.full(len(tasks), -1)
    if k < 2 or len(counts) < 2:
        return ids
    for f, (_, held) in enumerate(StratifiedKFold(k, shuffle=True, random_state=seed).split(tasks, tasks)):
        ids[held] = f
    return ids


def oof_neighbours(index, cfg: ClassifierConfig, folds: np.ndarray, chunk: int = 256) -> list[list]:
    """Top-k neighbours of every example among the examples of other folds (router.examples.Neighbour)."""
    texts = [e.text for e in index.examples]
    pos = {e.id: i for i, e in enumerate(index.examples)}
    wide = min(len(texts), 2 * cfg.top_k + 8)
    out = []
    for s in range(0, len(texts), chunk):
        hits = index.search(texts[s:s + chunk], wide, q=index.vectors[s:s + chunk])
        for i, row in enumerate(hits, s):
            keep = [n for n in row if pos[n.id] != i and (folds[i] < 0 or folds[pos[n.id]] != folds[i])]
            out.append(keep[: cfg.top_k])
    return out


def fit_fusion(index, names: list[str], cfg: ClassifierConfig, version: str) -> FittedFusion:
    """Out-of-fold component outputs -> simplex weights -> components refitted on every example."""
    from sklearn import __version__ as sklearn_version

    t0 = time.perf_counter()
    examples = index.examples
    texts, tasks = [e.text for e in examples], [e.task for e in examples]
    comps = [c for c in COMPONENTS if c in cfg.components]
    if not comps:
        raise ValueError("classifier.components is empty")
    col = {t: j for j, t in enumerate(names)}
    y = np.array([col[t] for t in tasks])
    folds = fold_ids(tasks, cfg.fusion_folds)
    neighbours = oof_neighbours(index, cfg, folds)
    oof = {c: np.zeros((len(texts), len(names))) for c in comps}
    if "vote" in oof:
        oof["vote"] = np.stack([vote_row(nb, names, cfg.vote_temperature) for nb in neighbours])
    k = int(folds.max()) + 1
    for f in range(k):
        held = np.flatnonzero(folds == f)
        train = np.flatnonzero(folds != f)
        lex = SimpleNamespace(vectorizer=index.lexical.vectorizer, matrix=index.lexical.matrix[train])
        head, svc = _fit_components([c for c in comps if c != "vote"], [texts[i] for i in train],
                                    [tasks[i] for i in train], names, index.vectors[train], lex, cfg)
        held_texts = [texts[i] for i in held]
        if head is not None:
            oof["head"][held] = head.probs_matrix(held_texts, index.vectors[held])
        if svc is not None:
            oof["svc"][held] = svc.probs_matrix(held_texts)
    stacker = None
    if k >= 2:
        weights, figures = fit_weights(oof, y, cfg.fusion_step)
        fused = sum(weights[c] * oof[c] for c in comps)
        cv, cv_probs = cv_methods(oof, y, folds, cfg, len(names))
        method = max(cv, key=lambda m: (cv[m], -METHODS.index(m)))  # a tie goes to the simpler fusion
        figures.update({"cv_accuracy": cv, "method": method, "simplex_weights": weights})
        if method == "single":  # the best component alone: its OOF outputs are already held out
            top = max(comps, key=lambda c: (figures["accuracy"][c], -comps.index(c)))
            weights = {c: float(c == top) for c in comps}
            fused = oof[top]
        elif method == "stacker":
            stacker = fit_stacker(stack_features(oof, comps), y, cfg.stacker_c)
            fused = cv_probs["stacker"]  # held-out stacker outputs: what the gate is learned on
    else:  # too few examples per task to hold any out: an even mix, said so in the manifest
        weights, figures = {c: 1 / len(comps) for c in comps}, {"note": "too few examples per task for folds"}
        fused = sum(weights[c] * oof[c] for c in comps)
    used = [c for c in comps if c != "vote" and (weights[c] > 0 or stacker is not None)]
    head, svc = _fit_components(used, texts, tasks, names, index.vectors, index.lexical, cfg)
    pos = {e.id: i for i, e in enumerate(examples)}
    manifest = {"format": FORMAT, "version": version, "examples_sha": examples_sha(examples),
                "n_examples": len(examples), "names": list(names), "settings": fit_settings(cfg),
                "embedder": index_embedder_id(index), "weights": weights, "folds": k, "oof": figures,
                "sklearn": sklearn_version, "fit_seconds": round(time.perf_counter() - t0, 2),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    log.info("fusion %s fitted on %d examples in %.1fs: %s, weights %s, OOF accuracy %s, held-out %s", version,
             len(examples), manifest["fit_seconds"], figures.get("method"), weights, figures.get("accuracy"),
             figures.get("cv_accuracy"))
    return FittedFusion(version, list(names), weights, head, svc, fused,
                        [[(pos[n.id], n.similarity) for n in nb] for nb in neighbours], manifest, oof, stacker)


def artefact_dir(cfg: ClassifierConfig, version: str) -> Path:
    if cfg.artefact:
        return Path(cfg.artefact)

    return cache_dir() / "classifier" / "fitted" / version


def save_fusion(fitted: FittedFusion, folder: str | Path) -> Path:
    import joblib

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("gate-*.json"):  # gates were learned on another fusion
        old.unlink()
    tmp = folder / f"{MODEL_FILE}.tmp{os.getpid()}"  # two processes may fit the same artefact
    joblib.dump({"version": fitted.version, "names": fitted.names, "weights": fitted.weights, "head": fitted.head,
                 "svc": fitted.svc, "oof_probs": fitted.oof_probs, "oof_neighbours": fitted.oof_neighbours,
                 "oof_components": fitted.oof_components, "stacker": fitted.stacker}, tmp)
    tmp.replace(folder / MODEL_FILE)
    (folder / MANIFEST).write_text(json.dumps(fitted.manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    return folder


def read_manifest(folder: str | Path) -> dict | None:
    p = Path(folder) / MANIFEST
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def load_fusion(folder: str | Path, version: str, sha: str) -> FittedFusion | None:
    """The artefact in `folder` if it is exactly version `version` over examples `sha`, else None."""
    import joblib

    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None or not (folder / MODEL_FILE).exists():
        return None
    if manifest.get("version") != version or manifest.get("examples_sha") != sha or manifest.get("format") != FORMAT:
        log.warning("classifier artefact %s is stale (version %s, want %s; examples %s): refitting", folder,
                    manifest.get("version"), version,
                    "unchanged" if manifest.get("examples_sha") == sha else "changed")
        return None
    blob = joblib.load(folder / MODEL_FILE)
    if blob.get("version") != version:
        return None
    return FittedFusion(version, blob["names"], blob["weights"], blob["head"], blob["svc"], blob["oof_probs"],
                        blob["oof_neighbours"], manifest, blob.get("oof_components") or {}, blob.get("stacker"))


def load_or_fit(index, names: list[str], cfg: ClassifierConfig) -> tuple[FittedFusion, Path]:
    """The fitted fusion for these examples and settings: loaded when its artefact matches, else fitted and saved."""
    version = fusion_version(index.examples, names, cfg, index.embedder, index.example_role)
    folder = artefact_dir(cfg, version)
    fitted = load_fusion(folder, version, examples_sha(index.examples))
    if fitted is None:
        fitted = fit_fusion(index, names, cfg, version)
        try:
            save_fusion(fitted, folder)
        except OSError as exc:  # a read-only cache must not stop the classifier
            log.warning("could not save the classifier artefact to %s: %s", folder, exc)
    else:
        log.info("classifier artefact %s loaded from %s", version, folder)
    return fitted, folder


# ---- the learned gate ---------------------------------------------------------------------------
def gate_settings(cfg: ClassifierConfig) -> dict:
    c = cfg.cascade
    return {"max_llm_share": c.max_llm_share, "min_gain": c.min_gain, "gate_examples": c.gate_examples,
            "llm_weights": list(c.llm_weights), "prompt_examples": cfg.prompt_examples, "gate_alpha": c.gate_alpha}


def mcnemar_p(wins: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """One-sided exact McNemar p-value that the LLM wins more often than it loses (binomial sign test over
    the discordant examples): P(X >= wins | wins + losses, 1/2)."""
    from scipy.stats import binom

    n = wins + losses
    return np.where(n > 0, binom.sf(wins - 1, n, 0.5), 1.0)


def learn_gate(conf: np.ndarray, ret_ok: np.ndarray, llm_probs: np.ndarray, fused: np.ndarray, y: np.ndarray,
               llm_weights: list[float], min_gain: int, next_conf: float | None = None, alpha: float = 1.0) -> dict:
    """The threshold (ask the LLM when confidence < threshold) and LLM weight with the largest net gain.

    `conf`, `ret_ok`, `llm_probs`, `fused`, `y` describe the dev examples the LLM was asked about, in any
    order; `next_conf` is the confidence of the least confident dev example the LLM was not asked about
    (the threshold never goes past it). A candidate needs a net gain of at least `min_gain` examples and a
    one-sided McNemar p-value of at most `alpha` (the LLM's wins over its losses there are not luck);
    without one the gate is shut (threshold 0): the LLM is asked about no ticket."""
    order = np.argsort(conf, kind="stable")
    conf, ret_ok, llm_probs, fused, y = conf[order], ret_ok[order], llm_probs[order], fused[order], y[order]
    best, best_key = None, None
    per_weight = {}
    # Only cut between distinct confidences (a threshold cannot split tied tickets).
    cuts = np.array([j for j in range(len(conf)) if j + 1 == len(conf) or conf[j + 1] > conf[j]], dtype=int)
    for w in llm_weights if len(cuts) else []:
        comb = w * llm_probs + (1 - w) * fused
        llm_ok = comb.argmax(1) == y
        wins, losses = np.cumsum(llm_ok & ~ret_ok), np.cumsum(~llm_ok & ret_ok)
        gains, p = wins - losses, mcnemar_p(wins, losses)
        j = max(cuts, key=lambda j: (gains[j], -j))
        per_weight[str(w)] = {"gain": int(gains[j]), "asked": int(j + 1), "p": round(float(p[j]), 4)}
        ok = [j for j in cuts if gains[j] >= min_gain and p[j] <= alpha]
        if not ok:
            continue
        j = max(ok, key=lambda j: (gains[j], -j))
        key = (int(gains[j]), -j)  # the largest gain, then the fewest LLM calls, then the first weight
        if best_key is None or key > best_key:
            best_key = key
            best = {"gain": int(gains[j]), "asked": int(j + 1), "llm_weight": w, "wins": int(wins[j]),
                    "losses": int(losses[j]), "p": float(p[j]), "llm_right": int(llm_ok[: j + 1].sum()),
                    "retrieval_right": int(ret_ok[: j + 1].sum())}
    out = {"per_weight": per_weight, "pool": int(len(conf)), "min_gain": min_gain, "alpha": alpha}
    if best is None:
        top = max(per_weight.values(), key=lambda v: v["gain"], default={"gain": 0})
        return {**out, "threshold": 0.0, "llm_weight": None, "asked": 0, "gain": int(top["gain"]), "open": False}
    j = best["asked"] - 1
    upper = conf[j + 1] if j + 1 < len(conf) else next_conf
    threshold = float((conf[j] + upper) / 2) if upper is not None and upper > conf[j] else float(conf[j] + 1e-9)
    return {**out, **best, "threshold": threshold, "open": True}


def fit_gate(fitted: FittedFusion, index, cfg: ClassifierConfig, llm, prompt_fn, labels: list[str],
             batch_size: int = 16) -> dict:
    """Ask the LLM about the least confident OOF examples and learn the gate from the measured gains."""

    t0 = time.perf_counter()
    c = cfg.cascade
    examples = index.examples
    col = {t: j for j, t in enumerate(fitted.names)}
    y_all = np.array([col[e.task] for e in examples])
    n = len(examples)
    pick = np.arange(n)
    if n > c.gate_examples:
        pick = np.sort(np.random.default_rng(0).permutation(n)[: c.gate_examples])
    fused = fitted.oof_probs[pick]
    conf = fused.max(1)
    y = y_all[pick]
    order = np.argsort(conf, kind="stable")
    m = int(math.floor(c.max_llm_share * len(pick)))
    pool, rest = order[:m], order[m:]
    next_conf = float(conf[rest[0]]) if len(rest) else None
    llm_probs = np.zeros((len(pool), len(fitted.names)))
    if len(pool):
        prompts = []
        for i in pick[pool]:
            nb = [Neighbour(id=examples[j].id, task=examples[j].task, text=examples[j].text, similarity=s,
                            dense=0.0, lexical=0.0) for j, s in fitted.oof_neighbours[i]]
            prompts.append(prompt_fn(examples[i].text, nb))
        for s in range(0, len(prompts), batch_size):
            for r, d in enumerate(llm.label_probs(prompts[s:s + batch_size], labels), s):
                llm_probs[r] = [d[lab] for lab in labels]
        llm_probs /= np.clip(llm_probs.sum(1, keepdims=True), 1e-12, None)
    ret_ok = fused[pool].argmax(1) == y[pool]
    gate = learn_gate(conf[pool], ret_ok, llm_probs, fused[pool], y[pool], list(c.llm_weights), c.min_gain,
                      next_conf, c.gate_alpha)
    gate.update({"fusion_version": fitted.version, "settings": gate_settings(cfg), "dev_examples": int(len(pick)),
                 "llm_calls": int(len(pool)), "fit_seconds": round(time.perf_counter() - t0, 2)})
    log.info("learned gate: %s (threshold %.3f, asks %d of %d dev examples, net gain %d)",
             "open" if gate["open"] else "shut", gate["threshold"], gate["asked"], len(pick), gate["gain"])
    return gate


def load_or_fit_gate(fitted: FittedFusion, folder: Path, index, cfg: ClassifierConfig, llm, model_fp: str,
                     prompt_fn, labels: list[str]) -> dict:
    path = Path(folder) / f"gate-{model_fp}.json"
    want = gate_settings(cfg)
    try:
        gate = json.loads(path.read_text(encoding="utf-8"))
        if gate.get("fusion_version") == fitted.version and gate.get("settings") == want:
            return gate
        log.warning("learned gate %s is stale: refitting", path)
    except (OSError, ValueError):
        pass
    gate = fit_gate(fitted, index, cfg, llm, prompt_fn, labels)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(gate, indent=2), encoding="utf-8")
    except OSError as exc:
        log.warning("could not save the learned gate to %s: %s", path, exc)
    return gate
