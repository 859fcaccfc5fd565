"""Running FlowRouter on Ray: prepare artifacts, start (local Ray or an existing cluster), stop.

`flowrouter serve` starts a background server process that owns a private local Ray instance and
exits once the service answers; `flowrouter shutdown` signals that process, which shuts Serve and
its Ray instance down. With `--address` the app is deployed onto an existing Ray cluster instead
(the cluster launcher's, see ray_cluster.yaml) and the CLI returns immediately.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from core.config import FlowRouterConfig, load_config
from core.paths import cache_dir
from core.task_map import TaskMap
from core.threads import thread_env
from deployments.options import total_cpus

log = logging.getLogger(__name__)


class ServiceError(RuntimeError):
    pass


def resolve_state_dir(cfg: FlowRouterConfig) -> FlowRouterConfig:
    state = cfg.serve.state_dir or str(cache_dir() / "state")
    Path(state).mkdir(parents=True, exist_ok=True)
    cfg.serve.state_dir = state
    return cfg


def prepare(cfg: FlowRouterConfig, progress: bool = True) -> str | None:
    """Everything replicas need before they start: converted weights, the knowledge base, a valid map.

    Returns the knowledge-base directory (None when the config names no documents).
    """
    from experts.engines.weights import resolve_weights
    from router.examples import load_examples, load_tasks

    tasks = [t.name for t in load_tasks(cfg.tasks.tasks)]
    load_examples(cfg.tasks.examples)
    TaskMap.load(cfg.map).check(tasks, [e.name for e in cfg.experts])
    bases = {s.base for s in [cfg.classifier.model, cfg.scorer.model, *cfg.experts] if s.engine == "transformers"}
    for base in sorted(bases):
        t0 = time.time()
        resolve_weights(base)
        if progress and time.time() - t0 > 1:
            print(f"  converted {base} to safetensors in {time.time() - t0:.0f}s (cached for next time)")
    if not cfg.knowledge.docs:
        return None
    from experts.knowledge.build import ensure_knowledge_base
    from experts.knowledge.store import KnowledgeStore
    from router.doc_tasks import assigner_for, uncovered_experts

    directory = ensure_knowledge_base(cfg.knowledge, progress=progress, assign_tasks=assigner_for(cfg))
    for name in uncovered_experts(KnowledgeStore(directory).manifest(), cfg.experts):
        log.warning("expert %s: its knowledge_scope covers no document of %s; its retrieval falls back to the "
                    "whole base", name, directory)
        if progress:
            print(f"  WARNING expert {name}: knowledge_scope covers no document; retrieval uses the whole base")
    return str(directory)


def pid_file(cfg: FlowRouterConfig) -> Path:
    return Path(cfg.serve.state_dir) / f"server-{cfg.serve.port}.json"


def process_start_ticks(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot), or None if there is no such process.

    A pid names a process only while it runs: the pid file records this too, so a stale file whose pid
    the kernel has since handed to another process is never signalled."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def recorded_server_alive(record: dict) -> bool:
    """Whether the process a pid file names still runs and is the one that wrote it (same start time).

    A record without a start time, written by an older server, is trusted on its pid alone, so upgrading
    never orphans a running server."""
    try:
        pid = int(record["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    started = process_start_ticks(pid)
    return started is not None and record.get("started", started) == started


def server_record(cfg: FlowRouterConfig, **extra) -> str:
    pid = os.getpid()
    return json.dumps({"pid": pid, "started": process_start_ticks(pid), "url": url_of(cfg),
                       "config": cfg.source, **extra})


def url_of(cfg: FlowRouterConfig) -> str:
    host = "127.0.0.1" if cfg.serve.host in ("0.0.0.0", "::") else cfg.serve.host
    return f"http://{host}:{cfg.serve.port}"


def healthy(url: str, timeout: float = 2.0) -> dict | None:
    try:
        r = httpx.get(f"{url}/healthz", timeout=timeout)
        return r.json() if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None


def deploy(cfg: FlowRouterConfig, knowledge_dir: str | None, address: str | None = None) -> None:
    """Connect to (or start) Ray, start Serve's HTTP proxy and deploy the app; returns when RUNNING."""
    import ray
    from ray import serve

    from deployments.app import build_app

    if address:
        # Nodes started on 127.0.0.1 (one-host clusters, tests) register under that address: the driver
        # must say it is on that node too, or it waits for a raylet on the machine's external IP.
        loopback = address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost")
        ray.init(address=address, namespace="flowrouter", log_to_driver=False,
                 **({"_node_ip_address": "127.0.0.1"} if loopback else {}))
    else:
        cpus = max(os.cpu_count() or 1, math.ceil(total_cpus([cfg.classifier.model, cfg.scorer.model, *cfg.experts],
                                                                cfg.serve)) + 1)
        if cfg.serve.ray_num_cpus:
            cpus = cfg.serve.ray_num_cpus
        start_private_ray(cpus)
    serve.start(proxy_location=cfg.serve.proxy_location,
                http_options={"host": cfg.serve.host, "port": cfg.serve.port,
                              "request_timeout_s": cfg.serve.request_timeout_s})
    serve.run(build_app(cfg, knowledge_dir), name=cfg.serve.app_name, route_prefix="/", blocking=False)


RAY_START_ATTEMPTS = 3


def start_private_ray(cpus: int, attempts: int = RAY_START_ATTEMPTS) -> None:
    """A private Ray instance for this server (address="local": never RAY_ADDRESS or a `ray start` cluster).

    Ray gives its new node a fixed 30 s to register with its GCS; on a busy 2-core machine (another server
    starting, models loading) that can pass, and `ray.init` raises. Starting again then works, so a server
    start does not fail on it."""
    import ray

    for attempt in range(1, attempts + 1):
        try:
            ray.init(address="local", num_cpus=cpus, include_dashboard=False, namespace="flowrouter",
                     log_to_driver=False, runtime_env={"env_vars": thread_env(1)})
            return
        except Exception as exc:
            if "timed out during startup" not in str(exc) or attempt == attempts:
                raise
            log.warning("Ray's node did not register in time (a busy machine?); starting Ray again (%d of %d)",
                        attempt + 1, attempts)
            ray.shutdown()
            time.sleep(2 * attempt)


def run_foreground(config_path: str | None, port: int | None = None) -> int:
    """The server process: deploy on a private local Ray, then wait for SIGTERM/SIGINT."""
    cfg = resolve_state_dir(load_config(config_path))
    if port:
        cfg.serve.port = port
    knowledge_dir = prepare(cfg, progress=False)
    stop = {"now": False}

    def _stop(signum, frame):
        stop["now"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    pid_file(cfg).write_text(server_record(cfg))
    try:
        deploy(cfg, knowledge_dir)
        save_deployed(cfg, knowledge_dir)
        # Where this private Ray lives (ops and tests: its Prometheus endpoint, its actors).
        pid_file(cfg).write_text(server_record(cfg, **ray_endpoints()))
        print(f"FlowRouter is serving at {url_of(cfg)}", flush=True)
        while not stop["now"]:
            time.sleep(0.5)
    finally:
        _shutdown_ray()
        pid_file(cfg).unlink(missing_ok=True)
    return 0


def deployed_file(cfg: FlowRouterConfig) -> Path:
    return Path(cfg.serve.state_dir) / f"deployed-{cfg.serve.port}.json"


def save_deployed(cfg: FlowRouterConfig, knowledge_dir: str | None) -> None:
    """The config the running app was built from, so later changes (new experts) extend it."""
    tmp = deployed_file(cfg).with_suffix(".tmp")
    tmp.write_text(json.dumps({"config": cfg.model_dump(mode="json"), "knowledge_dir": knowledge_dir}))
    tmp.replace(deployed_file(cfg))


def ray_endpoints() -> dict:
    """The connected Ray's GCS address and each node's Prometheus metrics port."""
    import ray

    from deployments.prometheus import ray_metrics_urls

    try:
        return {"ray_address": ray.get_runtime_context().gcs_address, "metrics": ray_metrics_urls()}
    except Exception as exc:  # informational only
        log.warning("could not read Ray endpoints: %s", exc)
        return {}


def _shutdown_ray() -> None:
    import ray
    from ray import serve

    try:
        if ray.is_initialized():
            serve.shutdown()
    except Exception as exc:  # shutting down anyway; report and continue
        log.warning("serve.shutdown failed: %s", exc)
    finally:
        ray.shutdown()


def start_background(config_path: str | None, port: int | None = None, timeout_s: float = 900,
                     echo=print) -> dict:
    """Spawn the server process, wait until /healthz answers, return {pid, url, log}."""
    cfg = resolve_state_dir(load_config(config_path))
    if port:
        cfg.serve.port = port
    url = url_of(cfg)
    if healthy(url):
        raise ServiceError(f"a service already answers at {url}; `flowrouter shutdown` first or pick --port")
    echo("preparing models and knowledge base ...")
    prepare(cfg)
    logfile = Path(cfg.serve.state_dir) / f"server-{cfg.serve.port}.log"
    cmd = [sys.executable, "-m", "cluster.cli", "serve", "--foreground", "--port", str(cfg.serve.port)]
    if config_path:
        cmd.insert(4, str(Path(config_path).resolve()))
    env = dict(os.environ, **thread_env(1))
    with open(logfile, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    echo(f"starting Ray Serve (pid {proc.pid}, log {logfile}) ...")
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            tail = logfile.read_text(errors="replace")[-3000:]
            raise ServiceError(f"the server exited with status {proc.returncode}; end of {logfile}:\n{tail}")
        if healthy(url):
            return {"pid": proc.pid, "url": url, "log": str(logfile)}
        time.sleep(1.0)
    proc.terminate()
    raise ServiceError(f"the service did not answer at {url} within {timeout_s:.0f}s; see {logfile}")


def stop_background(cfg: FlowRouterConfig, timeout_s: float = 60) -> bool:
    """Signal the server process recorded for this config's port; True if one was stopped."""
    pf = pid_file(cfg)
    if not pf.exists():
        return False
    record = json.loads(pf.read_text())
    pid = record["pid"]
    if not recorded_server_alive(record):
        pf.unlink(missing_ok=True)  # the server is gone; its pid may now be someone else's
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pf.unlink(missing_ok=True)
        return False
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            _reap_group(pid)
            pf.unlink(missing_ok=True)
            return True
        time.sleep(0.5)
    os.kill(pid, signal.SIGKILL)
    _reap_group(pid)
    pf.unlink(missing_ok=True)
    return True


def _reap_group(pid: int) -> None:
    """Kill what is left of the server's process group (it leads one: start_new_session=True).

    Ray 2.60's DashboardAgent and RuntimeEnvAgent outlive ray.shutdown() of a private instance and
    ignore SIGTERM, so SIGKILL at once; Serve replicas (which write the ticket store) run in their
    own process groups and have stopped by then. Without this every serve/shutdown cycle leaks two.
    """
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
