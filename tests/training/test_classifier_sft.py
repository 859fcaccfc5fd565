"""A few real trl SFT steps of the classifier LLM (SmolLM2-135M, LoRA): the loss covers the label only, the
adapter saves in the versioned layout and the engine serves it (the label distribution moves)."""

from __future__ import annotations

import json

import pytest

pytestmark = [pytest.mark.model, pytest.mark.timeout(300)]


def test_sft_steps_train_the_label_and_the_engine_serves_the_adapter(tmp_path, smollm2, embedder):
    from core.config import load_config
    from core.training_config import ClassifierSFTConfig
    from experts.engines.registry import build_engine
    from experts.engines.weights import resolve_weights
    from router.classifier import TaskClassifier
    from router.examples import ExampleIndex, load_examples, load_tasks
    from training.classifier_data import sft_rows, split_examples
    from training.classifier_sft import tokenized_rows, train_classifier_sft

    cfg = load_config()
    c = cfg.classifier
    train, _ = split_examples(load_examples(cfg.tasks.examples), 0.2, seed=0)
    index = ExampleIndex(train, embedder, c.lexical_weight)
    clf = TaskClassifier(c, load_tasks(cfg.tasks.tasks), index, smollm2)
    rows = sft_rows(clf.prompt, index, train[:4], c.top_k)

    # Tokenised by the engine's own rule: the labels (-100 elsewhere) are exactly the label's tokens.
    [tok], _ = tokenized_rows(rows[:1], smollm2.split_continuation, 2048)
    kept = [t for t, lab in zip(tok["input_ids"], tok["labels"]) if lab != -100]
    assert smollm2.tokenizer.decode(kept) == rows[0]["completion"]
    assert tokenized_rows(rows[:1], smollm2.split_continuation, 16) == ([], 1)  # too long: left out, never cut

    out = tmp_path / "adapter"
    seen = []
    res = train_classifier_sft(weights=resolve_weights(c.model.base), init_adapter=None, out_dir=out, rows=rows,
                               encode=smollm2.split_continuation,
                               cfg=ClassifierSFTConfig(batch_size=2, learning_rate=2e-3), seed=0, steps=2,
                               progress=lambda stage, done, total: seen.append((stage, done, total)))
    assert res.steps == 2 and seen[-1] == ("classifier SFT", 2, 2)
    assert [r["step"] for r in res.history if "loss" in r] == [1, 2] and res.history[0]["loss"] > 0
    assert res.data["rows"] == 4 and res.data["too_long"] == 0
    assert (out / "adapter_model.safetensors").exists()
    assert json.loads((out / "adapter_config.json").read_text())["r"] == ClassifierSFTConfig().lora.r

    tuned = build_engine(c.model.model_copy(update={"adapter": str(out)}))
    prompt = rows[0]["prompt"]
    before = smollm2.label_probs([prompt], clf.labels)[0]
    after = tuned.label_probs([prompt], clf.labels)[0]
    assert max(abs(before[k] - after[k]) for k in clf.labels) > 1e-3
    # Two steps at this rate move probability towards the trained label of a training row.
    assert after[rows[0]["completion"]] > before[rows[0]["completion"]]
