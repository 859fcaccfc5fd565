"""Planner RL: one epoch of GRPO (trl GRPOTrainer) over the training queries, LoRA on the Planner.

Each query becomes the exact prompt the serving Planner uses (system prompt, instruction, retrieved
knowledge with numbered steps, ticket, and the assistant's opening "1."). For every query the
policy samples a group of completions; the rewards (Scorer + valid workflow, see training/rewards.py)
are normalised within the group into advantages; the loss is PPO's clipped surrogate on the
token-level importance ratio plus beta x KL to the reference policy. With LoRA the reference is the
same network with the adapter switched off, so no second copy of the weights is held.
"""

from __future__ import annotations

import gc
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from core.training_config import PlannerRLConfig
from training.lora import Progress, common_args, load_tokenizer, recorder, train_and_save, trainable_model
from training.rewards import ScorerReward, make_correction_reward, make_format_reward


@dataclass
class StageResult:
    adapter: str
    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    @property
    def seconds_per_step(self) -> float:
        # The first step also builds the optimizer and warms caches; report the steady state when we can.
        s = self.step_seconds[1:] or self.step_seconds
        return round(sum(s) / len(s), 3) if s else 0.0


def rl_steps(n_queries: int, cfg: PlannerRLConfig, steps: int | None) -> int:
    """Optimizer steps of one epoch: every query once, each generation batch used ppo_epochs times."""
    if steps:
        return steps
    if cfg.steps:
        return cfg.steps
    return max(1, math.ceil(n_queries / cfg.prompts_per_step)) * cfg.ppo_epochs


def train_planner(*, weights: str | Path, init_adapter: str | None, out_dir: str | Path, rows: list[dict],
                  scorer, cfg: PlannerRLConfig, seed: int, steps: int | None = None,
                  progress: Progress | None = None, stage: str = "planner RL",
                  correction_weight: float = 0.0) -> StageResult:
    """Train the Planner adapter on `rows` ({prompt, ticket}, and `target` / `negative` where operators corrected
    or rejected a ticket: `correction_weight` then weighs the reward toward and away from them) and save it."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    if not rows:
        raise ValueError("Planner RL needs at least one training query")
    total = rl_steps(len(rows), cfg, steps)
    tok = load_tokenizer(weights)
    tok.padding_side = "left"
    model = trainable_model(weights, init_adapter, cfg.lora, seed)
    rewards = [ScorerReward(scorer, max_tokens=cfg.max_completion_length),
               make_format_reward(cfg.max_completion_length)]
    rewards[1].__name__ = "format_reward"
    weights = [cfg.scorer_weight, cfg.format_weight]
    if correction_weight > 0 and any(r.get("target") or r.get("negative") for r in rows):
        rewards.append(make_correction_reward(cfg.max_completion_length))
        weights.append(correction_weight)
    rec = recorder(stage, total, progress)
    with tempfile.TemporaryDirectory(prefix="grpo-") as tmp:
        args = GRPOConfig(
            **common_args(tmp, seed, total, cfg),
            per_device_train_batch_size=cfg.prompts_per_step * cfg.num_generations,
            num_generations=cfg.num_generations,
            num_iterations=cfg.ppo_epochs,
            max_completion_length=cfg.max_completion_length,
            temperature=cfg.temperature,
            top_p=1.0,
            beta=cfg.beta,
            epsilon=cfg.epsilon,
            loss_type=cfg.loss_type,
            scale_rewards="group",
            reward_weights=weights,
            shuffle_dataset=True,
            remove_unused_columns=False,
        )
        trainer = GRPOTrainer(model=model, reward_funcs=rewards, args=args,
                              train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[rec])
        seconds = train_and_save(trainer, out_dir)
    del trainer, model
    gc.collect()
    return StageResult(adapter=str(out_dir), steps=total, seconds=round(seconds, 2), history=rec.rows,
                       step_seconds=rec.step_seconds,
                       data={"queries": len(rows), "correction_queries": sum(bool(r.get("target") or r.get("negative"))
                                                                             for r in rows)})
