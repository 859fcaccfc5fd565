import numpy as np

from leaderboard.classifier_eval import CachedEmbedder


class CountingEmbedder:
    dim = 3

    def __init__(self):
        self.seen: list[str] = []
        self.progress: list[bool] = []

    def encode(self, texts, progress=False):
        self.seen += texts
        self.progress.append(progress)
        return np.array([[len(t), t.count("a"), 1.0] for t in texts], dtype=np.float32)


def test_cached_embedder_encodes_each_text_once_and_persists(tmp_path):
    inner = CountingEmbedder()
    path = tmp_path / "emb.npz"
    cached = CachedEmbedder(inner, path)
    texts = [f"ticket {i} " + "a" * (i % 5) for i in range(1100)]  # enough to show a progress bar
    v = cached.encode(texts + texts[:3])
    assert v.shape == (1103, 3) and v.dtype == np.float32
    assert len(inner.seen) == 1100  # duplicates encoded once
    assert inner.progress == [True]
    assert np.allclose(v[1100:], v[:3])
    assert v[7].tolist() == [len(texts[7]), 2, 1.0]  # rows stay aligned with their texts
    cached.save()
    again = CachedEmbedder(CountingEmbedder(), path)
    assert np.allclose(again.encode(texts[:10]), v[:10]) and again.embedder.seen == []
