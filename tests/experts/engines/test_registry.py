"""build_engine picks the runtime a ModelSpec names (CPU unit tests, main venv)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from core.config import ModelSpec
from experts.engines.registry import ENGINES, build_engine, use_chat
from experts.engines.weights import WeightsNotFound, resolve_weights

MODEL = "smollm2-135m-instruct"


def _weights_or_skip():
    try:
        return resolve_weights(MODEL)
    except WeightsNotFound as exc:
        pytest.skip(str(exc))


def test_engine_table_covers_the_config_choices():
    assert set(ENGINES) == set(ModelSpec.model_fields["engine"].annotation.__args__)


@pytest.mark.model
def test_default_spec_builds_transformers_engine():
    from experts.engines.transformers_engine import TransformersEngine

    _weights_or_skip()
    spec = ModelSpec(name="planner", base=MODEL)
    engine = build_engine(spec)
    try:
        assert isinstance(engine, TransformersEngine)
        assert engine.name == "planner"
        assert engine.chat and engine.has_chat_template
        assert engine.format_prompt("sys", "hi").startswith("<|im_start|>system\nsys")
    finally:
        engine.close()


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed here")
def test_vllm_engine_without_vllm_says_what_to_install():
    spec = ModelSpec(name="planner", base=MODEL, engine="vllm")
    with pytest.raises(RuntimeError, match=r"needs the vllm package.*requirements/gpu\.txt"):
        build_engine(spec)


def test_prompt_format_resolution(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    (plain / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    templated = tmp_path / "templated"
    templated.mkdir()
    (templated / "config.json").write_text("{}")
    (templated / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages }}"}))

    def spec(base, fmt="auto"):
        return ModelSpec(name="m", base=base, prompt_format=fmt)

    assert use_chat(spec(str(plain)), plain) is False
    assert use_chat(spec(str(templated)), templated) is True
    assert use_chat(spec(str(plain), "chat"), plain) is True
    assert use_chat(spec(str(templated), "completion"), templated) is False
    # Embedded models: the table decides (Gemma 3 270M is a base model).
    assert use_chat(spec("smollm2-135m-instruct"), plain) is True
    assert use_chat(spec("gemma3-270m"), templated) is False
