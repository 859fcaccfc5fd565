from experts.knowledge.chunking import chunk_document, chunk_id
from experts.knowledge.documents import load_documents
from experts.knowledge.markdown import find_references, section_steps, split_sections


def write_docs(root, docs):
    for rel, text in docs.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def _doc(tmp_path, rel, text):
    write_docs(tmp_path, {rel: text})
    return next(d for d in load_documents([tmp_path]).documents if d.source == rel)


def test_documents_tags_titles_and_front_matter(tmp_path, kb_docs):
    write_docs(tmp_path, {
        "network/dns.md": kb_docs.DNS,
        "kb/_index.md": "---\ntitle: kb\n---\n",
        "top.txt": "Plain text notes about backups.\n",
        "hugo/Alert.md": "---\ntitle: Some Alert\nweight: 20\n---\n\n# SomeAlert\n\n## Meaning\n\nText.\n",
    })
    scan = load_documents([tmp_path])
    by = {d.source: d for d in scan.documents}
    assert scan.skipped == ["kb/_index.md"]  # only front matter: nothing to index
    assert by["network/dns.md"].tags == ["network"] and by["network/dns.md"].title == "DNS resolution failures"
    assert by["top.txt"].tags == [] and by["top.txt"].title == "top"
    assert by["hugo/Alert.md"].title == "SomeAlert" and by["hugo/Alert.md"].body.lstrip().startswith("# SomeAlert")


def test_chunks_follow_headings_with_offsets_and_stable_ids(tmp_path, kb_docs):
    doc = _doc(tmp_path, "network/dns.md", kb_docs.DNS)
    chunks = chunk_document(doc, chunk_chars=900)
    paths = [c.heading_path for c in chunks]
    assert ["DNS resolution failures", "Meaning"] in paths
    assert ["DNS resolution failures", "Diagnosis"] in paths
    for c in chunks:
        assert doc.text[c.start:c.end] == c.text  # offsets point into the file
        assert c.tags == ["network"] and c.source == "network/dns.md"
        assert c.id == chunk_id(c.source, c.start, c.text)
        assert not c.text.startswith("#")  # the heading is in heading_path, not in the text
    again = chunk_document(_doc(tmp_path, "network/dns.md", kb_docs.DNS), chunk_chars=900)
    assert [c.id for c in again] == [c.id for c in chunks]


def test_long_sections_split_by_size_without_breaking_code_fences(tmp_path):
    para = "Check the thing carefully and note what you see. " * 8  # ~400 chars
    code = "```shell\n# a comment, not a heading\n" + "echo line\n" * 30 + "```\n"
    text = "# Big\n\n## Diagnosis\n\n" + "\n\n".join([para, para, code, para, para]) + "\n"
    doc = _doc(tmp_path, "x/big.md", text)
    chunks = chunk_document(doc, chunk_chars=500)
    assert len(chunks) >= 4
    assert all(c.heading_path == ["Big", "Diagnosis"] for c in chunks)  # '#' inside the fence is no heading
    assert all(len(c.text) <= 500 for c in chunks)
    assert all(c.text.count("```") % 2 == 0 for c in chunks if len(code) <= 500)
    # the chunks cover the section text in order
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)


def test_split_sections_ignores_headings_in_code():
    text = "# T\n\nintro\n\n```\n# not a heading\n```\n\n## A\n\nbody\n"
    secs = split_sections(text)
    assert [s.heading_path for s in secs if s.heading_path] == [["T"], ["T", "A"]]


def test_section_steps_lists_prose_and_code():
    md = """Check the number of pods on the node by running:

```shell
kubectl get pods --all-namespaces --field-selector spec.nodeName=<node>
```

This paragraph only explains things. Restart the kubelet if it is stuck.

- Check pod template parameters such as:
  - pod priority
  - readiness probes
- [docs](https://example.com)

```console
$ kubectl logs sts/alertmanager -c config-reloader
level=error msg="output, not a command"
```
"""
    steps = section_steps(md).steps
    assert steps[0].startswith("Check the number of pods on the node by running: kubectl get pods")
    assert "Restart the kubelet if it is stuck." in steps
    assert "Check pod template parameters such as: pod priority; readiness probes" in steps
    assert not any("docs" == s or "output" in s for s in steps)
    assert steps[-1] == "Run: kubectl logs sts/alertmanager -c config-reloader"
    assert "This paragraph only explains things." in section_steps(md).prose


def test_find_references():
    text = ('See [Node RAID Degraded]({{< ref "./NodeRAIDDegraded.md" >}}) and [x](../storage/disk-full.md).\n'
            "See also: network/load-balancer-notes.md. Web: https://example.com/a.md")
    assert find_references(text) == ["./NodeRAIDDegraded.md", "../storage/disk-full.md",
                                     "network/load-balancer-notes.md"]
