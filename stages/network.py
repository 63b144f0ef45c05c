"""The Keras classifier: its architecture, deterministic set-up, and stable saving and loading.

Only the stages that need TensorFlow (train, extract) import this module.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# oneDNN's fused kernels change results with thread timing and log a banner at import.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from stages.errors import StageError, thread_limit  # noqa: E402
from stages.params import TrainParams  # noqa: E402
from stages.tables import LOGITS, atomic_path  # noqa: E402

CLASSES = 10
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def configure(seed: int) -> None:
    """Seed every generator, make TensorFlow's kernels deterministic, limit its threads."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    limit_threads()


def limit_threads() -> None:
    """Keep TensorFlow within STAGE_THREADS threads, when it is set."""
    threads = thread_limit()
    if threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def build_model(train: TrainParams) -> keras.Model:
    """Conv2D(filters, 4x4, relu) -> Flatten -> Dense(units, relu)... -> Dense(10, softmax).

    Hidden dense layers are named dense, dense_1, ... in order and the softmax output takes
    the next name, so the article's network has `dense` (32 units) and `dense_1` (10).
    """
    inputs = keras.Input(shape=(28, 28, 1), name="pixels")
    hidden = inputs
    if train.conv_filters:
        hidden = keras.layers.Conv2D(train.conv_filters, (4, 4), activation="relu",
                                     name="conv2d")(hidden)
    hidden = keras.layers.Flatten(name="flatten")(hidden)
    names = ["dense"] + [f"dense_{index}" for index in range(1, len(train.dense_units) + 1)]
    for name, units in zip(names, train.dense_units):
        hidden = keras.layers.Dense(units, activation="relu", name=name)(hidden)
    # The output layer is split in two so that its pre-softmax values (the energy score
    # needs them) are a layer of their own; the softmax stays the article's 10 columns.
    logits = keras.layers.Dense(CLASSES, name=LOGITS)(hidden)
    outputs = keras.layers.Activation("softmax", name=names[-1])(logits)
    model = keras.Model(inputs, outputs, name="classifier")
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=train.learning_rate),
                  loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def save_model(model: keras.Model, target: Path) -> None:
    """Save as .keras with the save date and zip timestamps fixed, so equal weights give
    equal bytes and DVC does not re-run what depends on the model for nothing."""
    target.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    with tempfile.TemporaryDirectory(dir=target.parent) as folder:
        unstable = Path(folder) / "model.keras"  # Keras insists on the .keras suffix
        model.save(unstable)
        with zipfile.ZipFile(unstable) as source, zipfile.ZipFile(buffer, "w") as stable:
            for entry in sorted(source.namelist()):
                content = source.read(entry)
                if entry == "metadata.json":
                    metadata = json.loads(content)
                    metadata.pop("date_saved", None)
                    content = json.dumps(metadata, sort_keys=True).encode()
                elif entry == "config.json":
                    content = json.dumps(renumber_shared_objects(json.loads(content))).encode()
                info = zipfile.ZipInfo(entry, date_time=ZIP_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                stable.writestr(info, content)
    with atomic_path(target) as temporary:
        temporary.write_bytes(buffer.getvalue())


def renumber_shared_objects(config, numbers: dict[int, int] | None = None):
    """Replace Keras' `shared_object_id`s (memory addresses, new in every process) by their
    order of first appearance, which identifies the shared objects just as well."""
    numbers = {} if numbers is None else numbers
    if isinstance(config, dict):
        return {key: numbers.setdefault(value, len(numbers)) if key == "shared_object_id"
                else renumber_shared_objects(value, numbers) for key, value in config.items()}
    if isinstance(config, list):
        return [renumber_shared_objects(item, numbers) for item in config]
    return config


def load_model(path: Path) -> keras.Model:
    """Load a saved classifier with Keras' safe mode; stop with one line if it is not one."""
    if not path.exists():
        raise StageError(f"{path}: not found; run the train stage (dvc repro train)")
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # Keras raises ValueError, OSError, zip and h5 errors alike
        raise StageError(f"{path}: not a loadable Keras model ({type(error).__name__})") from None


class LayerProbe:
    """Every chosen layer's outputs for a batch of pixel rows, all from one forward pass:
    `probe(pixels)` gives {layer: array with one row per image}.

    The forward pass is traced once, for any batch size (Keras' `predict_on_batch` traces
    again for a split's last, shorter batch, and its set-up costs more than the pass itself
    on a few hundred images). It runs `chunk_size` images at a time: the convolution maps of
    a larger batch no longer fit the CPU's caches, and the pass takes about 1.5 times as
    long per image.
    """

    def __init__(self, model: keras.Model, layers: list[str], *, chunk_size: int = 256):
        self.chunk_size = chunk_size
        outputs = keras.Model(model.inputs,
                              {name: model.get_layer(name).output for name in layers})
        image_shape = tuple(model.inputs[0].shape[1:])
        signature = tf.TensorSpec((None, math.prod(image_shape)), tf.float32)
        self.forward = tf.function(
            lambda pixels: outputs(tf.reshape(pixels, (-1, *image_shape)), training=False),
            input_signature=[signature])

    def __call__(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        chunks = [self.forward(pixels[start:start + self.chunk_size])
                  for start in range(0, len(pixels), self.chunk_size)]
        return {name: np.concatenate([chunk[name].numpy() for chunk in chunks])
                for name in chunks[0]}
