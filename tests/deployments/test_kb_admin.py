"""/v1/admin/kb: consolidation proposals over HTTP, admin keys only, on a tiny base (no Ray, no model)."""

import zlib

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from core.auth_config import ApiKeySpec, AuthConfig
from core.config import ConsolidationConfig
from core.schemas import Feedback, corrected_workflow
from deployments import auth, kb_admin
from deployments.auth import new_key, sha256_hash
from experts.knowledge import consolidate
from experts.knowledge.build import build_knowledge_base
from experts.knowledge.cases import Case, CaseStore
from experts.knowledge.retrieve import KnowledgeBase

DISK = """# Filesystem full

## Meaning
A filesystem is at or near 100% usage; writes fail with "No space left on device".

## Diagnosis
1. Run `df -h` to find the full filesystem.
2. Find the largest directories with `du -xh / | sort -h | tail`.

## Mitigation
1. Delete or compress old log files.
2. Extend the volume and grow the filesystem.
"""


class BagEmbedder:
    dim = 64

    def encode(self, texts, **kw):
        out = np.zeros((len(texts), self.dim), np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, zlib.crc32(w.encode()) % self.dim] += 1
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


@pytest.fixture
def service(tmp_path, monkeypatch):
    monkeypatch.setattr(consolidate, "shared_embedder", BagEmbedder)
    docs = tmp_path / "docs" / "storage"
    docs.mkdir(parents=True)
    (docs / "disk-full.md").write_text(DISK, encoding="utf-8")
    kb = tmp_path / "kb"
    build_knowledge_base([tmp_path / "docs"], kb, embedder=BagEmbedder(), progress=False)
    cases = CaseStore(tmp_path / "cases")
    fix = corrected_workflow(Feedback(verdict="edit", steps=[
        "Check the robot arm status on the library console", "[change] Eject the stuck cartridge",
        "[end] Resolved: the archive job writes to tape again"]))
    cases.put(Case(ticket_id="tape-1", text="tape library robot arm jammed\narchive job stuck", verdict="edit",
                   workflow=fix, feedback_id=1))
    plain = {"root": new_key(), "bot": new_key()}
    auth.configure(AuthConfig(mode="keys", keys=[
        ApiKeySpec(id="root", role="admin", hash=sha256_hash(plain["root"]), rate_per_minute=0),
        ApiKeySpec(id="bot", role="ticket", hash=sha256_hash(plain["bot"]), rate_per_minute=0)]),
        str(tmp_path), "127.0.0.1", environ={})
    kb_admin.configure(str(kb), cases, ConsolidationConfig())
    app = FastAPI()
    auth.install(app)
    kb_admin.install(app)
    client = TestClient(app, base_url="http://127.0.0.1")
    admin = {"Authorization": f"Bearer {plain['root']}"}
    ticket = {"Authorization": f"Bearer {plain['bot']}"}
    return client, admin, ticket, kb


def test_admin_consolidates_approves_and_rolls_back_over_http(service):
    client, admin, ticket, kb = service
    assert client.post("/v1/admin/kb/consolidate", headers=ticket).status_code == 403
    assert client.get("/v1/admin/kb/proposals", headers=ticket).status_code == 403

    dry = client.post("/v1/admin/kb/consolidate", json={"dry_run": True}, headers=admin).json()
    assert dry["filed"] is False and dry["added"] == 1
    assert client.get("/v1/admin/kb/proposals", headers=admin).json()["proposals"] == []
    r = client.post("/v1/admin/kb/consolidate", headers=admin)
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["status"] == "pending" and p["origin"] == "api" and p["filed"] and p["base_version"] == "v0001"
    assert p["changes"][0]["kind"] == "add" and p["changes"][0]["cases"] == ["tape-1"]
    assert "+ added n-case-tape-1" in p["diff"] and "vector" not in str(p["changes"][0])
    info = client.get("/v1/admin/kb", headers=admin).json()
    assert info["current"] == "v0001" and info["pending"] == [p["id"]]

    assert client.post("/v1/admin/kb/proposals/p-20000101T000000-abcdef/approve", headers=admin).status_code == 404
    assert client.post(f"/v1/admin/kb/proposals/{p['id']}/approve", headers=ticket).status_code == 403
    done = client.post(f"/v1/admin/kb/proposals/{p['id']}/approve", headers=admin).json()
    assert done["status"] == "approved" and done["version"] == "v0002" and done["decided_by"] == "root"
    live = KnowledgeBase.open(kb, embedder=BagEmbedder())
    assert live.version == "v0002" and live.node("n-case-tape-1") is not None
    again = client.post(f"/v1/admin/kb/proposals/{p['id']}/approve", headers=admin)
    assert again.status_code == 409 and "not pending" in again.json()["detail"]
    assert client.get(f"/v1/admin/kb/proposals/{p['id']}", headers=admin).json()["status"] == "approved"

    back = client.post("/v1/admin/kb/rollback", headers=admin).json()
    assert back == {"rolled_back": "v0002", "current": "v0001"}
    assert client.post("/v1/admin/kb/rollback", headers=admin).status_code == 409
    assert client.post("/v1/admin/kb/consolidate", json={"bogus": 1}, headers=admin).status_code == 422


def test_periodic_job_is_off_by_default_and_starts_when_configured(service, tmp_path):
    assert kb_admin.ensure_started() is False
    kb_admin.configure(str(service[3]), CaseStore(tmp_path / "cases"), ConsolidationConfig(periodic=True))
    assert kb_admin.ensure_started() is False  # no running loop here: the ingress starts it from check_health
    kb_admin.configure(None, None, ConsolidationConfig(periodic=True))
    assert kb_admin.ensure_started() is False


def test_periodic_job_files_a_proposal_it_never_applies(service, tmp_path, monkeypatch):
    import asyncio

    from experts.knowledge.consolidate import Consolidator

    kb = service[3]
    monkeypatch.setattr(kb_admin, "CHECK_EVERY_S", 0.05)
    kb_admin.configure(str(kb), CaseStore(tmp_path / "cases"), ConsolidationConfig(periodic=True, interval_s=3600))

    async def run():
        assert kb_admin.ensure_started() and kb_admin.ensure_started()  # the second call finds it running
        for _ in range(100):
            await asyncio.sleep(0.05)
            if Consolidator(kb).proposals():
                break
        kb_admin.stop()

    asyncio.run(run())
    ps = Consolidator(kb).proposals()
    assert [(p.origin, p.status) for p in ps] == [("periodic", "pending")]
    assert KnowledgeBase.open(kb, embedder=BagEmbedder()).version == "v0001"
