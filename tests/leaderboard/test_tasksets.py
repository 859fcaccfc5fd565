"""Task sets: option parsing, item models, versions, folders and the importers."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from core.paths import STARTER_DIR, shared_data_dir
from core.schemas import LabeledQuery
from leaderboard.tasksets import (
    FreeTextItem,
    MCItem,
    TaskInfo,
    TaskSet,
    TaskSetError,
    WorkflowItem,
    from_it_tickets,
    from_opseval,
    from_owl_bench,
    from_starter,
    load_taskset,
    make_mc_item,
    normalize_answer,
    split_options,
    stated_answer_count,
    with_items,
    workflow_items,
)

SHARED = shared_data_dir()
needs_opseval = pytest.mark.skipif(not (SHARED / "opseval/test").is_dir(),
                                   reason=f"public data not found: {SHARED}/opseval")
needs_owl = pytest.mark.skipif(not (SHARED / "owl-bench/mc_ops_domains.dev.csv").exists(),
                               reason=f"public data not found: {SHARED}/owl-bench")
needs_tickets = pytest.mark.skipif(not (SHARED / "it-service-tickets/tickets.dev.csv").exists(),
                                   reason=f"public data not found: {SHARED}/it-service-tickets")


# ---- option parsing --------------------------------------------------------------------------
def test_split_options_line_markers():
    stem, opts = split_options("Which port does SSH use?\nA. 21\nB: 22\nC、23\nD) 25")
    assert stem == "Which port does SSH use?"
    assert opts == {"A": "21", "B": "22", "C": "23", "D": "25"}


def test_split_options_inline_and_parenthesised():
    assert split_options("Not in the SGA?\nA. PGA B. Log buffer C. Shared pool")[1] == \
        {"A": "PGA", "B": "Log buffer", "C": "Shared pool"}
    stem, opts = split_options("Not a segment type.\n(A. Index segment (B. Temp segment (C. Code segment)")
    assert stem == "Not a segment type." and opts == {"A": "Index segment", "B": "Temp segment",
                                                       "C": "Code segment"}


def test_split_options_ignores_stray_letters_and_missing_dot():
    text = "A DBA runs this.\nWhich is true?\nA. one\nB two\nC. three"
    stem, opts = split_options(text)
    assert stem == "A DBA runs this.\nWhich is true?"
    assert opts == {"A": "one", "B": "two", "C": "three"}
    assert split_options("no options here") == ("no options here", {})


def test_split_options_multiline_option_text():
    _, opts = split_options("Q?\nA. \nfirst line\n\nB. \nsecond\n")
    assert opts == {"A": "first line", "B": "second"}


@pytest.mark.parametrize("raw,expected", [
    ("C,D,F", ["C", "D", "F"]), ("ABD", ["A", "B", "D"]), ("A, ", ["A"]), ("b", ["B"]),
    (["D", "A"], ["A", "D"]), ("4", ["D"]), ("9", []), ("the answer", []), ("", []),
])
def test_normalize_answer(raw, expected):
    assert normalize_answer(raw, {"A": "a", "B": "b", "C": "c", "D": "d"}) == expected


@pytest.mark.parametrize("q,n", [
    ("Which protocols support VLSM? (Choose three.)", 3), ("Which two statements are true?", 2),
    ("关于实例恢复，哪两个说法是正确的？", 2), ("请选择三项", 3), ("What is BGP?", None),
])
def test_stated_answer_count(q, n):
    assert stated_answer_count(q) == n


def test_make_mc_item_prefers_choices_and_strips_embedded_options():
    it = make_mc_item("x", "t", "5G 上层协议是：\nA: GTP-U\nB: NG-AP", "B, ", ["GTP-U", "NG-AP"])
    assert it.question == "5G 上层协议是：" and it.options == {"A": "GTP-U", "B": "NG-AP"}
    assert it.answer == ["B"] and not it.multi and it.lang == "zh"
    multi = make_mc_item("y", "t", "Which two? (Choose two.)", "C,A", ["a", "b", "c"])
    assert multi.answer == ["A", "C"] and multi.multi and multi.n_stated == 2 and multi.lang == "en"


def test_make_mc_item_true_false_and_unreadable():
    assert make_mc_item("z", "t", "N11是AMF和SMF之间的参考点", "A", true_false=True).options == {"A": "正确", "B": "错误"}
    assert make_mc_item("z", "t", "N11是AMF和SMF之间的参考点", "A") is None
    assert make_mc_item("w", "t", "Q?\nA. x\nB. y", "E") is None  # answer not an option


def test_mc_item_validates_answer():
    with pytest.raises(ValueError):
        MCItem(id="a", task="t", question="q", options={"A": "x", "B": "y"}, answer=["C"])


# ---- the TaskSet model -----------------------------------------------------------------------
def _small() -> TaskSet:
    return TaskSet(
        name="small", tasks=[TaskInfo(name="net", description="network"), TaskInfo(name="db")],
        examples=[LabeledQuery(id="e1", text="vpn down", task="net")],
        items=[MCItem(id="m1", task="net", question="Port of SSH?", options={"A": "21", "B": "22"}, answer=["B"]),
               FreeTextItem(id="f1", task="db", question="What is WAL?", reference="write-ahead log"),
               WorkflowItem(id="w1", task="db", query="replication lag", reference_steps=["check lag", "fix"])])


def test_save_load_roundtrip_and_version(tmp_path):
    ts = _small()
    v = ts.version()
    ts.save(tmp_path / "ts")
    for f in ("taskset.yaml", "examples.jsonl", "items.jsonl"):
        assert (tmp_path / "ts" / f).exists()
    back = TaskSet.load(tmp_path / "ts")
    assert back.version() == v and back.model_dump() == ts.model_dump()
    assert [i.kind for i in back.items] == ["mc", "free_text", "workflow"]
    assert ts.eval_tasks() == ["net", "db"] and len(ts.items_for("db")) == 2
    # edits are new versions; meta is not part of the version
    assert with_items(ts, [FreeTextItem(id="f2", task="net", question="q", reference="r")]).version() != v
    assert TaskSet(**{**ts.model_dump(), "meta": {"note": "x"}}).version() == v


def test_item_key_changes_with_content():
    a = FreeTextItem(id="f", task="t", question="q", reference="r")
    assert a.key() == FreeTextItem(id="f", task="t", question="q", reference="r").key()
    assert a.key() != FreeTextItem(id="f", task="t", question="q", reference="r2").key()


@pytest.mark.parametrize("change,message", [
    (dict(tasks=[TaskInfo(name="net"), TaskInfo(name="net")]), "not unique"),
    (dict(tasks=[TaskInfo(name="unknown")]), "reserved"),
    (dict(tasks=[TaskInfo(name="other")]), "unknown tasks"),
])
def test_taskset_validation(change, message):
    data = {**_small().model_dump(), **change}
    with pytest.raises((TaskSetError, ValueError), match=message):
        TaskSet(**data)


def test_load_rejects_non_taskset_folder(tmp_path):
    with pytest.raises(TaskSetError, match="taskset.yaml"):
        TaskSet.load(tmp_path)
    with pytest.raises(TaskSetError, match="unknown task set"):
        load_taskset(tmp_path / "missing")


@dataclass
class Case:  # shape of leaderboard.workflow_cases.WorkflowCase
    id: str
    query: str
    reference_steps: list
    source: str = "runbook"


def test_workflow_items_from_cases():
    cases = [Case("c1", "KubePodCrashLooping", ["kubectl describe pod", "check logs"]), Case("c2", "x", [])]
    items = workflow_items(cases, "kubernetes")
    assert [(i.id, i.task, i.reference_steps) for i in items] == \
        [("c1", "kubernetes", ["kubectl describe pod", "check logs"])]
    assert workflow_items(cases, lambda c: None) == []


@pytest.mark.skipif(not (STARTER_DIR / "tasks.yaml").exists(), reason="starter pack not present")
def test_starter_pack_taskset():
    ts = from_starter()
    assert len(ts.tasks) == 8 and ts.examples and not ts.items
    assert {q.task for q in ts.examples} <= set(ts.task_names)
    cases = [Case("c1", "Pod crashlooping after deploy, OOMKilled in kubernetes namespace", ["describe the pod"])]
    with_cases = from_starter(cases=cases)
    assert len(with_cases.items) == 1 and with_cases.items[0].task in with_cases.task_names


# ---- public data -----------------------------------------------------------------------------
@needs_opseval
def test_opseval_taskset(tmp_path):
    ts = from_opseval()
    assert ts.task_names == ["wired-network", "oracle-database", "5g-communication", "log-analysis"]
    kinds = {r["task"]: r["items"] for r in ts.summary()}
    assert kinds["wired-network"] == {"mc": 1558}
    assert kinds["log-analysis"]["free_text"] > 100 and kinds["log-analysis"]["mc"] > 100
    assert sum(ts.meta["skipped_items"].values()) <= 3
    multi = [i for i in ts.items if i.kind == "mc" and i.multi]
    assert len(multi) > 400
    en = from_opseval(lang="en")
    assert all(i.lang == "en" for i in en.items_for("wired-network"))
    assert en.meta["languages"]["5g-communication"].endswith("(no en items)")
    assert len(en.items_for("5g-communication")) == len(ts.items_for("5g-communication"))
    strict = from_opseval(lang="en", lang_fallback=False)
    assert strict.eval_tasks() == ["wired-network", "oracle-database"]
    assert TaskSet.load(en.save(tmp_path / "en")).version() == en.version()


@needs_owl
def test_owl_bench_taskset():
    ts = from_owl_bench()
    assert len(ts.tasks) == 9 and len(ts.items) == 593
    assert len(ts.examples) + len(ts.holdout) == 593 and 100 < len(ts.holdout) < 130
    assert all(len(i.options) == 4 and not i.multi for i in ts.items)


@needs_tickets
def test_it_tickets_is_classification_only():
    ts = from_it_tickets(limit=2000)
    assert len(ts.tasks) == 8 and not ts.items and ts.meta["classification_only"]
    assert len(ts.examples) + len(ts.holdout) == 2000 and ts.holdout
