"""Classifier LLM fine-tuning: trl SFT with completion-only loss, LoRA on the classifier's model.

Rows come from `training.classifier_data.sft_rows` (the service's prompt -> `" <task>"`). They are
tokenised by the serving engine's own rule (`TokenizedEngine.split_continuation`, the split that
`label_probs` scores), so the adapter is trained on exactly the token sequence the service feeds it;
the loss covers the label tokens only (trl's `labels` column, -100 on the prompt). Rows longer than
`max_length` are left out and counted, never truncated (the ticket sits at the end of the prompt).
"""

from __future__ import annotations

import gc
import math
import tempfile
from collections.abc import Callable
from pathlib import Path

from core.training_config import ClassifierSFTConfig
from training.lora import Progress, common_args, load_tokenizer, recorder, train_and_save, trainable_model
from training.planner_rl import StageResult

Encode = Callable[[str, str], tuple[list[int], int]]  # (prompt, completion) -> (token ids, first completion token)


def sft_steps(n_rows: int, cfg: ClassifierSFTConfig, steps: int | None = None) -> int:
    """Optimizer steps: the caller's cap, else the config's, else `epochs` passes over the rows."""
    if steps:
        return steps
    if cfg.steps:
        return cfg.steps
    return max(1, math.ceil(n_rows * cfg.epochs / cfg.batch_size))


def tokenized_rows(rows: list[dict], encode: Encode, max_length: int) -> tuple[list[dict], int]:
    """({input_ids, labels} per row that fits, rows left out as too long); labels are -100 on the prompt."""
    out, too_long = [], 0
    for r in rows:
        ids, start = encode(r["prompt"], r["completion"])
        if len(ids) > max_length:
            too_long += 1
            continue
        out.append({"input_ids": ids, "labels": [-100] * start + ids[start:]})
    return out, too_long


def train_classifier_sft(*, weights: str | Path, init_adapter: str | None, out_dir: str | Path, rows: list[dict],
                         encode: Encode, cfg: ClassifierSFTConfig, seed: int, steps: int | None = None,
                         progress: Progress | None = None, stage: str = "classifier SFT") -> StageResult:
    """SFT of a LoRA adapter on `rows` ({prompt, completion}); saves the adapter to `out_dir`."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    if not rows:
        raise ValueError("classifier SFT has no training rows")
    data_rows, too_long = tokenized_rows(rows, encode, cfg.max_length)
    if not data_rows:
        raise ValueError(f"every classifier SFT row is longer than classifier_sft.max_length={cfg.max_length} tokens")
    total = sft_steps(len(data_rows), cfg, steps)
    tok = load_tokenizer(weights)
    model = trainable_model(weights, init_adapter, cfg.lora, seed)
    rec = recorder(stage, total, progress)
    with tempfile.TemporaryDirectory(prefix="sft-") as tmp:
        args = SFTConfig(**common_args(tmp, seed, total, cfg), per_device_train_batch_size=cfg.batch_size,
                         max_length=cfg.max_length, packing=False, completion_only_loss=True)
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(data_rows),
                             processing_class=tok, callbacks=[rec])
        seconds = train_and_save(trainer, out_dir)
    del trainer, model
    gc.collect()
    tokens = [len(r["input_ids"]) for r in data_rows]
    return StageResult(adapter=str(out_dir), steps=total, seconds=round(seconds, 2), history=rec.rows,
                       step_seconds=rec.step_seconds,
                       data={"rows": len(data_rows), "too_long": too_long,
                             "mean_tokens": round(sum(tokens) / len(tokens), 1), "max_tokens": max(tokens)})
