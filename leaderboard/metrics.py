"""Scores for leaderboard items and for the classifier.

- Multiple choice: exact set match of chosen letters against the answer (a multi-answer item is
  right only when every correct option and no wrong one is chosen), and `parse_mc_output` for
  reading letters out of free model text.
- Free text: cosine similarity of MiniLM embeddings (`core.embeddings.shared_embedder()`),
  clipped to [0, 1] so it averages with accuracies. MiniLM is an English model: on Chinese
  answers the score mostly reflects shared characters, tokens and numbers; read it as a rough
  signal.
- Workflow: STEPScore (`core.stepscore.step_score`) precision / recall / F1 of generated steps,
  rescaled from STEPScore's 0-100 to [0, 1].
- Classification: accuracy, per-label precision / recall / F1, macro-F1, confusion matrix.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from core.embeddings import shared_embedder
from core.schemas import UNKNOWN
from core.stepscore import step_score


# ---- multiple choice -------------------------------------------------------------------------
def letters_of(answer: str | Iterable[str]) -> tuple[str, ...]:
    """'C,D,F' / 'cdf' / ['D', 'C'] -> ('C', 'D', 'F'); anything that is not a letter is ignored."""
    if isinstance(answer, str):
        parts = [c for c in answer.upper() if c.isalpha()]
    else:
        parts = [str(a).strip().upper() for a in answer if str(a).strip()]
    return tuple(sorted(set(parts)))


def mc_correct(predicted: str | Iterable[str], gold: str | Iterable[str]) -> bool:
    """Exact set match: the chosen letters are exactly the correct ones (order and case ignored)."""
    g = letters_of(gold)
    return bool(g) and letters_of(predicted) == g


def mc_accuracy(predicted: Sequence, gold: Sequence) -> float:
    """Share of items whose chosen letters exactly match the answer (0.0 for no items)."""
    if len(predicted) != len(gold):
        raise ValueError("predicted and gold differ in length")
    if not gold:
        return 0.0
    return sum(mc_correct(p, g) for p, g in zip(predicted, gold)) / len(gold)


def choose_letters(probs: dict[str, float], multi: bool, n_stated: int | None = None,
                   threshold: float = 0.5) -> list[str]:
    """Letters chosen from a distribution over option letters (`Engine.label_probs`).

    Single answer: the argmax (ties: the earlier letter). Multi-answer: the top `n_stated` when the
    question says how many ("choose two"); otherwise every option whose probability is at least
    `threshold` x the largest (relative threshold: a model that puts most mass on one option picks
    one, a model split between several picks them all), at least one.
    """
    if not probs:
        return []
    ranked = sorted(probs, key=lambda k: (-probs[k], k))
    if not multi:
        return [ranked[0]]
    if n_stated:
        return sorted(ranked[: max(1, min(n_stated, len(ranked)))])
    top = probs[ranked[0]]
    return sorted(k for k in ranked if probs[k] >= threshold * top) or [ranked[0]]


_ANSWER_CUE = re.compile(
    r"(?i:answers?|答案|选项|正确选项|choices?|options?)\s*(?i:is|are|为|是|应该是|应为)?\s*[:：]?\s*"
    r"((?:\(?[A-J]+\)?(?![A-Za-z])[\s,，、/&;]*(?:and\s+|和|与)?)+)"
)
_LEAD = re.compile(r"^\s*\**\s*((?:\(?[A-J]+\)?(?![A-Za-z])[\s,，、/&;.:)]*(?:and\s+|和|与)?)+)")
_BARE = re.compile(r"(?<![A-Za-z])\(?([A-J])\)?(?![A-Za-z])")


def parse_mc_output(text: str, letters: Iterable[str] = "ABCD") -> list[str]:
    """Option letters a model's free-text answer names, sorted; [] when it names none.

    Tried in order: an explicit cue ("Answer: B", "The answers are A and C", "答案：AC"), letters
    opening the text ("B", "(C) because", "A, D."), then standalone capital letters anywhere
    ("I think C"). Only letters in `letters` count; a capital 'A' or 'I' followed by a word is
    English, not an option, and is skipped in the last step.
    """
    allowed = set(letters)
    if not text:
        return []
    for rx in (_ANSWER_CUE, _LEAD):
        m = rx.search(text)
        if m and rx is _LEAD and re.match(r"^\s*[AI]\s+[a-z]", text):
            continue  # "A server ...", "I think ...": English, not option A
        if m:
            found = sorted({c for c in re.findall(r"[A-J]", m.group(1)) if c in allowed})
            if found:
                return found
    out = set()
    for m in _BARE.finditer(text):
        c = m.group(1)
        after = text[m.end():m.end() + 2]
        if c in ("A", "I") and re.match(r"\s[a-z]", after):
            continue  # "A server ...", "I think ..."
        if c in allowed:
            out.add(c)
    return sorted(out)


# ---- free text -------------------------------------------------------------------------------
def cosine_scores(predictions: Sequence[str], references: Sequence[str],
                  encode: Callable[[list[str]], object] | None = None) -> list[float]:
    """Cosine similarity per (prediction, reference) pair, clipped to [0, 1]; an empty prediction
    scores 0. `encode(texts) -> array of L2-normalised rows` defaults to the shared MiniLM."""
    if len(predictions) != len(references):
        raise ValueError("predictions and references differ in length")
    if not predictions:
        return []
    if encode is None:
        encode = shared_embedder().encode
    import numpy as np

    vecs = np.asarray(encode([*map(str, predictions), *map(str, references)]), dtype=np.float64)
    n = len(predictions)
    a, b = vecs[:n], vecs[n:]
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    sims = np.clip((a * b).sum(axis=1), 0.0, 1.0)
    return [0.0 if not str(p).strip() else float(s) for p, s in zip(predictions, sims)]


# ---- workflows -------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepScores:
    precision: float
    recall: float
    f1: float


def workflow_scores(generated: list[str], reference: list[str]) -> StepScores:
    """STEPScore of generated steps against reference steps (core.stepscore.step_score), rescaled
    from its 0-100 scale to [0, 1] (and clipped there) so it averages with accuracies."""
    if not generated:
        return StepScores(0.0, 0.0, 0.0)
    s = step_score(list(generated), list(reference))
    unit = lambda x: min(1.0, max(0.0, float(x) / 100.0))  # noqa: E731
    return StepScores(unit(s.precision), unit(s.recall), unit(s.f1))


# ---- classification --------------------------------------------------------------------------
@dataclass
class ClassificationReport:
    """Accuracy, macro-F1 and a confusion matrix over `labels`.

    `confusion[i][j]` counts items of true label `labels[i]` predicted as `columns[j]`, where
    `columns` is `labels` plus one extra column for predictions outside `labels` (`unknown` or
    anything else) when there are any. Macro-F1 averages per-label F1 over `labels` only: an
    out-of-set prediction is a miss for its true label, never a class of its own. A label with
    no true and no predicted items has F1 0 if it is in `labels` (pass only the labels you mean).
    """

    labels: list[str]
    columns: list[str]
    confusion: list[list[int]]
    accuracy: float
    macro_f1: float
    per_label: dict[str, dict[str, float]] = field(default_factory=dict)
    n: int = 0

    def as_dict(self) -> dict:
        return {"n": self.n, "accuracy": self.accuracy, "macro_f1": self.macro_f1, "labels": self.labels,
                "columns": self.columns, "confusion": self.confusion, "per_label": self.per_label}


def classification_report(y_true: Sequence[str], y_pred: Sequence[str],
                          labels: Sequence[str] | None = None) -> ClassificationReport:
    """Hand-rolled (no sklearn) so the conventions above are explicit and tested."""
    if len(y_true) != len(y_pred):
        raise ValueError("y_true and y_pred differ in length")
    labels = list(labels) if labels is not None else sorted(set(y_true))
    index = {lab: i for i, lab in enumerate(labels)}
    other = sorted({p for p in y_pred if p not in index})
    other_col = UNKNOWN if other == [UNKNOWN] else ("other" if other else None)
    columns = labels + ([other_col] if other_col else [])
    confusion = [[0] * len(columns) for _ in labels]
    for t, p in zip(y_true, y_pred):
        if t not in index:
            raise ValueError(f"true label {t!r} is not in labels")
        j = index.get(p, len(labels))
        confusion[index[t]][j] += 1
    n = len(y_true)
    correct = sum(confusion[i][i] for i in range(len(labels)))
    per_label, f1s = {}, []
    for i, lab in enumerate(labels):
        tp = confusion[i][i]
        support = sum(confusion[i])
        predicted = sum(confusion[r][i] for r in range(len(labels)))
        prec = tp / predicted if predicted else 0.0
        rec = tp / support if support else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_label[lab] = {"precision": prec, "recall": rec, "f1": f1, "support": support}
        f1s.append(f1)
    return ClassificationReport(labels=labels, columns=columns, confusion=confusion,
                                accuracy=correct / n if n else 0.0,
                                macro_f1=sum(f1s) / len(f1s) if f1s else 0.0, per_label=per_label, n=n)
