"""extract: record the activations of chosen layers for every image, in batches.

Reads:  data/corrupted/{train,test}.parquet, data/model/model.keras
Params: extract.*
Writes: data/activations/<layer>.parquet for each layer in extract.layers, plus
        data/activations/logits.parquet (the pre-softmax outputs: the energy score and the
        classifier's accuracy are computed from them)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages import params as params_module
from stages.errors import StageError, run
from stages.tables import (ACTIVATION_KEYS, CORRUPTED_SCHEMA, LOGITS, SPLITS, atomic_directory,
                           open_table, pixel_matrix, unit_names)

INPUT = Path("data/corrupted")
MODEL = Path("data/model/model.keras")
OUTPUT = Path("data/activations")


def layers_to_record(requested: list[str], available: list[str]) -> list[str]:
    """The requested layers plus `logits`, checked against the model's layer names."""
    for name in requested:
        if name not in available:
            raise StageError(f"extract.layers: unknown layer {name!r}; the model's layers are "
                             + ", ".join(available))
    return requested + [LOGITS] * (LOGITS not in requested)


def as_units(activations: np.ndarray) -> np.ndarray:
    """One row per image: convolution maps are averaged over positions (one column per
    channel); any other shape is flattened."""
    if activations.ndim == 4:
        activations = activations.mean(axis=(1, 2))
    return activations.reshape(len(activations), -1).astype(np.float32)


def activation_batch(keys: pa.Table, units: np.ndarray) -> pa.Table:
    """Key columns of a batch of images beside their unit columns n000, n001, ..."""
    columns = [keys.column(name) for name in ACTIVATION_KEYS.names]
    columns += [pa.array(column) for column in units.T]
    return pa.Table.from_arrays(columns, names=ACTIVATION_KEYS.names + unit_names(units.shape[1]))


def record(probe, batches, folder: Path) -> dict[str, int]:
    """Pass batches of (keys, pixel rows) through `probe` (pixel rows -> {layer: outputs},
    see network.LayerProbe) and append each layer's rows to folder/<layer>.parquet, one
    row group per batch; return the rows written per layer."""
    writers: dict[str, pq.ParquetWriter] = {}
    rows: dict[str, int] = {}
    try:
        for keys, pixels in batches:
            for name, output in probe(pixels).items():
                table = activation_batch(keys, as_units(output))
                if name not in writers:
                    # Dictionary encoding only pays on the keys: unit values rarely repeat.
                    writers[name] = pq.ParquetWriter(
                        folder / f"{name}.parquet", table.schema, compression="zstd",
                        use_dictionary=ACTIVATION_KEYS.names)
                writers[name].write_table(table)
                rows[name] = rows.get(name, 0) + table.num_rows
    finally:
        for writer in writers.values():
            writer.close()
    return rows


def image_batches(files: dict[Path, pq.ParquetFile], batch_size: int):
    """Stream (keys, pixels) batches from corrupted tables without loading them whole."""
    for path, file in files.items():
        batches = file.iter_batches(batch_size=batch_size)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (pa.ArrowInvalid, OSError) as error:
                raise StageError(f"{path}: unreadable Parquet data ({error})") from None
            table = pa.Table.from_batches([batch])
            yield table.drop_columns(["pixels"]), pixel_matrix(table)


def main() -> None:
    params = params_module.load("extract")
    paths = [INPUT / f"{split}.parquet" for split in SPLITS]
    files = {path: open_table(path, CORRUPTED_SCHEMA) for path in paths}

    from stages import network

    network.limit_threads()
    model = network.load_model(MODEL)
    layers = layers_to_record(params.extract.layers, [layer.name for layer in model.layers])
    probe = network.LayerProbe(model, layers)
    with atomic_directory(OUTPUT) as folder:
        written = record(probe, image_batches(files, params.extract.batch_size), folder)
    for name, rows in written.items():
        print(f"extract: {name}: {rows} rows -> {OUTPUT / name}.parquet")


if __name__ == "__main__":
    run(main)
