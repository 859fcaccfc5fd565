"""Build the engine a ModelSpec names: a table of engine name -> constructor (as RouteLLM does)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from core.config import ModelSpec
from experts.engines.base import Engine
from experts.engines.weights import EMBEDDED_MODELS, resolve_weights


def has_chat_template(weights: str | Path) -> bool:
    """Whether a transformers folder ships a chat template (file or tokenizer_config entry)."""
    folder = Path(weights)
    if (folder / "chat_template.jinja").exists() or (folder / "chat_template.json").exists():
        return True
    cfg = folder / "tokenizer_config.json"
    return cfg.exists() and bool(json.loads(cfg.read_text()).get("chat_template"))


def use_chat(spec: ModelSpec, weights: str | Path) -> bool:
    """prompt_format auto: chat for instruction-tuned embedded models, else iff a template exists."""
    if spec.prompt_format != "auto":
        return spec.prompt_format == "chat"
    if spec.base in EMBEDDED_MODELS:
        # The table says which embedded models are instruction-tuned (chat) and which are base models.
        return EMBEDDED_MODELS[spec.base].chat
    return has_chat_template(weights)


def _transformers(spec: ModelSpec) -> Engine:
    from experts.engines.transformers_engine import TransformersEngine

    weights = resolve_weights(spec.base)
    return TransformersEngine(weights, name=spec.name, adapter=spec.adapter, chat=use_chat(spec, weights),
                              threads=spec.threads, dtype=spec.dtype)


def _vllm(spec: ModelSpec) -> Engine:
    from experts.engines.vllm_engine import VLLMEngine, require_vllm

    require_vllm()  # fail before a possibly slow weight conversion
    weights = resolve_weights(spec.base)
    options = dict(spec.vllm_options)
    if 0 < spec.num_gpus < 1:
        # Replicas sharing one GPU: each reserves its share of memory, not vLLM's default 0.85-0.9.
        options.setdefault("gpu_memory_utilization", round(0.85 * spec.num_gpus, 3))
    # spec.threads is a torch setting; vLLM's CPU backend binds its own OpenMP threads.
    return VLLMEngine(weights, name=spec.name, adapter=spec.adapter, chat=use_chat(spec, weights),
                      dtype=spec.dtype, **options)


ENGINES: dict[str, Callable[[ModelSpec], Engine]] = {"transformers": _transformers, "vllm": _vllm}


def build_engine(spec: ModelSpec) -> Engine:
    """Load the weights, adapter and runtime `spec` names."""
    try:
        make = ENGINES[spec.engine]
    except KeyError:
        raise ValueError(f"unknown engine {spec.engine!r}; known: {', '.join(sorted(ENGINES))}") from None
    return make(spec)
