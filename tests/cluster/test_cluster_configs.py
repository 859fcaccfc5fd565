"""The cluster files: the GPU Serve config passes `flowrouter config check` and shards best-of-N
scoring over GPUs; ray_cluster.yaml passes Ray's own cluster-launcher schema; deployment options
carry GPUs and custom resources through to Ray."""

import subprocess
import sys
from pathlib import Path

import yaml

from core.config import load_config
from deployments.options import ingress_options, model_deployment_options

ROOT = Path(__file__).resolve().parents[2]
GPU_CONFIG = ROOT / "configs" / "gpu-cluster.yaml"


def test_gpu_config_passes_config_check():
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "config", "check", str(GPU_CONFIG)],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "OK" in out.stdout


def test_gpu_config_uses_vllm_on_gpus_and_one_scorer_per_candidate():
    cfg = load_config(GPU_CONFIG)
    specs = [cfg.classifier.model, cfg.scorer.model, *cfg.experts]
    assert all(s.engine == "vllm" and s.num_gpus > 0 for s in specs)
    assert cfg.scorer.model.num_gpus == 1, "one Scorer replica per GPU"
    assert cfg.scorer.model.replicas >= cfg.planner.candidates, "best-of-N scored on N GPUs at once"
    opts = model_deployment_options(cfg.scorer.model, "scorer")
    assert opts["ray_actor_options"]["num_gpus"] == 1 and opts["num_replicas"] == cfg.scorer.model.replicas
    assert cfg.serve.host == "0.0.0.0"
    auth = getattr(cfg, "auth", None)  # access control (docs/access.md): keys are the default
    assert auth is None or auth.mode == "keys", "a config listening beyond loopback must require API keys"


def test_resources_and_backpressure_reach_serve_options():
    cfg = load_config()
    spec = cfg.scorer.model.model_copy(update={"resources": {"worker_node": 0.01}})
    assert model_deployment_options(spec, "scorer")["ray_actor_options"]["resources"] == {"worker_node": 0.01}
    opts = ingress_options(cfg.serve, cfg.flood)
    assert opts["backpressure_config"] == {"status_code": 503, "retry_after_s": cfg.flood.retry_after_s}
    assert opts["max_queued_requests"] == cfg.serve.max_queued_requests


def test_ray_cluster_yaml_is_a_valid_launcher_config():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((ROOT / "ray_cluster.yaml").read_text())
    validate_config(prepare_config(raw))
    types = raw["available_node_types"]
    assert set(types) == {"head", "cpu_worker", "gpu_worker"} and raw["head_node_type"] == "head"
    assert "gpu_node" in types["gpu_worker"]["resources"]
