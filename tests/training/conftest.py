"""Fixtures for training tests: a tiny runbook folder and a tiny-budget training config."""

from __future__ import annotations

from pathlib import Path

import pytest

RUNBOOKS = Path(__file__).parent / "runbooks"


def tiny_training(**over) -> dict:
    """Training settings small enough for a real iteration in about a minute of CPU."""
    t = {
        "cases": str(RUNBOOKS), "max_queries": 1, "seed": 0, "feedback": True,
        "planner_rl": {"num_generations": 4, "max_completion_length": 32, "ppo_epochs": 1, "steps": 1,
                       "context_nodes": 1, "learning_rate": 2e-3},
        "scorer_dpo": {"generation_tokens": 48, "steps": 1, "batch_size": 2, "learning_rate": 2e-3},
        "gate": {"holdout_fraction": 0.25, "agreement_queries": 1, "holdout_limit": 1},
    }
    t.update(over)
    return t


def _make_tiny_config(**over):
    from core.config import load_config
    from core.training_config import TrainingConfig

    cfg = load_config()
    cfg.planner.max_new_tokens = 32  # the gate's greedy evaluation
    cfg.training = TrainingConfig.model_validate(tiny_training(**over))
    return cfg


@pytest.fixture(scope="session")
def make_tiny_config():
    return _make_tiny_config


@pytest.fixture
def tiny_config():
    return _make_tiny_config()


@pytest.fixture
def runbooks() -> Path:
    return RUNBOOKS
