"""The none-matched threshold: picked on scores of in-domain and out-of-domain queries (hand-computed)."""

from leaderboard.retrieval_eval import calibrate_relevance, relevance_at

IN = [0.9, 0.8, 0.7, 0.45]
OUT = [0.2, 0.3, 0.5]


def test_relevance_at_a_threshold():
    assert relevance_at(IN, OUT, 0.4) == {"in_domain_kept": 100.0, "out_of_domain_refused": 66.7,
                                          "in_domain": 4, "out_of_domain": 3}
    assert relevance_at(IN, OUT, 0.6)["in_domain_kept"] == 75.0
    assert relevance_at([], [], 0.5)["in_domain_kept"] == 0.0


def test_calibration_maximises_balanced_accuracy_and_prefers_the_lower_threshold():
    cal = calibrate_relevance(IN, OUT)
    # Between 0.3 and 0.45 every in-domain query is kept and 2 of 3 refused (83.3%); cutting above 0.5
    # refuses all three but loses 0.45 (87.5%): the best, at the midpoint between 0.5 and 0.7.
    assert cal["threshold"] == 0.6 and cal["balanced_accuracy"] == 87.5
    assert cal["in_domain_kept"] == 75.0 and cal["out_of_domain_refused"] == 100.0
    separable = calibrate_relevance([0.8, 0.9], [0.1, 0.2])
    assert separable["threshold"] == 0.5 and separable["balanced_accuracy"] == 100.0
