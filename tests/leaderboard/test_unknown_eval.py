"""Unknown calibration: AUROC against a hand-computed case, Youden thresholds, fixed OOD halves, the report."""

import numpy as np
import pytest

from leaderboard.unknown_eval import auroc, evaluate_unknown, halves, youden_threshold


def test_auroc_counts_pairs_and_ties_by_hand():
    neg, pos = np.array([0.1, 0.4, 0.5]), np.array([0.5, 0.8])
    # pairs (pos > neg): 0.5 beats 0.1, 0.4 and ties 0.5 (half); 0.8 beats all three -> 5.5 / 6
    assert auroc(neg, pos) == pytest.approx(5.5 / 6)
    assert auroc(np.array([0.9]), np.array([0.1])) == 0.0
    with pytest.raises(ValueError):
        auroc(np.array([]), pos)


def test_youden_threshold_separates_when_it_can():
    neg, pos = np.array([0.1, 0.2, 0.3]), np.array([0.6, 0.7])
    t = youden_threshold(neg, pos)
    assert 0.3 < t <= 0.6 and (pos >= t).all() and not (neg >= t).any()


def test_halves_are_disjoint_and_cover_the_sample():
    dev, test = halves([f"t{i}" for i in range(7)])
    assert set(dev).isdisjoint(test) and len(dev) + len(test) == 7


def test_evaluate_unknown_calibrates_on_dev_and_reports_test_rates(tmp_path, monkeypatch):
    from leaderboard.classifier_eval import EvalData, build_classifier, eval_config
    from tests.router.test_fusion import TASKS, HashEmbedder, _examples

    monkeypatch.setenv("FLOWROUTER_HOME", str(tmp_path))
    ex = _examples(n_per_task=12)
    data = EvalData("toy", "dev", TASKS, ex[::2], ex[1::2])
    clf = build_classifier(data, eval_config({"fusion": "manual", "gate": "thresholds"}), embedder=HashEmbedder(), progress=False)
    ood = [f"quarterly invoice {i} for the catering contract, purchase order {i * 7}" for i in range(20)]
    report = evaluate_unknown((clf, data), (clf, data), ood[:10], ood[10:])
    assert set(report["scores"]) == {"low_confidence", "far_neighbours"}
    r = report["scores"]["far_neighbours"]
    assert 0.0 <= r["auroc_test"] <= 1.0 and 0.0 <= r["test_in_domain_unknown_rate"] <= 1.0
    assert list(r["service_setting"]) == ["classifier.min_neighbour_similarity"]
    assert report["n"] == {"dev_in": len(data.test), "dev_ood": 10, "test_in": len(data.test), "test_ood": 10}
