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
def embedder():
    from core.embeddings import shared_embedder

    return shared_embedder()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """The real FlowRouter service, started through `flowrouter serve` as the README does."""

    def __init__(self, url: str, config_path, cfg, keys: dict | None = None):
        self.url, self.config_path, self.cfg = url, config_path, cfg
        # The service runs with API keys (auth.mode: keys); post/get send the admin key unless a test
        # passes its own Authorization header. keys: role name -> plain key (see deployments/auth.py).
        self.keys = keys or {}
        self.headers = {"Authorization": f"Bearer {self.keys['admin']}"} if "admin" in self.keys else {}

    def post(self, path, timeout=600, **kw):
        import httpx

        return httpx.post(self.url + path, timeout=timeout, **{**kw, "headers": {**self.headers, **kw.get("headers", {})}})

    def get(self, path, timeout=60, **kw):
        import httpx

        return httpx.get(self.url + path, timeout=timeout, **{**kw, "headers": {**self.headers, **kw.get("headers", {})}})


@pytest.fixture(scope="session")
def service(tmp_path_factory):
    import subprocess
    import sys

    import yaml

    from core.config import load_config

    cfg = load_config()
    cfg.serve.port = _free_port()
    cfg.serve.state_dir = str(tmp_path_factory.mktemp("state"))
    # Access control on, as in production: keys in the rotatable key file (tests/deployments/test_access_e2e.py).
    from core.auth_config import ApiKeySpec, AuthConfig
    from deployments.auth import KeyFile, new_key, sha256_hash

    keys = {"admin": new_key(), "ticket": new_key(), "limited": new_key()}
    for kid, role, rate in (("e2e-admin", "admin", 0), ("e2e-ticket", "ticket", 0), ("e2e-limited", "ticket", 6)):
        KeyFile(f"{cfg.serve.state_dir}/api_keys.yaml").add(ApiKeySpec(
            id=kid, role=role, hash=sha256_hash(keys[kid.removeprefix("e2e-")]), rate_per_minute=rate, burst=3))
    cfg.auth = AuthConfig(mode="keys", reload_interval_s=0.5, failed_auth_per_minute=0, public_rate_per_minute=0)
    path = tmp_path_factory.mktemp("config") / "e2e.yaml"
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude={"source"})))
    cli = [sys.executable, "-m", "cluster.cli"]
    started = subprocess.run([*cli, "serve", str(path)], capture_output=True, text=True, timeout=1200)
    if started.returncode != 0:
        pytest.fail(f"flowrouter serve failed:\n{started.stdout[-3000:]}\n{started.stderr[-3000:]}")
    try:
        yield Service(f"http://127.0.0.1:{cfg.serve.port}", path, cfg, keys)
    finally:
        subprocess.run([*cli, "shutdown", str(path)], capture_output=True, text=True, timeout=300)
