"""Memory -> knowledge: proposals from a hand-made case store on a tiny base, approval, rollback, reopening."""

import zlib

import numpy as np
import pytest

from core.config import ConsolidationConfig, KnowledgeConfig
from core.schemas import Feedback, corrected_workflow
from core.workflow import linear_workflow
from experts.knowledge import consolidate
from experts.knowledge.build import build_knowledge_base, ensure_knowledge_base
from experts.knowledge.cases import Case, CaseStore
from experts.knowledge.consolidate import ConsolidationError, Consolidator, new_node_id
from experts.knowledge.retrieve import KnowledgeBase
from experts.knowledge.store import KnowledgeStore


class BagEmbedder:
    """Hashed bag of words, L2-normalised: similar texts get similar vectors, no model loaded."""

    dim = 64

    def encode(self, texts, **kw):
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().replace(",", " ").replace(":", " ").split():
                out[i, zlib.crc32(w.encode()) % self.dim] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


DNS_TICKET = "DNS resolution failures on build agents\nlookups return SERVFAIL, dig name times out"
DNS_FIX = ["Check which resolvers the host uses in resolv.conf", "Is the firewall blocking TCP 53? yes 3, no 4",
           "[change] Restore the firewall rule for TCP 53", "[end] Resolved: lookups answer again"]
TAPE_TICKET = "tape library robot arm jammed\narchive job stuck waiting for a cartridge"
TAPE_PARAPHRASE = "tape library robot arm jammed again\narchive job stuck, cartridge not loaded"
TAPE_FIX = ["Check the robot arm status on the library console", "[change] Eject the stuck cartridge",
            "[end] Resolved: the archive job writes to tape again"]
CFG = ConsolidationConfig(revise_relevance=0.5, case_similarity=0.6, min_repeats=2)


def wf(lines):
    return corrected_workflow(Feedback(verdict="edit", steps=lines))


def put(store, tid, text, verdict, lines, fid):
    store.put(Case(ticket_id=tid, text=text, verdict=verdict, workflow=wf(lines) if verdict == "edit" else
                   linear_workflow(lines), feedback_id=fid))


@pytest.fixture
def kb(docs_dir, tmp_path):
    out = tmp_path / "kb"
    build_knowledge_base([docs_dir], out, embedder=BagEmbedder(), progress=False)
    return out


@pytest.fixture
def cases(tmp_path):
    store = CaseStore(tmp_path / "cases")
    put(store, "dns-1", DNS_TICKET, "edit", DNS_FIX, 1)
    put(store, "tape-1", TAPE_TICKET, "edit", TAPE_FIX, 2)
    # accepted once for an incident no node covers: not yet a repeat
    put(store, "kafka-1", "kafka consumer lag on orders topic\nconsumers fall behind", "accept",
        ["Check the consumer group lag", "Scale the consumers"], 3)
    # accepted for the crashloop runbook: it agrees with its node, nothing to change
    put(store, "crash-1", "Pod in CrashLoopBackOff\ncontainer restarts with back-off", "accept",
        ["Check the pod events", "Read the previous container logs"], 4)
    return store


def test_proposal_diff_lists_revised_and_added_nodes_and_changes_nothing(kb, cases):
    c = Consolidator(kb, cases, CFG, embedder=BagEmbedder())
    before = KnowledgeStore(kb).current_version()
    p = c.propose()
    assert p.status == "pending" and p.base_version == before == "v0001"
    by_kind = {ch.kind: ch for ch in p.changes}
    assert sorted(ch.kind for ch in p.changes) == ["add", "revise"]
    rev, add = by_kind["revise"], by_kind["add"]
    assert rev.incident == "DNS resolution failures" and rev.cases == ["dns-1"] and rev.relevance >= 0.5
    assert rev.old_steps and rev.old_steps != rev.new_steps and rev.new_steps[2].startswith("3. [change] Restore")
    assert add.node_id == new_node_id("tape-1") and add.incident == "tape library robot arm jammed"
    assert add.new_steps[0] == "1. Check the robot arm status on the library console" and len(add.name_vector) == 64
    diff = p.diff()
    assert "1 added, 1 revised" in diff and "+ added n-case-tape-1" in diff and "~ revised" in diff
    assert "- 1." in diff and "+ 1. Check which resolvers" in diff and "case:dns-1 (edit)" in diff
    # nothing changes without approval; the same cases give the same pending proposal
    assert KnowledgeStore(kb).current_version() == "v0001" and KnowledgeStore(kb).versions() == ["v0001"]
    assert c.propose().id == p.id and [x.id for x in c.proposals()] == [p.id]


def test_approve_creates_a_version_the_running_base_reloads_and_rollback_restores(kb, cases, docs_dir):
    live = KnowledgeBase.open(kb, embedder=BagEmbedder())  # a Planner replica's base
    dns_before = next(n for n in live._state.nodes if n.incident == "DNS resolution failures")
    c = Consolidator(kb, cases, CFG, embedder=BagEmbedder())
    p = c.propose()
    done = c.approve(p.id, by="admin-1")
    assert done.status == "approved" and done.version == "v0002" and done.decided_by == "admin-1"
    store = KnowledgeStore(kb)
    assert store.current_version() == "v0002" and store.manifest()["previous"] == "v0001"
    m = store.manifest()
    assert m["docs"] == store.manifest("v0001")["docs"]  # a start-up with unchanged documents keeps v0002
    assert m["stats"]["nodes"] == 4 and set(m["consolidation"]["cases"]) == {"dns-1", "tape-1"}

    assert live.reload_if_changed() and live.version == "v0002"
    dns = live.node(dns_before.id)
    assert dns.workflow != dns_before.workflow and dns.mitigation_steps == ["Restore the firewall rule for TCP 53"]
    assert "case:dns-1" in dns.sources
    hit = live.retrieve(TAPE_PARAPHRASE, k_nodes=1).nodes[0]
    assert hit.id == new_node_id("tape-1") and "consolidated" in hit.tags
    assert [s["text"] for s in hit.workflow][1] == "Eject the stuck cartridge"

    # consolidated cases are not proposed again; a new paraphrase case joins nothing new by itself
    assert c.propose().changes == []
    with pytest.raises(ConsolidationError, match="approved, not pending"):
        c.approve(p.id)

    # restart: the start-up check finds the documents unchanged and serves the approved version as it is
    assert ensure_knowledge_base(KnowledgeConfig(docs=[str(docs_dir)], directory=str(kb)), embedder=BagEmbedder()) == kb
    assert KnowledgeStore(kb).versions() == ["v0001", "v0002"]
    again = KnowledgeBase.open(kb, embedder=BagEmbedder())
    assert again.version == "v0002" and again.node(new_node_id("tape-1")) is not None

    assert c.rollback() == ("v0002", "v0001")
    assert KnowledgeStore(kb).current_version() == "v0001"
    assert live.reload_if_changed() and live.node(new_node_id("tape-1")) is None
    assert live.node(dns_before.id).workflow == dns_before.workflow
    with pytest.raises(ConsolidationError, match="no earlier version"):
        c.rollback()


def test_repeats_make_a_node_and_stale_or_rejected_proposals_are_refused(kb, tmp_path, docs_dir):
    store = CaseStore(tmp_path / "c2")
    c = Consolidator(kb, store, CFG, embedder=BagEmbedder())
    put(store, "k1", "kafka consumer lag on orders topic\nconsumers fall behind", "accept",
        ["Check the consumer group lag", "Scale the consumers"], 1)
    assert c.propose().changes == []  # one accept is not a repeat
    put(store, "k2", "kafka consumer lag on the orders topic\nconsumers falling behind", "accept",
        ["Check the consumer group lag", "Scale the consumers out"], 2)
    p = c.propose()
    assert [(ch.kind, sorted(ch.cases)) for ch in p.changes] == [("add", ["k1", "k2"])]
    assert "2 accepted repeats" in p.changes[0].reason
    assert c.reject(p.id, by="admin").status == "rejected"
    with pytest.raises(ConsolidationError, match="rejected"):
        c.approve(p.id)

    p2 = c.propose()
    assert p2.id != p.id and p2.status == "pending"
    build_knowledge_base([docs_dir], kb, embedder=BagEmbedder(), progress=False, chunk_chars=500)  # base moved on
    with pytest.raises(ConsolidationError, match="run consolidate again"):
        c.approve(p2.id)
    assert c.get(p2.id).status == "stale" and KnowledgeStore(kb).current_version() == "v0002"
    with pytest.raises(ConsolidationError, match="no proposal"):
        c.get("../../etc/passwd")


def test_periodic_job_runs_once_per_interval_and_never_applies(kb, cases):
    c = Consolidator(kb, cases, CFG, embedder=BagEmbedder())
    p = c.run_periodic(interval_s=3600, now=1_000_000)
    assert p is not None and p.origin == "periodic" and p.status == "pending"
    assert c.run_periodic(interval_s=3600, now=1_000_100) is None  # within the interval
    assert c.run_periodic(interval_s=3600, now=1_010_000) is None  # one is still pending
    assert KnowledgeStore(kb).current_version() == "v0001"


def test_consolidated_nodes_outlive_a_rebuild_of_changed_documents(kb, cases, docs_dir, kb_docs):
    c = Consolidator(kb, cases, CFG, embedder=BagEmbedder())
    c.approve(c.propose().id)
    dns_id = next(n.id for n in KnowledgeStore(kb).read().nodes if n.incident == "DNS resolution failures")
    # the DNS runbook changes: its node is merged again from the document, the operator's workflow stays
    (docs_dir / "network/dns-resolution-failures.md").write_text(kb_docs.DNS + "\nExtra line.\n", encoding="utf-8")
    assert build_knowledge_base([docs_dir], kb, embedder=BagEmbedder(), progress=False) == "v0003"
    data = KnowledgeStore(kb).read()
    nodes = {n.id: n for n in data.nodes}
    assert new_node_id("tape-1") in nodes and len(data.name_vectors) == len(nodes) == 4
    assert nodes[dns_id].mitigation_steps == ["Restore the firewall rule for TCP 53"]
    assert set(data.manifest["consolidation"]["cases"]) == {"dns-1", "tape-1"}
    assert c.propose().changes == []


def test_cli_proposes_approves_lists_and_rolls_back(kb, cases, tmp_path, capsys, monkeypatch):
    import json

    from cluster.cli import main

    monkeypatch.setattr(consolidate, "shared_embedder", BagEmbedder)
    where = ["--out", str(kb), "--cases", str(cases.directory)]
    assert main(["kb", "consolidate", *where, "--dry-run"]) == 0
    assert "1 added, 1 revised" in capsys.readouterr().out and Consolidator(kb).proposals() == []
    assert main(["kb", "consolidate", *where]) == 0
    out = capsys.readouterr().out
    pid = out.split("--approve ")[1].split()[0]
    assert "+ added n-case-tape-1" in out and KnowledgeStore(kb).current_version() == "v0001"
    assert main(["kb", "consolidate", *where, "--list"]) == 0
    assert f"{pid}  pending  on v0001  +1 ~1  cli" in capsys.readouterr().out
    assert main(["kb", "info", "--out", str(kb)]) == 0
    assert f"pending proposals: {pid}" in capsys.readouterr().out
    assert main(["kb", "consolidate", *where, "--approve", pid, "--by", "ops-lead"]) == 0
    assert "v0002 is current" in capsys.readouterr().out and KnowledgeStore(kb).current_version() == "v0002"
    assert main(["kb", "info", "--out", str(kb)]) == 0
    assert f"2 node(s); last proposal {pid} approved by ops-lead on v0001" in capsys.readouterr().out
    assert main(["kb", "consolidate", *where, "--show", pid, "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["status"] == "approved" and shown["decided_by"] == "ops-lead" and shown["version"] == "v0002"
    assert "name_vector" not in shown["changes"][0]
    assert main(["kb", "consolidate", *where, "--approve", pid]) == 2
    assert "not pending" in capsys.readouterr().err
    assert main(["kb", "rollback", "--out", str(kb)]) == 0
    assert "v0002 -> v0001" in capsys.readouterr().out and KnowledgeStore(kb).current_version() == "v0001"
    assert main(["kb", "rollback", "--out", str(kb)]) == 2
    assert "no earlier version" in capsys.readouterr().err
    assert main(["kb", "consolidate", "--out", str(kb), "--cases", str(tmp_path / "none")]) == 2
    assert "no case store" in capsys.readouterr().err


def test_a_correction_unlike_the_retrieved_node_becomes_a_new_node_not_a_revision(kb, tmp_path):
    store = CaseStore(tmp_path / "c3")
    # the ticket reads like the DNS runbook, the correction shares nothing with its steps
    put(store, "dns-2", DNS_TICKET, "edit", ["Open the vendor support portal", "[change] Replace the NIC firmware",
                                            "[end] Resolved: the vendor fixed it"], 1)
    p = Consolidator(kb, store, CFG, embedder=BagEmbedder()).propose()
    assert [(c.kind, c.node_id) for c in p.changes] == [("add", new_node_id("dns-2"))]
    loose = ConsolidationConfig(revise_relevance=0.5, revise_overlap=0.0)
    p = Consolidator(kb, store, loose, embedder=BagEmbedder()).propose(save=False)
    assert [c.kind for c in p.changes] == ["revise"]
