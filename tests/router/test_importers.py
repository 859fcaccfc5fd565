"""Labeled-query importers and the stratified split."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from core.paths import shared_data_dir
from core.schemas import LabeledQuery
from router.importers import (
    IT_TICKET_TASKS,
    OWL_TASKS,
    LabeledDataError,
    import_it_tickets,
    import_owl_bench,
    load_labeled,
    split_labeled,
    task_counts,
)

SHARED = shared_data_dir()
needs_tickets = pytest.mark.skipif(not (SHARED / "it-service-tickets/tickets.dev.csv").exists(),
                                   reason=f"public data not found: {SHARED}/it-service-tickets")
needs_owl = pytest.mark.skipif(not (SHARED / "owl-bench/mc_ops_domains.dev.csv").exists(),
                               reason=f"public data not found: {SHARED}/owl-bench")


def _q(i: int, task: str) -> LabeledQuery:
    return LabeledQuery(id=f"q{i}", text=f"text {i}", task=task)


# ---- load_labeled ----------------------------------------------------------------------------
def test_load_jsonl_defaults_ids_and_skips_blank_rows(tmp_path):
    p = tmp_path / "ex.jsonl"
    rows = [{"id": "a", "text": "disk full on db1", "task": "storage"},
            {"text": "vpn drops", "task": "network"},
            {"text": "   ", "task": "network"},
            {"text": "no task", "task": ""}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    out = load_labeled(p)
    assert [(q.id, q.task, q.source) for q in out] == [("a", "storage", "ex"), ("ex-2", "network", "ex")]


def test_load_csv_custom_columns_and_limit(tmp_path):
    p = tmp_path / "t.csv"
    p.write_text("Document,Topic_group\nprinter jam,Hardware\nreset password,Access\nnew laptop,Purchase\n")
    out = load_labeled(p, text_col="Document", task_col="Topic_group", source="x", limit=2)
    assert [(q.id, q.text, q.task, q.source) for q in out] == [
        ("t-2", "printer jam", "Hardware", "x"), ("t-3", "reset password", "Access", "x")]


def test_load_tsv(tmp_path):
    p = tmp_path / "t.tsv"
    p.write_text("text\ttask\nhello, world\tapp\n")
    assert load_labeled(p)[0].text == "hello, world"


@pytest.mark.parametrize("content,suffix,message", [
    ('{"id": "a", "text": "x", "task": "t"}\n{"id": "a", "text": "y", "task": "t"}\n', ".jsonl", "duplicate id"),
    ('{"text": "x"}\n', ".jsonl", "no column"),
    ('{"text": "x", "task": "unknown"}\n', ".jsonl", "reserved"),
    ("not json\n", ".jsonl", "not JSON"),
    ("a,b\n", ".txt", "must be"),
])
def test_load_errors_name_the_problem(tmp_path, content, suffix, message):
    p = tmp_path / f"bad{suffix}"
    p.write_text(content)
    with pytest.raises(LabeledDataError, match=message):
        load_labeled(p)


def test_missing_file(tmp_path):
    with pytest.raises(LabeledDataError, match="not found"):
        load_labeled(tmp_path / "nope.jsonl")


# ---- split_labeled ---------------------------------------------------------------------------
def test_split_is_stratified_and_deterministic():
    items = [_q(i, "a") for i in range(10)] + [_q(i, "b") for i in range(10, 14)] + [_q(99, "c")]
    train, test = split_labeled(items, 0.3, seed=1)
    assert task_counts(test) == {"a": 3, "b": 1}  # round(10*.3)=3, round(4*.3)=1; single 'c' stays in train
    assert task_counts(train) == {"a": 7, "b": 3, "c": 1}
    assert {q.id for q in train} | {q.id for q in test} == {q.id for q in items}
    assert not {q.id for q in train} & {q.id for q in test}
    # same seed, any input order -> same split; output keeps input order
    train2, test2 = split_labeled(list(reversed(items)), 0.3, seed=1)
    assert {q.id for q in test2} == {q.id for q in test}
    assert [q.id for q in test] == [q.id for q in items if q.id in {x.id for x in test}]


def test_split_keeps_one_on_each_side_and_edges():
    items = [_q(0, "a"), _q(1, "a")]
    train, test = split_labeled(items, 0.01, seed=0)  # round(0.02) = 0 -> at least one test
    assert len(train) == 1 and len(test) == 1
    train, test = split_labeled(items, 0.99, seed=0)  # round(1.98) = 2 -> at least one train
    assert len(train) == 1 and len(test) == 1
    assert split_labeled(items, 0.0)[1] == [] and split_labeled(items, 1.0)[0] == []
    with pytest.raises(ValueError):
        split_labeled(items, 1.5)


def test_split_is_stable_when_items_are_added():
    base = [_q(i, "a") for i in range(50)]
    _, test = split_labeled(base, 0.2, seed=0)
    _, test_more = split_labeled(base + [_q(i, "a") for i in range(50, 60)], 0.2, seed=0)
    # hash ranking: the old test items are still ranked first among the old ones
    assert len({q.id for q in test} - {q.id for q in test_more}) <= 1


# ---- public data -----------------------------------------------------------------------------
@needs_tickets
def test_it_tickets_import():
    out = import_it_tickets()
    assert len(out) == 28958
    counts = task_counts(out)
    assert set(counts) == set(IT_TICKET_TASKS.values())
    assert counts["hardware"] == 8246 and counts["administrative-rights"] == 1063
    assert out[0].id == "its-2" and out[0].source == "it-service-tickets"
    assert len(import_it_tickets(limit=5)) == 5


@needs_owl
def test_owl_bench_import():
    out = import_owl_bench()
    assert len(out) == 593
    counts = Counter(q.task for q in out)
    assert set(counts) == set(OWL_TASKS.values()) and counts["os"] == 160 and counts["system-architecture"] == 8
    with_opts = import_owl_bench(with_options=True)
    assert with_opts[0].text.startswith(out[0].text) and "\nA. " in with_opts[0].text and "\nD. " in with_opts[0].text
    assert len({q.id for q in out}) == len(out)
