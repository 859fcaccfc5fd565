"""Task sets as data: tasks, labeled queries for the classifier, and evaluation items per task.

A TaskSet is what a leaderboard is built on. It names its tasks (the labels the classifier picks
from and the keys of the task->expert map), carries labeled example queries (classifier retrieval
examples), an optional held-out set of labeled queries (classifier evaluation), and evaluation
items the experts are scored on:

- `MCItem`: multiple choice, single ("B") or multi-answer ("C,D,F"), options keyed by letter;
- `FreeTextItem`: question + reference answer (scored by embedding similarity);
- `WorkflowItem`: incident query + reference steps (scored by STEPScore).

Importers: `from_opseval` (4 domains), `from_owl_bench` (9 ops domains), `from_it_tickets`
(8 topics, classification only: labeled queries, no expert items), `from_starter` (the bundled
starter pack, optionally with workflow cases). `load_taskset(name_or_dir)` picks one by name.

On disk (`save`/`load`) a task set is a folder a person can read:
    taskset.yaml    name, description, version, meta, tasks (with example/item counts)
    examples.jsonl  labeled queries {id, text, task, source}
    holdout.jsonl   held-out labeled queries (may be absent)
    items.jsonl     evaluation items, one JSON object per line with a `kind`

`version()` is a content hash of tasks, examples, holdout and items (not of meta), so an edited
file is a new version.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from core.config import slug
from core.paths import STARTER_DIR, shared_data_dir
from core.schemas import UNKNOWN, LabeledQuery
from leaderboard.case_tasks import assign_case_tasks, load_case_task_rules
from leaderboard.workflow_cases import load_runbook_cases
from router.importers import (
    IT_TICKET_TASKS,
    OWL_DESCRIPTIONS,
    OWL_TASKS,
    import_it_tickets,
    load_labeled,
    owl_options,
    read_rows,
    split_labeled,
)

log = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJ"


class TaskSetError(ValueError):
    """A task set that cannot be loaded or is inconsistent (unknown task, duplicate id, ...)."""


# ---- items -----------------------------------------------------------------------------------
class _Item(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, description="Unique within the task set.")
    task: str = Field(min_length=1, description="Task this item evaluates.")
    lang: str | None = Field(default=None, description="en / zh where known.")
    source: str | None = Field(default=None, description="Where the item came from.")

    def key(self) -> str:
        """Content hash: results are reused for an item only while its content is unchanged."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class MCItem(_Item):
    kind: Literal["mc"] = "mc"
    question: str = Field(min_length=1, description="Question stem without the options.")
    options: dict[str, str] = Field(description="Letter -> option text, in letter order (A, B, ...).")
    answer: list[str] = Field(min_length=1, description="Correct letters, sorted (one for single-answer).")
    n_stated: int | None = Field(default=None, description="How many answers the question itself asks "
                                                           "for ('choose two'), when it says.")

    @field_validator("answer")
    @classmethod
    def _sorted(cls, v):
        return sorted(set(v))

    @property
    def multi(self) -> bool:
        return len(self.answer) > 1

    @model_validator(mode="after")
    def _answer_in_options(self):
        bad = [a for a in self.answer if a not in self.options]
        if bad:
            raise ValueError(f"item {self.id}: answer letters {bad} are not options {list(self.options)}")
        if len(self.options) < 2:
            raise ValueError(f"item {self.id}: needs at least two options")
        return self


class FreeTextItem(_Item):
    kind: Literal["free_text"] = "free_text"
    question: str = Field(min_length=1)
    reference: str = Field(min_length=1, description="Reference answer.")


class WorkflowItem(_Item):
    kind: Literal["workflow"] = "workflow"
    query: str = Field(min_length=1, description="Incident ticket / alert text.")
    reference_steps: list[str] = Field(min_length=1, description="Reference troubleshooting steps in order.")


EvalItem = Annotated[Union[MCItem, FreeTextItem, WorkflowItem], Field(discriminator="kind")]
_ITEM = TypeAdapter(EvalItem)


def parse_item(raw: dict) -> MCItem | FreeTextItem | WorkflowItem:
    return _ITEM.validate_python(raw)


class TaskInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    description: str = ""
    label: str | None = Field(default=None, description="Label in the source data when it differs from name.")


# ---- the task set ----------------------------------------------------------------------------
class TaskSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    description: str = ""
    tasks: list[TaskInfo]
    examples: list[LabeledQuery] = Field(default_factory=list, description="Classifier retrieval examples.")
    holdout: list[LabeledQuery] = Field(default_factory=list, description="Held-out labeled queries "
                                                                          "(classifier evaluation).")
    items: list[EvalItem] = Field(default_factory=list, description="Expert evaluation items.")
    meta: dict[str, Any] = Field(default_factory=dict, description="Provenance; not part of the version.")

    def model_post_init(self, __context):
        names = [t.name for t in self.tasks]
        if not names:
            raise TaskSetError(f"task set {self.name!r} has no tasks")
        if len(set(names)) != len(names):
            raise TaskSetError(f"task set {self.name!r}: task names are not unique")
        if UNKNOWN in names:
            raise TaskSetError(f"task set {self.name!r}: {UNKNOWN!r} is reserved")
        known = set(names)
        for kind, rows in (("example", self.examples), ("holdout", self.holdout), ("item", self.items)):
            bad = sorted({r.task for r in rows} - known)
            if bad:
                raise TaskSetError(f"task set {self.name!r}: {kind}s name unknown tasks {bad}")
        ids = [i.id for i in self.items]
        if len(set(ids)) != len(ids):
            dup = sorted(k for k, v in Counter(ids).items() if v > 1)[:5]
            raise TaskSetError(f"task set {self.name!r}: duplicate item ids {dup}")

    # ---- views ---------------------------------------------------------------------------
    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def items_for(self, task: str) -> list:
        return [i for i in self.items if i.task == task]

    def eval_tasks(self) -> list[str]:
        """Tasks that have evaluation items (the others are routed to the fallback expert)."""
        have = {i.task for i in self.items}
        return [t for t in self.task_names if t in have]

    def version(self) -> str:
        h = hashlib.sha256()
        h.update(self.name.encode())
        for part in (self.tasks, self.examples, self.holdout, self.items):
            for row in part:
                h.update(json.dumps(row.model_dump(mode="json"), sort_keys=True, ensure_ascii=False).encode())
                h.update(b"\n")
            h.update(b"\x00")
        return h.hexdigest()[:12]

    def summary(self) -> list[dict]:
        ex = Counter(q.task for q in self.examples)
        ho = Counter(q.task for q in self.holdout)
        kinds: dict[str, Counter] = defaultdict(Counter)
        for i in self.items:
            kinds[i.task][i.kind] += 1
        return [{"task": t.name, "description": t.description, "examples": ex.get(t.name, 0),
                 "holdout": ho.get(t.name, 0), "items": dict(sorted(kinds[t.name].items()))}
                for t in self.tasks]

    # ---- files ---------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        head = {"name": self.name, "description": self.description, "version": self.version(),
                "meta": self.meta, "tasks": [t.model_dump(exclude_none=True) for t in self.tasks],
                "counts": self.summary()}
        _write_atomic(d / "taskset.yaml", yaml.safe_dump(head, sort_keys=False, allow_unicode=True, width=110))
        _write_jsonl(d / "examples.jsonl", [q.model_dump(exclude_none=True) for q in self.examples])
        if self.holdout:
            _write_jsonl(d / "holdout.jsonl", [q.model_dump(exclude_none=True) for q in self.holdout])
        elif (d / "holdout.jsonl").exists():
            (d / "holdout.jsonl").unlink()
        _write_jsonl(d / "items.jsonl", [i.model_dump(mode="json", exclude_none=True) for i in self.items])
        return d

    @classmethod
    def load(cls, directory: str | Path) -> TaskSet:
        d = Path(directory)
        head_path = d / "taskset.yaml"
        if not head_path.exists():
            raise TaskSetError(f"{d} is not a task set folder (no taskset.yaml)")
        try:
            head = yaml.safe_load(head_path.read_text(encoding="utf-8")) or {}
            examples = _read_jsonl(d / "examples.jsonl", LabeledQuery.model_validate)
            holdout = _read_jsonl(d / "holdout.jsonl", LabeledQuery.model_validate)
            items = _read_jsonl(d / "items.jsonl", parse_item)
            ts = cls(name=head["name"], description=head.get("description", ""),
                     tasks=[TaskInfo.model_validate(t) for t in head["tasks"]], examples=examples,
                     holdout=holdout, items=items, meta=head.get("meta") or {})
        except TaskSetError:
            raise
        except Exception as exc:
            raise TaskSetError(f"{d}: not a valid task set: {exc}") from exc
        stored = head.get("version")
        if stored and stored != ts.version():
            log.info("task set %s in %s was edited: version %s -> %s", ts.name, d, stored, ts.version())
        return ts


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    _write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def _read_jsonl(path: Path, parse: Callable) -> list:
    if not path.exists():
        return []
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                out.append(parse(json.loads(line)))
            except Exception as exc:
                raise TaskSetError(f"{path}:{n}: {exc}") from exc
    return out


# ---- multiple-choice parsing -----------------------------------------------------------------
# An option marker: a letter then . : ： 、 ． ) or ] -- at a line start, after whitespace or after "(".
# At a line start a letter followed by a space also counts ("B They can be ..."), so typos that drop
# the dot still parse; mid-line it does not (too many English articles "A ...").
_OPT_LINE = re.compile(r"(?m)^[ \t]*[\"'“]?\(?([A-J])(?:\s*[.:：、．)\]]|[ \t]+(?=\S))")
_OPT_INLINE = re.compile(r"(?:(?<=\s)|(?<=\()|^)\(?([A-J])\s*[.:：、．)\]]")
_CJK = re.compile(r"[\u3400-\u9fff]")
_COUNT_WORDS = {"two": 2, "three": 3, "four": 4, "five": 5, "2": 2, "3": 3, "4": 4, "5": 5,
                "两": 2, "二": 2, "三": 3, "四": 4, "五": 5}
_STATED_EN = re.compile(r"\b(?:choose|select|which|pick|identify)\s+(two|three|four|five|[2-5])\b", re.I)
_STATED_ZH = re.compile(r"(?:哪|选择|选出|选)\s*([两二三四五2-5])\s*[个项种条组]")


def split_options(text: str) -> tuple[str, dict[str, str]]:
    """Split 'stem\\nA. x\\nB. y' (or 'stem A. x B. y') into (stem, {A: x, B: y}).

    Markers are found at line starts and inline (see _OPT_LINE/_OPT_INLINE). From every 'A' marker a
    run collects the next B, C, ... markers in order (skipping stray markers in between); the longest
    run wins, the last one on ties, so an 'A.' in the stem does not start the options. Returns
    (text, {}) when no run has two or more options.
    """
    found: dict[int, re.Match] = {}
    for rx in (_OPT_LINE, _OPT_INLINE):
        for m in rx.finditer(text):
            found.setdefault(m.start(1), m)
    marks = [found[k] for k in sorted(found)]
    best: list[re.Match] = []
    for i, m in enumerate(marks):
        if m.group(1) != "A":
            continue
        run = [m]
        for n in marks[i + 1:]:
            if ord(n.group(1)) == ord(run[-1].group(1)) + 1:
                run.append(n)
        if len(run) >= 2 and len(run) >= len(best):
            best = run
    if not best:
        return text.strip(), {}
    first = best[0]
    start = first.start(1) - (1 if text[first.start(1) - 1:first.start(1)] == "(" else 0)
    stem = text[:start].strip().strip("\"“”").strip()
    options = {}
    for k, m in enumerate(best):
        end = best[k + 1].start(1) if k + 1 < len(best) else len(text)
        if k + 1 < len(best) and text[end - 1:end] == "(":
            end -= 1
        body = re.sub(r"\s+", " ", text[m.end():end]).strip().strip("\"“”").strip()
        body = body.rstrip("(").strip()
        while body.endswith(")") and body.count(")") > body.count("("):
            body = body[:-1].rstrip()  # "(A. x (B. y)" style: the closing parenthesis is not option text
        options[m.group(1)] = body
    return stem, options


def normalize_answer(answer: str | list[str], options: dict[str, str] | None = None) -> list[str]:
    """'C,D,F' / 'ABD' / 'A, ' / ['b'] -> sorted letters. A bare number is a 1-based option index
    when options are given ('4' -> 'D' with four options). Unparseable -> []."""
    if isinstance(answer, (list, tuple)):
        answer = ",".join(str(a) for a in answer)
    s = str(answer).strip()
    if options is not None and re.fullmatch(r"\d{1,2}", s):
        k = int(s)
        keys = list(options)
        return [keys[k - 1]] if 1 <= k <= len(keys) else []
    if not re.fullmatch(r"[A-Ja-j](?:[\s,，、;/&]*[A-Ja-j])*[\s,，、;]*", s):
        return []
    return sorted({c.upper() for c in s if c.isalpha()})


def stated_answer_count(question: str) -> int | None:
    """How many answers a question asks for, if it says: '(Choose two.)', 'Which three', '哪两个'."""
    for rx in (_STATED_EN, _STATED_ZH):
        m = rx.search(question)
        if m:
            return _COUNT_WORDS.get(m.group(1).lower())
    return None


def language(text: str) -> str:
    """'zh' when the text has more than a handful of CJK characters, else 'en'."""
    return "zh" if len(_CJK.findall(text)) >= 3 else "en"


def make_mc_item(id: str, task: str, question: str, answer: str | list[str],
                 choices: list[str] | dict[str, str] | None = None, source: str | None = None,
                 true_false: bool = False) -> MCItem | None:
    """An MCItem from raw fields, or None when the options or the answer cannot be read.

    Options come from `choices` when given (list in A, B, ... order, or a letter mapping), else
    they are parsed out of the question text; options embedded in the question are cut from the
    stem either way so the prompt lists them once. With `true_false`, a statement without options
    whose answer is A or B is read as a true/false item (A = true, B = false), the convention of
    OpsEval's 5G statements (their listed choices are 正确/错误 or 对/错).
    """
    stem, parsed = split_options(question)
    if choices:
        options = dict(choices) if isinstance(choices, dict) else \
            {LETTERS[k]: str(c).strip() for k, c in enumerate(choices)}
        if not parsed or len(parsed) != len(options):
            stem = question.strip()
    else:
        options = parsed
    options = {k: v for k, v in options.items() if v}
    if len(options) < 2 and true_false and normalize_answer(answer) in (["A"], ["B"]):
        options = {"A": "正确", "B": "错误"} if language(question) == "zh" else {"A": "True", "B": "False"}
    if len(options) < 2:
        return None
    letters = normalize_answer(answer, options)
    if not letters or any(a not in options for a in letters):
        return None
    n = stated_answer_count(stem) if len(letters) > 1 else None
    return MCItem(id=id, task=task, question=stem or question.strip(), options=options, answer=letters,
                  n_stated=n, lang=language(question), source=source)


# ---- importers -------------------------------------------------------------------------------
OPSEVAL_DOMAINS = {
    "Wired Network": ("wired-network", "Wired networking: switching, routing, protocols, devices."),
    "Oracle Database": ("oracle-database", "Oracle Database administration: SQL, backup and recovery, "
                                           "users and privileges, performance."),
    "5G Communication": ("5g-communication", "5G core and radio networks: network functions, slicing, "
                                             "signalling, QoS."),
    "Log Analysis": ("log-analysis", "Log analysis: parsing and querying logs, log formats, anomaly and "
                                     "root-cause analysis from logs."),
}


def _shared_path(path: str | Path | None, default: str) -> Path:
    p = Path(path) if path else shared_data_dir() / default
    if not p.exists():
        raise TaskSetError(f"data not found: {p} (public data lives in core.paths.shared_data_dir(); set "
                           "FLOWROUTER_SHARED_DATA to point elsewhere)")
    return p


def from_opseval(directory: str | Path | None = None, split: str = "test", lang: str | None = None,
                 lang_fallback: bool = True) -> TaskSet:
    """OpsEval: each of the 4 domain files is a task. MC questions (single/multi-answer, options in
    `choices` or inside the question) become MCItems; Log Analysis answers that are not option
    letters become FreeTextItems. Every question is also a labeled example for the classifier.

    `lang` ('en' / 'zh') keeps items in that language. With `lang_fallback` a domain that has no
    item in `lang` keeps all its items (5G Communication and Log Analysis are Chinese only); which
    language each task ended up with is recorded in meta['languages'].
    """
    root = _shared_path(directory, "opseval")
    folder = root / split
    if not folder.is_dir():
        raise TaskSetError(f"{folder}: no OpsEval split {split!r}")
    tasks, items, examples = [], [], []
    skipped: dict[str, int] = {}
    languages: dict[str, str] = {}
    for label, (name, desc) in OPSEVAL_DOMAINS.items():
        f = folder / f"{label}.json"
        if not f.exists():
            continue
        raw = json.loads(f.read_text(encoding="utf-8"))
        tasks.append(TaskInfo(name=name, description=desc, label=label))
        domain_items, bad = [], 0
        for n, row in enumerate(raw):
            qid = f"opseval-{slug(str(row.get('id') or f'{label}-{n}'))}"
            question, answer = str(row.get("question") or "").strip(), row.get("answer")
            if not question or answer in (None, ""):
                bad += 1
                continue
            item = make_mc_item(qid, name, question, answer, row.get("choices"), source=f"opseval/{split}",
                                true_false=True)
            if item is None and not row.get("choices") and not split_options(question)[1]:
                item = FreeTextItem(id=qid, task=name, question=question, reference=str(answer).strip(),
                                    lang=language(question), source=f"opseval/{split}")
            if item is None:
                bad += 1
                continue
            domain_items.append(item)
        if lang:
            kept = [i for i in domain_items if i.lang == lang]
            if kept or not lang_fallback:
                domain_items = kept
                languages[name] = lang
            else:
                languages[name] = "+".join(sorted({i.lang for i in domain_items})) + f" (no {lang} items)"
        else:
            languages[name] = "+".join(sorted({i.lang for i in domain_items}))
        ids = set()
        for i in domain_items:  # OpsEval repeats a few ids; keep the first
            if i.id not in ids:
                ids.add(i.id)
                items.append(i)
                examples.append(LabeledQuery(id=i.id, text=_query_text(i), task=name, source="opseval"))
        if bad:
            skipped[name] = bad
    if not tasks:
        raise TaskSetError(f"{folder}: no OpsEval domain files")
    suffix = f"-{lang}" if lang else ""
    return TaskSet(name=f"opseval{suffix}", description=f"OpsEval {split} split, 4 ops domains"
                   + (f", {lang} items" if lang else ""), tasks=tasks, examples=examples, items=items,
                   meta={"source": str(root), "split": split, "lang": lang, "languages": languages,
                         "skipped_items": skipped})


def _query_text(item) -> str:
    return item.query if item.kind == "workflow" else item.question


def from_owl_bench(path: str | Path | None = None, holdout_fraction: float = 0.2, seed: int = 0) -> TaskSet:
    """OWL-Bench: 9 ops domains as tasks; every row is an MCItem (A-D) and a labeled query
    (question text). `holdout_fraction` of the queries per task is held out for classifier
    evaluation (the MC items keep all rows: experts are evaluated on every question)."""
    p = _shared_path(path, "owl-bench/mc_ops_domains.dev.csv")
    items, queries, skipped = [], [], 0
    present: set[str] = set()
    seen: set[str] = set()
    for n, row in read_rows(p):
        category = (row.get("category") or "").strip()
        question = (row.get("question") or "").strip()
        if not category or not question:
            skipped += 1
            continue
        task = OWL_TASKS.get(category) or slug(category)
        present.add(task)
        qid = f"owl-{(row.get('id') or '').strip() or n}"
        item = make_mc_item(qid, task, question, row.get("answer") or "", owl_options(row), source="owl-bench")
        if item is None or qid in seen:
            skipped += 1
            continue
        seen.add(qid)
        items.append(item)
        queries.append(LabeledQuery(id=qid, text=question, task=task, source="owl-bench"))
    labels = {v: k for k, v in OWL_TASKS.items()}
    tasks = [TaskInfo(name=t, description=OWL_DESCRIPTIONS.get(t, t), label=labels.get(t))
             for t in OWL_TASKS.values() if t in present]
    tasks += [TaskInfo(name=t) for t in sorted(present - set(OWL_TASKS.values()))]
    examples, holdout = split_labeled(queries, holdout_fraction, seed) if holdout_fraction else (queries, [])
    return TaskSet(name="owl-bench", description="OWL-Bench ops multiple choice (Chinese), 9 ops domains",
                   tasks=tasks, examples=examples, holdout=holdout, items=items,
                   meta={"source": str(p), "holdout_fraction": holdout_fraction, "seed": seed,
                         "skipped_items": skipped})


def from_it_tickets(path: str | Path | None = None, limit: int | None = None, holdout_fraction: float = 0.2,
                    seed: int = 0) -> TaskSet:
    """IT service tickets: 8 topics as tasks, classification only.

    The data has ticket text and a topic, but no answers or resolutions, so there is nothing to
    score an expert's workflow against: the task set carries labeled queries (examples for
    retrieval, a stratified `holdout_fraction` for classifier evaluation) and no evaluation items.
    A leaderboard built on it refuses with a clear error; a map for these tasks routes every task to
    the fallback expert unless items are added (e.g. workflow cases via `with_items`).
    """

    queries = import_it_tickets(path, limit=limit)
    present = {q.task for q in queries}
    labels = {v: k for k, v in IT_TICKET_TASKS.items()}
    tasks = [TaskInfo(name=t, description=f"IT service desk: {labels.get(t, t)}", label=labels.get(t))
             for t in IT_TICKET_TASKS.values() if t in present]
    tasks += [TaskInfo(name=t) for t in sorted(present - set(IT_TICKET_TASKS.values()))]
    examples, holdout = split_labeled(queries, holdout_fraction, seed) if holdout_fraction else (queries, [])
    return TaskSet(name="it-service-tickets", description="IT service-desk tickets, 8 topics (classification only)",
                   tasks=tasks, examples=examples, holdout=holdout,
                   meta={"limit": limit, "holdout_fraction": holdout_fraction, "seed": seed,
                         "classification_only": True})


def workflow_items(cases: Iterable, task: str | Callable[[Any], str | None]) -> list[WorkflowItem]:
    """WorkflowItems from workflow cases (anything with id, query, reference_steps and optionally
    source, e.g. `leaderboard.workflow_cases.WorkflowCase`). `task` is a task name or a function
    case -> task name (None drops the case)."""
    out = []
    for c in cases:
        t = task(c) if callable(task) else task
        if t is None:
            continue
        steps = [str(s).strip() for s in c.reference_steps if str(s).strip()]
        if not steps or not str(c.query).strip():
            continue
        out.append(WorkflowItem(id=str(c.id), task=t, query=str(c.query), reference_steps=steps,
                                source=getattr(c, "source", None), lang=language(str(c.query))))
    return out


def from_starter(directory: str | Path | None = None, cases: Iterable | None = None,
                 case_task: str | Callable[[Any], str | None] | None = None,
                 case_rules: dict[str, str] | None = None) -> TaskSet:
    """The starter pack: `tasks.yaml` (name, version, description, tasks: [{name, description}]),
    `examples.jsonl` ({id, text, task}) and, when present, `tickets.jsonl` ({title, description,
    expected_task}) as the classifier holdout.

    The pack has no expert evaluation items of its own. Pass workflow `cases` (e.g. from
    `leaderboard.workflow_cases.load_runbook_cases`) to evaluate experts on them; `case_task` files
    each case under a task (a name or a function). By default each case is filed by its runbook
    folder (or `case_rules`, path glob -> task) and otherwise labeled by the service's classifier
    (see leaderboard/case_tasks.py); how each was decided is in `meta["case_tasks"]`.
    """
    d = Path(directory) if directory else STARTER_DIR
    tasks_file = d / "tasks.yaml"
    if not tasks_file.exists():
        raise TaskSetError(f"{d}: no tasks.yaml")
    raw = yaml.safe_load(tasks_file.read_text(encoding="utf-8"))
    rows = raw.get("tasks") if isinstance(raw, dict) else raw
    if not isinstance(rows, list) or not rows:
        raise TaskSetError(f"{tasks_file}: expected a non-empty `tasks:` list")
    tasks = [TaskInfo(name=str(t["name"]), description=" ".join(str(t.get("description", "")).split()))
             for t in rows]
    head = raw if isinstance(raw, dict) else {}
    examples = load_labeled(d / "examples.jsonl", source="starter") if (d / "examples.jsonl").exists() else []
    holdout = []
    tickets = d / "tickets.jsonl"
    if tickets.exists():
        for n, row in read_rows(tickets):
            task = row.get("expected_task") or row.get("task")
            text = f"{row.get('title', '')}\n{row.get('description', '')}".strip()
            if task and text and task != UNKNOWN:
                holdout.append(LabeledQuery(id=str(row.get("id") or f"ticket-{n}"), text=text, task=task,
                                            source="starter-tickets"))
    items = []
    case_meta: dict = {}
    if cases is not None:
        if case_task is not None:
            items = workflow_items(cases, case_task)
        else:
            cases = list(cases)
            assign, case_meta = assign_case_tasks(cases, tasks, examples, rules=case_rules)
            items = workflow_items(cases, assign)
    meta = {"source": str(d), "pack_version": head.get("version"), "workflow_cases": len(items)}
    if case_meta:
        meta["case_tasks"] = case_meta
    return TaskSet(name=str(head.get("name") or "starter"), description=str(head.get("description") or ""),
                   tasks=tasks, examples=examples, holdout=holdout, items=items, meta=meta)


def with_items(taskset: TaskSet, items: Iterable) -> TaskSet:
    """A copy of `taskset` with `items` appended (a new version)."""
    return TaskSet(name=taskset.name, description=taskset.description, tasks=taskset.tasks,
                   examples=taskset.examples, holdout=taskset.holdout, items=[*taskset.items, *items],
                   meta=taskset.meta)


TASKSETS: dict[str, Callable[[], TaskSet]] = {
    "opseval": lambda: from_opseval(),
    "opseval-en": lambda: from_opseval(lang="en"),
    "opseval-zh": lambda: from_opseval(lang="zh"),
    "owl-bench": lambda: from_owl_bench(),
    "it-service-tickets": lambda: from_it_tickets(),
    "starter": lambda: from_starter(),
}


def load_taskset(name_or_dir: str | Path, cases_dir: str | Path | None = None,
                 case_tasks: str | Path | None = None) -> TaskSet:
    """A task set by registered name (see TASKSETS) or from a saved task-set folder.

    `cases_dir` adds workflow cases read by `leaderboard.workflow_cases.load_runbook_cases` (starter-style
    sets), each filed under a task by its folder, the rules in the `case_tasks` YAML (path glob -> task),
    or the classifier (leaderboard/case_tasks.py) — for other sets, use `with_items` with an explicit task."""
    rules = None
    if case_tasks is not None:
        rules = load_case_task_rules(case_tasks)
    p = Path(name_or_dir)
    if str(name_or_dir) in TASKSETS and not (p / "taskset.yaml").exists():
        if cases_dir is not None:
            if str(name_or_dir) != "starter":
                raise TaskSetError("workflow cases can be attached to the starter task set only; use "
                                   "with_items(...) with an explicit task for others")

            return from_starter(cases=load_runbook_cases(cases_dir), case_rules=rules)
        return TASKSETS[str(name_or_dir)]()
    if (p / "taskset.yaml").exists():
        return TaskSet.load(p)
    if (p / "tasks.yaml").exists():
        cases = None
        if cases_dir is not None:
            cases = load_runbook_cases(cases_dir)
        return from_starter(p, cases=cases, case_rules=rules)
    raise TaskSetError(f"unknown task set {str(name_or_dir)!r}: use one of {sorted(TASKSETS)} or a folder "
                       "holding taskset.yaml (a saved task set) or tasks.yaml (a starter-style pack)")
