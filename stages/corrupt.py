"""corrupt: make a seeded share of each split anomalous at the chosen noise level.

Reads:  data/prepared/{train,test}.parquet
Params: noise.*, seed
Writes: data/corrupted/{train,test}.parquet (adds is_anomaly, noise_level),
        data/corrupted/samples.png (clean images beside every level of the chosen kind)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from stages import params as params_module
from stages.errors import run
from stages.params import NOISE_LEVELS, NoiseParams
from stages.tables import (CORRUPTED_SCHEMA, PREPARED_SCHEMA, SPLITS, atomic_path, pixel_column,
                           pixel_matrix, read_table, write_table)

INPUT = Path("data/prepared")
OUTPUT = Path("data/corrupted")
SAMPLE_COUNT = 8

# The article's four types act on raw 0-255 values: (sigma, upper clip) of types 2-4.
ARTICLE_NOISE = {2: (0.01, 0.4), 3: (0.1, 2.0), 4: (0.5, 2.0)}
ARTICLE_STROKE = (slice(10, 16), 17)  # rows 10-15 of column 17
ARTICLE_STROKE_VALUE = 0.5


def article_noise(pixels: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """The article's anomaly type `level` (1-4), exactly as its notebooks apply it."""
    raw = pixels.astype(np.float64) * 255
    if level == 1:
        images = raw.reshape(-1, 28, 28).copy()
        stroke = images[:, ARTICLE_STROKE[0], ARTICLE_STROKE[1]]
        images[:, ARTICLE_STROKE[0], ARTICLE_STROKE[1]] = np.where(
            stroke == 0, ARTICLE_STROKE_VALUE, stroke)
        noisy = images.reshape(raw.shape)
    else:
        sigma, upper = ARTICLE_NOISE[level]
        noisy = np.clip(raw + sigma * rng.standard_normal(raw.shape), 0, upper)
    return (noisy / 255).astype(np.float32)


def gaussian_noise(pixels: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Add sigma * N(0, 1), clip to [0, 1] and round to the 1/255 grid of real images."""
    noisy = np.clip(pixels + sigma * rng.standard_normal(pixels.shape), 0, 1)
    return (np.round(noisy * 255) / 255).astype(np.float32)


def salt_pepper_noise(pixels: np.ndarray, share: float, rng: np.random.Generator) -> np.ndarray:
    """Set a `share` of the pixels to 0 or 1, each with even odds."""
    hit = rng.random(pixels.shape) < share
    salt = rng.random(pixels.shape) < 0.5
    return np.where(hit, salt.astype(np.float32), pixels).astype(np.float32)


def apply_noise(pixels: np.ndarray, noise: NoiseParams, level: int,
                rng: np.random.Generator) -> np.ndarray:
    """Noisy copies of `pixels` at `level` of `noise.kind`."""
    if noise.kind == "article":
        return article_noise(pixels, level, rng)
    severity = getattr(noise.ladders, noise.kind)[level - 1]
    if noise.kind == "gaussian":
        return gaussian_noise(pixels, severity, rng)
    return salt_pepper_noise(pixels, severity, rng)


def assign_levels(count: int, fraction: float, levels: tuple[int, ...],
                  rng: np.random.Generator) -> np.ndarray:
    """Noise level per image: round(fraction * count) images get a level (spread evenly
    over `levels`, in a seeded order), the rest 0 (clean)."""
    anomalous = rng.choice(count, size=round(fraction * count), replace=False)
    assigned = np.zeros(count, dtype=np.uint8)
    assigned[anomalous] = np.resize(np.asarray(levels, dtype=np.uint8), len(anomalous))
    return assigned


def corrupt_split(table: pa.Table, noise: NoiseParams, rng: np.random.Generator) -> pa.Table:
    """A prepared table with its anomalous share replaced by noisy copies."""
    pixels = pixel_matrix(table)
    levels = assign_levels(len(pixels), noise.fraction, noise.levels, rng)
    for level in noise.levels:
        rows = levels == level
        pixels[rows] = apply_noise(pixels[rows], noise, level, rng)
    return pa.Table.from_arrays([
        table.column("sample_id"), table.column("split"), table.column("label"),
        pixel_column(pixels), pa.array(levels > 0), pa.array(levels),
    ], schema=CORRUPTED_SCHEMA)


def plot_samples(pixels: np.ndarray, noise: NoiseParams, seed: int, target: Path) -> None:
    """A grid: one row per image, its clean version then every level of `noise.kind`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = ["clean"] + [f"level {level}" for level in NOISE_LEVELS]
    figure, axes = plt.subplots(len(pixels), len(columns), squeeze=False,
                                figsize=(1.4 * len(columns), 1.4 * len(pixels) + 0.4))
    versions = [pixels] + [apply_noise(pixels, noise, level, np.random.default_rng([seed, level]))
                           for level in NOISE_LEVELS]
    for column, (title, images) in enumerate(zip(columns, versions)):
        axes[0, column].set_title(title, fontsize=9)
        for row, image in enumerate(images):
            # A fixed 0-1 scale so near-black images look near-black, as a model sees them.
            axes[row, column].imshow(image.reshape(28, 28), cmap="gray", vmin=0, vmax=1)
            axes[row, column].axis("off")
    figure.suptitle(f"noise.kind = {noise.kind}", fontsize=10)
    figure.tight_layout()
    with atomic_path(target) as temporary:
        figure.savefig(temporary, format="png", dpi=80, metadata={"Software": None})
    plt.close(figure)


def main() -> None:
    params = params_module.load("noise", "seed")
    tables = {split: read_table(INPUT / f"{split}.parquet", PREPARED_SCHEMA) for split in SPLITS}
    corrupted = {
        split: corrupt_split(table, params.noise, np.random.default_rng([params.seed, index]))
        for index, (split, table) in enumerate(tables.items())}
    for split, table in corrupted.items():
        write_table(table, OUTPUT / f"{split}.parquet")
        anomalies = int(np.sum(table.column("is_anomaly").to_numpy(zero_copy_only=False)))
        print(f"corrupt: {split}: {anomalies} of {table.num_rows} images anomalous "
              f"({params.noise.kind}, level {params.noise.level})")
    plot_samples(pixel_matrix(tables["test"])[:SAMPLE_COUNT], params.noise, params.seed,
                 OUTPUT / "samples.png")


if __name__ == "__main__":
    run(main)
