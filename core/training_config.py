"""Settings of coevolution training (`flowrouter train`): Planner RL, Scorer DPO, the gate, the actor pool.

Kept beside `core/config.py` (which embeds it as the `training:` section of a FlowRouter config) so the
whole service, including how its experts are tuned, is described by one validated file. Defaults are
sized for the 2-core embedded default; docs/training.md says what to raise on a GPU cluster.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class LoraSettings(_Strict):
    """The peft LoRA adapter both stages train (the base weights stay frozen)."""

    r: int = Field(default=8, ge=1, le=256, description="LoRA rank.")
    alpha: int = Field(default=16, ge=1, le=512, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(default=0.0, ge=0, le=0.5, description="Dropout on the LoRA path (0 keeps runs "
                                                                  "repeatable from a seed).")
    target_modules: list[str] = Field(default=["q_proj", "k_proj", "v_proj", "o_proj"],
                                      description="Module names that get adapters (attention projections of "
                                                  "Llama/Gemma-style models).")


class StageSettings(_Strict):
    """What every trl training stage shares."""

    learning_rate: float = Field(default=5e-5, gt=0, le=1, description="AdamW learning rate of the adapter.")
    activation_checkpointing: bool = Field(
        default=False,
        description="Recompute activations during the backward pass instead of keeping them (trl turns it on by "
                    "default; transformers' gradient_checkpointing): less memory for long sequences or big models "
                    "on a GPU, at the cost of a second forward pass; off for the small CPU models, where memory "
                    "is not the limit.")


class PlannerRLConfig(StageSettings):
    """Planner reinforcement learning: the Scorer's five-dimension score is the reward."""

    algorithm: Literal["grpo"] = Field(
        default="grpo",
        description="GRPO (trl GRPOTrainer): the PPO clipped surrogate with group-relative advantages (each "
                    "prompt's completions are baselined against their group mean, so no value model is "
                    "trained) and a KL penalty to the reference policy (the base weights with the adapter "
                    "switched off). trl removed PPOTrainer in 1.13 (huggingface/trl#7020); see docs/training.md.")
    steps: int | None = Field(default=None, ge=1, description="Optimizer steps per iteration; None is one epoch "
                                                              "(every training query once, times ppo_epochs).")
    prompts_per_step: int = Field(default=1, ge=1, le=64, description="Queries per optimizer step.")
    num_generations: int = Field(default=4, ge=2, le=64, description="Completions per query (the GRPO group).")
    ppo_epochs: int = Field(default=2, ge=1, le=8, description="Optimizer steps per generated batch (trl "
                            "num_iterations, mu in the GRPO paper). Above 1 the policy moves away from the one "
                            "that sampled, and the clipped importance ratio takes effect.")
    max_completion_length: int = Field(default=64, ge=8, le=2048, description="Tokens per completion.")
    temperature: float = Field(default=0.9, gt=0, le=2, description="Sampling temperature of the rollouts.")
    beta: float = Field(default=0.04, ge=0, le=1, description="KL coefficient to the reference policy (trl's "
                                                               "default is 0, which drops the KL term).")
    epsilon: float = Field(default=0.2, gt=0, le=1, description="PPO clip range of the importance ratio.")
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = Field(
        default="grpo", description="How token losses are aggregated (trl loss_type); grpo is the paper's "
                                    "per-sequence mean.")
    scorer_weight: float = Field(default=1.0, ge=0, description="Weight of the Scorer reward (mean of the five "
                                                                "dimensions, mapped from 1-5 to 0-1).")
    format_weight: float = Field(default=0.5, ge=0, description="Weight of the graded valid-workflow reward.")
    context_chunks: int = Field(default=0, ge=0, le=20, description="Knowledge chunks in training prompts "
                                "(fewer than served keeps prompts short: back-propagation through a 550-token "
                                "prompt costs ~3x a 300-token one on CPU).")
    context_nodes: int = Field(default=1, ge=0, le=20, description="Incident nodes in training prompts.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="Planner adapter.")


class ScorerDPOConfig(StageSettings):
    """Scorer preference tuning on synthesized good / fair / poor workflows (and operator feedback)."""

    algorithm: Literal["dpo"] = Field(default="dpo", description="Direct Preference Optimization (trl "
                                                                  "DPOTrainer, sigmoid loss).")
    steps: int | None = Field(default=None, ge=1, description="Optimizer steps per iteration; None is one epoch "
                                                              "over the validated preference rows.")
    batch_size: int = Field(default=2, ge=1, le=64, description="Preference rows per optimizer step.")
    beta: float = Field(default=0.1, gt=0, le=10, description="DPO temperature (strength of the implicit KL "
                                                             "to the reference Scorer).")
    max_length: int = Field(default=768, ge=64, le=8192, description="Longest prompt+answer in tokens; longer "
                                                                     "rows are left out, never truncated.")
    dimensions_per_pair: int = Field(default=1, ge=1, le=5, description="Scorer dimensions each workflow pair "
                                     "becomes rows for (cycled across pairs so every dimension is trained).")
    generation_tokens: int = Field(default=96, ge=16, le=1024, description="Planner tokens per synthesized "
                                                                           "good/fair/poor workflow.")
    consistency_margin: float = Field(default=0.0, ge=0, le=4, description="A pair is discarded when the "
                                      "current Scorer rates the worse workflow at least this much above the "
                                      "better one (0: discard every pair it ranks the other way).")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="Scorer adapter.")


class PlannerCorrectionsConfig(StageSettings):
    """Operators' corrections as Planner data, before each iteration's RL: the corrected workflow is an SFT target
    and is preferred over the candidate it replaced (trl DPO with an added SFT loss on the chosen side)."""

    enabled: bool = Field(default=True, description="Train on corrections when the feedback has any (edits, and "
                                                    "rejects of a ticket that was later corrected).")
    learning_rate: float = Field(default=5e-5, gt=0, le=1, description="AdamW learning rate of the adapter.")
    steps: int | None = Field(default=None, ge=1, description="Optimizer steps per iteration; None is one epoch "
                                                              "over the correction pairs.")
    batch_size: int = Field(default=2, ge=1, le=64, description="Pairs per optimizer step.")
    beta: float = Field(default=0.1, gt=0, le=10, description="DPO temperature (strength of the implicit KL to "
                                                             "the Planner the stage starts from).")
    sft_weight: float = Field(default=1.0, ge=0, le=10, description="Weight of the SFT loss on the correction "
                                                                    "next to the DPO loss (weight 1).")
    max_length: int = Field(default=1024, ge=64, le=8192, description="Longest prompt+workflow in tokens; longer "
                                                                      "pairs are left out, never truncated.")
    reward_weight: float = Field(default=1.0, ge=0, description="Weight, in Planner RL, of the reward for "
                                 "following a ticket's correction and for moving away from its rejected "
                                 "candidate (only for tickets that have them).")


class ClassifierSFTConfig(StageSettings):
    """Supervised fine-tuning of the classifier LLM (`flowrouter train classifier`): a LoRA adapter trained on the
    labeled queries with the prompt the service asks (task list, retrieved examples, ticket) and the task name as
    the completion."""

    algorithm: Literal["sft"] = Field(default="sft", description="trl SFTTrainer on prompt-completion rows with "
                                      "completion-only loss (the prompt's tokens carry no loss).")
    learning_rate: float = Field(default=2e-4, gt=0, le=1, description="AdamW learning rate of the adapter.")
    steps: int | None = Field(default=None, ge=1, description="Optimizer steps; None is `epochs` passes over the "
                                                              "training rows.")
    epochs: int = Field(default=1, ge=1, le=20, description="Passes over the training rows when `steps` is None.")
    batch_size: int = Field(default=4, ge=1, le=64, description="Rows per optimizer step.")
    max_length: int = Field(default=768, ge=64, le=8192, description="Longest prompt+completion in tokens; longer "
                            "rows are left out, never truncated (the ticket is at the end of the prompt).")
    max_examples: int | None = Field(default=None, ge=1, description="Train on at most this many labeled examples "
                                     "(a stratified, deterministic subset of the train part).")
    dev_fraction: float = Field(default=0.2, gt=0, lt=1, description="Share of the labeled examples held out "
                                "(stratified by task, seeded): never trained on, never retrieved from while "
                                "training; the gate measures accuracy on it.")
    dev_limit: int | None = Field(default=None, ge=1, description="Evaluate the gate on at most this many dev "
                                  "examples (stratified, deterministic).")
    gate_mode: Literal["cascade", "llm+retrieval"] = Field(
        default="cascade", description="Classifier mode whose dev accuracy decides the gate: cascade is what the "
                                       "service runs; llm+retrieval asks the LLM on every ticket.")
    min_improvement: float = Field(default=0.0, ge=0, le=100, description="Accuracy points (of 100) the adapter "
                                   "must gain over the serving classifier on the dev part; ties keep what serves.")
    lora: LoraSettings = Field(default_factory=LoraSettings, description="Classifier adapter.")


class GateConfig(_Strict):
    """What a new adapter must show on held-out cases before it may serve."""

    holdout_fraction: float = Field(default=0.2, gt=0, lt=1, description="Share of runbook cases never used "
                                    "for training (chosen by a hash of the case id: stable across runs).")
    holdout_limit: int | None = Field(default=None, ge=1, description="Evaluate at most this many held-out "
                                                                      "cases (deterministic sample).")
    candidates: int = Field(default=1, ge=1, le=16, description="Best-of-N during the gate (1: greedy, no "
                                                                "Scorer in the loop).")
    min_improvement: float = Field(default=0.0, ge=0, le=100, description="STEPScore F1 points the new Planner "
                                   "must gain over the serving one (ties keep the serving one).")
    agreement_queries: int = Field(default=8, ge=1, le=256, description="Held-out queries whose good/fair/poor "
                                   "workflows measure Scorer agreement before and after DPO.")
    eval_every_iteration: bool = Field(default=False, description="Also measure held-out STEPScore after every "
                                       "iteration (benchmarks), not only for the final adapter.")


class TrainingConfig(_Strict):
    """Coevolution training per expert (FlowXpert): Planner RL with the Scorer as reward, Scorer DPO."""

    cases: str | None = Field(default=None, description="Runbook folder whose cases give training queries and "
                              "held-out evaluation (default ../shared/data/prometheus-operator-runbooks).")
    knowledge_docs: list[str] = Field(default_factory=list, description="Documents the Planner is grounded in "
                                      "while training and in the gate (empty: the runbook folder itself).")
    exclude_own_doc: bool = Field(default=False, description="Hide each case's own runbook from retrieval in RL "
                                  "prompts and the gate (the good/fair DPO workflows always see it).")
    max_queries: int | None = Field(default=None, ge=1, description="Use at most this many training queries per "
                                    "iteration (deterministic sample).")
    feedback: bool = Field(default=True, description="Add operator feedback from the service's ticket store: "
                                                     "accepted/rejected workflows and corrections join the "
                                                     "Scorer's DPO data; accepted, corrected and rejected tickets "
                                                     "join the Planner's queries, corrections its targets and "
                                                     "pairs (planner_corrections).")
    seed: int = Field(default=0, description="Seed of sampling, data order and adapter initialisation.")
    output_dir: str | None = Field(default=None, description="Where versioned adapters go (default "
                                                             "<cache>/training).")
    threads: int = Field(default=1, ge=1, le=64, description="torch threads per training job.")
    num_cpus_per_job: float = Field(default=1.0, ge=0, description="Ray CPUs reserved by each expert's job.")
    num_gpus_per_job: float = Field(default=0.0, ge=0, description="Ray GPUs reserved by each expert's job (1 on "
                                                                   "GPU clusters: jobs then run on GPUs).")
    planner_rl: PlannerRLConfig = Field(default_factory=PlannerRLConfig, description="Planner RL stage.")
    scorer_dpo: ScorerDPOConfig = Field(default_factory=ScorerDPOConfig, description="Scorer DPO stage.")
    planner_corrections: PlannerCorrectionsConfig = Field(default_factory=PlannerCorrectionsConfig,
                                                          description="Operators' corrections as Planner targets, "
                                                                      "pairs and RL reward.")
    gate: GateConfig = Field(default_factory=GateConfig, description="Promotion rule.")
    classifier_sft: ClassifierSFTConfig = Field(default_factory=ClassifierSFTConfig, description="Fine-tuning "
                                                "of the classifier LLM (`flowrouter train classifier`).")
