"""A tiny but real coevolution iteration on CPU: SmolLM2, one GRPO step, one DPO step.

The run goes through `training.coevolve.train` (split, queries + operator feedback, the job, the
gate decision) in-process; the Ray path is covered by test_pool.py. It checks that both adapters
are produced with their metadata and report, load in the serving engine and change its outputs,
and that a second run with the same seed produces the same adapters.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from core.config import ModelSpec
from core.schemas import WorkflowOut
from core.workflow import linear_workflow
from training.artifacts import META_FILE
from training.coevolve import TrainOptions, train


@pytest.fixture(scope="module")
def feedback_rows(tmp_path_factory):
    """Ticket-store rows (as the CLI reads them): one accepted workflow, and one rejected then corrected."""
    from deployments.ticket_store import TicketStore

    d = tmp_path_factory.mktemp("state")
    store = TicketStore(d / "tickets.sqlite")
    wf = linear_workflow(["Check disk usage with df -h", "Delete old container images", "Verify usage dropped"])
    store.accept("t1", {"title": "Disk almost full on node-3", "description": "root filesystem at 95%"}, {})
    store.complete("t1", {"expert": "smollm2-generalist", "best_index": 0,
                          "candidates": [{"workflow": WorkflowOut.of(wf).model_dump(mode="json")}]})
    store.add_feedback("t1", "accept")
    bad = linear_workflow(["Restart the kubelet on node-3", "Reboot node-3"])
    fixed = linear_workflow(["Check the PVC usage with kubectl df-pv", "Expand the persistent volume claim"])
    store.accept("t2", {"title": "PVC data-0 almost full", "description": "postgres volume at 92%"}, {})
    store.complete("t2", {"expert": "smollm2-generalist", "best_index": 0,
                          "candidates": [{"workflow": WorkflowOut.of(bad).model_dump(mode="json")}]})
    store.add_feedback("t2", "reject")
    store.add_feedback("t2", "edit", 0, workflow={"steps": [x.model_dump(mode="json") for x in fixed.steps]})
    return store.feedback()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, feedback_rows, make_tiny_config):
    """Two runs with the same seed: the first with the gate's evaluation, the second without."""
    out = tmp_path_factory.mktemp("training")
    cfg = make_tiny_config()
    first = train(cfg, ["smollm2-generalist"], TrainOptions(iterations=1, out_root=str(out), local=True,
                                                              show_progress=False), feedback_rows=feedback_rows)
    second = train(cfg, ["smollm2-generalist"], TrainOptions(iterations=1, out_root=str(out), local=True,
                                                               show_progress=False, evaluate=False),
                   feedback_rows=feedback_rows)
    return first, second, out


def test_iteration_produces_versioned_adapters_with_metadata(trained):
    first, _, out = trained
    outcome = first.outcomes["smollm2-generalist"]
    assert outcome["ok"], outcome["error"]
    vdir = Path(outcome["dir"])
    assert vdir == out / "smollm2-generalist" / "v0001"
    metrics = json.loads((vdir / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["version"] == 1 and metrics["algorithms"] == {"planner": "grpo",
                                                                                               "scorer": "dpo"}
    assert (vdir / "report.png").stat().st_size > 10_000
    # One runbook query plus the operator-accepted ticket and the corrected one; their verdicts join DPO.
    assert metrics["data"]["feedback_queries"] == 1 and metrics["data"]["feedback_verdicts"] == 2
    assert metrics["data"]["correction_queries"] == 1 and metrics["data"]["correction_pairs"] == 1
    it1 = metrics["iterations"][1]
    assert it1["rl"]["steps"] == 1 and it1["rl"]["history"][0]["reward_std"] > 0  # graded: a real advantage
    assert it1["rl"]["data"]["correction_queries"] == 1
    assert any("rewards/correction_reward/mean" in r for r in it1["rl"]["history"])
    kinds = it1["dpo"]["data"]["kinds"]
    assert kinds.get("feedback:accept") == 1 and kinds.get("feedback:edit") == 1 and kinds.get("feedback:correction") == 1
    # The correction trained the Planner first (DPO + SFT on its own prompt); RL continued from that adapter.
    assert it1["corrections"]["steps"] == 1 and it1["corrections"]["data"]["rows"] == 1
    corr = json.loads((vdir / "iter-1" / "planner-corrections" / META_FILE).read_text())
    assert corr["kind"] == "planner-corrections" and corr["data"]["tickets"] == ["t2"] and corr["parent_adapter"] is None
    for kind in ("planner", "scorer"):
        adir = vdir / "iter-1" / kind
        assert (adir / "adapter_model.safetensors").exists() and (adir / "adapter_config.json").exists()
        assert not (adir / "ref").exists()
        meta = json.loads((adir / META_FILE).read_text())
        assert meta["kind"] == kind and meta["iteration"] == 1 and meta["version"] == 1
        parent = str(vdir / "iter-1" / "planner-corrections") if kind == "planner" else None
        assert meta["base"] == "smollm2-135m-instruct" and meta["parent_adapter"] == parent
        assert meta["algorithm"] == ("grpo" if kind == "planner" else "dpo")
        assert meta["data"] and "steps" in meta["metrics"] and meta["libraries"]["trl"]
    assert metrics["candidate"]["planner_adapter"] == str(vdir / "iter-1" / "planner")
    # The gate had what it needs: held-out F1 of the serving and of the trained Planner.
    d = first.decisions[0]
    assert d["serving_f1"] is not None and d["candidate_f1"] is not None
    assert d["promote"] == (d["candidate_f1"] > d["serving_f1"])


def test_adapters_load_in_the_serving_engine_and_change_its_outputs(trained, smollm2):
    from experts.engines.registry import build_engine
    from experts.scorer import LABELS

    vdir = Path(trained[0].outcomes["smollm2-generalist"]["dir"])
    planner = build_engine(ModelSpec(name="p", base="smollm2-135m-instruct", adapter=str(vdir / "iter-1" / "planner")))
    scorer = build_engine(ModelSpec(name="s", base="smollm2-135m-instruct", adapter=str(vdir / "iter-1" / "scorer")))
    prompt = smollm2.format_prompt("You are a senior site reliability engineer.",
                                   "Ticket: Disk almost full on node-3\nWorkflow:", assistant_prefix="1.")
    req = [(prompt, " Check disk usage with df -h\n2. Delete old images")]
    base_ll, tuned_ll = smollm2.loglikelihood(req)[0], planner.loglikelihood(req)[0]
    assert abs(base_ll - tuned_ll) > 1e-3
    score_prompt = smollm2.format_prompt("You are a strict reviewer.", "Rate 1-5: Check df -h", "Score:")
    base_p, tuned_p = smollm2.label_probs([score_prompt], LABELS)[0], scorer.label_probs([score_prompt], LABELS)[0]
    assert max(abs(base_p[k] - tuned_p[k]) for k in LABELS) > 1e-4


def test_same_seed_same_adapters(trained):
    first, second, _ = trained
    a, b = Path(first.outcomes["smollm2-generalist"]["dir"]), Path(second.outcomes["smollm2-generalist"]["dir"])
    assert b.name == "v0002"  # a new version, never overwriting
    for kind in ("planner", "scorer"):
        ta = load_file(str(a / "iter-1" / kind / "adapter_model.safetensors"))
        tb = load_file(str(b / "iter-1" / kind / "adapter_model.safetensors"))
        assert ta.keys() == tb.keys()
        assert all(torch.equal(ta[k], tb[k]) for k in ta), f"{kind} adapter differs between same-seed runs"
    # Without the gate's evaluation nothing can be promoted.
    assert not second.decisions[0]["promote"] and "no held-out evaluation" in second.decisions[0]["reason"]
