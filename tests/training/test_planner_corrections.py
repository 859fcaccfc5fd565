"""The Planner's corrections stage on the real SmolLM2: one DPO + SFT step on a correction pair moves the Planner
toward the correction (its log-likelihood rises more than the rejected candidate's)."""

from __future__ import annotations

import pytest

from core.training_config import LoraSettings, PlannerCorrectionsConfig

pytestmark = pytest.mark.model

CHOSEN = "1. Check the PVC usage with kubectl df-pv\n2. [change] Expand the persistent volume claim\n3. [end] Resolved"
REJECTED = "1. Restart the kubelet on node-3\n2. [change] Reboot node-3\n3. [end] Resolved"


def test_one_step_of_dpo_and_sft_prefers_the_correction(tmp_path, smollm2):
    from core.config import ModelSpec
    from experts.engines.registry import build_engine
    from experts.engines.weights import resolve_weights
    from training.scorer_dpo import train_scorer

    prompt = smollm2.format_prompt("You are a senior site reliability engineer.",
                                   "Ticket: PVC data-0 almost full\npostgres volume at 92%\nWorkflow:")
    rows = [{"prompt": prompt, "chosen": CHOSEN, "rejected": REJECTED, "kind": "correction:edit"}] * 2
    stage = train_scorer(weights=resolve_weights("smollm2-135m-instruct"), init_adapter=None,
                         out_dir=tmp_path / "planner-corrections", rows=rows,
                         cfg=PlannerCorrectionsConfig(steps=2, batch_size=2, learning_rate=2e-3), seed=0,
                         stage="planner corrections", loss_type=("sigmoid", "sft"), loss_weights=(1.0, 1.0),
                         lora=LoraSettings())
    assert stage.steps == 2 and (tmp_path / "planner-corrections" / "adapter_model.safetensors").exists()
    assert stage.data["rows"] == 2 and stage.data["kinds"] == {"correction:edit": 2}
    assert stage.history and "loss" in stage.history[0]
    tuned = build_engine(ModelSpec(name="p", base="smollm2-135m-instruct", adapter=str(tmp_path / "planner-corrections")))
    before = smollm2.loglikelihood([(prompt, CHOSEN), (prompt, REJECTED)])
    after = tuned.loglikelihood([(prompt, CHOSEN), (prompt, REJECTED)])
    assert after[0] > before[0] and after[0] - after[1] > before[0] - before[1]
