import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stages.corrupt import (assign_levels, article_noise, corrupt_split, gaussian_noise,
                            salt_pepper_noise)
from stages.params import NoiseParams
from stages.tables import CORRUPTED_SCHEMA, PREPARED_SCHEMA, pixel_column, pixel_matrix

DEFAULT_SIGMAS = NoiseParams().ladders.gaussian
DEFAULT_SHARES = NoiseParams().ladders.salt_pepper
STROKE_ROWS = range(10, 16)
STROKE_COLUMN = 17


def grid_images(count: int, seed: int = 0) -> np.ndarray:
    """Images like prepared MNIST: integer 0-255 values divided by 255, many zeros."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(count, 784))
    raw[rng.random((count, 784)) < 0.6] = 0
    return (raw.astype(np.float32) / np.float32(255)).astype(np.float32)


def prepared_table(count: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    return pa.Table.from_arrays([
        pa.array(np.arange(100, 100 + count, dtype=np.int64)),
        pa.array(["test"] * count, pa.string()),
        pa.array(rng.integers(0, 10, count).astype(np.uint8)),
        pixel_column(grid_images(count, seed)),
    ], schema=PREPARED_SCHEMA)


def off_grid(values: np.ndarray) -> np.ndarray:
    raw = values.astype(np.float64) * 255
    return np.abs(raw - np.round(raw)) > 1e-4


class TestArticleNoise:
    def test_type_1_sets_zero_pixels_of_the_stroke_to_half_a_grey_level(self):
        images = grid_images(20)
        images[:, 10 * 28 + 17] = 0
        images[:5, 12 * 28 + 17] = 200 / 255
        noisy = article_noise(images, 1, np.random.default_rng(0))

        stroke = [row * 28 + STROKE_COLUMN for row in STROKE_ROWS]
        expected = images.copy()
        for index in stroke:
            expected[:, index] = np.where(images[:, index] == 0, np.float32(0.5 / 255),
                                          images[:, index])
        np.testing.assert_array_equal(noisy, expected)
        assert np.all(noisy[:, 10 * 28 + 17] == np.float32(0.5 / 255))
        assert np.all(noisy[:5, 12 * 28 + 17] == np.float32(200 / 255))

    def test_type_1_touches_only_rows_10_to_15_of_column_17(self):
        images = np.zeros((3, 784), dtype=np.float32)
        noisy = article_noise(images, 1, np.random.default_rng(0)).reshape(3, 28, 28)
        changed = np.argwhere(noisy[0] != 0)
        assert [tuple(cell) for cell in changed] == [(row, 17) for row in STROKE_ROWS]

    @pytest.mark.parametrize("level, sigma, upper", [(2, 0.01, 0.4), (3, 0.1, 2.0), (4, 0.5, 2.0)])
    def test_types_2_to_4_follow_the_article_on_raw_values(self, level, sigma, upper):
        images = grid_images(30)
        noisy = article_noise(images, level, np.random.default_rng(7))

        draws = np.random.default_rng(7).standard_normal(images.shape)
        expected = (np.clip(images.astype(np.float64) * 255 + sigma * draws, 0, upper) / 255)
        np.testing.assert_array_equal(noisy, expected.astype(np.float32))

    @pytest.mark.parametrize("level, upper", [(2, 0.4), (3, 2.0), (4, 2.0)])
    def test_types_2_to_4_make_near_black_off_grid_images(self, level, upper):
        images = grid_images(30)
        noisy = article_noise(images, level, np.random.default_rng(1))
        assert noisy.dtype == np.float32
        assert noisy.min() >= 0
        assert noisy.max() <= np.float32(upper / 255)
        unclipped = noisy[(noisy > 0) & (noisy < np.float32(upper / 255))]
        assert unclipped.size > 0.2 * noisy.size
        assert off_grid(unclipped).mean() > 0.99


class TestGaussianLadder:
    def test_noise_strength_grows_with_each_default_sigma(self):
        images = grid_images(200)
        changes = [np.abs(gaussian_noise(images, sigma, np.random.default_rng(3)) - images).mean()
                   for sigma in DEFAULT_SIGMAS]
        assert all(weaker < stronger for weaker, stronger in zip(changes, changes[1:]))
        assert changes[0] > 0

    @pytest.mark.parametrize("sigma", DEFAULT_SIGMAS)
    def test_output_stays_on_the_1_over_255_grid_within_0_and_1(self, sigma):
        noisy = gaussian_noise(grid_images(50), sigma, np.random.default_rng(4))
        assert noisy.dtype == np.float32
        assert not off_grid(noisy).any()
        assert noisy.min() >= 0 and noisy.max() <= 1


class TestSaltPepper:
    @pytest.mark.parametrize("share", DEFAULT_SHARES)
    def test_sets_about_the_requested_share_of_pixels_to_0_or_1(self, share):
        images = np.full((400, 784), 0.5, dtype=np.float32)
        noisy = salt_pepper_noise(images, share, np.random.default_rng(5))
        hit = noisy != 0.5
        assert np.isin(noisy[hit], [0.0, 1.0]).all()
        assert hit.mean() == pytest.approx(share, rel=0.1)
        assert (noisy[hit] == 1).mean() == pytest.approx(0.5, abs=0.05)
        assert noisy.dtype == np.float32


class TestAssignLevels:
    @settings(max_examples=200, deadline=None)
    @given(count=st.integers(1, 3000), fraction=st.floats(0.001, 0.999),
           level=st.sampled_from([1, 2, 3, 4]), seed=st.integers(0, 2**32 - 1))
    def test_marks_exactly_round_fraction_times_count_at_the_chosen_level(
            self, count, fraction, level, seed):
        levels = assign_levels(count, fraction, (level,), np.random.default_rng(seed))
        assert levels.dtype == np.uint8
        assert levels.shape == (count,)
        assert np.count_nonzero(levels) == round(fraction * count)
        assert set(np.unique(levels)) <= {0, level}

    @settings(max_examples=200, deadline=None)
    @given(count=st.integers(1, 3000), fraction=st.floats(0.001, 0.999),
           seed=st.integers(0, 2**32 - 1))
    def test_level_all_spreads_anomalies_evenly_over_the_four_levels(self, count, fraction, seed):
        levels = assign_levels(count, fraction, NoiseParams(level="all").levels,
                               np.random.default_rng(seed))
        assert np.count_nonzero(levels) == round(fraction * count)
        per_level = [np.count_nonzero(levels == level) for level in (1, 2, 3, 4)]
        assert max(per_level) - min(per_level) <= 1
        assert set(np.unique(levels)) <= {0, 1, 2, 3, 4}

    def test_anomalous_images_are_chosen_by_the_seed(self):
        first = assign_levels(1000, 0.1, (2,), np.random.default_rng(1))
        again = assign_levels(1000, 0.1, (2,), np.random.default_rng(1))
        other = assign_levels(1000, 0.1, (2,), np.random.default_rng(2))
        np.testing.assert_array_equal(first, again)
        assert not np.array_equal(first, other)
        assert np.flatnonzero(first).max() > 500


class TestCorruptSplit:
    @pytest.mark.parametrize("noise", [
        NoiseParams(),
        NoiseParams(kind="salt_pepper", level="all", fraction=0.3),
        NoiseParams(kind="article", level=1),
        NoiseParams(kind="article", level="all", fraction=0.5),
    ], ids=["gaussian", "salt_pepper-all", "article-1", "article-all"])
    def test_output_carries_the_corrupted_schema_and_keeps_clean_rows(self, noise):
        table = prepared_table(400)
        corrupted = corrupt_split(table, noise, np.random.default_rng(0))

        assert corrupted.schema.equals(CORRUPTED_SCHEMA)
        assert corrupted.num_rows == table.num_rows
        for name in ("sample_id", "split", "label"):
            assert corrupted.column(name).equals(table.column(name))
        levels = corrupted.column("noise_level").to_numpy()
        is_anomaly = corrupted.column("is_anomaly").to_numpy(zero_copy_only=False)
        np.testing.assert_array_equal(is_anomaly, levels > 0)
        assert is_anomaly.sum() == round(noise.fraction * table.num_rows)
        assert set(np.unique(levels[is_anomaly])) == set(noise.levels)

        before, after = pixel_matrix(table), pixel_matrix(corrupted)
        np.testing.assert_array_equal(after[~is_anomaly], before[~is_anomaly])
        changed = np.any(after != before, axis=1)
        assert changed[is_anomaly].mean() > 0.9

    def test_same_seed_gives_identical_output(self):
        table = prepared_table(300)
        noise = NoiseParams(level="all", fraction=0.2)
        first = corrupt_split(table, noise, np.random.default_rng(42))
        again = corrupt_split(table, noise, np.random.default_rng(42))
        other = corrupt_split(table, noise, np.random.default_rng(43))
        assert first.equals(again)
        assert not first.equals(other)

    def test_leaves_its_input_table_unchanged(self):
        table = prepared_table(100)
        before = pixel_matrix(table)
        corrupt_split(table, NoiseParams(fraction=0.5), np.random.default_rng(0))
        np.testing.assert_array_equal(pixel_matrix(table), before)
