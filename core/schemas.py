"""Request and response contracts shared by the API, the stages and the offline tools."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_serializer, field_validator, model_validator

from core.workflow import (
    Edge,
    MermaidError,
    Step,
    StepKind,
    Workflow,
    WorkflowError,
    linear_workflow,
    parse_lines,
    parse_mermaid,
    to_mermaid,
)

UNKNOWN = "unknown"
CRITICAL_LEVELS = frozenset({"critical", "p1", "sev1", "page", "emergency"})

# Ticket metadata follows OpenAI's limits, so what an OpenAI client may send is exactly what a ticket keeps.
METADATA_MAX_KEYS, METADATA_MAX_KEY_CHARS, METADATA_MAX_VALUE_CHARS = 16, 64, 512
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=METADATA_MAX_KEY_CHARS)]
MetadataValue = Annotated[str, StringConstraints(max_length=METADATA_MAX_VALUE_CHARS)]

ALERT_MAX_ENTRIES, ALERT_MAX_NAME_CHARS, ALERT_MAX_VALUE_CHARS = 64, 256, 4000


class AlertContext(BaseModel):
    """The monitoring alert a ticket was raised from (filled in by the Alertmanager receiver)."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(default="alertmanager", max_length=100, description="System that sent the alert.")
    fingerprint: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9]+$",
                             description="The alert's identity (Alertmanager: a hash of its labels).")
    starts_at: datetime = Field(description="When the alert started firing.")
    labels: dict[str, str] = Field(default_factory=dict, max_length=ALERT_MAX_ENTRIES,
                                   description="The alert's labels (alertname, severity, instance...).")
    annotations: dict[str, str] = Field(default_factory=dict, max_length=ALERT_MAX_ENTRIES,
                                        description="The alert's annotations (summary, description, runbook_url...).")
    incident: str | None = Field(default=None, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$",
                                 description="The incident the alert belongs to: tickets of one incident share one "
                                             "computation and its result.")
    group_key: str | None = Field(default=None, max_length=ALERT_MAX_VALUE_CHARS,
                                  description="The alert group it was notified in (Alertmanager's groupKey).")
    keys: list[str] = Field(default_factory=list, max_length=8,
                            description="Retrieval keys (alert name, runbook file name): a runbook named exactly "
                                        "like one is ranked first.")

    @field_validator("labels", "annotations")
    @classmethod
    def _bounded_entries(cls, v: dict[str, str]) -> dict[str, str]:
        if any(len(k) > ALERT_MAX_NAME_CHARS or len(x) > ALERT_MAX_VALUE_CHARS for k, x in v.items()):
            raise ValueError(f"names must be at most {ALERT_MAX_NAME_CHARS} characters, values at most "
                             f"{ALERT_MAX_VALUE_CHARS}")
        return v

    @field_validator("keys")
    @classmethod
    def _short_keys(cls, v: list[str]) -> list[str]:
        if any(not 1 <= len(x) <= ALERT_MAX_NAME_CHARS for x in v):
            raise ValueError(f"keys must be 1 to {ALERT_MAX_NAME_CHARS} characters")
        return v

    @field_serializer("starts_at")
    def _iso(self, v: datetime) -> str:
        return v.isoformat()  # a plain string in every dump: the ticket store writes `model_dump()` as JSON


class Ticket(BaseModel):
    """An incident ticket as callers send it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    title: str = Field(min_length=1, max_length=500, description="One-line summary of the incident.")
    description: str = Field(default="", max_length=20000, description="Details: symptoms, errors, scope.")
    source: str | None = Field(default=None, max_length=100, description="System that raised the ticket.")
    labels: list[str] = Field(default_factory=list, max_length=32, description="Free-form tags from the source.")
    id: str | None = Field(default=None, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$",
                           description="Caller's ticket id (one is assigned when absent).")
    user: str | None = Field(default=None, min_length=1, max_length=256,
                             description="End user the ticket was raised for (an OpenAI client's `user`); "
                                         "kept with the ticket.")
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict, max_length=METADATA_MAX_KEYS,
        description=f"Caller's key-value pairs kept with the ticket (OpenAI's limits: at most {METADATA_MAX_KEYS} "
                    f"keys of up to {METADATA_MAX_KEY_CHARS} characters, values up to {METADATA_MAX_VALUE_CHARS}).")
    severity: Literal["critical", "high", "medium", "low"] | None = Field(
        default=None, description="How urgent the incident is; critical tickets are admitted ahead of the queue "
                                  "and never shed while a lower severity could be (labels such as "
                                  "severity=critical or priority=P1 count too).")
    alert: AlertContext | None = Field(default=None, description="The monitoring alert the ticket was raised from "
                                                                 "(its labels in full, its incident).")

    @field_validator("labels")
    @classmethod
    def _short_labels(cls, v: list[str]) -> list[str]:
        if any(len(x) > 64 for x in v):
            raise ValueError("labels must be at most 64 characters each")
        return v

    @field_validator("title", "description")
    @classmethod
    def _no_nul(cls, v: str) -> str:
        if "\x00" in v:
            raise ValueError("text must not contain NUL characters")
        return v

    def text(self) -> str:
        return f"{self.title}\n{self.description}".strip()

    def is_critical(self) -> bool:
        """Critical tickets are admitted first and shed last: `severity: critical`, a label such as
        `severity=critical`, `priority=P1`, `critical` or `P1`, or a critical alert."""
        if self.severity == "critical":
            return True
        pairs = {tuple(x.lower().split("=", 1)) if "=" in x else ("", x.lower()) for x in self.labels}
        if self.alert is not None:
            pairs |= {(k.lower(), v.lower()) for k, v in self.alert.labels.items()}
        return any(k in ("", "severity", "priority") and v in CRITICAL_LEVELS for k, v in pairs)


class Classification(BaseModel):
    task: str = Field(description="A configured task name or 'unknown'.")
    confidence: float = Field(description="Probability of the chosen task (0-1).")
    decided_by: str = Field(description="retrieval (cascade shortcut), llm+retrieval, or unknown-threshold.")
    distribution: dict[str, float] = Field(description="Combined probability per task.")
    examples: list[dict] = Field(default_factory=list,
                                 description="Retrieved labeled examples: id, task, similarity.")


class Scores(BaseModel):
    relevance: float | None = None
    coverage: float | None = None
    accuracy: float | None = None
    coherence: float | None = None
    conciseness: float | None = None
    structure: float = Field(default=0.0, description="Structural quality 0-1: a decision with both branches, "
                                                      "a reachable terminal, nothing changed before observing.")
    grounding: float | None = Field(default=None, description="STEPScore F1 (0-1) against the retrieved reference "
                                                              "workflow; null when no knowledge matched.")
    overall: float = Field(description="Mean of the scored dimensions (1-5).")
    rank: float = Field(default=0.0, description="What best-of-N maximises: overall plus the weighted structure "
                                                 "and grounding.")


class WorkflowOut(BaseModel):
    mermaid: str = Field(description="Valid Mermaid `flowchart TD`.")
    steps: list[Step] = Field(description="Typed steps carrying their transitions (next, yes, no).")
    edges: list[Edge] = Field(description="The same transitions as edges (derived from the steps).")

    @classmethod
    def of(cls, workflow: Workflow) -> WorkflowOut:
        return cls(mermaid=to_mermaid(workflow), steps=workflow.steps, edges=workflow.edges())


class Candidate(BaseModel):
    index: int
    workflow: WorkflowOut
    scores: Scores
    raw_tokens: int = Field(default=0, description="Tokens the model generated for this candidate.")
    origin: Literal["model", "case"] = Field(default="model", description="Who wrote the workflow: model, the "
                                             "expert under the workflow grammar; case, an operator (the final "
                                             "workflow of the past case the Planner followed as its reference).")
    decoding: Literal["greedy", "sampled", "case"] = Field(default="sampled", description="greedy: the expert's "
                                                           "greedy decode (always one of the N); sampled: a sampled "
                                                           "one; case: the reference case's workflow, reused.")
    closed_early: bool = Field(default=False, description="The token budget ran out: the unfinished last step "
                                                          "was dropped and the workflow ends in a closing step.")


# ---- messages between deployments --------------------------------------------------------------
class ClassifyRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str = Field(min_length=1, description="Ticket text (title and description).")


class ClassifyResponse(BaseModel):
    classification: Classification
    compute_ms: float = Field(description="Wall time of the batch this request ran in.")
    batch_size: int


class KnowledgeItem(BaseModel):
    id: str = Field(description="Incident node id, chunk id, or `case:<ticket id>` for a past case.")
    kind: Literal["node", "chunk", "case"]
    title: str = Field(description="Incident name, the chunk's document and heading, or the past ticket's title.")
    source: str | None = Field(default=None, description="Document the item comes from.")
    score: float


class KnowledgeUse(BaseModel):
    """What a workflow was grounded in."""

    status: Literal["matched", "none matched", "no knowledge base"] = Field(
        description="matched: knowledge was shown to the expert; none matched: nothing in the base was relevant "
                    "enough, and the workflow is the model's own; no knowledge base: the expert has none.")
    scope: Literal["unscoped", "scoped", "whole base"] = Field(
        default="unscoped", description="scoped: retrieved within the expert's knowledge scope; whole base: the "
                                        "scope held nothing relevant, so the whole base was searched.")
    items: list[KnowledgeItem] = Field(default_factory=list, description="Knowledge shown to the expert.")
    best_score: float | None = Field(default=None, description="Relevance of the best item considered.")
    version: str | None = Field(default=None, description="Knowledge-base version used.")
    reference: str | None = Field(default=None, description="Id of the item whose workflow was shown as the "
                                                            "reference to follow: a past case above "
                                                            "`cases.reference_similarity`, else the best runbook node.")
    cases_version: str | None = Field(default=None, description="Case-memory revision used (null: no case memory).")


class SimilarCase(BaseModel):
    """A past ticket an operator accepted or corrected, retrieved for this one (case memory)."""

    ticket_id: str = Field(description="The past ticket's id.")
    similarity: float = Field(description="Hybrid similarity of the two tickets (dense + lexical, about 0-1).")
    verdict: Literal["accept", "edit"] = Field(description="accept: the returned workflow was accepted; edit: an "
                                                           "operator corrected it.")
    title: str = Field(default="", description="The past ticket's first line.")
    shown: bool = Field(default=False, description="Shown to the Planner (similarity above `cases.min_similarity`).")
    reference: bool = Field(default=False, description="Its workflow was the reference the Planner followed "
                                                       "(similarity above `cases.reference_similarity`).")


class PlanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ticket: str = Field(min_length=1)
    n: int = Field(ge=1, le=16, description="Candidates to write (best-of-N).")
    seed: int | None = None
    exclude_sources: list[str] = Field(default_factory=list, description="Documents retrieval must not return "
                                                                         "(held-out evaluation).")
    keys: list[str] = Field(default_factory=list, max_length=8,
                            description="Retrieval keys (an alert name, a runbook file name): a runbook named "
                                        "exactly like one is ranked first.")


class PlanCandidate(BaseModel):
    workflow: Workflow
    decoding: Literal["greedy", "sampled", "case"] = Field(description="greedy / sampled: written by the expert; "
                                                           "case: the reference case's final workflow, reused.")
    tokens: int = Field(description="Tokens generated.")
    closed_early: bool = False
    raw: str = Field(description="The text the model wrote (the workflow's line form).")


class PlanTimings(BaseModel):
    retrieval_ms: float
    generation_ms: float
    batch_size: int = 1
    cases_ms: float = Field(default=0.0, description="Part of retrieval_ms spent on case memory (refresh + search).")


class ScoringContext(BaseModel):
    """The knowledge the Scorer judges a candidate against (the best retrieved incident)."""

    text: str = Field(default="", description="Incident, meaning and reference workflow, as the judge reads them.")
    reference_steps: list[str] = Field(default_factory=list, description="The reference workflow's step texts.")


class PlanResponse(BaseModel):
    candidates: list[PlanCandidate]
    dropped: int = Field(description="Samples that could not become a workflow (the budget ran out inside the "
                                     "first step).")
    knowledge: KnowledgeUse
    scoring: ScoringContext = Field(default_factory=ScoringContext)
    similar_cases: list[SimilarCase] = Field(default_factory=list, description="Past cases retrieved, best first.")
    timings: PlanTimings
    prompt_tokens: int = Field(default=0, ge=0, description="Tokens of the prompt the expert read (its own "
                                                            "tokenizer: template, knowledge and ticket); 0 when "
                                                            "the engine cannot count them.")


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ticket: str = Field(min_length=1)
    workflow: Workflow
    context: ScoringContext = Field(default_factory=ScoringContext, description="What the Planner was given.")


class ScoreResponse(BaseModel):
    scores: Scores
    compute_ms: float = Field(description="Wall time of the batch this request ran in.")
    batch_size: int


class TicketResult(BaseModel):
    ticket_id: str
    task: str
    confidence: float
    decision_path: str
    expert: str
    map_version: str
    workflow: WorkflowOut = Field(description="The best candidate's workflow.")
    best_index: int = Field(description="Index of the best candidate in `candidates`.")
    candidates: list[Candidate]
    retrieved_examples: list[dict] = Field(description="Labeled examples the classifier retrieved.")
    knowledge: KnowledgeUse = Field(description="What the workflow was grounded in.")
    similar_cases: list[SimilarCase] = Field(default_factory=list, description="Similar past tickets an operator "
                                             "accepted or corrected (case memory), best first.")
    context_ids: list[str] = Field(description="Ids of knowledge.items (knowledge given to the Planner).")
    knowledge_version: str | None = Field(default=None, description="Knowledge-base version used.")
    timings_ms: dict[str, float] = Field(description="Milliseconds per stage: classify, retrieve, cases, plan, "
                                         "score, compute (model compute on the ticket's path), total; "
                                         "held_for_critical when it waited for critical tickets to compute.")
    n_requested: int = Field(default=1, description="Candidates asked for (best-of-N).")
    n_used: int | None = Field(default=None, description="Candidates written: fewer than asked under load "
                                                         "(flood.adaptive_n).")
    n_reason: str | None = Field(default=None, description="Why n_used differs from n_requested ('requested' when "
                                                           "it does not).")
    dropped_candidates: int = Field(default=0, description="Samples that could not become a workflow.")
    prompt_tokens: int = Field(default=0, description="Tokens of the prompt the chosen expert read (one prefill "
                                                      "shared by all candidates).")
    shared: str | None = Field(default=None, description="null when computed for this ticket; 'coalesced' when it "
                                                     "joined an identical ticket in flight; 'cache' when a finished "
                                                     "result was reused (see shared_from).")
    shared_from: str | None = Field(default=None, description="Ticket id whose computation produced a shared result.")


# ---- operator feedback ----------------------------------------------------------------------------
MAX_CORRECTION_STEPS = 30
# An entry of a `steps` list written in the line form's syntax: a terminal, or a question with its targets.
_LINE_SYNTAX = re.compile(r"^\s*(?:\[end\]\s|\[change\]\s)|\?\s*yes\s+\d{1,2}\s*,\s*no\s+\d{1,2}\s*$", re.I)


class Outcome(BaseModel):
    """What happened when the operator ran the workflow."""

    model_config = ConfigDict(extra="forbid", strict=True)

    status: Literal["resolved", "not_resolved"] = Field(description="Whether following the workflow resolved the "
                                                                    "incident.")
    step: str | int | None = Field(default=None, description="resolved only: the step that resolved it, as its id "
                                                             "(S3) or its 1-based position in the final workflow.")

    @model_validator(mode="after")
    def _step_only_when_resolved(self):
        if self.step is not None and self.status != "resolved":
            raise ValueError("outcome.step names the step that resolved the incident: only with status resolved")
        if isinstance(self.step, int) and self.step < 1:
            raise ValueError("outcome.step positions start at 1")
        return self

    def step_id(self, workflow: Workflow) -> str | None:
        """The resolving step's id in `workflow`; WorkflowError when the workflow has no such step."""
        if self.step is None:
            return None
        ids = [s.id for s in workflow.steps]
        if isinstance(self.step, int):
            if self.step > len(ids):
                raise WorkflowError(f"outcome.step {self.step}: the workflow has {len(ids)} steps")
            return ids[self.step - 1]
        if self.step not in ids:
            raise WorkflowError(f"outcome.step {self.step!r} is not a step of the workflow ({', '.join(ids)})")
        return self.step


class Feedback(BaseModel):
    """An operator's verdict on a returned workflow; `edit` carries the corrected workflow."""

    model_config = ConfigDict(extra="forbid", strict=True)  # strict: `"candidate": false` is not candidate 0

    verdict: Literal["accept", "reject", "edit"] = Field(
        description="accept or reject the returned workflow, or edit: replace it with the corrected one in "
                    "`steps` or `mermaid` (the ticket then becomes a case the Planner follows for similar tickets).")
    candidate: int | None = Field(default=None, ge=0, le=63,
                                  description="Which candidate is judged, or corrected (default: the best one).")
    comment: str | None = Field(default=None, max_length=2000)
    steps: list[str | dict[str, Any]] | None = Field(
        default=None, max_length=MAX_CORRECTION_STEPS,
        description="edit: the corrected workflow as ordered steps. Either texts, in order: plain texts are a "
                    "straight sequence closed by a resolved step; texts in the line form ('[change] Restart X', "
                    "'Is X full? yes 4, no 3' with 1-based targets, '[end] Escalate') may branch and must end "
                    "in '[end]' steps. Or typed steps of the workflow schema ({id, kind, text, action, next, yes, "
                    "no}).")
    mermaid: str | None = Field(default=None, max_length=20000,
                                description="edit: the corrected workflow as a Mermaid flowchart (instead of steps).")
    outcome: Outcome | None = Field(default=None, description="Whether the (final) workflow resolved the incident.")

    @model_validator(mode="after")
    def _correction_matches_verdict(self):
        given = self.steps is not None or self.mermaid is not None
        if self.verdict != "edit":
            if given:
                raise ValueError(f"steps and mermaid come only with verdict edit, not {self.verdict}")
            return self
        if self.steps is not None and self.mermaid is not None:
            raise ValueError("an edit gives the corrected workflow once: steps or mermaid, not both")
        corrected_workflow(self)  # raises ValueError (WorkflowError) with the reason
        return self


def corrected_workflow(feedback: Feedback) -> Workflow:
    """The valid workflow an `edit` carries; WorkflowError (a ValueError) says why there is none."""
    if feedback.mermaid is not None:
        try:
            wf = parse_mermaid(feedback.mermaid)
        except MermaidError as exc:
            raise WorkflowError(f"malformed Mermaid: {exc}") from None
        return _checked(wf)
    entries = feedback.steps or []
    if not entries:
        raise WorkflowError("an edit needs the corrected workflow: non-empty steps or mermaid")
    if all(isinstance(e, dict) for e in entries):
        try:
            wf = Workflow(steps=[Step.model_validate(e) for e in entries])
        except ValueError as exc:
            raise WorkflowError(f"steps are not workflow steps: {exc}") from None
        return _checked(wf)
    if not all(isinstance(e, str) for e in entries):
        raise WorkflowError("steps are either all texts or all typed steps")
    if not any(_LINE_SYNTAX.search(e) for e in entries):
        texts = [e for e in entries if e.strip()]
        if len(texts) != len(entries):
            raise WorkflowError("steps must not be empty texts")
        return linear_workflow(texts)
    if any("\n" in e for e in entries):
        raise WorkflowError("a step is one line")
    if not any(re.match(r"^\s*\[end\]\s", e) for e in entries):
        raise WorkflowError("the workflow has no terminal step: end it with an '[end] ...' step")
    lines = [f"{i}. " + re.sub(r"\s*\?\s*yes\s+(\d+)\s*,\s*no\s+(\d+)\s*$", r"? yes \1, no \2", e.strip())
             for i, e in enumerate(entries, 1)]
    return _checked(parse_lines("\n".join(lines)))


def _checked(wf: Workflow) -> Workflow:
    if not any(s.kind == StepKind.terminal for s in wf.steps):
        raise WorkflowError("the workflow has no terminal step (a graph must end somewhere)")
    return wf.validate_graph()


class LabeledQuery(BaseModel):
    """A query with its task label: classifier retrieval examples and evaluation items."""

    id: str = Field(description="Stable id, unique within its set.")
    text: str = Field(min_length=1, description="The query / ticket text.")
    task: str = Field(min_length=1, description="Task label.")
    source: str | None = Field(default=None, description="Set it came from (starter, it-service-tickets, ...).")
