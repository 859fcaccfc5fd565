import pytest

from core.config import CascadeConfig, ClassifierConfig, ModelSpec
from core.paths import STARTER_DIR
from core.schemas import LabeledQuery
from router.classifier import DECIDED_LLM, DECIDED_OOD, DECIDED_RETRIEVAL, TaskClassifier
from router.examples import ExampleIndex, TaskInfo, load_examples, load_tasks

EXAMPLES = [
    LabeledQuery(id="n1", text="DNS lookups for internal hosts fail with SERVFAIL", task="network"),
    LabeledQuery(id="n2", text="VPN tunnel to the Frankfurt office keeps dropping", task="network"),
    LabeledQuery(id="n3", text="Packet loss between the two data centres since noon", task="network"),
    LabeledQuery(id="d1", text="Postgres replication lag above 10 minutes on the replica", task="database"),
    LabeledQuery(id="d2", text="Too many connections error from MySQL on orders-db", task="database"),
    LabeledQuery(id="d3", text="数据库主从复制延迟超过十分钟", task="database"),
]
TASKS = [TaskInfo("network", "connectivity"), TaskInfo("database", "databases")]


def _cfg(**kw):
    return ClassifierConfig(model=ModelSpec(name="c", base="smollm2-135m-instruct"), **{"top_k": 4, **kw})


@pytest.fixture(scope="module")
def index(embedder):
    return ExampleIndex(EXAMPLES, embedder, lexical_weight=0.5)


def test_retrieval_finds_semantic_and_lexical_neighbours(index):
    hits = index.search(["internal DNS resolution broken (SERVFAIL)", "复制延迟 数据库"], k=3)
    assert hits[0][0].id == "n1"
    assert hits[1][0].id == "d3"  # MiniLM alone is weak on Chinese; the n-gram index carries it
    assert all(h.similarity >= hits[0][-1].similarity for h in hits[0])


def test_cascade_skips_the_llm_when_neighbours_agree(index, fake_engine_cls):
    llm = fake_engine_cls()
    clf = TaskClassifier(_cfg(cascade=CascadeConfig(min_agreement=0.7, min_similarity=0.3)), TASKS, index, llm)
    [res] = clf.classify(["DNS lookups for internal hosts fail with SERVFAIL again"])
    assert res.task == "network" and res.decided_by == DECIDED_RETRIEVAL
    assert not [c for c in llm.calls if c[0] == "label_probs"]


def test_llm_is_asked_with_task_list_and_examples(index, fake_engine_cls):
    llm = fake_engine_cls(label_fn=lambda p, labels: {" network": 0.1, " database": 0.9})
    clf = TaskClassifier(_cfg(cascade=CascadeConfig(enabled=False)), TASKS, index, llm)
    [res] = clf.classify(["the orders service cannot get a connection, pool exhausted"])
    assert res.decided_by == DECIDED_LLM and res.task == "database"
    prompts, labels = [c[1] for c in llm.calls if c[0] == "label_probs"][0]
    assert labels == [" network", " database"]
    assert "- network: connectivity" in prompts[0] and "Task: database" in prompts[0]
    assert abs(sum(res.distribution.values()) - 1) < 1e-6


def test_low_confidence_and_out_of_domain_become_unknown(index, fake_engine_cls):
    flat = fake_engine_cls(label_fn=lambda p, labels: {lab: 0.5 for lab in labels})
    clf = TaskClassifier(_cfg(cascade=CascadeConfig(enabled=False), unknown_threshold=0.99), TASKS, index, flat)
    [res] = clf.classify(["VPN tunnel flapping"])
    assert res.task == "unknown" and res.decided_by.endswith("low-confidence")
    clf = TaskClassifier(_cfg(min_neighbour_similarity=0.9), TASKS, index, flat)
    [res] = clf.classify(["please order a new office chair for the reception"])
    assert res.task == "unknown" and res.decided_by == DECIDED_OOD


def test_examples_must_use_known_tasks(index):
    with pytest.raises(ValueError, match="not in the task set"):
        TaskClassifier(_cfg(), [TaskInfo("network")], index, None)


def test_starter_pack_loads():
    tasks = load_tasks(STARTER_DIR / "tasks.yaml")
    examples = load_examples([STARTER_DIR / "examples.jsonl"])
    assert len(tasks) == 8 and len(examples) >= 8 * 15


def test_real_llm_classifies_starter_tickets(embedder, smollm2):
    """The real path (SmolLM2 + MiniLM + faiss) on the starter pack's held-out tickets."""
    import json

    tasks = load_tasks(STARTER_DIR / "tasks.yaml")
    index = ExampleIndex(load_examples([STARTER_DIR / "examples.jsonl"]), embedder)
    clf = TaskClassifier(_cfg(top_k=8), tasks, index, smollm2)
    rows = [json.loads(x) for x in (STARTER_DIR / "tickets.jsonl").read_text().splitlines() if x.strip()]
    known = [r for r in rows if r["expected_task"] != "unknown"]
    results = clf.classify([f"{r['title']}\n{r['description']}" for r in known])
    correct = sum(r.task == k["expected_task"] for r, k in zip(results, known))
    assert correct / len(known) >= 0.7, [(r.task, k["expected_task"]) for r, k in zip(results, known)]
