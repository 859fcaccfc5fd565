from experts.knowledge.graph import Group, Merger, compute_links, normalize_incident, refine
from experts.knowledge.incident import IncidentMention


def raw(incident, source, order=0, method="runbook", primary=True, **kw):
    return IncidentMention(incident=incident, source=source, order=order, method=method, primary=primary, **kw)


def merge(embedder, raws, groups=None):
    groups = groups if groups is not None else []
    Merger(embedder.encode).assign(groups, raws, {g.id for g in groups})
    return [refine(g) for g in groups]


def test_normalize_incident():
    assert normalize_incident("KubePodCrashLooping") == "kube pod crash looping"
    assert normalize_incident("DNS resolution failures") == normalize_incident("DNS Resolution Failure")
    assert normalize_incident("disk-full") == "disk full"


def test_same_incident_merges_across_chunks_of_one_document(embedder):
    nodes = merge(embedder, [
        raw("Disk full", "ops/notes.md", 0, "llm", primary=False, failure_description="Disk is at 100%.",
            diagnosis_steps=["Run df -h."], chunk_ids=["c-1"], tags=["ops"]),
        raw("Disk is full", "ops/notes.md", 1, "llm", primary=False, diagnosis_steps=["Run df -h", "Run du -sh *"],
            mitigation_steps=["Delete old logs."], chunk_ids=["c-2"], tags=["ops"]),
    ])
    assert len(nodes) == 1
    n = nodes[0]
    assert n.incident == "Disk full" and n.aliases == ["Disk is full"]
    assert n.diagnosis_steps == ["Run df -h.", "Run du -sh *"]  # near-duplicate "Run df -h" dropped, order kept
    assert n.mitigation_steps == ["Delete old logs."]
    assert n.sources == ["ops/notes.md", "c-1", "c-2"]
    assert n.members == ["ops/notes.md#0", "ops/notes.md#1"]


def test_same_incident_merges_across_documents_by_name(embedder):
    nodes = merge(embedder, [
        raw("DNS resolution failures", "network/dns.md", diagnosis_steps=["Run dig."], tags=["network"],
            failure_description="Lookups fail."),
        raw("DNS Resolution Failure", "platform/dns.md", diagnosis_steps=["Check resolv.conf."],
            mitigation_steps=["Restart the resolver."], tags=["platform"], failure_description="Names do not resolve."),
        # an LLM-named paragraph elsewhere with a close name joins too (cosine >= 0.88 across documents)
        raw("DNS resolution failing", "ops/postmortem.md", 2, "llm", primary=False,
            mitigation_steps=["Flush the resolver cache."], tags=["ops"]),
    ])
    assert len(nodes) == 1
    n = nodes[0]
    assert n.tags == ["network", "ops", "platform"]
    assert n.diagnosis_steps == ["Run dig.", "Check resolv.conf."]
    assert n.mitigation_steps == ["Restart the resolver.", "Flush the resolver cache."]
    assert n.failure_description == "Lookups fail. Names do not resolve."
    docs = [s for s in n.sources if not s.startswith("c-")]
    assert docs == ["network/dns.md", "platform/dns.md", "ops/postmortem.md"]


def test_distinct_runbook_alerts_with_similar_names_stay_apart(embedder):
    # MiniLM puts these names at cosine ~0.9, but they are different alerts with different runbooks
    nodes = merge(embedder, [raw("NodeFilesystemSpaceFillingUp", "node/a.md"),
                             raw("NodeFilesystemAlmostOutOfSpace", "node/b.md"),
                             raw("NodeRAIDDegraded", "node/c.md"),
                             raw("NodeRAIDDiskFailure", "node/d.md", method="heuristic")])
    assert len(nodes) == 4


def test_incremental_assign_touches_only_matching_groups(embedder):
    groups: list[Group] = []
    m = Merger(embedder.encode)
    m.assign(groups, [raw("Disk full", "s/disk.md"), raw("Pod crash loop", "k/pod.md")], set())
    touched = m.assign(groups, [raw("Disk full", "s/other.md", primary=False, method="llm")], {g.id for g in groups})
    disk = next(g for g in groups if g.key == "disk full")
    assert touched == {disk.id} and len(groups) == 2


def test_links_explicit_references_mentions_and_shared_components(embedder):
    nodes = merge(embedder, [
        raw("DNS resolution failures", "network/dns.md", references=["storage/disk-full.md"],
            failure_description="Resolvers fail to answer lookups."),
        raw("Filesystem full", "storage/disk-full.md", failure_description="A filesystem is at 100% usage."),
        raw("NodeRAIDDegraded", "node/NodeRAIDDegraded.md", failure_description="A RAID array is degraded."),
        raw("NodeRAIDDiskFailure", "node/NodeRAIDDiskFailure.md", references=["./NodeRAIDDegraded.md"]),
        raw("etcdHighFsyncDurations", "etcd/fsync.md", failure_description="etcd disk fsync latency is high "
            "on the etcd members, see etcdNoLeader too."),
        raw("etcdNoLeader", "etcd/noleader.md", failure_description="The etcd cluster members have no leader."),
        raw("Pod crash loop", "k/pod.md", failure_description="Containers restart repeatedly."),
    ])
    by = {n.incident: n for n in nodes}
    links = compute_links(nodes)
    rel = lambda a: {next(n.incident for n in nodes if n.id == i) for i in links[by[a].id]}  # noqa: E731
    assert "Filesystem full" in rel("DNS resolution failures")  # See also: storage/disk-full.md
    assert "DNS resolution failures" in rel("Filesystem full")  # links are symmetric
    assert "NodeRAIDDegraded" in rel("NodeRAIDDiskFailure")  # Hugo ref, resolved relative to the document
    assert "etcdNoLeader" in rel("etcdHighFsyncDurations")  # mention of the alert name / shared 'etcd'
    assert rel("Pod crash loop") == set()


def test_incremental_links_keep_old_pairs_and_add_new_ones(embedder):
    nodes = merge(embedder, [
        raw("etcdNoLeader", "etcd/noleader.md", failure_description="etcd members have no leader."),
        raw("Pod crash loop", "k/pod.md", failure_description="Containers restart repeatedly."),
        raw("Raft proposals failing", "etcd/raft.md", references=["noleader.md"]),
    ])
    a, c, b = (next(n for n in nodes if n.incident == name)
               for name in ("etcdNoLeader", "Pod crash loop", "Raft proposals failing"))
    # a and c were linked by an earlier build (say, by keywords of an old text): that pair is not
    # recomputed because neither changed; b is new and gets its links computed
    previous = {a.id: [c.id], c.id: [a.id]}
    links = compute_links([a, c, b], fresh={b.id}, previous=previous)
    assert links[a.id] == [c.id, b.id]
    assert links[c.id] == [a.id]
    assert links[b.id] == [a.id]
    # a full recomputation drops the stale pair
    assert c.id not in compute_links([a, c, b])[a.id]
