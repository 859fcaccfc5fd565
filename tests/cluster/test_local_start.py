"""Starting the server's private Ray survives Ray's node-registration timeout on a busy machine."""

import pytest

from cluster import local

TIMEOUT = Exception("The current node timed out during startup. This could happen because some of the raylet "
                    "failed to startup or the GCS has become overloaded.")


def _fake_ray(monkeypatch, failures):
    import ray

    calls = {"init": 0, "shutdown": 0}

    def init(**kw):
        calls["init"] += 1
        assert kw["address"] == "local" and kw["num_cpus"] == 4
        if failures:
            raise failures.pop(0)

    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: calls.__setitem__("shutdown", calls["shutdown"] + 1))
    monkeypatch.setattr(local.time, "sleep", lambda s: None)
    return calls


def test_a_registration_timeout_starts_ray_again(monkeypatch):
    calls = _fake_ray(monkeypatch, [TIMEOUT, TIMEOUT])
    local.start_private_ray(4)
    assert calls == {"init": 3, "shutdown": 2}


def test_it_gives_up_after_the_last_attempt_and_other_errors_are_not_retried(monkeypatch):
    calls = _fake_ray(monkeypatch, [TIMEOUT, TIMEOUT, TIMEOUT])
    with pytest.raises(Exception, match="timed out during startup"):
        local.start_private_ray(4)
    assert calls["init"] == local.RAY_START_ATTEMPTS
    calls = _fake_ray(monkeypatch, [ValueError("bad num_cpus")])
    with pytest.raises(ValueError):
        local.start_private_ray(4)
    assert calls["init"] == 1
