"""train: fit the article's digit classifier on the (partly anomalous) train split.

Reads:  data/corrupted/train.parquet
Params: train.*, seed
Writes: data/model/model.keras, data/model/train/ (dvclive: metrics.json, plots/metrics/)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from stages import params as params_module
from stages.errors import StageError, run
from stages.tables import CORRUPTED_SCHEMA, pixel_matrix, read_table

INPUT = Path("data/corrupted/train.parquet")
OUTPUT = Path("data/model")


def training_set(table: pa.Table, include_anomalies: bool) -> tuple[np.ndarray, np.ndarray]:
    """Images shaped (n, 28, 28, 1) and one-hot labels; anomalies dropped unless included."""
    keep = np.ones(table.num_rows, dtype=bool)
    if not include_anomalies:
        keep = ~table.column("is_anomaly").to_numpy(zero_copy_only=False)
    images = pixel_matrix(table)[keep].reshape(-1, 28, 28, 1)
    labels = np.eye(10, dtype=np.float32)[table.column("label").to_numpy()[keep]]
    return images, labels


def main() -> None:
    params = params_module.load("train", "seed")
    images, labels = training_set(read_table(INPUT, CORRUPTED_SCHEMA),
                                  params.train.include_anomalies)
    if len(images) == 0:
        raise StageError(f"{INPUT}: no images to train on")

    from stages import network  # first: it quiets TensorFlow's start-up logging

    from dvclive import Live
    from dvclive.keras import DVCLiveCallback

    network.configure(params.seed)
    model = network.build_model(params.train)
    print(f"train: {len(images)} images, {params.train.epochs} epochs")
    live = Live(str(OUTPUT / "train"), dvcyaml=None, save_dvc_exp=False)
    model.fit(images, labels, epochs=params.train.epochs, batch_size=params.train.batch_size,
              shuffle=True, verbose=2, callbacks=[DVCLiveCallback(live=live)])
    network.save_model(model, OUTPUT / "model.keras")


if __name__ == "__main__":
    run(main)
