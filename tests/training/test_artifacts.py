"""Training output folders: every run reserves a new version; failures are kept apart; nothing is overwritten."""

from __future__ import annotations

from training.artifacts import finish, reserve_version, versions


def test_each_run_gets_the_next_version_and_a_failure_keeps_its_number(tmp_path):
    v1, p1 = reserve_version(tmp_path, "smollm2-generalist")
    (p1 / "adapter_model.safetensors").write_bytes(b"first")
    assert (v1, finish(p1, ok=True).name) == (1, "v0001")
    v2, p2 = reserve_version(tmp_path, "smollm2-generalist")
    assert (v2, finish(p2, ok=False).name) == (2, "v0002.failed")
    v3, p3 = reserve_version(tmp_path, "smollm2-generalist")
    assert v3 == 3 and p3.name == ".v0003.partial"
    assert (tmp_path / "smollm2-generalist" / "v0001" / "adapter_model.safetensors").read_bytes() == b"first"
    assert [p.name for p in versions(tmp_path, "smollm2-generalist")] == ["v0001"]
