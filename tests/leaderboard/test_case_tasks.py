"""Runbook cases filed under tasks: by folder / rules, else by the service's classifier."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from core.config import ClassifierConfig, ModelSpec
from core.paths import STARTER_DIR, shared_data_dir
from leaderboard.case_tasks import assign_case_tasks, folder_task, load_case_task_rules
from leaderboard.tasksets import from_starter, workflow_items
from leaderboard.workflow_cases import load_runbook_cases
from router.examples import load_examples, load_tasks

RUNBOOKS = shared_data_dir() / "prometheus-operator-runbooks" / "content" / "runbooks"
TASKS = ["network", "database", "kubernetes", "storage"]


@dataclass
class Case:
    id: str
    query: str
    reference_steps: list
    source: str | None = None


def test_folder_and_rules():
    assert folder_task(Case("a", "q", ["s"], "network/dns.md"), TASKS) == "network"
    assert folder_task(Case("b", "q", ["s"], "node/NodeFilesystemSpaceFillingUp.md"), TASKS) is None
    assert folder_task(Case("c", "q", ["s"], "top.md"), TASKS) is None
    rules = {"node/NodeFilesystem*": "storage", "etcd": "database"}
    assert folder_task(Case("b", "q", ["s"], "node/NodeFilesystemSpaceFillingUp.md"), TASKS, rules) == "storage"
    assert folder_task(Case("d", "q", ["s"], "etcd/etcdNoLeader.md"), TASKS, rules) == "database"
    # A rule naming a task that does not exist files nothing (the classifier decides instead).
    assert folder_task(Case("e", "q", ["s"], "etcd/x.md"), TASKS, {"etcd/*": "printing"}) is None


def test_rules_file(tmp_path):
    f = tmp_path / "case_tasks.yaml"
    f.write_text("node/NodeFilesystem*: storage\netcd: database\n")
    assert load_case_task_rules(f) == {"node/NodeFilesystem*": "storage", "etcd": "database"}
    f.write_text("rules:\n  - {match: 'etcd/*', task: database}\n")
    assert load_case_task_rules(f) == {"etcd/*": "database"}


def test_classifier_labels_cases_outside_task_folders(embedder):
    tasks = load_tasks(STARTER_DIR / "tasks.yaml")
    examples = load_examples([STARTER_DIR / "examples.jsonl"])
    cases = [Case("network/vpn", "Site-to-site VPN tunnel down", ["check the tunnel"], "network/vpn.md"),
             Case("node/disk", "NodeFilesystemSpaceFillingUp: filesystem on the node is running out of disk space",
                  ["df -h"], "node/disk.md"),
             Case("misc/pods", "KubePodCrashLooping: pod is in CrashLoopBackOff, containers restarting",
                  ["kubectl describe pod"], "misc/pods.md")]
    assign, decided = assign_case_tasks(cases, tasks, examples, embedder=embedder)
    assert decided["network/vpn"] == {"task": "network", "by": "folder"}
    assert decided["node/disk"]["task"] == "storage" and decided["node/disk"]["by"].startswith("classifier:")
    assert decided["misc/pods"]["task"] == "kubernetes"
    assert [i.task for i in workflow_items(cases, assign)] == ["network", "storage", "kubernetes"]
    # Nothing near enough: `unknown`, and the case is left out rather than filed under a wrong task.
    strict = ClassifierConfig(model=ModelSpec(name="c", base="smollm2-135m-instruct"), min_neighbour_similarity=0.99)
    assign, decided = assign_case_tasks(cases[1:2], tasks, examples, classifier_cfg=strict, embedder=embedder)
    assert decided["node/disk"]["task"] is None and workflow_items(cases[1:2], assign) == []


def test_starter_runbooks_are_filed_by_their_folder():
    cases = load_runbook_cases(STARTER_DIR / "docs")
    ts = from_starter(cases=cases)
    decided = ts.meta["case_tasks"]
    assert ts.items and all(v["by"] == "folder" for v in decided.values())
    assert all(i.task == i.id.split("/")[0] for i in ts.items)


@pytest.mark.skipif(not RUNBOOKS.is_dir(), reason=f"public data not found: {RUNBOOKS}")
def test_prometheus_runbooks_get_tasks():
    ts = from_starter(cases=load_runbook_cases(RUNBOOKS))
    decided = ts.meta["case_tasks"]
    by_folder = {k: v for k, v in decided.items() if v["by"] == "folder"}
    assert by_folder and all(v["task"] == "kubernetes" for v in by_folder.values())
    labeled = {k: v for k, v in decided.items() if v["by"].startswith("classifier")}
    assert labeled, "alertmanager/, node/, prometheus/ ... runbooks are labeled by the classifier"
    tasks = {v["task"] for v in labeled.values() if v["task"]}
    assert len(tasks) >= 2 and tasks <= set(ts.task_names)
    node_fs = [v["task"] for k, v in labeled.items() if k.startswith("node/NodeFilesystem")]
    assert node_fs and node_fs.count("storage") >= len(node_fs) / 2, node_fs
