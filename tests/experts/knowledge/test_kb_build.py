import time

import pytest

import experts.knowledge.build as build_mod
from core.config import KnowledgeConfig
from experts.knowledge.build import add_documents, build_knowledge_base, ensure_knowledge_base, run_build
from experts.knowledge.documents import KnowledgeError
from experts.knowledge.retrieve import KnowledgeBase, RetrievedContext
from experts.knowledge.store import KnowledgeStore


def write_docs(root, docs):
    for rel, text in docs.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


NODE_CONTENT = ("incident", "failure_description", "diagnosis_steps", "mitigation_steps", "typical_cases", "notes",
                "sources", "tags", "members")


def content(node):
    return {k: getattr(node, k) for k in NODE_CONTENT}


def test_build_writes_a_version_and_retrieves_the_dns_runbook_first(docs_dir, tmp_path, embedder):
    out = tmp_path / "kb"
    version = build_knowledge_base([docs_dir], out, embedder=embedder, progress=False)
    assert version == "v0001"
    store = KnowledgeStore(out)
    assert store.current_version() == "v0001" and (out / "current").read_text().strip() == "v0001"
    m = store.manifest()
    assert m["stats"]["documents"] == 3 and m["stats"]["nodes"] == 3 and m["stats"]["methods"] == {"runbook": 3}
    assert set(m["docs"]) == {"network/dns-resolution-failures.md", "storage/disk-full.md",
                              "kubernetes/pod-crashloop.md"}
    assert all(len(e["hash"]) == 20 for e in m["docs"].values())
    for f in ("chunks.parquet", "chunks.faiss", "nodes.parquet", "nodes_name.npy", "nodes_desc.npy"):
        assert (out / "v0001" / f).exists()

    kb = KnowledgeBase.open(out, embedder=embedder)
    assert kb.version == "v0001"
    ctx = kb.retrieve("Build agents cannot resolve internal hostnames, nslookup returns SERVFAIL")
    assert isinstance(ctx, RetrievedContext)
    top = ctx.nodes[0]
    assert top.incident == "DNS resolution failures" and top.tags == ["network"]
    assert top.diagnosis_steps[0].startswith("Reproduce with dig") and top.mitigation_steps
    assert ctx.chunks[0].source == "network/dns-resolution-failures.md"
    assert len(ctx.chunks) == 3 and len(ctx.nodes) == 2
    assert ctx.ids()[0] == top.id and all(c.id in ctx.ids() for c in ctx.chunks)
    assert ctx.chunks[0].score >= ctx.chunks[1].score
    # the DNS runbook's "See also: storage/disk-full.md" became a link
    disk = kb.retrieve("No space left on device, df shows / at 100%", k_nodes=1).nodes[0]
    assert disk.incident == "Filesystem full" and top.id in disk.related

    # a scope answers from its own documents ...
    scoped = kb.retrieve("No space left on device, df shows / at 100%", scope=["storage"])
    assert scoped.scope == "scoped" and scoped.nodes and all(n.tags == ["storage"] for n in scoped.nodes)
    assert scoped.chunks and all(c.tags == ["storage"] for c in scoped.chunks)
    # ... unless the whole base holds the ticket's runbook and the scope does not: then it says so
    dns = kb.retrieve("Build agents cannot resolve internal hostnames", scope=["storage"])
    assert dns.scope == "whole base" and dns.nodes[0].incident == "DNS resolution failures"
    nowhere = kb.retrieve("dns", scope=["nope"])
    assert nowhere.scope == "whole base" and nowhere.nodes
    assert kb.retrieve("dns", scope=[]).scope == "unscoped"  # empty scope = whole base
    # below the relevance threshold nothing is returned and the context says none matched
    none = kb.retrieve("please order a new office chair for reception", min_relevance=0.5)
    assert not none.matched and none.nodes == [] and none.chunks == [] and none.best_score < 0.5

    many = kb.retrieve_many(["pod keeps restarting, CrashLoopBackOff", "dig returns SERVFAIL"], k_chunks=1, k_nodes=1)
    assert [c.nodes[0].incident for c in many] == ["Pod in CrashLoopBackOff", "DNS resolution failures"]

    t = time.perf_counter()
    for i in range(20):
        kb.retrieve(f"ticket {i}: resolver timeouts on build agents", scope=["network"] if i % 2 else None)
    assert (time.perf_counter() - t) / 20 < 0.25  # < 50 ms on an idle core; generous for shared CI


def test_rebuild_without_changes_writes_no_version(docs_dir, tmp_path, embedder):
    out = tmp_path / "kb"
    build_knowledge_base([docs_dir], out, embedder=embedder, progress=False)
    report = run_build([docs_dir], out, embedder=embedder, progress=False)
    assert report.version == "v0001" and not report.changed
    assert KnowledgeStore(out).versions() == ["v0001"]


def test_incremental_add_processes_only_new_documents(docs_dir, tmp_path, embedder, monkeypatch, kb_docs):
    out = tmp_path / "kb"
    build_knowledge_base([docs_dir], out, embedder=embedder, progress=False)
    before = KnowledgeStore(out).read()
    old_chunks = {c.id for c in before.chunks}

    seen = []
    real = build_mod.extract_document
    monkeypatch.setattr(build_mod, "extract_document",
                        lambda doc, *a, **k: seen.append(doc.source) or real(doc, *a, **k))
    extra = write_docs(tmp_path / "more", {"network/vpn-down.md": """# Site-to-site VPN down

## Meaning
The IPsec tunnel to a branch is down or flapping; DNS lookups to the branch resolvers fail too.

## Diagnosis
1. Check the IKE logs on both gateways.

## Mitigation
1. Restart the ipsec service on the gateway.
"""})
    version = add_documents([extra], out, embedder=embedder, progress=False)
    assert version == "v0002" and seen == ["network/vpn-down.md"]
    after = KnowledgeStore(out).read()
    stats = after.manifest["stats"]
    assert (stats["processed"], stats["reused"], stats["documents"], stats["nodes"]) == (1, 3, 4, 4)
    assert stats["new_or_changed_nodes"] == 1
    assert old_chunks <= {c.id for c in after.chunks}  # old chunks kept, with the same ids
    old_nodes = {n.id: n for n in before.nodes}
    for n in after.nodes:
        if n.id in old_nodes:
            assert content(n) == content(old_nodes[n.id])  # old nodes unchanged (links may grow)
    assert "n-site-to-site-vpn-down" in {n.id for n in after.nodes}

    # a changed document is re-processed alone and its node re-merged; the others stay as they were
    seen.clear()
    (docs_dir / "storage/disk-full.md").write_text(kb_docs.DISK.replace("Extend the volume", "Grow the volume"))
    version = build_knowledge_base([docs_dir, extra], out, embedder=embedder, progress=False)
    assert version == "v0003" and seen == ["storage/disk-full.md"]
    final = KnowledgeStore(out).read()
    disk = next(n for n in final.nodes if n.incident == "Filesystem full")
    assert disk.mitigation_steps[-1] == "Grow the volume and grow the filesystem."
    dns_before = next(n for n in after.nodes if n.incident == "DNS resolution failures")
    dns_after = next(n for n in final.nodes if n.incident == "DNS resolution failures")
    assert content(dns_after) == content(dns_before)

    # removing a document (sync build without it) removes its chunks and its node
    (docs_dir / "kubernetes/pod-crashloop.md").unlink()
    build_knowledge_base([docs_dir, extra], out, embedder=embedder, progress=False)
    last = KnowledgeStore(out).read()
    assert "kubernetes/pod-crashloop.md" not in last.manifest["docs"]
    assert all(c.source != "kubernetes/pod-crashloop.md" for c in last.chunks)
    assert all(n.incident != "Pod in CrashLoopBackOff" for n in last.nodes)
    assert KnowledgeStore(out).versions() == ["v0002", "v0003", "v0004"]  # older versions pruned


def test_failed_build_keeps_the_old_version(docs_dir, tmp_path, embedder, monkeypatch, kb_docs):
    out = tmp_path / "kb"
    build_knowledge_base([docs_dir], out, embedder=embedder, progress=False)
    (docs_dir / "storage/disk-full.md").write_text(kb_docs.DISK + "\nMore text.\n")

    def broken_write(folder, data):
        (folder / "chunks.parquet").write_text("half a file")
        raise OSError("disk full while writing")

    monkeypatch.setattr(build_mod, "write_version", broken_write)
    with pytest.raises(OSError):
        build_knowledge_base([docs_dir], out, embedder=embedder, progress=False)
    store = KnowledgeStore(out)
    assert store.current_version() == "v0001" and store.versions() == ["v0001"]
    assert not list(out.glob(".building-*"))
    kb = KnowledgeBase.open(out, embedder=embedder)
    assert kb.version == "v0001" and kb.retrieve("SERVFAIL").nodes


def test_interrupted_build_resumes_from_cached_documents(docs_dir, tmp_path, embedder, monkeypatch):
    out = tmp_path / "kb"
    calls = []
    real = build_mod.extract_document

    def flaky(doc, *a, **k):
        calls.append(doc.source)
        if doc.source.startswith("storage/"):
            raise KeyboardInterrupt  # the operator pressed Ctrl-C on the third document
        return real(doc, *a, **k)

    monkeypatch.setattr(build_mod, "extract_document", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_knowledge_base([docs_dir], out, embedder=embedder, progress=False)
    assert KnowledgeStore(out).current_version() is None
    assert len(calls) == 3  # kubernetes/, network/ done and cached; storage/ interrupted

    calls.clear()
    monkeypatch.setattr(build_mod, "extract_document",
                        lambda doc, *a, **k: calls.append(doc.source) or real(doc, *a, **k))
    build_knowledge_base([docs_dir], out, embedder=embedder, progress=False)
    stats = KnowledgeStore(out).manifest()["stats"]
    assert calls == ["storage/disk-full.md"]
    assert (stats["processed"], stats["from_cache"]) == (1, 2)


def test_reload_if_changed_picks_up_a_new_version(docs_dir, tmp_path, embedder):
    out = tmp_path / "kb"
    build_knowledge_base([docs_dir], out, embedder=embedder, progress=False)
    kb = KnowledgeBase.open(out, embedder=embedder)
    assert kb.reload_if_changed() is False
    assert kb.retrieve("IPsec tunnel flapping", k_nodes=1).nodes[0].incident != "Site-to-site VPN down"
    extra = write_docs(tmp_path / "more", {"network/vpn.md": "# Site-to-site VPN down\n\n## Meaning\nThe IPsec "
                                           "tunnel is flapping.\n\n## Diagnosis\n1. Check the IKE logs.\n"})
    add_documents([extra], out, embedder=embedder, progress=False)
    assert kb.version == "v0001"
    assert kb.reload_if_changed() is True and kb.version == "v0002"
    assert kb.reload_if_changed() is False
    assert kb.retrieve("IPsec tunnel flapping", k_nodes=1).nodes[0].incident == "Site-to-site VPN down"


def test_ensure_knowledge_base_builds_once_and_rebuilds_on_change(docs_dir, tmp_path, embedder, monkeypatch, kb_docs):
    monkeypatch.setenv("FLOWROUTER_HOME", str(tmp_path / "home"))
    cfg = KnowledgeConfig(docs=[str(docs_dir)])
    d1 = ensure_knowledge_base(cfg, embedder=embedder)
    assert d1.parent == tmp_path / "home" / "knowledge" and KnowledgeStore(d1).current_version() == "v0001"
    assert ensure_knowledge_base(cfg, embedder=embedder) == d1 and KnowledgeStore(d1).versions() == ["v0001"]
    (docs_dir / "network/dns-resolution-failures.md").write_text(kb_docs.DNS + "\n## Notes\nExtra.\n")
    ensure_knowledge_base(cfg, embedder=embedder)
    assert KnowledgeStore(d1).current_version() == "v0002"

    # an LLM factory is only called when a document needs it
    calls = []
    ensure_knowledge_base(cfg, llm_factory=lambda: calls.append(1), embedder=embedder)
    assert calls == [] and KnowledgeStore(d1).current_version() == "v0002"

    explicit = KnowledgeConfig(docs=[str(docs_dir)], directory=str(tmp_path / "explicit"), chunk_chars=400)
    assert ensure_knowledge_base(explicit, embedder=embedder) == tmp_path / "explicit"
    assert KnowledgeStore(tmp_path / "explicit").manifest()["chunk_chars"] == 400
    with pytest.raises(KnowledgeError):
        ensure_knowledge_base(KnowledgeConfig(docs=[]), embedder=embedder)


def test_user_errors(tmp_path, embedder):
    with pytest.raises(KnowledgeError, match="not found"):
        build_knowledge_base([tmp_path / "missing"], tmp_path / "kb", embedder=embedder, progress=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(KnowledgeError, match="no documents found"):
        build_knowledge_base([tmp_path / "empty"], tmp_path / "kb", embedder=embedder, progress=False)
    with pytest.raises(KnowledgeError, match="no knowledge base"):
        KnowledgeBase.open(tmp_path / "kb")
