"""Filing knowledge-base documents under the service's tasks, so an expert's scope means something.

An expert's `knowledge_scope` names tasks. A team's own runbooks sit in folders named after
whatever they like (`cluster-monitoring-operator/`), so folder names alone reach no scope. Each
document is therefore filed at build time:

- a folder or front-matter tag that is a task name files it under that task (the author said so);
- the service's own classifier (its retrieval side: labeled examples, MiniLM + character n-grams)
  reads the document's title and opening text the way it reads a ticket, and adds its task when it
  is confident, or decides alone when no tag names a task.

The assignment is stored in the knowledge base's manifest (`flowrouter kb info` shows it) and
becomes `task:<name>` tags on the document's chunks and incident nodes.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from core.config import ClassifierConfig
from core.embeddings import get_embedder
from core.schemas import UNKNOWN, LabeledQuery
from experts.knowledge.documents import Document
from experts.knowledge.markdown import humanize, plain_text, whole_sentences
from experts.knowledge.store import KnowledgeStore
from router.classifier import TaskClassifier
from router.examples import ExampleIndex, TaskInfo, load_examples, load_tasks

CONFIDENT = 0.5  # the classifier's task joins a task named by a tag only above this probability
TEXT_CHARS = 600


def document_text(doc: Document) -> str:
    """What the classifier reads of a document: its title and its opening sentences."""
    title = doc.title if humanize(doc.title) == doc.title else f"{doc.title} ({humanize(doc.title)})"
    return f"{title}: {whole_sentences(plain_text(doc.body), TEXT_CHARS)}"


class DocumentTaskAssigner:
    """`experts.knowledge.build.TaskAssigner` backed by the service's classifier (retrieval side)."""

    def __init__(self, tasks: list[TaskInfo], examples: list[LabeledQuery], cfg: ClassifierConfig, embedder=None):
        if embedder is None:
            embedder = get_embedder(cfg.embedder)
        self.names = [t.name for t in tasks]
        index = ExampleIndex(examples, embedder, cfg.lexical_weight)
        self.classifier = TaskClassifier(cfg, tasks, index, llm=None)
        blob = json.dumps([self.names, sorted((e.id, e.task, e.text) for e in examples),
                           cfg.model_dump(mode="json", exclude={"model"}), CONFIDENT, TEXT_CHARS])
        self.fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]

    def __call__(self, documents: list[Document]) -> dict[str, dict]:
        if not documents:
            return {}
        verdicts = self.classifier.classify([document_text(d) for d in documents], mode="retrieval")
        out = {}
        for doc, v in zip(documents, verdicts):
            named = [t for t in doc.tags if t in self.names]
            tasks, by = list(named), "folder" if named else ""
            if v.task != UNKNOWN and v.task not in tasks and (not named or v.confidence >= CONFIDENT):
                tasks.append(v.task)
                by = f"{by}+classifier" if by else "classifier"
            out[doc.source] = {"tasks": tasks, "tasks_by": by or "none",
                               "task_confidence": round(v.confidence, 4)}
        return out


def assigner_for(cfg) -> DocumentTaskAssigner:
    """The assigner of a FlowRouterConfig: its task set, labeled examples and classifier settings."""

    return DocumentTaskAssigner(load_tasks(cfg.tasks.tasks), load_examples(cfg.tasks.examples), cfg.classifier)


def scope_coverage(manifest: dict, experts) -> dict[str, int]:
    """Documents each expert's knowledge scope covers (scopes name tasks or plain document tags)."""
    docs = manifest.get("docs", {})
    out = {}
    for e in experts:
        scope = set(e.knowledge_scope)
        out[e.name] = len(docs) if not scope else sum(
            1 for d in docs.values() if scope & (set(d.get("tasks", [])) | set(d.get("tags", []))))
    return out


def uncovered_experts(manifest: dict, experts) -> list[str]:
    """Experts whose scope covers no document of the base (they would always fall back to the whole base)."""
    return [name for name, n in scope_coverage(manifest, experts).items() if n == 0]


def manifest_of(directory: str | Path) -> dict:
    return KnowledgeStore(directory).manifest()
