"""Ray Serve options derived from model specs: one place that maps config to replicas and resources."""

from __future__ import annotations

from core.config import FloodConfig, ModelSpec, ServeConfig
from core.threads import thread_env


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
        "graceful_shutdown_timeout_s": 120,  # a replaced replica finishes its batch in flight (slow on CPU)
        # A replaced replica (an expert redeployed with a new spec) keeps serving until its successor runs.
        "max_surge_percent": 100,
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
        # Rolling the ingress (a new expert was added) starts the new replica before the old one drains:
        # no moment without an ingress, so no request fails during the update. The old replica finishes
        # its requests in flight (on the map they started with); on a busy CPU a ticket can take minutes,
        # so it gets as long as a request may take before it is stopped.
        "max_surge_percent": 100,
        "graceful_shutdown_timeout_s": max(60.0, float(serve.request_timeout_s or 600)),
        "ray_actor_options": {"num_cpus": 0.1, "runtime_env": {"env_vars": thread_env(1)}},
    }


def total_cpus(specs: list[ModelSpec], serve: ServeConfig) -> float:
    return sum(s.num_cpus * s.replicas for s in specs) + 0.1 * serve.ingress_replicas
