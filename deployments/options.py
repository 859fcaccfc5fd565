"""Ray Serve options derived from model specs: one place that maps config to replicas and resources."""

from __future__ import annotations

from core.config import FloodConfig, ModelSpec, ServeConfig


def model_deployment_options(spec: ModelSpec, name: str) -> dict:
    """Options for a deployment serving one model."""
    return {
        "name": name,
        "num_replicas": spec.replicas,
        # Enough in flight per replica to fill a dynamic batch, plus a queue behind it.
        "max_ongoing_requests": max(4 * spec.max_batch_size, 16),
        "ray_actor_options": {
            "num_cpus": spec.num_cpus,
            "num_gpus": spec.num_gpus,
            "resources": dict(spec.resources),
            "runtime_env": {"env_vars": thread_env(spec.threads)},
        },
        "health_check_period_s": 10,
        "health_check_timeout_s": 60,  # a replica busy in a long generate must not be killed
        "graceful_shutdown_timeout_s": 30,
    }


def ingress_options(serve: ServeConfig, flood: FloodConfig | None = None) -> dict:
    flood = flood or FloodConfig()
    return {
        "name": "ingress",
        "num_replicas": serve.ingress_replicas,
        "max_ongoing_requests": serve.max_ongoing_requests,
        "max_queued_requests": serve.max_queued_requests,
        # Past max_queued_requests the proxy answers 503 itself; say when to come back.
        "backpressure_config": {"status_code": 503, "retry_after_s": flood.retry_after_s},
        "ray_actor_options": {"num_cpus": 0.1, "runtime_env": {"env_vars": thread_env(1)}},
    }


def thread_env(threads: int) -> dict[str, str]:
    n = str(threads)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def total_cpus(specs: list[ModelSpec], serve: ServeConfig) -> float:
    return sum(s.num_cpus * s.replicas for s in specs) + 0.1 * serve.ingress_replicas
