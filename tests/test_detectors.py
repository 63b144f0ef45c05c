from dataclasses import dataclass

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from stages import detect
from stages.detectors import DETECTORS, build
from stages.params import DetectParams, KnnParams

FEATURE_DIM = 8
LOGIT_DETECTORS = ("msp", "energy")
PIXEL_DETECTORS = ("off_grid", "ink")


@dataclass(frozen=True)
class Problem:
    """Labelled normal fit data, a mixed scored set, and more normal data for a null check."""

    fit: np.ndarray
    fit_labels: np.ndarray
    scored: np.ndarray
    is_anomaly: np.ndarray
    more_normal: np.ndarray


def features(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Three classes, each a unit-spread cluster five units out along its own axis."""
    labels = rng.integers(0, 3, count)
    return 5 * np.eye(FEATURE_DIM)[labels] + rng.standard_normal((count, FEATURE_DIM)), labels


def shifted_cluster(count: int, rng: np.random.Generator) -> np.ndarray:
    return 6 + rng.standard_normal((count, FEATURE_DIM))


def peaked_logits(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, 10, count)
    return rng.standard_normal((count, 10)) + 8 * np.eye(10)[labels], labels


def flat_logits(count: int, rng: np.random.Generator) -> np.ndarray:
    return 0.3 * rng.standard_normal((count, 10))


def grid_images(count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    raw = rng.integers(0, 256, (count, 784)) * (rng.random((count, 784)) < 0.2)
    return (raw / 255).astype(np.float32), rng.integers(0, 10, count)


def off_grid_images(count: int, rng: np.random.Generator) -> np.ndarray:
    images, _ = grid_images(count, rng)
    nudged = rng.random(images.shape) < 0.3
    return (images + nudged * rng.uniform(0.1, 0.4, images.shape) / 255).astype(np.float32)


def dark_images(count: int, rng: np.random.Generator) -> np.ndarray:
    images, _ = grid_images(count, rng)
    return (np.round(images * 255 * 0.02) / 255).astype(np.float32)


def problem(name: str, normal_count: int = 1000, anomaly_count: int = 100) -> Problem:
    rng = np.random.default_rng(0)
    if name in LOGIT_DETECTORS:
        normal, anomalies = peaked_logits, flat_logits
    elif name == "off_grid":
        normal, anomalies = grid_images, off_grid_images
    elif name == "ink":
        normal, anomalies = grid_images, dark_images
    else:
        normal, anomalies = features, shifted_cluster
    fit, fit_labels = normal(normal_count, rng)
    scored_normal, _ = normal(normal_count, rng)
    more_normal, _ = normal(2 * normal_count, rng)
    return Problem(fit, fit_labels, np.vstack([scored_normal, anomalies(anomaly_count, rng)]),
                   np.r_[np.zeros(normal_count, bool), np.ones(anomaly_count, bool)],
                   more_normal)


def fitted(name: str, data: np.ndarray, labels: np.ndarray, **overrides):
    detector = build(name, {**DetectParams().settings(name), **overrides}, seed=0)
    return detector.fit(data, labels if DETECTORS[name].fits_on_train else None)


@pytest.fixture(scope="module", params=sorted(DETECTORS))
def fitted_on_normal(request):
    name = request.param
    data = problem(name)
    return name, data, fitted(name, data.fit, data.fit_labels)


def test_every_detector_of_the_params_model_is_registered():
    names = DetectParams.model_fields["detectors"].annotation.__args__[0].__args__
    assert set(names) == set(DETECTORS)


def test_separable_anomalies_score_higher(fitted_on_normal):
    name, data, detector = fitted_on_normal
    scores = np.asarray(detector.decision_function(data.scored))
    assert scores.shape == (len(data.scored),)
    assert np.isfinite(scores).all()
    assert roc_auc_score(data.is_anomaly, scores) > 0.95, name


def test_normal_points_split_at_random_score_like_chance(fitted_on_normal):
    name, data, detector = fitted_on_normal
    scores = np.asarray(detector.decision_function(data.more_normal))
    pseudo_anomaly = np.random.default_rng(1).random(len(scores)) < 0.5
    assert 0.4 < roc_auc_score(pseudo_anomaly, scores) < 0.6, name


@pytest.mark.parametrize("name", sorted(DETECTORS))
@pytest.mark.parametrize("contamination", [0.05, 0.2])
def test_threshold_flags_the_contamination_share_of_the_fit_data(name, contamination):
    data = problem(name, normal_count=400, anomaly_count=100)
    pool = np.vstack([data.fit, data.scored[data.is_anomaly]])
    pool_labels = np.r_[data.fit_labels, np.zeros(100, int)]
    detector = fitted(name, pool, pool_labels, contamination=contamination)
    flagged = np.mean(np.asarray(detector.decision_scores_) > detector.threshold_)
    assert flagged == pytest.approx(contamination, abs=0.02)
    assert len(detector.decision_scores_) == len(pool)


@pytest.mark.parametrize("name", ["iforest", "pca"])
def test_seeded_detectors_repeat_their_scores(name):
    data = problem(name)
    first = fitted(name, data.fit, data.fit_labels).decision_function(data.scored)
    again = fitted(name, data.fit, data.fit_labels).decision_function(data.scored)
    np.testing.assert_array_equal(first, again)


def test_mahalanobis_needs_labels():
    data = problem("mahalanobis")
    detector = build("mahalanobis", DetectParams().settings("mahalanobis"), seed=0)
    with pytest.raises(ValueError, match="labels"):
        detector.fit(data.fit)


def test_deep_knn_fit_scores_skip_the_point_itself():
    rng = np.random.default_rng(3)
    fit, _ = features(300, rng)
    detector = build("deep_knn", {"k": 1, "contamination": 0.1}, seed=0).fit(fit)
    unit = fit / np.linalg.norm(fit, axis=1, keepdims=True)
    distances = np.linalg.norm(unit[:, None, :] - unit[None, :, :], axis=2)
    np.fill_diagonal(distances, np.inf)
    np.testing.assert_allclose(detector.decision_scores_, distances.min(axis=1), rtol=1e-6)
    assert np.all(detector.decision_scores_ > 0)


def test_pca_ignores_constant_columns():
    rng = np.random.default_rng(4)
    fit = np.hstack([rng.standard_normal((300, 5)), np.zeros((300, 3))])
    scored = np.hstack([rng.standard_normal((50, 5)), np.ones((50, 3))])
    detector = build("pca", DetectParams().settings("pca"), seed=0).fit(fit)
    assert np.isfinite(detector.decision_function(scored)).all()
    assert np.isfinite(detector.decision_scores_).all()


def test_detectors_apply_only_where_they_make_sense():
    assert DETECTORS["msp"].applies_to("logits") and not DETECTORS["msp"].applies_to("dense")
    assert DETECTORS["energy"].applies_to("logits") and not DETECTORS["energy"].applies_to("pixels")
    assert DETECTORS["off_grid"].applies_to("pixels")
    assert not DETECTORS["off_grid"].applies_to("dense_1")
    assert DETECTORS["ink"].applies_to("pixels") and not DETECTORS["ink"].applies_to("logits")
    assert all(DETECTORS[name].applies_to("dense+dense_1")
               for name in DETECTORS if name not in LOGIT_DETECTORS + PIXEL_DETECTORS)


class TestCombine:
    def test_one_part_passes_through_unchanged(self):
        rng = np.random.default_rng(0)
        fit, score = rng.standard_normal((20, 3)) * 50, rng.standard_normal((7, 3))
        combined_fit, combined_score = detect.combine([fit], [score])
        np.testing.assert_array_equal(combined_fit, fit)
        np.testing.assert_array_equal(combined_score, score)

    def test_several_parts_are_standardised_with_fit_statistics(self):
        rng = np.random.default_rng(1)
        fit_parts = [rng.normal(100, 30, (50, 4)), rng.normal(-2, 0.01, (50, 2))]
        score_parts = [rng.normal(0, 1, (9, 4)), rng.normal(0, 1, (9, 2))]
        combined_fit, combined_score = detect.combine(fit_parts, score_parts)

        assert combined_fit.shape == (50, 6) and combined_score.shape == (9, 6)
        np.testing.assert_allclose(combined_fit.mean(axis=0), 0, atol=1e-9)
        np.testing.assert_allclose(combined_fit.std(axis=0), 1, rtol=1e-9)
        fit_all, score_all = np.hstack(fit_parts), np.hstack(score_parts)
        np.testing.assert_allclose(
            combined_score, (score_all - fit_all.mean(axis=0)) / fit_all.std(axis=0))

    def test_constant_fit_columns_are_centred_not_divided_by_zero(self):
        fit_parts = [np.full((10, 2), 3.0), np.arange(10.0).reshape(10, 1)]
        score_parts = [np.full((4, 2), 5.0), np.zeros((4, 1))]
        combined_fit, combined_score = detect.combine(fit_parts, score_parts)
        np.testing.assert_array_equal(combined_fit[:, :2], 0)
        np.testing.assert_array_equal(combined_score[:, :2], 2)
        assert np.isfinite(combined_score).all()


def split_of(count: int) -> detect.Split:
    rows = np.arange(count)
    return detect.Split({"pixels": rows[:, None] * np.ones((1, 3)), "dense": rows[:, None] * 2.0},
                        rows % 10, rows % 7 == 0)


class TestCappedRows:
    def test_small_fit_set_is_kept_whole(self):
        np.testing.assert_array_equal(detect.capped_rows(50, 50, seed=0), np.arange(50))

    def test_keeps_a_seeded_subsample_of_rows_in_order(self):
        kept = detect.capped_rows(1000, 100, seed=5)

        assert len(kept) == 100 and len(set(kept)) == 100
        assert np.all(np.diff(kept) > 0)
        np.testing.assert_array_equal(detect.capped_rows(1000, 100, seed=5), kept)
        assert not np.array_equal(detect.capped_rows(1000, 100, seed=6), kept)
        assert kept.min() < 200 and kept.max() > 800

    def test_split_rows_follow_the_kept_rows(self):
        split = split_of(1000)
        kept = detect.capped_rows(1000, 100, seed=5)
        capped = split.rows(kept)
        np.testing.assert_array_equal(capped.parts["dense"][:, 0], kept * 2)
        np.testing.assert_array_equal(capped.labels, kept % 10)
        np.testing.assert_array_equal(capped.is_anomaly, kept % 7 == 0)


def knn_outlier_scores(max_fit_samples: int) -> np.ndarray:
    rng = np.random.default_rng(2)
    count = 400
    test, train = (detect.Split({"pixels": rng.standard_normal((count, 4))},
                                rng.integers(0, 10, count), np.zeros(count, bool))
                   for _ in range(2))
    params = DetectParams(detectors=["knn"], max_fit_samples=max_fit_samples,
                          knn=KnnParams(n_neighbors=1))
    scores, _ = detect.score_pair("pixels", "knn", params, 0, train, test)
    return scores


def test_outlier_scores_of_an_uncapped_pool_do_not_count_themselves():
    assert np.all(knn_outlier_scores(max_fit_samples=400) > 0)


def test_outlier_scores_of_capped_in_images_do_not_count_themselves():
    assert np.all(knn_outlier_scores(max_fit_samples=200) > 0)


def test_pca_scores_stay_finite_on_rank_deficient_features():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((400, 10)) * 3
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    softmax[:, 0] = 0.5  # a constant column as well: a dead unit
    detector = build("pca", DetectParams().settings("pca"), seed=0).fit(softmax)
    assert np.isfinite(detector.decision_function(softmax)).all()
    assert np.isfinite(detector.decision_scores_).all()
