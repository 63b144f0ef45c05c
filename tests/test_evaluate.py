import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sklearn.metrics import (average_precision_score, f1_score, precision_score, recall_score,
                             roc_auc_score, roc_curve)

from stages.errors import StageError
from stages.evaluate import (auroc, auroc_interval, fpr_at_tpr, pair_metrics, precision_at_n,
                             threshold_metrics)


@st.composite
def labelled_scores(draw, tied: bool = True):
    count = draw(st.integers(2, 60))
    is_anomaly = draw(hnp.arrays(bool, count))
    assume(is_anomaly.any() and not is_anomaly.all())
    if tied:
        scores = draw(hnp.arrays(np.float64, count, elements=st.integers(-3, 3)))
    else:
        scores = draw(hnp.arrays(np.float64, count, unique=True,
                                 elements=st.floats(-1e6, 1e6, allow_nan=False)))
    return is_anomaly, scores


def separated(count: int, seed: int, shift: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    is_anomaly = rng.random(count) < 0.2
    return is_anomaly, rng.standard_normal(count) + shift * is_anomaly


def brute_force_fpr_at_tpr(is_anomaly: np.ndarray, scores: np.ndarray, tpr: float) -> float:
    best = 1.0
    for threshold in np.unique(scores):
        flagged = scores >= threshold
        if flagged[is_anomaly].mean() >= tpr:
            best = min(best, flagged[~is_anomaly].mean())
    return best


class TestRankingMetrics:
    @settings(max_examples=60, deadline=None)
    @given(labelled_scores(tied=True))
    def test_auroc_equals_sklearn_with_ties(self, case):
        is_anomaly, scores = case
        assert auroc(is_anomaly, scores) == pytest.approx(roc_auc_score(is_anomaly, scores),
                                                          abs=1e-12)

    def test_auroc_counts_ties_as_half(self):
        is_anomaly = np.array([True, False, True, False])
        assert auroc(is_anomaly, np.array([1.0, 1.0, 1.0, 1.0])) == 0.5
        assert auroc(is_anomaly, np.array([2.0, 1.0, 1.0, 0.0])) == 0.875

    @settings(max_examples=40, deadline=None)
    @given(labelled_scores(tied=True))
    def test_aupr_and_aupr_normal_equal_average_precision(self, case):
        is_anomaly, scores = case
        metrics = pair_metrics(is_anomaly, scores, scores > 0, is_anomaly.astype(np.uint8),
                               resamples=0, seed=0)
        assert metrics["aupr"] == pytest.approx(average_precision_score(is_anomaly, scores))
        assert metrics["aupr_normal"] == pytest.approx(
            average_precision_score(~is_anomaly, -scores))

    @settings(max_examples=60, deadline=None)
    @given(labelled_scores(tied=False), st.sampled_from([0.5, 0.8, 0.95, 1.0]))
    def test_fpr_at_tpr_matches_roc_curve_for_distinct_scores(self, case, tpr):
        is_anomaly, scores = case
        false_positive, true_positive, _ = roc_curve(is_anomaly, scores, drop_intermediate=False)
        expected = false_positive[true_positive >= tpr].min()
        assert fpr_at_tpr(is_anomaly, scores, tpr) == pytest.approx(expected)
        assert fpr_at_tpr(is_anomaly, scores, tpr) == pytest.approx(
            brute_force_fpr_at_tpr(is_anomaly, scores, tpr))

    def test_fpr_at_tpr_with_tied_scores_uses_the_strictest_threshold(self):
        scores = np.r_[np.arange(10, 28), 5, 5, 4, 4, 3, np.full(8, -1)].astype(float)
        is_anomaly = np.r_[np.ones(18), 1, 0, 1, 0, np.zeros(9)].astype(bool)
        assert is_anomaly.sum() == 20 and (~is_anomaly).sum() == 11
        assert fpr_at_tpr(is_anomaly, scores) == pytest.approx(1 / 11)

    def test_fpr95_of_a_perfect_ranking_is_zero_and_of_a_reversed_one_is_one(self):
        is_anomaly = np.r_[np.ones(20, bool), np.zeros(80, bool)]
        scores = np.arange(100, 0, -1).astype(float)
        assert fpr_at_tpr(is_anomaly, scores) == 0.0
        assert fpr_at_tpr(is_anomaly, -scores) == 1.0

    @settings(max_examples=60, deadline=None)
    @given(labelled_scores(tied=False))
    def test_precision_at_n_equals_brute_force(self, case):
        is_anomaly, scores = case
        count = int(is_anomaly.sum())
        cutoff = sorted(scores, reverse=True)[count - 1]
        expected = np.sum(is_anomaly & (scores >= cutoff)) / count
        assert precision_at_n(is_anomaly, scores) == pytest.approx(expected)


class TestThresholdMetrics:
    @settings(max_examples=60, deadline=None)
    @given(st.integers(2, 60).flatmap(lambda count: st.tuples(hnp.arrays(bool, count),
                                                              hnp.arrays(bool, count))))
    def test_equal_sklearn(self, case):
        is_anomaly, flagged = case
        assume(is_anomaly.any() and not is_anomaly.all())
        metrics = threshold_metrics(is_anomaly, flagged)
        assert metrics["precision"] == pytest.approx(
            precision_score(is_anomaly, flagged, zero_division=0))
        assert metrics["recall"] == pytest.approx(recall_score(is_anomaly, flagged))
        assert metrics["f1"] == pytest.approx(f1_score(is_anomaly, flagged, zero_division=0))
        assert metrics["flag_rate_normal"] == pytest.approx(
            np.sum(flagged & ~is_anomaly) / np.sum(~is_anomaly))

    def test_nothing_flagged_gives_zeros(self):
        metrics = threshold_metrics(np.array([True, False, False]), np.zeros(3, bool))
        assert metrics == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "flag_rate_normal": 0.0}


class TestAurocInterval:
    def test_contains_the_point_estimate(self):
        for seed in range(5):
            is_anomaly, scores = separated(500, seed)
            low, high = auroc_interval(is_anomaly, scores, resamples=300, seed=seed)
            assert low <= auroc(is_anomaly, scores) <= high
            assert 0 <= low < high <= 1

    def test_narrows_as_the_data_grow(self):
        small = auroc_interval(*separated(200, 1), resamples=300, seed=0)
        large = auroc_interval(*separated(5000, 1), resamples=300, seed=0)
        assert large[1] - large[0] < 0.5 * (small[1] - small[0])

    def test_is_seeded(self):
        is_anomaly, scores = separated(300, 2)
        first = auroc_interval(is_anomaly, scores, resamples=100, seed=3)
        assert auroc_interval(is_anomaly, scores, resamples=100, seed=3) == first
        assert auroc_interval(is_anomaly, scores, resamples=100, seed=4) != first

    def test_covers_the_true_auroc_of_the_distributions(self):
        from scipy.stats import norm

        true_auroc = norm.cdf(1 / np.sqrt(2))
        covered = 0
        for seed in range(20):
            is_anomaly, scores = separated(400, 100 + seed)
            low, high = auroc_interval(is_anomaly, scores, resamples=300, seed=seed)
            covered += low <= true_auroc <= high
        assert covered >= 16


class TestPairMetrics:
    def test_reports_every_metric_and_no_levels_for_a_single_level(self):
        is_anomaly, scores = separated(400, 5)
        levels = np.where(is_anomaly, 3, 0).astype(np.uint8)
        metrics = pair_metrics(is_anomaly, scores, scores > 1, levels, resamples=50, seed=0)
        assert set(metrics) == {"auroc", "aupr", "aupr_normal", "fpr95", "precision_at_n",
                                "precision", "recall", "f1", "flag_rate_normal", "auroc_low",
                                "auroc_high"}
        assert metrics["auroc"] == pytest.approx(roc_auc_score(is_anomaly, scores))
        assert metrics["auroc_low"] <= metrics["auroc"] <= metrics["auroc_high"]
        assert not any(key.startswith("level_") for key in metrics)

    def test_no_bootstrap_keys_without_resamples(self):
        is_anomaly, scores = separated(100, 6)
        metrics = pair_metrics(is_anomaly, scores, scores > 1, is_anomaly.astype(np.uint8),
                               resamples=0, seed=0)
        assert "auroc_low" not in metrics and "auroc_high" not in metrics

    def test_adds_one_entry_per_level_when_anomalies_span_several(self):
        rng = np.random.default_rng(7)
        levels = np.r_[np.zeros(300), np.full(40, 1), np.full(40, 4)].astype(np.uint8)
        is_anomaly = levels > 0
        scores = rng.standard_normal(len(levels)) + 0.5 * levels
        flagged = scores > 1.5
        metrics = pair_metrics(is_anomaly, scores, flagged, levels, resamples=0, seed=0)

        assert sorted(key for key in metrics if key.startswith("level_")) == ["level_1",
                                                                              "level_4"]
        for level in (1, 4):
            rows = (levels == level) | (levels == 0)
            assert metrics[f"level_{level}"]["auroc"] == pytest.approx(
                roc_auc_score(is_anomaly[rows], scores[rows]))
            assert metrics[f"level_{level}"]["recall"] == pytest.approx(
                flagged[levels == level].mean())
        assert metrics["level_4"]["auroc"] > metrics["level_1"]["auroc"]

    @pytest.mark.parametrize("is_anomaly", [np.zeros(10, bool), np.ones(10, bool)],
                             ids=["no-anomalies", "only-anomalies"])
    def test_needs_both_classes(self, is_anomaly):
        scores = np.arange(10, dtype=float)
        with pytest.raises(StageError) as error:
            pair_metrics(is_anomaly, scores, scores > 5, is_anomaly.astype(np.uint8),
                         resamples=10, seed=0)
        assert "noise.fraction" in str(error.value)
        assert "\n" not in str(error.value)
