"""Change what a running FlowRouter serves without a restart: add or replace a Planner expert.

The server process records the config its app was built from (`deployed-<port>.json`) and the
address of its Ray instance (`server-<port>.json`). Adding an expert connects to that Ray, runs
`serve.run` with the extended app: Serve starts the new Planner deployment, keeps the unchanged
ones (classifier, scorer, other planners), and rolls the ingress so it gains a handle to the new
expert. Requests in flight finish on the old replicas. Only then may a map name the new expert.
"""

from __future__ import annotations

import json
import logging

from core.config import FlowRouterConfig, ModelSpec
from cluster.local import deployed_file, pid_file, save_deployed

log = logging.getLogger(__name__)


class DeployError(RuntimeError):
    pass


def deployed_config(cfg: FlowRouterConfig) -> tuple[FlowRouterConfig, str | None, str]:
    """(config the running app was built from, its knowledge dir, its Ray address)."""
    pf, df = pid_file(cfg), deployed_file(cfg)
    if not pf.exists() or not df.exists():
        raise DeployError(f"no running service started by `flowrouter serve` is recorded for port "
                          f"{cfg.serve.port} (looked in {cfg.serve.state_dir})")
    server = json.loads(pf.read_text())
    if not server.get("ray_address"):
        raise DeployError("the running service did not record its Ray address; restart it with this version")
    saved = json.loads(df.read_text())
    return FlowRouterConfig.model_validate(saved["config"]), saved.get("knowledge_dir"), server["ray_address"]


def upsert_expert(cfg: FlowRouterConfig, spec: ModelSpec) -> FlowRouterConfig:
    """Deploy `spec` as a Planner expert (replacing one of the same name) into the running app."""
    import ray
    from ray import serve

    from cluster.local import prepare
    from deployments.app import build_app

    running, knowledge_dir, address = deployed_config(cfg)
    experts = [e for e in running.experts if e.name != spec.name] + [spec]
    updated = running.model_copy(update={"experts": experts})
    FlowRouterConfig.model_validate(updated.model_dump(mode="json"))  # names unique, fields valid
    prepare(updated, progress=False)  # converts the new base's weights before replicas need them
    owns_connection = not ray.is_initialized()
    if owns_connection:
        ray.init(address=address, namespace="flowrouter", log_to_driver=False)
    try:
        serve.run(build_app(updated, knowledge_dir), name=updated.serve.app_name, route_prefix="/",
                  blocking=False)
    finally:
        if owns_connection:
            ray.shutdown()
    save_deployed(updated, knowledge_dir)
    log.info("expert %s deployed (fingerprint %s)", spec.name, spec.fingerprint())
    return updated
