"""Request and response contracts shared by the API, the stages and the offline tools."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.workflow import Step, Edge

UNKNOWN = "unknown"


class Ticket(BaseModel):
    """An incident ticket as callers send it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    title: str = Field(min_length=1, max_length=500, description="One-line summary of the incident.")
    description: str = Field(default="", max_length=20000, description="Details: symptoms, errors, scope.")
    source: str | None = Field(default=None, max_length=100, description="System that raised the ticket.")
    labels: list[str] = Field(default_factory=list, max_length=32, description="Free-form tags from the source.")
    id: str | None = Field(default=None, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$",
                           description="Caller's ticket id (one is assigned when absent).")

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
    overall: float = Field(description="Mean of the scored dimensions (1-5).")


class WorkflowOut(BaseModel):
    mermaid: str = Field(description="Valid Mermaid `flowchart TD`.")
    steps: list[Step]
    edges: list[Edge]


class Candidate(BaseModel):
    index: int
    workflow: WorkflowOut
    scores: Scores
    raw_tokens: int = Field(default=0, description="Tokens the model generated for this candidate.")
    origin: str = Field(default="model", description="model, or knowledge-base when every sample failed to "
                                                    "parse and the top incident's own steps were used.")


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
    context_ids: list[str] = Field(description="Knowledge chunks and incident nodes given to the Planner.")
    knowledge_version: str | None = Field(default=None, description="Knowledge-base version used.")
    timings_ms: dict[str, float]
    dropped_candidates: int = Field(default=0, description="Candidates whose text could not become a workflow.")
    shared: str | None = Field(default=None, description="null when computed for this ticket; 'coalesced' when it "
                                                     "joined an identical ticket in flight; 'cache' when a finished "
                                                     "result was reused (see shared_from).")
    shared_from: str | None = Field(default=None, description="Ticket id whose computation produced a shared result.")


class LabeledQuery(BaseModel):
    """A query with its task label: classifier retrieval examples and evaluation items."""

    id: str = Field(description="Stable id, unique within its set.")
    text: str = Field(min_length=1, description="The query / ticket text.")
    task: str = Field(min_length=1, description="Task label.")
    source: str | None = Field(default=None, description="Set it came from (starter, it-service-tickets, ...).")
