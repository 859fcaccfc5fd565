"""Learned fusion (vote + head + calibrated lexical SVC), its versioned artefact, and the learned LLM gate."""

import hashlib
import json

import numpy as np
import pytest

from core.config import CascadeConfig, ClassifierConfig, ModelSpec
from core.schemas import LabeledQuery
from router import fusion
from router.classifier import DECIDED_LLM, DECIDED_RETRIEVAL, TaskClassifier
from router.examples import ExampleIndex, TaskInfo
from router.lexical import LexicalSVC


class HashEmbedder:
    """Bag of hashed words, L2-normalised: a deterministic stand-in for MiniLM."""

    dim = 32

    def encode(self, texts, **kw):
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % self.dim] += 1
        n = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(n == 0, 1, n)


WORDS = {"network": ["dns", "vpn", "packet", "router", "latency", "switch"],
         "database": ["postgres", "mysql", "replica", "query", "index", "deadlock"],
         "storage": ["disk", "volume", "nfs", "quota", "backup", "raid"]}
TASKS = [TaskInfo(t) for t in WORDS]


def _examples(n_per_task=12, noisy=0, seed=0):
    """Tickets made of their task's words; `noisy` per task borrow most words from the next task."""
    rng = np.random.default_rng(seed)
    names = list(WORDS)
    out = []
    for ti, task in enumerate(names):
        other = names[(ti + 1) % len(names)]
        for i in range(n_per_task):
            own = list(rng.choice(WORDS[task], 3))
            if i < noisy:
                own = own[:1] + list(rng.choice(WORDS[other], 3))
            out.append(LabeledQuery(id=f"{task}-{i}", text=" ".join(own + [f"host{i}"]), task=task))
    return out


def _cfg(tmp_path, **kw):
    cascade = kw.pop("cascade", CascadeConfig())
    return ClassifierConfig(model=ModelSpec(name="c", base="smollm2-135m-instruct"), top_k=6, fusion="learned",
                            fusion_folds=3, artefact=str(tmp_path / "artefact"), cascade=cascade,
                            unknown_threshold=0.0, min_neighbour_similarity=-1.0, **kw)


def test_simplex_grid_covers_the_simplex():
    grid = fusion.simplex_grid(3, 0.5)
    assert sorted(grid) == sorted([(0, 0, 1), (0, 0.5, 0.5), (0, 1, 0), (0.5, 0, 0.5), (0.5, 0.5, 0), (1, 0, 0)])
    assert len(fusion.simplex_grid(3, 0.1)) == 66 and all(abs(sum(w) - 1) < 1e-9 for w in fusion.simplex_grid(3, 0.1))


def test_fit_weights_prefers_the_component_that_is_right_out_of_fold():
    y = np.array([0, 1, 2, 0, 1, 2])
    good = np.eye(3)[y] * 0.8 + 0.2 / 3
    bad = np.eye(3)[(y + 1) % 3] * 0.6 + 0.4 / 3  # confidently wrong
    weights, fig = fusion.fit_weights({"vote": bad, "svc": good}, y, 0.1)
    assert weights["svc"] > weights["vote"] and abs(sum(weights.values()) - 1) < 1e-9
    assert fig["accuracy"] == {"vote": 0.0, "svc": 1.0} and fig["fused_accuracy"] == 1.0


def test_lexical_svc_gives_calibrated_distributions():
    ex = _examples()
    svc = LexicalSVC([e.text for e in ex], [e.task for e in ex], list(WORDS) + ["unused"])
    p = svc.probs_matrix(["postgres replica deadlock", "nfs quota full"])
    assert p.shape == (2, 4) and np.allclose(p.sum(1), 1) and (p[:, 3] == 0).all()
    assert p[0].argmax() == 1 and p[1].argmax() == 2


def test_learned_fusion_round_trip_and_stale_refit(tmp_path, monkeypatch):
    emb = HashEmbedder()
    ex = _examples(noisy=2)
    index = ExampleIndex(ex, emb)
    clf = TaskClassifier(_cfg(tmp_path), TASKS, index, None)
    folder = tmp_path / "artefact"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["version"] == clf.fusion.version and manifest["examples_sha"] == fusion.examples_sha(ex)
    assert manifest["n_examples"] == len(ex) and set(manifest["weights"]) == {"vote", "head", "svc"}
    assert abs(sum(manifest["weights"].values()) - 1) < 1e-9 and manifest["folds"] == 3
    [res] = clf.classify(["mysql query deadlock on the replica"], mode="retrieval")
    assert res.task == "database" and res.decided_by == DECIDED_RETRIEVAL
    assert abs(sum(res.distribution.values()) - 1) < 1e-6

    # Same examples and settings: the artefact is loaded, not refitted, and answers the same.
    calls = []
    real_fit = fusion.fit_fusion
    monkeypatch.setattr(fusion, "fit_fusion", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    again = TaskClassifier(_cfg(tmp_path), TASKS, ExampleIndex(ex, emb), None)
    assert calls == [] and again.fusion.weights == clf.fusion.weights
    [res2] = again.classify(["mysql query deadlock on the replica"], mode="retrieval")
    assert res2.distribution == pytest.approx(res.distribution)

    # Examples changed: the artefact in the folder is stale and is refitted (and overwritten).
    changed = ex + [LabeledQuery(id="extra", text="raid volume degraded", task="storage")]
    third = TaskClassifier(_cfg(tmp_path), TASKS, ExampleIndex(changed, emb), None)
    assert calls == [1] and third.fusion.version != clf.fusion.version
    assert json.loads((folder / "manifest.json").read_text())["examples_sha"] == fusion.examples_sha(changed)

    # A setting the fit depends on changed: refitted too.
    TaskClassifier(_cfg(tmp_path, svc_c=0.5), TASKS, ExampleIndex(changed, emb), None)
    assert calls == [1, 1]


class NamedHashEmbedder(HashEmbedder):
    """HashEmbedder under a registry name, with or without query/passage roles."""

    def __init__(self, name, uses_roles=False):
        self.name, self.uses_roles = name, uses_roles


def test_fusion_version_changes_with_the_embedder_and_a_switch_refits(tmp_path, monkeypatch):
    ex = _examples()
    cfg = _cfg(tmp_path)
    minilm, e5 = NamedHashEmbedder("minilm"), NamedHashEmbedder("e5-small", uses_roles=True)
    v_minilm = fusion.fusion_version(ex, list(WORDS), cfg, minilm)
    v_e5 = fusion.fusion_version(ex, list(WORDS), cfg, e5)
    assert v_minilm != v_e5
    # The examples' role is part of it for an embedder with prefixes, not for MiniLM.
    assert fusion.fusion_version(ex, list(WORDS), cfg, e5, "passage") != v_e5
    assert fusion.fusion_version(ex, list(WORDS), cfg, minilm, "passage") == v_minilm

    calls = []
    real_fit = fusion.fit_fusion
    monkeypatch.setattr(fusion, "fit_fusion", lambda *a, **k: calls.append(1) or real_fit(*a, **k))
    first = TaskClassifier(cfg, TASKS, ExampleIndex(ex, minilm), None)
    TaskClassifier(cfg, TASKS, ExampleIndex(ex, minilm), None)
    switched = TaskClassifier(cfg, TASKS, ExampleIndex(ex, e5), None)
    assert calls == [1, 1] and switched.fusion.version == v_e5 != first.fusion.version == v_minilm
    manifest = json.loads((tmp_path / "artefact" / "manifest.json").read_text())
    assert manifest["embedder"] == "e5-small:32:query"


def test_tampered_manifest_is_not_used(tmp_path):
    emb = HashEmbedder()
    ex = _examples()
    clf = TaskClassifier(_cfg(tmp_path), TASKS, ExampleIndex(ex, emb), None)
    folder = tmp_path / "artefact"
    m = json.loads((folder / "manifest.json").read_text())
    m["examples_sha"] = "0" * 64
    (folder / "manifest.json").write_text(json.dumps(m))
    assert fusion.load_fusion(folder, clf.fusion.version, fusion.examples_sha(ex)) is None


def test_learn_gate_opens_only_where_the_llm_gains():
    conf = np.array([0.30, 0.35, 0.40, 0.45, 0.50, 0.55])
    y = np.zeros(6, dtype=int)
    fused = np.tile([0.4, 0.6], (6, 1))  # retrieval says class 1: always wrong here
    fused[3:] = [0.6, 0.4]  # ... except on the three most confident, where it is right
    ret_ok = fused.argmax(1) == y
    llm = np.tile([0.9, 0.1], (6, 1))
    llm[3:] = [0.0, 1.0]  # the LLM is right on the first three, wrong (strongly) on the others
    gate = fusion.learn_gate(conf, ret_ok, llm, fused, y, [0.5], min_gain=2, next_conf=0.9)
    assert gate["open"] and gate["asked"] == 3 and gate["gain"] == 3
    assert 0.40 < gate["threshold"] < 0.45 and gate["llm_weight"] == 0.5
    # An LLM that never beats retrieval: the gate stays shut.
    shut = fusion.learn_gate(conf, ret_ok, np.tile([0.0, 1.0], (6, 1)), fused, y, [0.3, 0.7], min_gain=1)
    assert not shut["open"] and shut["threshold"] == 0.0 and shut["asked"] == 0
    # Gains below min_gain do not open it either.
    assert not fusion.learn_gate(conf, ret_ok, llm, fused, y, [0.5], min_gain=4)["open"]
    # Nor does a gain that could be luck: 3 wins, 0 losses has a one-sided McNemar p of 1/8.
    lucky = fusion.learn_gate(conf, ret_ok, llm, fused, y, [0.5], min_gain=2, alpha=0.05)
    assert not lucky["open"] and lucky["per_weight"]["0.5"]["p"] == 0.125
    assert fusion.learn_gate(conf, ret_ok, llm, fused, y, [0.5], min_gain=2, alpha=0.2)["p"] == 0.125
    assert fusion.mcnemar_p(np.array([5, 3, 0]), np.array([0, 3, 0])).tolist() == [1 / 32, 0.65625, 1.0]


def _oracle(examples, right: bool):
    """Fake LLM label_fn: the true task of the ticket in the prompt (right) or another task (wrong)."""
    truth = {e.text: e.task for e in examples}
    names = list(WORDS)

    def label_fn(prompt, labels):
        ticket = prompt.rsplit("Ticket: ", 1)[1].split("</u>")[0].strip()
        task = truth.get(ticket, names[0])
        if not right:
            task = names[(names.index(task) + 1) % len(names)]
        return {lab: (0.97 if lab == " " + task else 0.01) for lab in labels}

    return label_fn


def test_learned_gate_never_asks_an_llm_that_does_not_help(tmp_path, fake_engine_cls):
    ex = _examples(noisy=3)
    llm = fake_engine_cls(label_fn=_oracle(ex, right=False))
    cfg = _cfg(tmp_path, cascade=CascadeConfig(gate="learned", max_llm_share=0.5, min_gain=1))
    clf = TaskClassifier(cfg, TASKS, ExampleIndex(ex, HashEmbedder()), llm)
    assert clf.gate is not None and not clf.gate["open"] and clf.gate["llm_calls"] == len(ex) // 2
    assert (tmp_path / "artefact" / f"gate-{cfg.model.fingerprint()}.json").exists()
    before = len(llm.calls)
    results = clf.classify(["dns packet host1", "disk vpn replica host2", "query nfs latency"])
    assert len(llm.calls) == before and all(r.decided_by == DECIDED_RETRIEVAL for r in results)


def test_learned_gate_asks_a_helpful_llm_below_its_threshold(tmp_path, fake_engine_cls):
    ex = _examples(n_per_task=15, noisy=5)
    llm = fake_engine_cls(label_fn=_oracle(ex, right=True))
    cfg = _cfg(tmp_path, cascade=CascadeConfig(gate="learned", max_llm_share=0.5, min_gain=1))
    clf = TaskClassifier(cfg, TASKS, ExampleIndex(ex, HashEmbedder()), llm)
    g = clf.gate
    assert g["open"] and g["gain"] >= 1 and g["threshold"] > 0 and g["llm_right"] > g["retrieval_right"]
    assert clf.llm_weight == g["llm_weight"]
    texts = [e.text for e in ex]
    results = clf.classify(texts, mode="cascade")
    for r, (_, dist) in zip(results, zip(texts, clf.retrieve(texts)[1])):
        asked = max(dist.values()) < g["threshold"]
        assert r.decided_by == (DECIDED_LLM if asked else DECIDED_RETRIEVAL)
    # Reloaded with the artefact: the gate comes from its file, the LLM is not asked again to fit it.
    calls = len(llm.calls)
    again = TaskClassifier(cfg, TASKS, ExampleIndex(ex, HashEmbedder()), llm)
    assert again.gate == g and len(llm.calls) == calls


def test_learned_gate_needs_learned_fusion():
    with pytest.raises(ValueError, match="needs classifier.fusion: learned"):
        ClassifierConfig(model=ModelSpec(name="c", base="smollm2-135m-instruct"),
                         cascade=CascadeConfig(gate="learned"))


def test_stacker_fusion_round_trip(tmp_path):
    emb = HashEmbedder()
    ex = _examples(noisy=2)
    cfg = _cfg(tmp_path, fusion_method="stacker")
    clf = TaskClassifier(cfg, TASKS, ExampleIndex(ex, emb), None)
    assert clf.fusion.method == "stacker"
    manifest = json.loads((tmp_path / "artefact" / "manifest.json").read_text())
    assert manifest["oof"]["method"] == "stacker" and set(manifest["oof"]["cv_accuracy"]) == {"stacker"}
    [a] = clf.classify(["disk volume raid quota host3"], mode="retrieval")
    again = TaskClassifier(cfg, TASKS, ExampleIndex(ex, emb), None)
    [b] = again.classify(["disk volume raid quota host3"], mode="retrieval")
    assert again.fusion.method == "stacker" and a.task == b.task == "storage"
    assert b.distribution == pytest.approx(a.distribution) and abs(sum(b.distribution.values()) - 1) < 1e-6
    # auto keeps the method with the best held-out accuracy (ties: the simpler) and records all three.
    auto = TaskClassifier(_cfg(tmp_path, fusion_method="auto"), TASKS, ExampleIndex(ex, emb), None).fusion
    cv = auto.manifest["oof"]["cv_accuracy"]
    order = ["single", "simplex", "stacker"]
    assert set(cv) == set(order)
    assert auto.manifest["oof"]["method"] == max(order, key=lambda m: (cv[m], -order.index(m)))


def test_single_fusion_uses_the_best_component_alone(tmp_path):
    ex = _examples(noisy=2)
    f = TaskClassifier(_cfg(tmp_path, fusion_method="single"), TASKS, ExampleIndex(ex, HashEmbedder()), None).fusion
    acc = f.manifest["oof"]["accuracy"]
    top = max(acc, key=lambda c: (acc[c], -list(acc).index(c)))
    assert f.weights == {c: float(c == top) for c in acc} and f.method == "single"
    assert (f.head is None) == (top != "head") and (f.svc is None) == (top != "svc")
