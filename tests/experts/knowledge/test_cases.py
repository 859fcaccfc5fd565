"""Case memory: the shared store, its revision check, the dense + lexical index, and persistence."""

import zlib

import numpy as np

from core.workflow import linear_workflow
from experts.knowledge.cases import Case, CaseIndex, CaseStore


def bag_embed(texts):
    """A stand-in embedder: hashed bag of words, L2-normalised (similar texts, similar vectors)."""
    out = np.zeros((len(texts), 64), np.float32)
    for i, t in enumerate(texts):
        for w in t.lower().split():
            out[i, zlib.crc32(w.encode()) % 64] += 1
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


class CountingEmbed:
    def __init__(self):
        self.texts = []

    def __call__(self, texts):
        self.texts.extend(texts)
        return bag_embed(texts)


def case(tid, text, verdict="edit", steps=("Check the quota of the bucket", "Raise the bucket quota")):
    return Case(ticket_id=tid, text=text, verdict=verdict, workflow=linear_workflow(list(steps)))


def test_cases_are_shared_across_processes_and_the_index_follows_the_revision(tmp_path):
    writer, reader = CaseStore(tmp_path), CaseStore(tmp_path)  # the ingress and a Planner replica
    embed = CountingEmbed()
    index = CaseIndex(reader, embed)
    assert index.refresh() and len(index) == 0 and not index.refresh()
    writer.put(case("t1", "object store bucket quota exceeded\nuploads fail with 507"))
    writer.put(case("t2", "kafka consumer lag growing on orders topic", verdict="accept"))
    assert index.refresh() and len(index) == 2 and not index.refresh()
    q = "bucket quota exceeded, uploads failing"
    hits = index.search(q, bag_embed([q])[0], k=3)
    assert [h.case.ticket_id for h in hits][0] == "t1" and hits[0].similarity > hits[-1].similarity
    assert index.search(q, bag_embed([q])[0], k=3, min_similarity=2.0) == []
    # Replacing a ticket's case and forgetting one move the revision; vectors were written back once.
    writer.put(case("t1", "object store bucket quota exceeded\nuploads fail with 507", steps=("Check usage",
                                                                                                "Delete old objects")))
    assert writer.remove("t2") and not writer.remove("t2")
    assert index.refresh() and len(index) == 1
    assert index.search(q, bag_embed([q])[0], k=3)[0].case.workflow.action_steps() == ["Check usage",
                                                                                        "Delete old objects"]
    assert embed.texts.count("kafka consumer lag growing on orders topic") == 1


def test_cases_survive_a_restart_without_recomputing_vectors(tmp_path):
    CaseStore(tmp_path).put(case("t1", "certificate expired on the ingress gateway"))
    first = CountingEmbed()
    CaseIndex(CaseStore(tmp_path), first).refresh()
    again = CountingEmbed()
    index = CaseIndex(CaseStore(tmp_path), again)  # a new replica after a restart
    assert index.refresh() and len(index) == 1 and again.texts == [] and first.texts
    assert CaseStore(tmp_path).get("t1").verdict == "edit"


def test_an_edit_outranks_an_accept_of_the_same_text(tmp_path):
    store = CaseStore(tmp_path)
    store.put(case("acc", "redis evicting keys, memory at maxmemory", verdict="accept"))
    store.put(case("ed", "redis evicting keys, memory at maxmemory", verdict="edit"))
    index = CaseIndex(store, bag_embed, edit_bonus=0.05)
    index.refresh()
    q = "redis evicting keys at maxmemory"
    hits = index.search(q, bag_embed([q])[0], k=2)
    assert [h.case.ticket_id for h in hits] == ["ed", "acc"]
    assert abs(hits[0].similarity - hits[1].similarity - 0.05) < 1e-3
    lexical_only = CaseIndex(store, bag_embed, lexical_weight=1.0, edit_bonus=0.0)
    lexical_only.refresh()
    assert lexical_only.similarities("maxmemory", bag_embed(["maxmemory"])[0]).max() > 0
