"""Filing workflow cases (runbooks) under the tasks they evaluate.

A runbook case (leaderboard/workflow_cases.py) has a query and reference steps but no task. Each
case gets one, recorded with how it was decided (`TaskSet.meta["case_tasks"]`):

1. `folder`: a mapping of runbook paths to tasks (`case_tasks.yaml`: `{"<glob>": <task>}`, matched
   against the case's source path, first match wins), or, without a matching rule, the runbook's
   first folder when it is named like a task (the starter pack keeps `docs/<task>/*.md`; the
   Prometheus runbooks keep `kubernetes/`, ...). The folder is what the author said; it wins.
2. `classifier`: otherwise the service's own classifier labels the case query, exactly as it
   would label a ticket with that text: the same retrieval over the labeled examples (MiniLM +
   character n-grams, plus the supervised head when `head_weight` > 0), with the LLM only when
   one is passed (the default is the retrieval side alone: deterministic and cheap). Its
   `decided_by` and confidence are recorded.

A case the classifier calls `unknown` (no labeled example near it, or no task confident enough)
is dropped and listed in the provenance: it would otherwise score an expert on a task it does not
belong to.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from core.config import ClassifierConfig, ModelSpec
from core.embeddings import get_embedder
from core.schemas import UNKNOWN, LabeledQuery
from router.classifier import TaskClassifier
from router.examples import ExampleIndex, TaskInfo

log = logging.getLogger(__name__)


def load_case_task_rules(path: str | Path) -> dict[str, str]:
    """`{glob: task}` from a YAML mapping (or `rules: [{match, task}]`)."""
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if isinstance(raw, dict) and isinstance(raw.get("rules"), list):
        return {str(r["match"]): str(r["task"]) for r in raw["rules"]}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping of runbook path globs to task names")
    return {str(k): str(v) for k, v in raw.items()}


def folder_task(case: Any, tasks: list[str], rules: dict[str, str] | None = None) -> str | None:
    """The task the case's path says (a rule, else a first folder named like a task), or None."""
    source = str(getattr(case, "source", None) or getattr(case, "id", "") or "")
    path = PurePosixPath(source.replace("\\", "/"))
    for pattern, task in (rules or {}).items():
        if fnmatch.fnmatch(str(path), pattern) or (path.parts and fnmatch.fnmatch(path.parts[0], pattern)):
            return task if task in tasks else None
    parts = path.parts[:-1]
    for part in parts[:1]:
        if part in tasks:
            return part
    return None


def classify_cases(cases: list, tasks, examples: list[LabeledQuery], cfg=None, llm=None, embedder=None) -> list:
    """The classifier's Classification for each case query (retrieval side unless `llm` is given)."""

    if not cases:
        return []
    cfg = cfg or ClassifierConfig(model=ModelSpec(name="classifier", base="smollm2-135m-instruct"))
    if embedder is None:
        embedder = get_embedder(cfg.embedder)
    infos = [t if isinstance(t, TaskInfo) else TaskInfo(t.name, getattr(t, "description", "")) for t in tasks]
    index = ExampleIndex(examples, embedder, cfg.lexical_weight)
    clf = TaskClassifier(cfg, infos, index, llm)
    return clf.classify([str(c.query) for c in cases])


def assign_case_tasks(cases: Iterable, tasks, examples: list[LabeledQuery], *, rules: dict[str, str] | None = None,
                      classifier_cfg=None, llm=None, embedder=None) -> tuple[Callable[[Any], str | None], dict]:
    """(case -> task or None, provenance {case id: {task, by, confidence?}}) for `workflow_items`."""
    cases = list(cases)
    names = [t.name for t in tasks]
    decided: dict[str, dict] = {}
    rest = []
    for c in cases:
        t = folder_task(c, names, rules)
        if t is not None:
            decided[str(c.id)] = {"task": t, "by": "folder"}
        else:
            rest.append(c)
    if rest:
        if not examples:
            raise ValueError("cases outside task folders are labeled by the classifier, which needs labeled examples")
        for c, res in zip(rest, classify_cases(rest, tasks, examples, classifier_cfg, llm, embedder)):
            decided[str(c.id)] = {"task": None if res.task == UNKNOWN else res.task,
                                  "by": f"classifier:{res.decided_by}", "confidence": round(res.confidence, 4)}
    dropped = sorted(k for k, v in decided.items() if v["task"] is None)
    if dropped:
        log.info("%d cases fit no task and are left out: %s", len(dropped), ", ".join(dropped[:8]))

    def assign(case) -> str | None:
        return decided.get(str(case.id), {}).get("task")

    return assign, decided
