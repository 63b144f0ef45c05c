"""The Parquet tables the stages pass along, and how they are read and written.

Schemas (see README "Artifacts"):
- images (prepared, corrupted): sample_id int64, split string, label uint8,
  pixels fixed_size_list<float32>[784] in [0, 1]; corrupted adds is_anomaly bool and
  noise_level uint8 (0 = clean).
- activations: sample_id, split, label, is_anomaly, noise_level, then one float32 column
  per unit: n000, n001, ...
- scores: sample_id, is_anomaly, noise_level, representation, detector, score float64
  (higher = more anomalous), flagged bool.

Every file is written to a temporary name beside its target and renamed into place, so a
stage killed half-way leaves either the previous complete file or none.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages.errors import StageError

IMAGE_SIZE = 28 * 28
SPLITS = ("train", "test")
# The classifier's pre-softmax layer: a Keras layer, an activation table and a representation.
LOGITS = "logits"

PREPARED_SCHEMA = pa.schema([
    ("sample_id", pa.int64()),
    ("split", pa.string()),
    ("label", pa.uint8()),
    ("pixels", pa.list_(pa.float32(), IMAGE_SIZE)),
])
CORRUPTED_SCHEMA = PREPARED_SCHEMA.append(pa.field("is_anomaly", pa.bool_())).append(
    pa.field("noise_level", pa.uint8()))
ACTIVATION_KEYS = pa.schema([field for field in CORRUPTED_SCHEMA if field.name != "pixels"])
SCORES_SCHEMA = pa.schema([
    ("sample_id", pa.int64()),
    ("is_anomaly", pa.bool_()),
    ("noise_level", pa.uint8()),
    ("representation", pa.string()),
    ("detector", pa.string()),
    ("score", pa.float64()),
    ("flagged", pa.bool_()),
])


def _temporary_prefix(target: Path) -> str:
    return f".{target.name}."


def remove_leftovers(target: Path) -> None:
    """Delete temporaries that a killed run left beside `target`."""
    for leftover in target.parent.glob(f"{_temporary_prefix(target)}*.tmp"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


@contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    handle, name = tempfile.mkstemp(prefix=_temporary_prefix(target), suffix=".tmp",
                                    dir=target.parent)
    os.close(handle)
    temporary = Path(name)
    temporary.chmod(0o644)  # mkstemp makes files private; artifacts are meant to be shared
    try:
        yield temporary
        os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; it replaces `target` whole only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(target)
    temporary = Path(tempfile.mkdtemp(prefix=_temporary_prefix(target), suffix=".tmp",
                                      dir=target.parent))
    temporary.chmod(0o755)
    try:
        yield temporary
        # Renames are atomic, deleting a folder is not: move the old one aside first.
        retired = target.parent / f"{_temporary_prefix(target)}retired.tmp"
        if target.exists():
            os.replace(target, retired)
        os.replace(temporary, target)
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def write_table(table: pa.Table, target: Path) -> None:
    """Write a table atomically, with settings that give equal bytes for equal tables."""
    with atomic_path(target) as temporary:
        pq.write_table(table, temporary, compression="zstd")


def open_table(path: Path, schema: pa.Schema) -> pq.ParquetFile:
    """Open a Parquet file for streaming after checking it carries `schema`'s columns."""
    path = Path(path)
    if not path.exists():
        raise StageError(f"{path}: not found; run the stage that writes it (dvc repro)")
    try:
        file = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as error:
        raise StageError(f"{path}: not a readable Parquet file ({error})") from None
    found = file.schema_arrow
    for field in schema:
        if field.name not in found.names:
            raise StageError(f"{path}: missing column {field.name!r}; expected {schema.names}")
        if not found.field(field.name).type.equals(field.type):
            raise StageError(f"{path}: column {field.name!r} has type "
                             f"{found.field(field.name).type}, expected {field.type}")
    return file


def read_table(path: Path, schema: pa.Schema) -> pa.Table:
    """Read a whole Parquet table after checking it carries `schema`'s columns and types."""
    file = open_table(path, schema)
    try:
        return file.read()
    except (pa.ArrowInvalid, OSError) as error:
        raise StageError(f"{path}: not a readable Parquet file ({error})") from None


def pixel_matrix(table: pa.Table) -> np.ndarray:
    """The `pixels` column as a writable float32 matrix of shape (rows, 784)."""
    pixels = table.column("pixels").combine_chunks()
    flat = pixels.flatten().to_numpy(zero_copy_only=False)
    return flat.reshape(len(pixels), IMAGE_SIZE).copy()


def pixel_column(pixels: np.ndarray) -> pa.FixedSizeListArray:
    """A (rows, 784) matrix as a fixed_size_list<float32>[784] column."""
    flat = pa.array(np.ascontiguousarray(pixels, dtype=np.float32).ravel())
    return pa.FixedSizeListArray.from_arrays(flat, IMAGE_SIZE)


def unit_names(count: int) -> list[str]:
    """Column names of a layer's units: n000, n001, ..."""
    return [f"n{unit:03d}" for unit in range(count)]


def activation_matrix(table: pa.Table) -> np.ndarray:
    """The unit columns (n000, n001, ...) of an activation table as a float32 matrix."""
    units = [name for name in table.schema.names if name not in ACTIVATION_KEYS.names]
    return np.column_stack([table.column(name).to_numpy() for name in units]).astype(np.float32)
