"""Evaluation cases from runbooks: the alert as the query, its Diagnosis and Mitigation as the reference.

    query            = alert name + the Meaning text (without <details> blocks)
    reference_steps  = Diagnosis steps, then Mitigation steps

List items are steps (short nested items fold into their parent); prose is split into sentences
and the actionable ones kept; a code fence is one step, joined to the sentence that introduces it
("... by running: kubectl get pods ..."). Cases with fewer than `min_steps` steps are dropped.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, Field

from experts.knowledge.documents import Document, load_documents
from experts.knowledge.extract import role_regions
from experts.knowledge.markdown import humanize, plain_text, section_steps

_DETAILS = re.compile(r"<details>.*?</details>", re.S | re.I)


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
