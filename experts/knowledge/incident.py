"""The incident node: one incident as the knowledge base stores it and as retrieval returns it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from experts.knowledge.markdown import humanize

TASK_TAG = "task:"  # tag prefix of the tasks a document was filed under


class IncidentNode(BaseModel):
    """An incident merged from every document that describes it (FlowXpert Module 1)."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(description="Stable node id (n-<slug>).")
    key: str = Field(default="", description="Normalised incident name the merge groups by.")
    incident: str = Field(description="Incident name (the runbook's alert or title).")
    failure_description: str = ""
    diagnosis_steps: list[str] = Field(default_factory=list)
    mitigation_steps: list[str] = Field(default_factory=list)
    workflow: list[dict] = Field(default_factory=list, description="Reference workflow (steps of the workflow "
                                 "schema) built from the steps, with the runbook's conditionals as decisions.")
    typical_cases: list[str] = Field(default_factory=list)
    notes: str = ""
    sources: list[str] = Field(default_factory=list, description="Document paths, then chunk ids.")
    tags: list[str] = Field(default_factory=list, description="Folder and front-matter tags, and `task:<name>` "
                            "for the tasks its documents were assigned to.")
    related: list[str] = Field(default_factory=list)
    aliases: list[str] = Field(default_factory=list)
    members: list[str] = Field(default_factory=list, description="Raw node refs source#order.")
    references: list[str] = Field(default_factory=list, description="Document paths its text points at.")

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
