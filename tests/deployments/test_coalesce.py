"""Near-duplicate keys, the TTL/LRU result cache and single flight (no Ray, no models)."""

import asyncio

import pytest

from core.config import load_config
from deployments.coalesce import ResultCache, SingleFlight, cache_key, model_version, normalize


@pytest.mark.parametrize("a, b", [
    ("RE: Disk 97% full on db-01 at 10:42:07", "disk 98% FULL on db-17 at 11:02:55"),
    ("Pod api-7f9c4d8b6-x2kq9 OOMKilled", "pod api-5d6e7f8a9-x2kq9 oomkilled"),
    ("VPN down for 10.1.2.3:443", "vpn   down for 192.168.0.77:443"),
    ("fw: fwd: Backup job 1234 failed", "Backup job 99 failed!!"),
    ("request 3fa85f64-5717-4562-b3fc-2c963f66afa6 timed out", "request 0b1c2d3e-0000-4562-b3fc-2c963f66afa6 timed out"),
])
def test_near_duplicates_normalize_equal(a, b):
    assert normalize(a) == normalize(b)


@pytest.mark.parametrize("a, b", [
    ("disk full on db-01", "disk slow on db-01"),
    ("vpn down", "down vpn"),
    ("printer jam", "printer jam in the lobby"),
])
def test_different_tickets_stay_apart(a, b):
    assert normalize(a) != normalize(b)


def _key(text="disk full on db-01", **kw):
    args = dict(map_version="m1", model_version="v1", n=4, expert=None) | kw
    return cache_key(text, **args)


def test_cache_key_changes_with_map_model_n_and_expert():
    base = _key()
    assert _key("DISK full on db-77") == base
    assert _key(map_version="m2") != base
    assert _key(model_version="v2") != base
    assert _key(n=1) != base
    assert _key(expert="gemma3-infra") != base


def test_model_version_follows_expert_fingerprints(tmp_path):
    cfg = load_config()
    v0 = model_version(cfg)
    assert v0 == model_version(load_config())
    changed_prompt = cfg.model_copy(deep=True)
    changed_prompt.experts[0].system_prompt += " Be brief."
    assert changed_prompt.experts[0].fingerprint() != cfg.experts[0].fingerprint()
    assert model_version(changed_prompt) != v0
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"x" * 10)
    with_adapter = cfg.model_copy(deep=True)
    with_adapter.experts[1].adapter = str(adapter)
    v1 = model_version(with_adapter)
    assert v1 != v0
    (adapter / "adapter_model.safetensors").write_bytes(b"x" * 20)  # retrained adapter
    assert model_version(with_adapter) != v1
    scorer = cfg.model_copy(deep=True)
    scorer.scorer.model.base = "gemma3-270m"
    assert model_version(scorer) != v0
    planner = cfg.model_copy(deep=True)
    planner.planner.max_new_tokens = 64
    assert model_version(planner) != v0


def test_result_cache_ttl_and_lru():
    now = [0.0]
    c = ResultCache(max_entries=2, ttl_s=10, clock=lambda: now[0])
    c.put("a", 1)
    c.put("b", 2)
    assert c.get("a") == 1  # a is now most recent
    c.put("c", 3)  # evicts b
    assert c.get("b") is None and c.get("a") == 1 and c.get("c") == 3
    now[0] = 10.5
    assert c.get("a") is None and len(c) == 1
    s = c.stats()
    assert s["evictions"] == 1 and s["expirations"] == 1 and s["hits"] == 3 and s["misses"] == 2


def test_single_flight_shares_one_computation():
    calls = []

    async def main():
        sf = SingleFlight()

        async def work(flight):
            flight.admitted.set()
            calls.append(1)
            await asyncio.sleep(0.05)
            return "result"

        f1 = sf.start("k", "t1", work)
        assert sf.get("k") is f1
        results = await asyncio.gather(*[asyncio.shield(sf.get("k").task) for _ in range(5)])
        await asyncio.sleep(0)
        assert sf.get("k") is None  # gone once done
        return results

    assert asyncio.run(main()) == ["result"] * 5 and calls == [1]


def test_flight_refusal_reaches_waiters():
    async def main():
        sf = SingleFlight()

        async def refused(flight):
            raise RuntimeError("no slot")

        flight = sf.start("k", "t1", refused)
        with pytest.raises(RuntimeError, match="no slot"):
            await flight.wait_admitted()

    asyncio.run(main())
