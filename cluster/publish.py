"""Publishing trained adapters into the running service: `training.gate.Publisher` for `flowrouter serve`.

Training decides what to publish (`training.gate`); this module knows where the service runs and how
to change it (its Ray cluster, Serve, its HTTP map API), which is the cluster layer's business.
"""

from __future__ import annotations

import json
import time

import httpx

from core.config import FlowRouterConfig
from core.task_map import TaskMap
from training.gate import PublishError


class ServicePublisher:
    """The running service started by `flowrouter serve` with this config.

    What it runs comes from `cluster.deploy.deployed_config` (the config the server recorded). New
    Planner experts are added with `cluster.deploy.upsert_expert` (serve.run of the extended app:
    Serve starts the new deployment, rolls the ingress, keeps the rest); a new Scorer adapter and
    retired experts go through `apply_config`, the same serve.run on the whole updated config; so does a
    new classifier adapter, which only changes the classifier deployment's user_config (its replicas load it
    in place) and rolls the ingress. The map goes through the ingress (`POST /v1/map`), validated like any
    publish.
    """

    def __init__(self, cfg: FlowRouterConfig, api_key: str | None = None, url: str | None = None,
                 ray_address: str | None = None, timeout_s: float = 900):
        from cluster.local import pid_file, resolve_state_dir, url_of

        self.cfg = resolve_state_dir(cfg.model_copy(deep=True))
        info = {}
        if pid_file(self.cfg).exists():
            try:
                info = json.loads(pid_file(self.cfg).read_text())
            except ValueError:
                info = {}
        self.url = (url or info.get("url") or url_of(self.cfg)).rstrip("/")
        self.ray_address = ray_address
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s = timeout_s

    def check(self) -> dict:
        from cluster.local import healthy

        h = healthy(self.url, timeout=15)  # a busy CPU answers slowly, not never
        if h is None:
            raise PublishError(f"no FlowRouter service answers at {self.url}; start it with `flowrouter serve` "
                               "or train without --publish")
        return h

    def _running(self) -> tuple[FlowRouterConfig, str | None, str]:
        from cluster.deploy import DeployError, deployed_config

        try:
            running, knowledge_dir, address = deployed_config(self.cfg)
        except DeployError as exc:
            raise PublishError(str(exc)) from None
        return running, knowledge_dir, self.ray_address or address

    def live_config(self) -> FlowRouterConfig:
        return self._running()[0]

    def current_map(self) -> TaskMap:

        r = httpx.get(f"{self.url}/v1/map", headers=self.headers, timeout=60)
        if r.status_code != 200:
            raise PublishError(f"GET /v1/map: HTTP {r.status_code}: {r.text[:300]}")
        return TaskMap.model_validate(r.json()["current"])

    def deploy(self, cfg: FlowRouterConfig) -> None:
        """Make the running app serve `cfg` (experts added / removed, Scorer adapter changed)."""
        import ray

        from cluster.deploy import DeployError, upsert_expert
        from cluster.ray_connect import connect_ray

        running, _, address = self._running()
        have = {e.name: e for e in running.experts}
        # One driver connection for every step (upsert_expert reuses a connected driver).
        owns = not ray.is_initialized()
        if owns:
            connect_ray(address, "flowrouter")
        try:
            for spec in cfg.experts:
                if spec.name not in have or have[spec.name].model_dump() != spec.model_dump():
                    upsert_expert(self.cfg, spec)
            running, _, _ = self._running()
            if [e.name for e in running.experts] != [e.name for e in cfg.experts] or \
                    running.scorer.model.model_dump() != cfg.scorer.model.model_dump() or \
                    running.classifier.model_dump() != cfg.classifier.model_dump():
                # A new classifier adapter is only a new user_config of the classifier deployment: its
                # running replicas load it (deployments/classifier.py), none restarts.
                apply_config(self.cfg, cfg)
        except DeployError as exc:
            raise PublishError(str(exc)) from exc
        finally:
            if owns:
                ray.shutdown()  # disconnects this driver; the service's cluster keeps running
        self._wait_for([e.name for e in cfg.experts])

    def classifier_info(self) -> list[dict]:
        """What each running classifier replica's LLM serves (`ClassifierDeployment.info`: adapter, fingerprint):
        asked through the deployment, not read from the recorded config."""
        import ray
        from ray import serve

        from cluster.ray_connect import connect_ray

        running, _, address = self._running()
        owns = not ray.is_initialized()
        if owns:
            connect_ray(address, "flowrouter")
        try:
            handle = serve.get_deployment_handle("classifier", app_name=running.serve.app_name)
            replicas = max(1, running.classifier.model.replicas)
            # Requests spread over replicas; asking a few times per replica reaches each of them.
            answers = [handle.info.remote() for _ in range(3 * replicas)]
            seen = {}
            for a in answers:
                info = a.result(timeout_s=120)
                seen[(info["adapter"], info["loaded_at"])] = info
            return list(seen.values())
        except Exception as exc:
            raise PublishError(f"could not ask the classifier deployment what it serves: {exc}") from exc
        finally:
            if owns:
                ray.shutdown()

    def _wait_for(self, experts: list[str]) -> None:
        from cluster.local import healthy

        deadline = time.time() + self.timeout_s
        while time.time() < deadline:
            h = healthy(self.url, timeout=15)
            if h and sorted(h.get("experts") or []) == sorted(experts):
                return
            time.sleep(2)
        raise PublishError(f"the service at {self.url} did not come up with experts {experts} in "
                           f"{self.timeout_s:.0f}s; the live map was not changed")

    def publish_map(self, task_map: TaskMap) -> dict:

        r = httpx.post(f"{self.url}/v1/map", json=task_map.model_dump(mode="json"), headers=self.headers,
                       timeout=60)
        if r.status_code != 200:
            raise PublishError(f"POST /v1/map refused the regenerated map: HTTP {r.status_code}: {r.text[:300]}")
        return r.json()


def apply_config(cfg: FlowRouterConfig, target: FlowRouterConfig) -> None:
    """Thin adapter beside `cluster.deploy.upsert_expert`, which only adds or replaces Planner experts:
    serve.run the app built from `target` (a new Scorer adapter, experts removed) on the running
    service and record it as deployed. Needs a driver connected to the service's Ray."""
    from ray import serve

    from cluster.deploy import deployed_config
    from cluster.local import prepare, save_deployed
    from deployments.app import build_app

    running, knowledge_dir, _ = deployed_config(cfg)
    target = FlowRouterConfig.model_validate({**target.model_dump(mode="json", exclude={"source"}),
                                              "serve": running.serve.model_dump(mode="json")})
    prepare(target, progress=False)
    serve.run(build_app(target, knowledge_dir), name=target.serve.app_name, route_prefix="/")
    save_deployed(target, knowledge_dir)
