import numpy as np

from leaderboard.classifier_eval import CachedEmbedder


class CountingEmbedder:
    dim = 3

    def __init__(self):
        self.seen: list[str] = []
        self.progress: list[bool] = []

    def encode(self, texts, progress=False, role="query"):
        self.seen += texts
        self.progress.append(progress)
        return np.array([[len(t), t.count("a"), 1.0] for t in texts], dtype=np.float32)


class RoleEmbedder(CountingEmbedder):
    """A stand-in with query/passage prefixes: the role changes the vector."""

    name = "e5-small"
    uses_roles = True

    def encode(self, texts, progress=False, role="query"):
        v = super().encode(texts, progress)
        v[:, 2] = 1.0 if role == "query" else -1.0
        return v


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


def test_cached_vectors_never_mix_embedders_or_roles(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWROUTER_HOME", str(tmp_path / "home"))
    minilm, e5 = CountingEmbedder(), RoleEmbedder()
    minilm.name = "minilm"
    a, b = CachedEmbedder(minilm), CachedEmbedder(e5)
    assert a.path != b.path and b.path.name == "embeddings-e5-small.npz"
    q, p = b.encode(["disk full"], role="query"), b.encode(["disk full"], role="passage")
    assert q[0, 2] == 1.0 and p[0, 2] == -1.0 and len(e5.seen) == 2  # one vector per role
    b.save()
    # Another embedder reading the same file starts empty rather than reusing e5's vectors.
    other = CachedEmbedder(CountingEmbedder(), b.path)
    other.encode(["disk full"])
    assert other.embedder.seen == ["disk full"]


def test_evaluate_modes_reports_the_artefact_the_gate_and_the_llm_decided_tickets(tmp_path, monkeypatch,
                                                                                   fake_engine_cls):
    from leaderboard.classifier_eval import EvalData, eval_config, evaluate_modes
    from tests.router.test_fusion import TASKS, HashEmbedder, _examples

    monkeypatch.setenv("FLOWROUTER_HOME", str(tmp_path / "home"))
    ex = _examples(n_per_task=15, noisy=5)
    train, test = ex[::2] + ex[1::4], ex[3::4]
    truth = {e.text: e.task for e in ex}

    def oracle(prompt, labels):
        task = truth.get(prompt.rsplit("Ticket: ", 1)[1].split("</u>")[0].strip(), "network")
        return {lab: 0.97 if lab == " " + task else 0.01 for lab in labels}

    data = EvalData("toy", "dev", TASKS, train, test)
    cfg = eval_config({"max_llm_share": 0.5, "top_k": 6})
    emb = CachedEmbedder(HashEmbedder(), tmp_path / "emb.npz", progress=False)
    engine = fake_engine_cls(label_fn=oracle)
    report = evaluate_modes(data, ["retrieval", "llm+retrieval", "cascade"], cfg, embedder=emb, engine=engine,
                            progress=False, plots=False)
    assert report["artefact"]["version"] and abs(sum(report["artefact"]["weights"].values()) - 1) < 1e-9
    assert "threshold" in report["gate"] and report["gate"]["dev_examples"] == len(train)
    v = report["modes"]["retrieval"]["vs_baseline"]
    assert v["wins"] >= 0 and v["losses"] >= 0 and 0 <= v["p_two_sided"] <= 1
    d = report["modes"]["llm+retrieval"]["llm_decided"]
    assert d["n"] == len(test) and d["retrieval_accuracy"] == report["modes"]["retrieval"]["accuracy"]
    cascade = report["modes"]["cascade"]
    if cascade["llm_share"] > 0:
        assert cascade["llm_decided"]["n"] == round(cascade["llm_share"] * len(test))
    # The LLM answers persist: a second run asks the engine nothing new.
    engine2 = fake_engine_cls(label_fn=oracle)
    evaluate_modes(data, ["llm+retrieval"], cfg, embedder=emb, engine=engine2, progress=False, plots=False,
                   baseline=False)
    assert not [c for c in engine2.calls if c[0] == "label_probs"]


def _write_labeled(tmp_path, examples):
    import csv
    import json

    train, test = examples[::2], examples[1::2]
    with (tmp_path / "train.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ticket", "queue"])
        w.writerows([(e.text, e.task) for e in train])
    (tmp_path / "test.jsonl").write_text("".join(json.dumps({"ticket": e.text, "queue": e.task}) + "\n" for e in test))
    return tmp_path / "train.csv", tmp_path / "test.jsonl"


def test_own_labeled_files_are_read_with_their_columns_and_unseen_test_labels_refused(tmp_path):
    import pytest

    from leaderboard.classifier_eval import load_eval_files
    from router.importers import LabeledDataError
    from tests.router.test_fusion import _examples

    train, test = _write_labeled(tmp_path, _examples(n_per_task=6))
    data = load_eval_files(train, test, text_col="ticket", task_col="queue")
    assert len(data.train) == len(data.test) > 0 and data.split == "file"
    assert [t.name for t in data.tasks] == sorted({q.task for q in data.train})
    with (tmp_path / "test.jsonl").open("a") as fh:
        fh.write('{"ticket": "the coffee machine is empty", "queue": "kitchen"}\n')
    with pytest.raises(LabeledDataError, match="kitchen"):
        load_eval_files(train, test, text_col="ticket", task_col="queue")
    with pytest.raises(LabeledDataError, match="no column"):
        load_eval_files(train, test)  # default columns text/task are absent


def test_the_fusion_version_sees_through_the_cache_to_the_embedder(tmp_path):
    from router import fusion
    from tests.router.test_fusion import TASKS, NamedHashEmbedder, _cfg, _examples

    ex, names, cfg = _examples(), [t.name for t in TASKS], _cfg(tmp_path)
    e5 = NamedHashEmbedder("e5-small", uses_roles=True)
    wrapped = CachedEmbedder(e5, tmp_path / "e5.npz", progress=False)
    assert fusion.fusion_version(ex, names, cfg, wrapped) == fusion.fusion_version(ex, names, cfg, e5)
    assert fusion.fusion_version(ex, names, cfg, wrapped) != \
        fusion.fusion_version(ex, names, cfg, CachedEmbedder(NamedHashEmbedder("minilm"), tmp_path / "m.npz"))


def test_embedder_comes_from_the_config_the_dataset_and_the_command_line(tmp_path, monkeypatch):
    import json

    from cluster.cli import main
    from leaderboard import classifier_eval
    from tests.router.test_fusion import HashEmbedder, _examples

    assert classifier_eval.eval_config().embedder == classifier_eval.EVAL_DEFAULTS["embedder"]
    for name, own in classifier_eval.DATASET_DEFAULTS.items():
        assert classifier_eval.eval_config(dataset=name).embedder == own.get("embedder", "minilm")
    assert classifier_eval.eval_config({"embedder": "e5-small"}, dataset="it-tickets").embedder == "e5-small"

    asked = []
    monkeypatch.setenv("FLOWROUTER_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("leaderboard.classifier_eval.get_embedder", lambda name: asked.append(name) or HashEmbedder())
    train, test = _write_labeled(tmp_path, _examples(n_per_task=10))
    out = tmp_path / "eval"
    rc = main(["leaderboard", "classifier", "--train", str(train), "--test", str(test), "--text-col", "ticket",
               "--task-col", "queue", "--modes", "retrieval", "--no-llm", "--no-plots", "--quiet", "--out", str(out),
               "--embedder", "e5-small"])
    assert rc == 0 and asked == ["e5-small"]
    report = json.loads((out / "classifier_eval.json").read_text())
    assert report["config"]["embedder"] == "e5-small" and report["embedder"]["example_role"] == "query"


def test_service_settings_take_overrides_into_the_classifier_and_its_cascade():
    from core.config import load_config
    from leaderboard.classifier_eval import service_config

    base = load_config().classifier
    cfg = service_config(base, {"top_k": 5, "min_agreement": 0.9})
    assert cfg.top_k == 5 and cfg.cascade.min_agreement == 0.9
    assert cfg.model == base.model and cfg.unknown_threshold == base.unknown_threshold


def test_cli_evaluates_the_service_settings_on_own_files(tmp_path, monkeypatch, capsys):
    import json

    from cluster.cli import main
    from core.config import load_config
    from tests.router.test_fusion import HashEmbedder, _examples

    monkeypatch.setenv("FLOWROUTER_HOME", str(tmp_path / "home"))
    monkeypatch.setattr("leaderboard.classifier_eval.get_embedder", lambda name: HashEmbedder())
    train, test = _write_labeled(tmp_path, _examples(n_per_task=10))
    out = tmp_path / "eval"
    rc = main(["leaderboard", "classifier", "--train", str(train), "--test", str(test), "--text-col", "ticket",
               "--task-col", "queue", "--modes", "retrieval", "--no-llm", "--no-plots", "--quiet", "--out", str(out)])
    assert rc == 0
    report = json.loads((out / "classifier_eval.json").read_text())
    assert report["split"] == "file" and report["n_test"] == 15 and "retrieval" in report["modes"]
    assert report["config"] == load_config().classifier.model_dump(mode="json")  # what the service runs
    assert "baseline" in capsys.readouterr().out.lower()
    assert main(["leaderboard", "classifier", "--train", str(train), "--text-col", "ticket", "--task-col",
                 "queue"]) != 0  # --train without --test
