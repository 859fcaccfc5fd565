"""Loading a base model with a trainable LoRA adapter, and the callback that records a trainer's curves."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch

from core.training_config import LoraSettings, StageSettings

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_tokenizer(weights: str | Path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(weights))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def trainable_model(weights: str | Path, init_adapter: str | None, lora: LoraSettings, seed: int):
    """The base weights (float32) wrapped in a trainable peft LoRA: the serving adapter when there is
    one (training continues from what serves), else a fresh adapter initialised from `seed`."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, set_seed

    set_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(str(weights), dtype=torch.float32)
    if init_adapter:
        return PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                     target_modules=list(lora.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def common_args(out_dir: str, seed: int, steps: int, stage: StageSettings) -> dict:
    """TrainingArguments shared by both stages: no checkpoints, no external loggers, log every step."""
    return dict(output_dir=out_dir, seed=seed, data_seed=seed, max_steps=steps, learning_rate=stage.learning_rate,
                activation_checkpointing=stage.activation_checkpointing,
                lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, save_strategy="no",
                report_to="none", use_cpu=device() == "cpu", bf16=False, fp16=False, disable_tqdm=True,
                dataloader_num_workers=0, gradient_accumulation_steps=1)


def train_and_save(trainer, out_dir: str | Path) -> float:
    """Run a trl trainer and save only its trained adapter in `out_dir`; the training seconds."""
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Only the trained adapter: trl may hold a frozen copy of the starting one as its reference.
    trainer.model.save_pretrained(str(out), selected_adapters=["default"])
    return seconds


def recorder(stage: str, total: int, progress: Progress | None):
    """A TrainerCallback keeping every logged row (with seconds per step) and reporting progress."""
    from transformers import TrainerCallback

    class _Recorder(TrainerCallback):
        def __init__(self):
            self.rows: list[dict] = []
            self.step_seconds: list[float] = []
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            self.step_seconds.append(now - self._t)
            self._t = now
            if progress:
                progress(stage, state.global_step, total)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "train_runtime" not in logs:
                self.rows.append({"step": state.global_step, **{k: float(v) for k, v in logs.items()
                                                                if isinstance(v, (int, float))}})

    return _Recorder()
