"""Validates the starter pack in `starter/`: it parses and is internally consistent."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
STARTER = ROOT / "starter"
DOCS = STARTER / "docs"

EXPECTED_TASKS = ["network", "database", "kubernetes", "storage", "access", "hardware", "application", "security"]
MIN_EXAMPLES_PER_TASK = 15
TICKET_SOURCES = {"alertmanager", "servicedesk", "email"}
UNKNOWN = "unknown"
STRUCTURED_MARKER = "## Meaning"
REQUIRED_SECTIONS = ("Meaning", "Diagnosis", "Mitigation")
NUMBERED = re.compile(r"^\d+\.\s+\S")


def _jsonl(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:  # pragma: no cover - failure path
            pytest.fail(f"{path.name}:{n}: invalid JSON: {e}")
        assert isinstance(row, dict), f"{path.name}:{n}: expected an object"
        rows.append(row)
    return rows


def _sections(text: str) -> dict[str, list[str]]:
    """`## Heading` -> the lines under it."""
    out: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("## "):
            current = line[3:].strip()
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return out


@pytest.fixture(scope="module")
def tasks() -> list[str]:
    raw = yaml.safe_load((STARTER / "tasks.yaml").read_text(encoding="utf-8"))
    assert isinstance(raw, dict)
    assert raw.get("name") and raw.get("description") and raw.get("version") is not None
    rows = raw["tasks"]
    assert isinstance(rows, list) and rows
    for t in rows:
        assert set(t) >= {"name", "description"}, t
        assert str(t["description"]).strip(), t
    return [str(t["name"]) for t in rows]


@pytest.fixture(scope="module")
def examples() -> list[dict]:
    return _jsonl(STARTER / "examples.jsonl")


@pytest.fixture(scope="module")
def tickets() -> list[dict]:
    return _jsonl(STARTER / "tickets.jsonl")


def _docs() -> list[Path]:
    return sorted(DOCS.glob("*/*.md"))


def test_tasks_unique_and_expected(tasks):
    assert len(tasks) == len(set(tasks)), "duplicate task names"
    assert tasks == EXPECTED_TASKS
    assert UNKNOWN not in tasks


def test_examples_valid(tasks, examples):
    known = set(tasks)
    for e in examples:
        assert set(e) >= {"id", "text", "task"}, e
        assert isinstance(e["text"], str) and e["text"].strip(), e
        assert e["task"] in known, f"{e['id']}: unknown task {e['task']!r}"
    ids = [e["id"] for e in examples]
    dupes = [i for i, c in Counter(ids).items() if c > 1]
    assert not dupes, f"duplicate example ids: {dupes}"
    texts = [e["text"].strip().lower() for e in examples]
    assert len(texts) == len(set(texts)), "duplicate example texts"


def test_examples_per_task(tasks, examples):
    counts = Counter(e["task"] for e in examples)
    short = {t: counts.get(t, 0) for t in tasks if counts.get(t, 0) < MIN_EXAMPLES_PER_TASK}
    assert not short, f"tasks with fewer than {MIN_EXAMPLES_PER_TASK} examples: {short}"


def test_examples_include_non_ascii_text(tasks, examples):
    # Every task carries non-English examples; at least one per task uses non-ASCII characters.
    for t in tasks:
        assert any(not e["text"].isascii() for e in examples if e["task"] == t), t


def test_docs_folders_are_tasks(tasks):
    folders = sorted(p.name for p in DOCS.iterdir() if p.is_dir())
    unknown = set(folders) - set(tasks)
    assert not unknown, f"doc folders that are not tasks: {sorted(unknown)}"
    assert not list(DOCS.glob("*.md")), "docs must live under docs/<task>/"
    for t in tasks:
        assert list((DOCS / t).glob("*.md")), f"no docs for task {t}"


@pytest.mark.parametrize("path", _docs(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_doc_parses(path):
    text = path.read_text(encoding="utf-8")
    first = next(line for line in text.splitlines() if line.strip())
    assert first.startswith("# "), f"{path}: must start with a '# Title' line"
    if STRUCTURED_MARKER not in text:
        return  # free-form document for the LLM extraction path
    sections = _sections(text)
    for name in REQUIRED_SECTIONS:
        assert name in sections, f"{path}: missing '## {name}'"
    assert " ".join(sections["Meaning"]).strip(), f"{path}: empty Meaning"
    steps = [line for name in ("Diagnosis", "Mitigation") for line in sections[name] if NUMBERED.match(line)]
    assert len(steps) >= 3, f"{path}: needs at least 3 numbered steps, has {len(steps)}"
    for name in ("Diagnosis", "Mitigation"):
        assert any(NUMBERED.match(line) for line in sections[name]), f"{path}: no numbered steps in {name}"


def test_structured_and_free_form_docs_present(tasks):
    structured = Counter()
    free = []
    for p in _docs():
        if STRUCTURED_MARKER in p.read_text(encoding="utf-8"):
            structured[p.parent.name] += 1
        else:
            free.append(p)
    for t in tasks:
        assert structured[t] >= 1, f"no structured runbook for {t}"
    assert free, "expected at least one free-form document for the LLM extraction path"


def test_doc_cross_references_exist():
    for p in _docs():
        for ref in re.findall(r"\b([a-z]+/[a-z0-9-]+\.md)\b", p.read_text(encoding="utf-8")):
            assert (DOCS / ref).exists(), f"{p}: reference to missing doc {ref}"


def test_map_routes_every_task(tasks):
    raw = yaml.safe_load((STARTER / "map.yaml").read_text(encoding="utf-8"))
    assert raw.get("version") and raw.get("source")
    assert isinstance(raw.get("fallback"), str) and raw["fallback"].strip()
    routes = raw["routes"]
    assert isinstance(routes, dict)
    assert set(routes) == set(tasks), f"routes {sorted(routes)} != tasks {sorted(tasks)}"
    for task, expert in routes.items():
        assert isinstance(expert, str) and expert.strip(), task


def test_tickets_valid(tasks, tickets, examples):
    known = set(tasks) | {UNKNOWN}
    example_texts = {e["text"].strip().lower() for e in examples}
    seen = set()
    for t in tickets:
        assert set(t) == {"title", "description", "source", "labels", "expected_task"}, t
        assert isinstance(t["title"], str) and t["title"].strip()
        assert 1 <= len(t["title"]) <= 500
        assert isinstance(t["description"], str)
        assert t["source"] in TICKET_SOURCES, t["source"]
        assert isinstance(t["labels"], list) and all(isinstance(x, str) and len(x) <= 64 for x in t["labels"])
        assert t["expected_task"] in known, t["expected_task"]
        for text in (t["title"], t["description"]):
            assert text.strip().lower() not in example_texts, f"ticket text copied from examples: {text!r}"
        key = (t["title"], t["description"])
        assert key not in seen, f"duplicate ticket {t['title']!r}"
        seen.add(key)
    per_task = Counter(t["expected_task"] for t in tickets)
    for task in tasks:
        assert per_task[task] >= 1, f"no sample ticket for {task}"
    assert per_task[UNKNOWN] >= 1, "expected at least one out-of-scope ticket"
