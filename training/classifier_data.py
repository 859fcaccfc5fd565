"""Fine-tuning rows for the classifier LLM: the service's own prompt, the task name as the completion.

A row is what `TaskClassifier.classify` would ask the LLM about a labeled example if it came in as a
ticket: `TaskClassifier.prompt(text, neighbours)` (system prompt, task list, the retrieved labeled
examples with their tasks, the ticket, `Task:`, rendered by the engine's `format_prompt`), and the
completion is the label the service scores, `" <task name>"` (the leading space is how the BPE splits
the word after `Task:`). The neighbours come from the training part only and never include the example
itself, nor another example with the same text: otherwise the model would learn to copy the label of
the top neighbour, which a new ticket never has. The dev part is held out before anything is retrieved.
"""

from __future__ import annotations

from collections.abc import Callable

from core.schemas import LabeledQuery
from router.examples import ExampleIndex, Neighbour
from router.importers import split_labeled


def subset(items: list[LabeledQuery], n: int | None, seed: int) -> list[LabeledQuery]:
    """A stratified, deterministic subset of about n items (all when n is None or larger)."""
    if n is None or n >= len(items):
        return items
    _, part = split_labeled(items, n / len(items), seed)
    return part


def split_examples(examples: list[LabeledQuery], dev_fraction: float, seed: int, max_examples: int | None = None,
                   dev_limit: int | None = None) -> tuple[list[LabeledQuery], list[LabeledQuery]]:
    """(train, dev): stratified by task and seeded (`router.importers.split_labeled`); the dev part is never
    trained on or retrieved from. `max_examples` / `dev_limit` cap either side (stratified)."""
    train, dev = split_labeled(examples, dev_fraction, seed)
    if not train or not dev:
        raise ValueError(f"{len(examples)} labeled examples give no train/dev split at dev_fraction {dev_fraction}")
    return subset(train, max_examples, seed), subset(dev, dev_limit, seed)


def _norm(text: str) -> str:
    return " ".join(text.split()).lower()


def neighbours_without_self(index: ExampleIndex, examples: list[LabeledQuery], k: int,
                            chunk: int = 256) -> list[list[Neighbour]]:
    """The top-k neighbours of each example in `index`, leaving out the example itself (same id) and any
    example with the same text (duplicates would hand the model its own label)."""
    out: list[list[Neighbour]] = []
    wide = min(len(index.examples), k + 8)
    for s in range(0, len(examples), chunk):
        part = examples[s:s + chunk]
        hits = index.search([q.text for q in part], wide)
        for q, row in zip(part, hits):
            own = _norm(q.text)
            out.append([n for n in row if n.id != q.id and _norm(n.text) != own][:k])
    return out


def sft_rows(prompt: Callable[[str, list[Neighbour]], str], index: ExampleIndex, examples: list[LabeledQuery],
             top_k: int) -> list[dict]:
    """One prompt-completion row per example: {"id", "task", "prompt", "completion"}. `prompt` is the serving
    classifier's `TaskClassifier.prompt`, `index` the training part's retrieval index and `top_k` the
    classifier's `top_k` (the prompt shows its first `prompt_examples`)."""
    neighbours = neighbours_without_self(index, examples, top_k)
    return [{"id": q.id, "task": q.task, "prompt": prompt(q.text, nb), "completion": " " + q.task}
            for q, nb in zip(examples, neighbours)]
