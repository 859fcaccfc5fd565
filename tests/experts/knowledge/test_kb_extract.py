import time

import pytest

from experts.engines.base import Engine, Generation
from experts.knowledge.chunking import chunk_document
from experts.knowledge.documents import load_documents
from experts.knowledge.extract import (
    LLMExtractor,
    extract_document,
    is_structured,
    planned_method,
    section_role,
    validate_name,
)


def write_docs(root, docs):
    for rel, text in docs.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")
    return root


def _doc(tmp_path, rel, text):
    write_docs(tmp_path, {rel: text})
    return next(d for d in load_documents([tmp_path]).documents if d.source == rel)


def test_runbook_extractor_fills_every_field_in_order(tmp_path, kb_docs):
    doc = _doc(tmp_path, "network/dns-resolution-failures.md", kb_docs.DNS)
    assert is_structured(doc) and planned_method(doc, llm_available=True) == "runbook"
    chunks = chunk_document(doc)
    nodes, method = extract_document(doc, chunks)
    assert method == "runbook" and len(nodes) == 1
    n = nodes[0]
    assert n.incident == "DNS resolution failures" and n.primary
    assert n.failure_description.startswith("Clients cannot resolve host names")
    assert "Impact: Anything that connects by name fails." in n.failure_description
    assert n.diagnosis_steps == [
        "Reproduce with dig name.example.com from an affected host.",
        "Check which resolvers the host uses: cat /etc/resolv.conf.",
        "Query each resolver directly with dig @resolver name.example.com.",
    ]
    assert n.mitigation_steps == ["Remove the failing resolver from the resolver list.",
                                  "Restart the resolver service and flush its cache."]
    assert n.typical_cases == [
        "Build agents get SERVFAIL for internal names -> firewall blocked TCP 53 -> restore the rule."]
    assert n.notes.startswith("See also: storage/disk-full.md")
    assert n.references == ["storage/disk-full.md"]
    assert n.tags == ["network"] and n.chunk_ids == [c.id for c in chunks]


def test_section_role_synonyms():
    assert section_role("Diagnosis") == "diagnosis"
    assert section_role("Troubleshooting steps") == "diagnosis"
    assert section_role("Remediation") == "mitigation"
    assert section_role("Typical cases") == "cases"
    assert section_role("Follow-up actions") is None  # a postmortem is not a runbook
    assert section_role("Timeline") is None


def test_unstructured_without_llm_uses_title_and_lexical_prior(tmp_path, kb_docs):
    doc = _doc(tmp_path, "network/vpn.md", kb_docs.VPN_NOTES)
    assert not is_structured(doc)
    nodes, method = extract_document(doc, chunk_document(doc))
    assert method == "heuristic" and len(nodes) == 1
    n = nodes[0]
    assert n.incident == "VPN"  # "notes" is a wiki word, not an incident
    steps = n.diagnosis_steps + n.mitigation_steps
    assert any("check the IKE logs" in s for s in steps)
    assert any("restart the ipsec service" in s for s in steps)


def test_validate_name_keeps_grounded_short_names_only():
    ctx = "Kafka consumers in group billing are falling behind; consumer lag keeps growing after the deploy."
    assert validate_name(" Kafka consumer lag", ctx) == "Kafka consumer lag"
    assert validate_name(" kafka consumer lag\nText: more", ctx) == "Kafka consumer lag"
    assert validate_name(" Scale to handle more customers", ctx) is None  # words not in the text
    assert validate_name(" 30 seconds", ctx) is None
    assert validate_name(" [https://example.com/x]", ctx) is None
    assert validate_name(" none", ctx) is None
    assert validate_name(" Kafka consumer lag", "The team owns the kafka consumer code.") is None  # no failure


class FakeEngine(Engine):
    """Names paragraphs from a script; labels sentences by keyword (restart/raise: fix, check: check)."""

    name = "fake"

    def __init__(self, names, fail=False):
        self.names = list(names)
        self.fail = fail
        self.calls = 0

    def generate(self, prompts, params):
        self.calls += 1
        if self.fail:
            raise RuntimeError("engine down")
        return [Generation([self.names[i % len(self.names)]]) for i in range(len(prompts))]

    def label_probs(self, prompts, labels):
        out = []
        for p in prompts:
            sent = p.rsplit("Sentence:", 1)[1].lower()
            label = "fix" if ("restart" in sent or "raise" in sent) else "check" if "check" in sent else "symptom"
            out.append({f" {lab}": (0.85 if lab == label else 0.05) for lab in ("symptom", "check", "fix", "other")})
        return out

    def loglikelihood(self, requests):
        return [0.0] * len(requests)

    def format_prompt(self, system, user, assistant_prefix=""):
        return user + assistant_prefix


TWO_INCIDENTS = """# Platform notes

When the VPN gateway drops tunnels, check the IKE logs on the gateway. Restart the ipsec service if it keeps flapping.

LDAP logins time out when the directory server runs out of connections. Check the connection count on the server.
Raise the connection limit.
"""


def test_llm_extractor_names_runs_of_paragraphs_and_fills_fields(tmp_path):
    doc = _doc(tmp_path, "ops/platform.md", TWO_INCIDENTS)
    eng = FakeEngine([" VPN tunnels dropping", " LDAP logins time out"])
    nodes = LLMExtractor(eng).extract(doc, chunk_document(doc))
    assert [n.incident for n in nodes] == ["VPN tunnels dropping", "LDAP logins time out"]
    vpn, ldap = nodes
    assert vpn.diagnosis_steps == ["When the VPN gateway drops tunnels, check the IKE logs on the gateway."]
    assert vpn.mitigation_steps == ["Restart the ipsec service if it keeps flapping."]
    assert ldap.diagnosis_steps == ["Check the connection count on the server."]
    assert ldap.mitigation_steps == ["Raise the connection limit."]
    assert "directory server runs out of connections" in ldap.failure_description
    assert all(n.method == "llm" and n.tags == ["ops"] for n in nodes)


def test_llm_extractor_rejects_ungrounded_names_and_survives_engine_errors(tmp_path):
    doc = _doc(tmp_path, "ops/platform.md", TWO_INCIDENTS)
    nodes = LLMExtractor(FakeEngine([" Unauthorized database access"])).extract(doc, chunk_document(doc))
    assert [n.incident for n in nodes] == ["Platform"]  # fell back to the title
    nodes = LLMExtractor(FakeEngine([], fail=True)).extract(doc, chunk_document(doc))
    assert [n.incident for n in nodes] == ["Platform"]
    assert any("Raise the connection limit." in n.mitigation_steps for n in nodes)


@pytest.fixture(scope="module")
def smollm():
    from experts.engines.transformers_engine import TransformersEngine
    from experts.engines.weights import WeightsNotFound, resolve_weights

    try:
        path = resolve_weights("smollm2-135m-instruct")
    except WeightsNotFound as exc:
        pytest.skip(f"SmolLM2 weights not installed: {exc}")
    return TransformersEngine(path, name="smollm2-135m-instruct", chat=True, threads=1)


def test_llm_path_with_real_smollm2(tmp_path, smollm, kb_docs):
    doc = _doc(tmp_path, "network/vpn-notes.md", kb_docs.VPN_NOTES)
    chunks = chunk_document(doc)
    assert len(chunks) == 1
    t = time.perf_counter()
    nodes, method = extract_document(doc, chunks, llm=smollm)
    assert time.perf_counter() - t < 60
    assert method == "llm" and nodes
    text = kb_docs.VPN_NOTES.lower()
    for n in nodes:
        # whatever the 135M model wrote, the kept name is grounded in the text (or is the title)
        words = [w for w in n.incident.lower().split() if w not in {"the", "of", "on", "in", "a"}]
        assert words and all(w[:5] in text or w in {"failure", "down", "issue", "error", "flapping"} for w in words)
        assert n.tags == ["network"] and n.chunk_ids == [chunks[0].id]
    steps = [s for n in nodes for s in n.diagnosis_steps + n.mitigation_steps]
    assert any("IKE logs" in s for s in steps) and any("ipsec" in s for s in steps)
