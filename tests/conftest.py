"""Shared fixtures: a scripted fake engine for fast unit tests, the real small models, and the
real service (started once per test session through the same CLI path the README uses)."""

from __future__ import annotations

import os

import pytest

from experts.engines.base import Engine, Generation, SamplingParams

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class FakeEngine(Engine):
    """Deterministic stand-in for a model: scripted generations and label distributions."""

    def __init__(self, texts=None, label_fn=None, name="fake"):
        self.name = name
        self.texts = list(texts or ["1. Check the service\n2. Restart the service"])
        self.label_fn = label_fn
        self.calls: list[tuple[str, object]] = []

    def format_prompt(self, system, user, assistant_prefix=""):
        return f"<s>{system}</s><u>{user}</u><a>{assistant_prefix}"

    def generate(self, prompts, params: SamplingParams):
        self.calls.append(("generate", (prompts, params)))
        out = []
        for _ in prompts:
            texts = [self.texts[j % len(self.texts)] for j in range(params.n)]
            out.append(Generation(texts=texts, tokens=[len(t.split()) for t in texts]))
        return out

    def loglikelihood(self, requests):
        self.calls.append(("loglikelihood", requests))
        return [-float(len(c)) for _, c in requests]

    def label_probs(self, prompts, labels):
        self.calls.append(("label_probs", (prompts, labels)))
        if self.label_fn:
            return [self.label_fn(p, labels) for p in prompts]
        return [{lab: 1 / len(labels) for lab in labels} for _ in prompts]


@pytest.fixture
def fake_engine_cls():
    return FakeEngine


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct on the transformers engine (1 thread)."""
    from experts.engines.transformers_engine import TransformersEngine
    from experts.engines.weights import resolve_weights

    return TransformersEngine(resolve_weights("smollm2-135m-instruct"), name="smollm2", chat=True, threads=1)


@pytest.fixture(scope="session")
def gemma():
    """The real Gemma 3 270M base on the transformers engine (1 thread, no chat template)."""
    from experts.engines.transformers_engine import TransformersEngine
    from experts.engines.weights import resolve_weights

    return TransformersEngine(resolve_weights("gemma3-270m"), chat=False, threads=1)


@pytest.fixture(scope="session")
def embedder():
    from core.embeddings import shared_embedder

    return shared_embedder()


def free_port() -> int:
    """A TCP port free on loopback right now (the one helper every test that serves uses)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """A real FlowRouter service, started through `flowrouter serve` as the README does."""

    def __init__(self, url: str, config_path, cfg, keys: dict | None = None, restart=None):
        self.url, self.config_path, self.cfg = url, config_path, cfg
        self._restart = restart
        # With access control on, post/get send the admin key unless a test passes its own Authorization
        # header. keys: role name -> plain key (see deployments/auth/).
        self.keys = keys or {}
        self.headers = {"Authorization": f"Bearer {self.keys['admin']}"} if "admin" in self.keys else {}

    def restart(self) -> None:
        """`flowrouter shutdown` then `flowrouter serve` on the same config, state dir and port."""
        self._restart()

    @property
    def state_dir(self):
        from pathlib import Path

        return Path(self.cfg.serve.state_dir)

    def post(self, path, timeout=600, **kw):
        import httpx

        return httpx.post(self.url + path, timeout=timeout, **{**kw, "headers": {**self.headers, **kw.get("headers", {})}})

    def get(self, path, timeout=60, **kw):
        import httpx

        return httpx.get(self.url + path, timeout=timeout, **{**kw, "headers": {**self.headers, **kw.get("headers", {})}})


def own_knowledge_base(cfg, directory) -> None:
    """Give a test service a knowledge base of its own (tests approve and roll back versions in it), seeded
    from the shared cache's build of the same documents when there is one, so nothing is rebuilt."""
    import shutil

    from experts.knowledge.build import default_directory

    if cfg.knowledge.directory:
        return
    shared = default_directory(cfg.knowledge.docs)
    if (shared / "current").exists():
        current = (shared / "current").read_text().strip()
        directory.mkdir(parents=True)
        for name in ("cache", current, "current"):
            copy = shutil.copytree if (shared / name).is_dir() else shutil.copy2
            copy(shared / name, directory / name)
    cfg.knowledge.directory = str(directory)


def start_service(work, configure=None, keys: dict[str, tuple[str, int]] | None = None, address: str | None = None,
                  env: dict | None = None):
    """Start the service on a config derived from configs/default.yaml; a context manager yielding Service.

    `configure(cfg)` edits the config in place (experts, map, limits...). `keys` turns access control on
    with {role name: (key id, rate per minute)}; without it the service runs open. `address` deploys onto
    an existing Ray cluster. The service is shut down through `flowrouter shutdown` afterwards.
    """
    import contextlib
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from core.config import load_config

    @contextlib.contextmanager
    def run():
        work_dir = Path(work)
        cfg = load_config()
        cfg.serve.port = free_port()
        cfg.serve.state_dir = str(work_dir / "state")
        Path(cfg.serve.state_dir).mkdir(parents=True, exist_ok=True)
        if configure is not None:
            configure(cfg)
        own_knowledge_base(cfg, work_dir / "kb")
        plain = {}
        raw_auth = {"mode": "open", "public_rate_per_minute": 0}
        if keys:
            from core.auth_config import ApiKeySpec, AuthConfig
            from deployments.auth import KeyFile, new_key, sha256_hash

            for role, (kid, rate) in keys.items():
                plain[role] = new_key()
                KeyFile(f"{cfg.serve.state_dir}/api_keys.yaml").add(ApiKeySpec(
                    id=kid, role="admin" if role == "admin" else "ticket", hash=sha256_hash(plain[role]),
                    rate_per_minute=rate, burst=3))
            cfg.auth = AuthConfig(mode="keys", reload_interval_s=0.5, failed_auth_per_minute=0,
                                  public_rate_per_minute=0)
        raw = cfg.model_dump(mode="json", exclude={"source"})
        if not keys:
            raw["auth"] = raw_auth
        path = work_dir / "config.yaml"
        path.write_text(yaml.safe_dump(raw))
        cli = [sys.executable, "-m", "cluster.cli"]
        extra = ["--address", address] if address else []
        run_env = dict(os.environ, **(env or {}))

        def serve():
            started = subprocess.run([*cli, "serve", str(path), *extra], capture_output=True, text=True,
                                     timeout=1200, env=run_env)
            if started.returncode != 0:
                pytest.fail(f"flowrouter serve failed:\n{started.stdout[-3000:]}\n{started.stderr[-3000:]}")

        def shutdown():
            subprocess.run([*cli, "shutdown", str(path)], capture_output=True, text=True, timeout=300, env=run_env)

        def restart():
            shutdown()
            serve()

        serve()
        try:
            yield Service(f"http://127.0.0.1:{cfg.serve.port}", path, load_config(path), plain, restart)
        finally:
            shutdown()

    return run()


E2E_KEYS = {"admin": ("e2e-admin", 0), "ticket": ("e2e-ticket", 0), "limited": ("e2e-limited", 6)}


TEAM_RUNBOOKS = {
    "payments-platform/LedgerWriterStalled.md": """# LedgerWriterStalled

## Meaning
The ledger writer has not committed a batch of payment transactions for more than 10 minutes; payments are
accepted but not booked.

## Diagnosis
- Check the ledger-writer pod logs for lock wait timeouts: `kubectl -n payments logs deploy/ledger-writer`.
- Check the replication slot lag of the ledger database with `SELECT * FROM pg_replication_slots`.
- If the writer waits on a lock, find the blocking session with `SELECT * FROM pg_locks WHERE NOT granted`.

## Mitigation
- Cancel the blocking session with `SELECT pg_cancel_backend(pid)`.
- Restart the ledger writer: `kubectl -n payments rollout restart deploy/ledger-writer`.
""",
    "edge-gateway-operator/GatewayCertificateExpiring.md": """# GatewayCertificateExpiring

## Meaning
The TLS certificate served by the edge gateway expires in less than 7 days; clients will fail the TLS
handshake once it does.

## Diagnosis
- Check the certificate's expiry date with `openssl s_client -connect gw.example.com:443 | openssl x509 -noout -dates`.
- Check the cert-manager Certificate resource status with `kubectl -n edge describe certificate gateway-tls`.

## Mitigation
- If the ACME order failed, delete the failed CertificateRequest so cert-manager retries it.
- Reload the gateway so it serves the renewed certificate.
""",
    "cluster-monitoring-operator/ScrapeTargetsMissing.md": """# ScrapeTargetsMissing

## Meaning
Prometheus has lost more than a third of its scrape targets in a namespace; dashboards go blank and alerts
based on those metrics cannot fire.

## Diagnosis
- Open the Prometheus targets page and check the error shown for the missing targets.
- Check that the ServiceMonitor's label selector still matches the service labels.

## Mitigation
- Fix the ServiceMonitor selector or the service labels so they match again.
- Restart the Prometheus operator if it stopped reconciling ServiceMonitors.
""",
}


@pytest.fixture(scope="session")
def team_runbooks(tmp_path_factory):
    """A team's own runbooks in folders named after their operators, matching no task and no expert's scope."""
    root = tmp_path_factory.mktemp("team-runbooks")
    for rel, text in TEAM_RUNBOOKS.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


@pytest.fixture(scope="session")
def service(tmp_path_factory, team_runbooks):
    """The embedded default with access control on, its knowledge base also holding a team's own runbooks."""
    def configure(cfg):
        cfg.knowledge.docs = [*cfg.knowledge.docs, str(team_runbooks)]

    with start_service(tmp_path_factory.mktemp("service"), configure, keys=E2E_KEYS) as svc:
        yield svc


SLIM_EXPERT = "smollm2-generalist"
# Tight admission limits make 10x the sustainable rate cheap to produce on 2 cores; the short heartbeat makes
# a crashed ingress's tickets come back in seconds (tests/deployments/test_floods_e2e.py).
SLIM_FLOOD_LIMITS = {"max_inflight_tickets": 2, "critical_reserved_slots": 1, "max_waiting_tickets": 2,
                     "max_async_backlog": 5, "async_workers": 4,
                     "heartbeat_s": 2, "stale_after_s": 8, "retry_after_s": 2, "max_attempts": 8, "max_wait_s": 300}


@pytest.fixture(scope="session")
def slim_service(tmp_path_factory):
    """One Planner expert, one Scorer replica, best-of-1 with 48-token workflows, tight admission limits,
    access control on: for tests that flood the service, crash its replicas or change what it serves
    (publishing experts and maps), where routing and robustness are tested and workflow quality is not.
    Tests on it leave the map as they found it; experts they deploy may stay deployed."""
    import yaml

    from router.examples import load_tasks

    work = tmp_path_factory.mktemp("slim")

    def configure(cfg):
        tasks = [t.name for t in load_tasks(cfg.tasks.tasks)]
        cfg.experts = [cfg.expert(SLIM_EXPERT)]
        cfg.scorer.model.replicas = 1
        cfg.planner.max_new_tokens = 48
        cfg.planner.candidates = 1
        cfg.flood = cfg.flood.model_copy(update=SLIM_FLOOD_LIMITS)
        # Serve's own bounds are tight too, so its proxy-level 503 (with Retry-After) is exercised.
        cfg.serve.max_ongoing_requests = 8
        cfg.serve.max_queued_requests = 4
        (work / "map.yaml").write_text(yaml.safe_dump({"version": "slim-1", "routes": {t: SLIM_EXPERT for t in tasks},
                                                       "fallback": SLIM_EXPERT, "source": "tests/conftest.py"}))
        cfg.map = str(work / "map.yaml")

    with start_service(work, configure, keys={"admin": ("slim-admin", 0), "ticket": ("slim-ticket", 0)}) as svc:
        yield svc


@pytest.fixture(scope="session")
def service_factory():
    """`start_service` for module fixtures that need a service of their own shape."""
    return start_service


MODEL_FIXTURES = {"smollm2", "smollm", "trained", "gemma"}


def pytest_collection_modifyitems(config, items):
    """Tests that load real weights carry the `model` marker (make test-fast leaves them out). Tests on the
    session service carry `service_half`, so `make test` runs them in a process of their own beside the rest:
    the service starts once, and the other process's models use the second core."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if MODEL_FIXTURES & fixtures or item.get_closest_marker("e2e"):
            item.add_marker(pytest.mark.model)
        if "service" in fixtures:
            item.add_marker(pytest.mark.service_half)
