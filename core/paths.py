"""Where FlowRouter keeps files: the repository's bundled data and a per-user cache."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.yaml"
STARTER_DIR = REPO_ROOT / "starter"


def cache_dir() -> Path:
    """Root of converted models, knowledge bases and run state (FLOWROUTER_HOME overrides)."""
    root = os.environ.get("FLOWROUTER_HOME") or Path.home() / ".cache" / "flowrouter"
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def shared_data_dir() -> Path:
    """The public evaluation data beside the checkout (FLOWROUTER_SHARED_DATA overrides)."""
    env = os.environ.get("FLOWROUTER_SHARED_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"
