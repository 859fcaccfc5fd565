"""The incident model: what a document says about an incident (a mention), the node the knowledge
base merges mentions into and stores, and the node as retrieval returns it (a hit).

All three share one definition of an incident's content (`IncidentText`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from experts.knowledge.markdown import humanize

TASK_TAG = "task:"  # tag prefix of the tasks a document was filed under


class IncidentText(BaseModel):
    """What is known about an incident: its name, how it shows, how to diagnose and mitigate it."""

    model_config = ConfigDict(extra="ignore")

    incident: str = Field(description="Incident name (the runbook's alert or title).")
    failure_description: str = Field(default="", description="How the failure shows (symptoms, impact).")
    diagnosis_steps: list[str] = Field(default_factory=list, description="Read-only checks, in document order.")
    mitigation_steps: list[str] = Field(default_factory=list, description="Fixes, in document order.")
    typical_cases: list[str] = Field(default_factory=list, description="Known causes and past cases.")
    notes: str = Field(default="", description="Other remarks the document makes.")
    tags: list[str] = Field(default_factory=list, description="Folder and front-matter tags, and `task:<name>` "
                            "for the tasks its documents were assigned to.")
    references: list[str] = Field(default_factory=list, description="Document paths its text points at.")


class IncidentMention(IncidentText):
    """One incident as one document (or one run of its paragraphs) describes it, before merging."""

    source: str = Field(description="Document path.")
    order: int = Field(description="Position among the document's mentions (0: the first).")
    method: str = Field(description="Extractor that found it: runbook | llm | heuristic.")
    chunk_ids: list[str] = Field(default_factory=list, description="Chunks the mention's text is in.")
    primary: bool = Field(default=False, description="The document's own (title) incident.")

    @property
    def ref(self) -> str:
        return f"{self.source}#{self.order}"

    def has_content(self) -> bool:
        return bool(self.diagnosis_steps or self.mitigation_steps or self.typical_cases)


class IncidentNode(IncidentText):
    """An incident merged from every document that mentions it (FlowXpert Module 1)."""

    id: str = Field(description="Stable node id (n-<slug>).")
    key: str = Field(default="", description="Normalised incident name the merge groups by.")
    workflow: list[dict] = Field(default_factory=list, description="Reference workflow (steps of the workflow "
                                 "schema) built from the steps, with the runbook's conditionals as decisions.")
    sources: list[str] = Field(default_factory=list, description="Document paths, then chunk ids.")
    related: list[str] = Field(default_factory=list, description="Ids of linked nodes.")
    aliases: list[str] = Field(default_factory=list, description="Other names of the incident.")
    members: list[str] = Field(default_factory=list, description="Refs (source#order) of the merged mentions.")

    @property
    def docs(self) -> list[str]:
        return sorted({m.rsplit("#", 1)[0] for m in self.members})

    def name_text(self) -> str:
        return humanize(self.incident)

    def description_text(self) -> str:
        return f"{humanize(self.incident)}: {self.failure_description[:500]}"

    def all_text(self) -> str:
        return " ".join([self.incident, self.failure_description, *self.diagnosis_steps, *self.mitigation_steps,
                         *self.typical_cases, self.notes])


class NodeHit(IncidentNode):
    """An incident node retrieved for a query."""

    score: float = Field(description="Retrieval score (higher is more relevant).")
