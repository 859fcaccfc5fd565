import json

from cluster.cli import main


def write_docs(root, docs):
    for rel, text in docs.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def test_kb_cli_build_add_info_query(docs_dir, tmp_path, capsys, embedder, kb_docs):
    out = tmp_path / "kb"
    assert main(["kb", "build", str(docs_dir), "--out", str(out), "--no-llm", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "built v0001" in text and "documents 3  chunks" in text and "nodes 3" in text

    extra = write_docs(tmp_path / "more", {"network/vpn-notes.md": kb_docs.VPN_NOTES})
    assert main(["kb", "add", str(extra), "--out", str(out), "--no-llm", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "built v0002" in text and "processed 1" in text and '"heuristic": 1' in text

    assert main(["kb", "info", "--out", str(out), "--docs"]) == 0
    text = capsys.readouterr().out
    assert "version v0002" in text and "network/vpn-notes.md  [heuristic]" in text and "network (2)" in text

    assert main(["kb", "query", "nslookup returns SERVFAIL", "--out", str(out), "--json", "-n", "1"]) == 0
    ctx = json.loads(capsys.readouterr().out)
    assert ctx["nodes"][0]["incident"] == "DNS resolution failures" and len(ctx["chunks"]) == 3

    assert main(["kb", "query", "df shows 100%", "--out", str(out), "--scope", "storage"]) == 0
    text = capsys.readouterr().out
    assert "Filesystem full" in text and "[chunk" in text and "DNS resolution" not in text.split("[chunk")[0]


def test_kb_cli_errors(tmp_path, capsys):
    assert main(["kb", "build", str(tmp_path / "missing"), "--out", str(tmp_path / "kb")]) == 2
    assert "document folder not found" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["kb", "build", str(tmp_path / "empty"), "--out", str(tmp_path / "kb"), "--no-llm"]) == 2
    assert "no documents found" in capsys.readouterr().err
    assert main(["kb", "add", str(tmp_path / "empty"), "--out", str(tmp_path / "nokb")]) == 2
    assert "no knowledge base" in capsys.readouterr().err
    assert main(["kb", "info", "--out", str(tmp_path / "nokb")]) == 2
    assert "no knowledge base" in capsys.readouterr().err
