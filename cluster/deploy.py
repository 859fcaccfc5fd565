"""Change what a running FlowRouter serves without a restart: add or replace a Planner expert.

The server process records the config its app was built from (`deployed-<port>.json`) and the
address of its Ray instance (`server-<port>.json`). Adding an expert connects to that Ray as a
driver and runs `serve.run` with the extended app. Deployments carry versions computed from their
inputs (deployments/app.py), so Serve starts the new Planner deployment, keeps the unchanged ones
(classifier, scorer, other planners: their models stay loaded) and rolls the ingress so it gains a
handle to the new expert; the ingress rolls with surge (the new replica runs before the old one
drains), so requests never find no ingress, and requests in flight finish on the old replica.
`serve.run` returns once the app is RUNNING again; only then may a map name the new expert.
"""

from __future__ import annotations

import json
import logging
import time

from cluster.local import deployed_file, pid_file, recorded_server_alive, save_deployed
from core.config import FlowRouterConfig, ModelSpec

log = logging.getLogger(__name__)


class DeployError(RuntimeError):
    pass


def deployed_config(cfg: FlowRouterConfig, wait_s: float = 600) -> tuple[FlowRouterConfig, str | None, str]:
    """(config the running app was built from, its knowledge dir, its Ray address).

    The server answers /healthz as soon as its ingress runs, a little before `serve.run` returns and
    it records the deployed config and its Ray address: while its process is alive, wait for those."""
    pf, df = pid_file(cfg), deployed_file(cfg)
    if not pf.exists():
        raise DeployError(f"no running service started by `flowrouter serve` is recorded for port "
                          f"{cfg.serve.port} (looked in {cfg.serve.state_dir}); pass the --config the "
                          "service was started with")
    deadline = time.time() + wait_s
    while True:
        try:
            server = json.loads(pf.read_text())
        except (OSError, ValueError):
            server = {}
        if server.get("ray_address") and df.exists():
            break
        if not pf.exists() or not recorded_server_alive(server):
            raise DeployError(f"the service recorded in {pf} is not running")
        if time.time() > deadline:
            raise DeployError(f"the service on port {cfg.serve.port} did not finish starting within {wait_s:.0f}s "
                              "(no Ray address / deployed config recorded)")
        time.sleep(1.0)
    saved = json.loads(df.read_text())
    return FlowRouterConfig.model_validate(saved["config"]), saved.get("knowledge_dir"), server["ray_address"]


def deployed_expert(cfg: FlowRouterConfig, name: str) -> ModelSpec | None:
    """The spec the running app serves under `name` (None when there is none)."""
    running, _, _ = deployed_config(cfg)
    return next((e for e in running.experts if e.name == name), None)


def _connect(address: str) -> bool:
    """Connect this process to the service's Ray; True when this call opened the connection."""
    import ray

    if ray.is_initialized():
        here = ray.get_runtime_context().gcs_address
        if here != address:
            raise DeployError(f"this process is already connected to Ray at {here}, not the service's {address}")
        return False
    from cluster.ray_connect import connect_ray

    connect_ray(address, "flowrouter")
    return True


def upsert_expert(cfg: FlowRouterConfig, spec: ModelSpec, echo=None) -> FlowRouterConfig:
    """Deploy `spec` as a Planner expert (replacing one of the same name) into the running app and wait
    until the app runs with it. Returns the config the app now runs. A spec identical to the deployed
    one is a no-op."""
    from ray import serve

    from deployments.app import build_app, planner_deployment_name
    from experts.engines.weights import resolve_weights

    echo = echo or (lambda msg: log.info("%s", msg))
    running, knowledge_dir, address = deployed_config(cfg)
    current = next((e for e in running.experts if e.name == spec.name), None)
    if current is not None and current.model_dump() == spec.model_dump():
        echo(f"expert {spec.name} is already deployed with this spec")
        return running
    if current is not None:
        experts = [spec if e.name == spec.name else e for e in running.experts]
    else:
        experts = [*running.experts, spec]
    try:
        updated = FlowRouterConfig.model_validate({**running.model_dump(mode="json"),
                                                   "experts": [e.model_dump(mode="json") for e in experts]})
    except ValueError as exc:
        raise DeployError(f"expert {spec.name} cannot be added: {exc}") from exc
    if spec.engine == "transformers":
        resolve_weights(spec.base)  # convert the weights here, before the new replica needs them
    t0 = time.perf_counter()
    echo(f"deploying expert {spec.name} ({spec.base}, version {spec.fingerprint()}) into the running app ...")
    owns = _connect(address)
    try:
        serve.run(build_app(updated, knowledge_dir), name=updated.serve.app_name, route_prefix="/",
                  blocking=False)
        status = serve.status().applications.get(updated.serve.app_name)
        dep = status.deployments.get(planner_deployment_name(spec.name)) if status else None
        if status is None or str(status.status).split(".")[-1] != "RUNNING" or dep is None:
            raise DeployError(f"the app did not come back RUNNING with {spec.name}: "
                              f"{status.status if status else 'no app'} {status.message if status else ''}")
    except DeployError:
        raise
    except Exception as exc:
        raise DeployError(f"deploying {spec.name} failed: {exc}") from exc
    finally:
        if owns:
            import ray

            ray.shutdown()
    save_deployed(updated, knowledge_dir)
    echo(f"expert {spec.name} is serving ({time.perf_counter() - t0:.0f}s)")
    return updated
