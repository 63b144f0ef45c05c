"""Time activation extraction two ways on the same images, in one process, and print JSON.

(a) the article's loop: `probe.predict(image[None])` once per image, with one probe model
    giving every recorded layer at once, so one call per image however many layers;
(b) this project's `stages.extract.record` on a traced `network.LayerProbe`: one forward
    pass per batch, every layer's Parquet table written.
Both paths are warmed up first, so each is timed at its per-image rate, without the one-off
tracing of its TensorFlow function. Also timed: (c) `record` with its probe built and traced
inside the timing, as a from-scratch extract stage pays it once per run; (d) the warm probe
alone, the cost of the forward pass itself.

Run it with the working directory (and PYTHONPATH) of a repository where `dvc repro` has run.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from stages import extract, network
from stages import params as params_module
from stages.tables import CORRUPTED_SCHEMA, open_table, pixel_matrix


def first_images(count: int):
    """The keys and pixels of the first `count` test images."""
    file = open_table(extract.INPUT / "test.parquet", CORRUPTED_SCHEMA)
    table = pa.Table.from_batches([next(file.iter_batches(batch_size=count))])
    return table.drop_columns(["pixels"]), pixel_matrix(table)


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def per_image_loop(probe, images) -> None:
    for image in images:
        probe.predict(image[None], verbose=0)


def batched_record(probe, keys, pixels, batch_size: int) -> None:
    batches = ((keys.slice(start, batch_size), pixels[start:start + batch_size])
               for start in range(0, len(pixels), batch_size))
    with tempfile.TemporaryDirectory() as folder:
        extract.record(probe, batches, Path(folder))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--repeats", type=int, default=3)
    arguments = parser.parse_args()

    import keras

    settings = params_module.load("extract").extract
    batch_size = settings.batch_size
    model = network.load_model(extract.MODEL)
    layers = extract.layers_to_record(settings.layers, [layer.name for layer in model.layers])
    keys, pixels = first_images(arguments.images)
    images = pixels.reshape(-1, 28, 28, 1)
    article_probe = keras.Model(model.inputs, [model.get_layer(name).output for name in layers])
    probe = network.LayerProbe(model, layers)
    article_probe.predict(images[:1], verbose=0)
    batched_record(probe, keys, pixels, batch_size)
    batched_record(network.LayerProbe(model, layers), keys, pixels, batch_size)

    results = {"images": len(images), "layers": layers, "batch_size": batch_size,
               "per_image_seconds": [], "record_seconds": [], "record_cold_seconds": [],
               "forward_seconds": []}
    for _ in range(arguments.repeats):
        results["per_image_seconds"].append(timed(lambda: per_image_loop(article_probe, images)))
        results["record_seconds"].append(
            timed(lambda: batched_record(probe, keys, pixels, batch_size)))
        results["record_cold_seconds"].append(timed(lambda: batched_record(
            network.LayerProbe(model, layers), keys, pixels, batch_size)))
        results["forward_seconds"].append(timed(lambda: probe(pixels)))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
