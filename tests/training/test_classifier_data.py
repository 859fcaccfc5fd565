"""The classifier fine-tuning rows: the service's exact prompt, the label as completion, no leak of the example."""

from __future__ import annotations

import pytest

from core.config import CascadeConfig, ClassifierConfig, ModelSpec
from core.schemas import LabeledQuery
from router.classifier import TaskClassifier
from router.examples import ExampleIndex, TaskInfo
from training.classifier_data import neighbours_without_self, sft_rows, split_examples

EXAMPLES = [
    LabeledQuery(id="n1", text="DNS lookups for internal hosts fail with SERVFAIL", task="network"),
    LabeledQuery(id="n2", text="VPN tunnel to the Frankfurt office keeps dropping", task="network"),
    LabeledQuery(id="n3", text="Packet loss between the two data centres since noon", task="network"),
    LabeledQuery(id="n4", text="dns lookups for internal hosts  fail with SERVFAIL", task="network"),  # a duplicate
    LabeledQuery(id="d1", text="Postgres replication lag above 10 minutes on the replica", task="database"),
    LabeledQuery(id="d2", text="Too many connections error from MySQL on orders-db", task="database"),
    LabeledQuery(id="d3", text="Postgres vacuum is blocked by a long transaction", task="database"),
]
TASKS = [TaskInfo("network", "connectivity"), TaskInfo("database", "databases")]


def _cfg(**kw):
    return ClassifierConfig(model=ModelSpec(name="c", base="smollm2-135m-instruct"),
                            **{"top_k": 4, "prompt_examples": 2, "cascade": CascadeConfig(enabled=False), **kw})


@pytest.fixture(scope="module")
def index(embedder):
    return ExampleIndex(EXAMPLES, embedder, lexical_weight=0.5)


def test_rows_are_the_service_prompt_with_the_label_as_completion(index, fake_engine_cls):
    llm = fake_engine_cls(label_fn=lambda p, labels: {lab: 1 / len(labels) for lab in labels})
    clf = TaskClassifier(_cfg(), TASKS, index, llm)
    rows = sft_rows(clf.prompt, index, EXAMPLES, clf.cfg.top_k)
    assert [r["completion"] for r in rows] == [" " + q.task for q in EXAMPLES]
    assert rows[0]["completion"] in clf.labels  # exactly the continuation label_probs scores
    # The prompt is the one classify() sends for the same ticket and neighbours (FakeEngine's format_prompt).
    nb = neighbours_without_self(index, [EXAMPLES[1]], clf.cfg.top_k)[0]
    assert rows[1]["prompt"] == clf.prompt(EXAMPLES[1].text, nb)
    clf.classify([EXAMPLES[1].text])
    [(asked, _)] = [c[1] for c in llm.calls if c[0] == "label_probs"]
    served = asked[0]
    assert served.startswith("<s>") and served.endswith("<a>Task:")
    assert "- network: connectivity" in rows[1]["prompt"] and rows[1]["prompt"].endswith("<a>Task:")
    assert f"Ticket: {EXAMPLES[1].text}</u>" in rows[1]["prompt"]


def test_the_example_and_its_duplicates_are_never_retrieved_for_itself(index):
    for q, nb in zip(EXAMPLES, neighbours_without_self(index, EXAMPLES, 4)):
        assert q.id not in {n.id for n in nb}
        assert " ".join(q.text.lower().split()) not in {" ".join(n.text.lower().split()) for n in nb}
        assert len(nb) == 4  # still top_k neighbours
    n1 = neighbours_without_self(index, [EXAMPLES[0]], 4)[0]
    assert "n4" not in {n.id for n in n1}  # the same ticket with other whitespace/case


def test_the_shown_examples_exclude_the_ticket_itself(index, fake_engine_cls):
    clf = TaskClassifier(_cfg(), TASKS, index, fake_engine_cls())
    rows = sft_rows(clf.prompt, index, EXAMPLES, clf.cfg.top_k)
    for q, r in zip(EXAMPLES, rows):
        shown = r["prompt"].split("Classify the new ticket")[0]
        assert q.text not in shown


def test_dev_split_is_stratified_disjoint_and_seeded():
    many = [LabeledQuery(id=f"{t}{i}", text=f"{t} ticket number {i}", task=t)
            for t in ("network", "database", "storage") for i in range(10)]
    train, dev = split_examples(many, 0.2, seed=0)
    assert {q.id for q in train}.isdisjoint({q.id for q in dev}) and len(train) + len(dev) == 30
    assert sorted(q.task for q in dev) == ["database"] * 2 + ["network"] * 2 + ["storage"] * 2
    assert split_examples(many, 0.2, seed=0) == (train, dev)
    assert split_examples(many, 0.2, seed=1)[1] != dev
    small_train, small_dev = split_examples(many, 0.2, seed=0, max_examples=12, dev_limit=3)
    assert len(small_train) == 12 and {q.task for q in small_train} == {"network", "database", "storage"}
    assert len(small_dev) == 3 and {q.id for q in small_dev} <= {q.id for q in dev}
    with pytest.raises(ValueError, match="no train/dev split"):
        split_examples(many[:1], 0.2, seed=0)


def test_settings_are_described_and_load_from_the_training_section(tmp_path):
    from cluster.commands.train import load_training
    from core.config import load_config
    from core.training_config import ClassifierSFTConfig

    missing = [n for n, f in ClassifierSFTConfig.model_fields.items() if not f.description]
    assert not missing
    assert load_config().training.classifier_sft.algorithm == "sft"
    f = tmp_path / "t.yaml"
    f.write_text("training:\n  classifier_sft:\n    steps: 3\n    learning_rate: 0.001\n    min_improvement: 2\n")
    t = load_training(f)
    assert (t.classifier_sft.steps, t.classifier_sft.learning_rate, t.classifier_sft.min_improvement) == (3, 1e-3, 2)
    f.write_text("classifier_sft:\n  gate_mode: llm\n")
    with pytest.raises(Exception, match="gate_mode"):
        load_training(f)
