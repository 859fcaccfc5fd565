"""Evaluation cases from runbooks: the alert as the query, its Diagnosis and Mitigation as the reference.

    query            = alert name + the Meaning text (without <details> blocks)
    reference_steps  = Diagnosis steps, then Mitigation steps

List items are steps (short nested items fold into their parent); prose is split into sentences
and the actionable ones kept; a code fence is one step, joined to the sentence that introduces it
("... by running: kubectl get pods ..."). Cases with fewer than `min_steps` steps are dropped.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field

from experts.knowledge.documents import Document, load_documents
from experts.knowledge.extract import role_regions
from experts.knowledge.markdown import humanize, plain_text, section_steps

_DETAILS = re.compile(r"<details>.*?</details>", re.S | re.I)


# The shared runbook set the workflow benchmarks and training default to (under ../shared/data).
DEFAULT_CASES = "prometheus-operator-runbooks"


class WorkflowCase(BaseModel):
    id: str = Field(description="Runbook path without extension, relative to the runbook folder.")
    query: str = Field(description="What a ticket for this alert would say: alert name and meaning.")
    reference_steps: list[str] = Field(description="Diagnosis then mitigation steps, in document order.")
    source: str = Field(description="Runbook file, relative to the runbook folder.")


def _region_text(doc: Document, role: str) -> str:
    return "\n\n".join(doc.text[r.start:r.end] for r in role_regions(doc) if r.role == role)


def runbook_case(doc: Document) -> WorkflowCase | None:
    """One case from a runbook, or None when it has no diagnosis or mitigation section."""
    regions = {r.role for r in role_regions(doc)} if doc.is_markdown else set()
    if not regions & {"diagnosis", "mitigation"}:
        return None
    meaning = ""
    for role in ("description", "impact", "lead"):
        meaning = plain_text(_DETAILS.sub(" ", _region_text(doc, role)))
        if meaning:
            break
    name = doc.title
    readable = humanize(name)
    head = name if readable == name else f"{name} ({readable})"
    query = f"{head}: {meaning}".strip().rstrip(":") if meaning else head
    steps = section_steps(_region_text(doc, "diagnosis")).steps + section_steps(_region_text(doc, "mitigation")).steps
    seen: set[str] = set()
    reference = []
    for s in steps:
        key = re.sub(r"\W+", " ", s.lower()).strip()
        if key not in seen:
            seen.add(key)
            reference.append(s)
    case_id = re.sub(r"\.(md|markdown|txt)$", "", doc.source)
    return WorkflowCase(id=case_id, query=query, reference_steps=reference, source=doc.source)


def load_runbook_cases(directory: str | Path, min_steps: int = 3) -> list[WorkflowCase]:
    """Cases from every runbook under `directory` that yields at least `min_steps` reference steps."""
    cases = []
    for doc in load_documents([directory]).documents:
        case = runbook_case(doc)
        if case is not None and len(case.reference_steps) >= min_steps:
            cases.append(case)
    return cases


SPLITS = ("dev", "test", "all")


def split_cases(cases: list[WorkflowCase], part: str, seed: int = 0) -> list[WorkflowCase]:
    """The dev or test half of `cases` (by a hash of each case id, so a case keeps its side), or all.

    Settings are tuned on dev and reported on test: the held-out measurement is whether they generalise.
    """
    if part not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {part!r}")
    if part == "all":
        return list(cases)

    def side(case: WorkflowCase) -> str:
        h = int.from_bytes(hashlib.sha256(f"{seed}:{case.id}".encode()).digest()[:8], "big") / 2**64
        return "test" if h < 0.5 else "dev"

    return [c for c in cases if side(c) == part]


def sample_cases(cases: list[WorkflowCase], limit: int = 0) -> list[WorkflowCase]:
    """A deterministic sample of `limit` cases (all when `limit` is 0 or covers them), in id order."""
    if not limit or limit >= len(cases):
        return list(cases)
    return sorted(random.Random(0).sample(cases, limit), key=lambda c: c.id)


def paraphrase_query(case: WorkflowCase) -> str:
    """The case's ticket without its alert name: only what the alert means, as a user would describe it."""
    head, sep, meaning = case.query.partition(": ")
    text = meaning if sep else case.query
    name = case.id.rsplit("/", 1)[-1]
    for form in (name, humanize(name)):
        text = re.sub(re.escape(form), "this", text, flags=re.I)
    return text.strip() or humanize(name)


TICKETS_FILE = Path(__file__).resolve().parent / "data" / "runbook_tickets.jsonl"


@lru_cache(maxsize=4)
def case_tickets(path: str | Path = TICKETS_FILE) -> dict[str, str]:
    """Team-written tickets for the Prometheus runbook cases (case id -> "title\ndescription"): what an
    on-call engineer would write about the incident, without the alert's name and in other words."""

    p = Path(path)
    if not p.exists():
        return {}
    out = {}
    for line in p.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            out[row["id"]] = f"{row['title']}\n{row['description']}"
    return out
