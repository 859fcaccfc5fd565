import pytest
import yaml

from core.config import ConfigError, ModelSpec, load_config, load_model_spec
from core.paths import DEFAULT_CONFIG


def test_default_config_loads_and_resolves_paths():
    cfg = load_config()
    assert cfg.source == str(DEFAULT_CONFIG)
    assert cfg.tasks.tasks.endswith("starter/tasks.yaml")
    assert {e.name for e in cfg.experts} == {"smollm2-generalist", "gemma3-infra", "smollm2-apps"}
    assert cfg.scorer.model.replicas >= 2


def test_every_field_is_described():
    from core import config as c

    for model in (c.ModelSpec, c.ClassifierConfig, c.ScorerConfig, c.PlannerConfig, c.ServeConfig,
                  c.FlowRouterConfig, c.KnowledgeConfig, c.TaskSetConfig, c.CascadeConfig):
        missing = [n for n, f in model.model_fields.items() if not f.description]
        assert not missing, f"{model.__name__} fields without description: {missing}"


def _write(tmp_path, data):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["experts"].append(dict(raw["experts"][0]))
    with pytest.raises(ConfigError, match="unique"):
        load_config(_write(tmp_path, raw))
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["planner"]["candidates"] = 0
    with pytest.raises(ConfigError, match="candidates"):
        load_config(_write(tmp_path, raw))
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["experts"][0]["surprise"] = 1
    with pytest.raises(ConfigError, match="surprise"):
        load_config(_write(tmp_path, raw))


def test_model_spec_file_and_fingerprint(tmp_path):
    p = tmp_path / "spec.yaml"
    p.write_text("name: my-expert\nbase: smollm2-135m-instruct\nadapter: adapters/a1\n")
    spec = load_model_spec(p)
    assert spec.adapter == str(tmp_path / "adapters" / "a1")
    other = spec.model_copy(update={"system_prompt": "different"})
    assert spec.fingerprint() != other.fingerprint()
    assert ModelSpec(name="x", base="b").fingerprint() == ModelSpec(name="y", base="b").fingerprint()
    assert ModelSpec(name="x", base="b", dtype="bfloat16").fingerprint() != ModelSpec(name="x", base="b").fingerprint()
    with pytest.raises(ConfigError, match="name"):
        bad = tmp_path / "bad.yaml"
        bad.write_text("name: Has Spaces\nbase: x\n")
        load_model_spec(bad)
