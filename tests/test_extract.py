import json
import time
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from stages import extract, network
from stages.errors import StageError
from stages.params import TrainParams
from stages.tables import (ACTIVATION_KEYS, CORRUPTED_SCHEMA, pixel_column, read_table,
                           unit_names, write_table)

import keras  # noqa: E402  (after stages.network, which sets the backend and TF flags)

IMAGE_COUNT = 45
BATCH_SIZE = 16


@pytest.fixture(scope="module")
def model():
    network.configure(0)
    return network.build_model(TrainParams(epochs=1, conv_filters=4, dense_units=[8]))


@pytest.fixture(scope="module")
def corrupted():
    rng = np.random.default_rng(0)
    levels = rng.choice([0, 0, 0, 2], IMAGE_COUNT).astype(np.uint8)
    pixels = (rng.integers(0, 256, (IMAGE_COUNT, 784)) / 255).astype(np.float32)
    return pa.Table.from_arrays([
        pa.array(np.arange(500, 500 + IMAGE_COUNT, dtype=np.int64)),
        pa.array(["train"] * 30 + ["test"] * 15, pa.string()),
        pa.array(rng.integers(0, 10, IMAGE_COUNT).astype(np.uint8)),
        pixel_column(pixels), pa.array(levels > 0), pa.array(levels),
    ], schema=CORRUPTED_SCHEMA)


def batches_of(table: pa.Table, size: int):
    for start in range(0, table.num_rows, size):
        rows = table.slice(start, size)
        pixels = np.stack(rows.column("pixels").to_numpy(zero_copy_only=False))
        yield rows.drop_columns(["pixels"]), pixels.astype(np.float32)


def images_of(table: pa.Table) -> np.ndarray:
    return np.stack(table.column("pixels").to_numpy(zero_copy_only=False)).reshape(-1, 28, 28, 1)


def direct_outputs(model, layer: str, images: np.ndarray) -> np.ndarray:
    probe = keras.Model(model.inputs, model.get_layer(layer).output)
    return np.asarray(probe(images, training=False))


@pytest.fixture(scope="module")
def recorded(model, corrupted, tmp_path_factory):
    folder = tmp_path_factory.mktemp("activations")
    probe = network.LayerProbe(model, ["conv2d", "dense", "logits"])
    written = extract.record(probe, batches_of(corrupted, BATCH_SIZE), folder)
    return folder, written


def test_the_test_model_has_the_article_layer_names(model):
    names = [layer.name for layer in model.layers]
    assert names == ["pixels", "conv2d", "flatten", "dense", "logits", "dense_1"]
    assert model.get_layer("dense").units == 8
    assert model.get_layer("dense_1").output.shape[-1] == 10


class TestRecord:
    def test_reports_the_rows_written_per_layer(self, recorded):
        _, written = recorded
        assert written == {"conv2d": IMAGE_COUNT, "dense": IMAGE_COUNT, "logits": IMAGE_COUNT}

    @pytest.mark.parametrize("layer, units", [("dense", 8), ("logits", 10)])
    def test_dense_layers_equal_a_direct_call(self, recorded, model, corrupted, layer, units):
        folder, _ = recorded
        table = read_table(folder / f"{layer}.parquet", ACTIVATION_KEYS)
        assert table.schema.names == ACTIVATION_KEYS.names + unit_names(units)
        expected = direct_outputs(model, layer, images_of(corrupted))
        actual = np.column_stack([table.column(name).to_numpy() for name in unit_names(units)])
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
        assert np.ptp(expected, axis=0).max() > 0

    def test_conv_layer_is_averaged_per_channel(self, recorded, model, corrupted):
        folder, _ = recorded
        table = read_table(folder / "conv2d.parquet", ACTIVATION_KEYS)
        expected = direct_outputs(model, "conv2d", images_of(corrupted)).mean(axis=(1, 2))
        assert expected.shape == (IMAGE_COUNT, 4)
        actual = np.column_stack([table.column(name).to_numpy() for name in unit_names(4)])
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)

    @pytest.mark.parametrize("layer", ["conv2d", "dense", "logits"])
    def test_keys_follow_the_images_row_for_row(self, recorded, corrupted, layer):
        folder, _ = recorded
        table = read_table(folder / f"{layer}.parquet", ACTIVATION_KEYS)
        for field in ACTIVATION_KEYS:
            assert table.schema.field(field.name).type.equals(field.type)
            assert table.column(field.name).to_pylist() == corrupted.column(field.name).to_pylist()
        units = [field for field in table.schema if field.name not in ACTIVATION_KEYS.names]
        assert all(field.type == pa.float32() for field in units)

    def test_softmax_layer_rows_are_probabilities(self, model, corrupted, tmp_path):
        probe = network.LayerProbe(model, ["dense_1", "logits"])
        extract.record(probe, batches_of(corrupted, BATCH_SIZE), tmp_path)
        table = read_table(tmp_path / "dense_1.parquet", ACTIVATION_KEYS)
        probabilities = np.column_stack([table.column(name).to_numpy()
                                         for name in unit_names(10)])
        np.testing.assert_allclose(probabilities.sum(axis=1), 1, rtol=1e-5)

    def test_batch_size_does_not_change_the_values(self, model, corrupted, tmp_path):
        whole, split = tmp_path / "whole", tmp_path / "split"
        whole.mkdir(), split.mkdir()
        probe = network.LayerProbe(model, ["dense", "logits"])
        extract.record(probe, batches_of(corrupted, IMAGE_COUNT), whole)
        extract.record(probe, batches_of(corrupted, 7), split)
        one = read_table(whole / "dense.parquet", ACTIVATION_KEYS)
        many = read_table(split / "dense.parquet", ACTIVATION_KEYS)
        for name in unit_names(8):
            np.testing.assert_allclose(one.column(name).to_numpy(),
                                       many.column(name).to_numpy(), rtol=1e-5, atol=1e-6)

    def test_a_single_layer_is_recorded(self, model, corrupted, tmp_path):
        probe = network.LayerProbe(model, ["logits"])
        written = extract.record(probe, batches_of(corrupted, BATCH_SIZE), tmp_path)
        assert written == {"logits": IMAGE_COUNT}
        table = read_table(tmp_path / "logits.parquet", ACTIVATION_KEYS)
        assert table.schema.names == ACTIVATION_KEYS.names + unit_names(10)
        assert table.num_rows == IMAGE_COUNT

    def test_each_batch_is_one_row_group(self, recorded):
        folder, _ = recorded
        groups = pq.ParquetFile(folder / "dense.parquet").metadata.num_row_groups
        assert groups == -(-IMAGE_COUNT // BATCH_SIZE)


class TestLayerProbe:
    def test_returns_every_layer_as_an_array(self, model, corrupted):
        _, pixels = next(batches_of(corrupted, BATCH_SIZE))
        outputs = network.LayerProbe(model, ["dense", "dense_1"])(pixels)
        assert set(outputs) == {"dense", "dense_1"}
        assert outputs["dense"].shape == (BATCH_SIZE, 8)
        assert outputs["dense_1"].shape == (BATCH_SIZE, 10)

    def test_batches_of_any_size_share_one_trace(self, model, corrupted):
        probe = network.LayerProbe(model, ["dense"])
        for _, pixels in batches_of(corrupted, 7):  # 7, 7, ... and a last batch of 3
            probe(pixels)
        assert probe.forward.experimental_get_tracing_count() == 1

    def test_chunks_give_the_values_of_one_pass(self, model, corrupted):
        _, pixels = next(batches_of(corrupted, IMAGE_COUNT))
        whole = network.LayerProbe(model, ["dense", "logits"], chunk_size=IMAGE_COUNT)(pixels)
        chunked = network.LayerProbe(model, ["dense", "logits"], chunk_size=4)(pixels)
        for name in ("dense", "logits"):
            assert chunked[name].shape == whole[name].shape
            np.testing.assert_allclose(chunked[name], whole[name], rtol=1e-5, atol=1e-6)


class TestAsUnits:
    def test_four_dimensional_maps_are_averaged_over_positions(self):
        maps = np.arange(2 * 3 * 3 * 5, dtype=np.float64).reshape(2, 3, 3, 5)
        units = extract.as_units(maps)
        assert units.dtype == np.float32
        np.testing.assert_allclose(units, maps.mean(axis=(1, 2)))

    def test_other_shapes_are_flattened_per_row(self):
        values = np.arange(24).reshape(2, 3, 4)
        np.testing.assert_array_equal(extract.as_units(values), values.reshape(2, 12))


class TestLayersToRecord:
    AVAILABLE = ["pixels", "conv2d", "flatten", "dense", "logits", "dense_1"]

    def test_unknown_layer_names_the_model_layers(self):
        with pytest.raises(StageError) as error:
            extract.layers_to_record(["dense", "dense_9"], self.AVAILABLE)
        message = str(error.value)
        assert "'dense_9'" in message
        assert "extract.layers" in message
        assert all(name in message for name in self.AVAILABLE)
        assert "\n" not in message

    @pytest.mark.parametrize("requested, expected", [
        (["dense", "dense_1"], ["dense", "dense_1", "logits"]),
        (["conv2d"], ["conv2d", "logits"]),
        (["logits", "dense"], ["logits", "dense"]),
    ])
    def test_logits_are_always_recorded_once(self, requested, expected):
        assert extract.layers_to_record(requested, self.AVAILABLE) == expected


class TestSaveAndLoad:
    def test_saving_twice_gives_identical_bytes(self, model, tmp_path, monkeypatch):
        first, second = tmp_path / "first.keras", tmp_path / "second.keras"
        network.save_model(model, first)
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda: real_time() + 3 * 86400)
        network.save_model(model, second)
        monkeypatch.undo()
        assert first.read_bytes() == second.read_bytes()
        with zipfile.ZipFile(first) as archive:
            assert "date_saved" not in json.loads(archive.read("metadata.json"))
            assert all(info.date_time == (1980, 1, 1, 0, 0, 0) for info in archive.infolist())

    def test_a_saved_model_loads_back_with_the_same_outputs(self, model, corrupted, tmp_path):
        path = tmp_path / "model.keras"
        network.save_model(model, path)
        loaded = network.load_model(path)
        assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
        for saved, restored in zip(model.get_weights(), loaded.get_weights()):
            np.testing.assert_array_equal(saved, restored)
        images = images_of(corrupted)
        np.testing.assert_allclose(np.asarray(loaded(images)), np.asarray(model(images)),
                                   rtol=1e-6, atol=1e-7)

    def test_save_leaves_no_temporary_files(self, model, tmp_path):
        network.save_model(model, tmp_path / "model" / "model.keras")
        assert [path.name for path in (tmp_path / "model").iterdir()] == ["model.keras"]

    @pytest.mark.parametrize("name", ["model.keras", "model.txt"])
    def test_a_text_file_is_refused_by_name(self, tmp_path, name):
        path = tmp_path / name
        path.write_text("not a model\n")
        with pytest.raises(StageError) as error:
            network.load_model(path)
        assert str(path) in str(error.value)
        assert "\n" not in str(error.value)

    def test_a_missing_model_points_to_the_train_stage(self, tmp_path):
        with pytest.raises(StageError, match="train"):
            network.load_model(tmp_path / "model.keras")


def test_main_writes_every_layer_and_logits(model, corrupted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"extract": {"layers": ["conv2d", "dense"], "batch_size": 10}}))
    write_table(corrupted.filter(pa.array([split == "train" for split in
                                           corrupted.column("split").to_pylist()])),
                tmp_path / "data/corrupted/train.parquet")
    write_table(corrupted.filter(pa.array([split == "test" for split in
                                           corrupted.column("split").to_pylist()])),
                tmp_path / "data/corrupted/test.parquet")
    network.save_model(model, tmp_path / "data/model/model.keras")

    extract.main()

    folder = tmp_path / "data/activations"
    assert sorted(path.name for path in folder.iterdir()) == [
        "conv2d.parquet", "dense.parquet", "logits.parquet"]
    logits = read_table(folder / "logits.parquet", ACTIVATION_KEYS)
    assert logits.column("sample_id").to_pylist() == corrupted.column("sample_id").to_pylist()


def test_main_with_an_unknown_layer_writes_nothing(model, corrupted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"extract": {"layers": ["dense_7"]}}))
    for split in ("train", "test"):
        write_table(corrupted, tmp_path / f"data/corrupted/{split}.parquet")
    network.save_model(model, tmp_path / "data/model/model.keras")
    with pytest.raises(StageError, match="dense_7"):
        extract.main()
    assert not (tmp_path / "data/activations").exists()
