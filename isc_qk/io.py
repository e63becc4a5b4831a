"""Every file format isc-qk reads or writes, in one place.

Formats (all writes are atomic: a temporary file in the same folder, then `os.replace`, so a
crash never leaves a half-written artifact under the final name):

* Per-set descriptor HDF5, exactly as the official ISC2021 baselines write it:
  dataset ``vectors`` (float32, n x d) and dataset ``image_names`` (ASCII byte strings).
  Readers strip any directory and a ``.jpg``/``.png`` suffix, so ids are file stems.
* Ground-truth CSV: header ``query_id,reference_id``; an empty reference means "no match";
  a query may have more than one row.
* Submission HDF5 (descriptor track): exactly ``query``, ``reference`` (float32),
  ``query_ids``, ``reference_ids`` (ASCII byte strings), ids sorted ascending, d <= 256.
* Feature tables (precomputed backbone features): a float16 ``.npy`` (memory-mapped) plus an
  ids text file, one id per line.
* Augmentation manifest CSV: ``query_id,source_id,ops`` (ops = JSON of the sampled edits).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import UserError

MAX_SUBMISSION_DIM = 256
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


# --------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; move it over `path` only if the block succeeds.

    The temporary file lives in the same folder so that the final `os.replace` is atomic.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files; give artifacts the usual umask mode
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def save_keras_weights(model, path: str | os.PathLike) -> None:
    """`model.save_weights` atomically; Keras insists the name ends in `.weights.h5`, so the
    temporary file (same folder, then `os.replace`) keeps that suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name.removesuffix('.weights.h5')}.{os.getpid()}.tmp.weights.h5")
    try:
        model.save_weights(str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: object) -> None:
    """Atomically write `obj` as indented JSON."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e})") from None


def _json_default(o: object) -> object:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# --------------------------------------------------------------------------- ids
def image_id(name: str | bytes | os.PathLike) -> str:
    """The id of an image: its file name without directory and without an image suffix."""
    if isinstance(name, bytes):
        name = name.decode("ascii")
    base = os.path.basename(os.fspath(name))
    stem, ext = os.path.splitext(base)
    return stem if ext.lower() in IMAGE_SUFFIXES else base


def check_unique(ids: Sequence[str], what: str) -> None:
    """Refuse duplicate ids: a duplicate would silently shadow another image's descriptor."""
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = next(i for i in ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
        raise UserError(f"{what}: duplicate id {dup!r}")


def check_vectors(x: np.ndarray, what: str) -> None:
    """Refuse a descriptor matrix that is not 2-D, is empty, or holds NaN/inf."""
    if x.ndim != 2:
        raise UserError(f"{what}: expected a 2-D array of vectors, got shape {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise UserError(f"{what}: empty descriptor set (shape {x.shape})")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x).all(axis=1)).sum())
        raise UserError(f"{what}: {bad} vector(s) contain NaN or inf")


# --------------------------------------------------------------------------- HDF5 helpers
def _open_h5(path: str | os.PathLike):
    import h5py

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        return h5py.File(path, "r")
    except OSError:
        raise UserError(f"{path}: not an HDF5 file") from None


def _read_dataset(f, name: str, path: Path) -> np.ndarray:
    import h5py

    if name not in f:
        raise UserError(f"{path}: missing dataset {name!r} (has: {', '.join(sorted(f.keys())) or 'none'})")
    if not isinstance(f[name], h5py.Dataset):
        raise UserError(f"{path}: {name!r} is an HDF5 group, expected a dataset")
    return f[name][()]


def _read_vectors(f, name: str, path: Path) -> np.ndarray:
    x = _read_dataset(f, name, path)
    if not np.issubdtype(x.dtype, np.floating):
        raise UserError(f"{path}: dataset {name!r} must be floating point, got {x.dtype}")
    return np.ascontiguousarray(x, dtype=np.float32)


def _read_ids(f, name: str, path: Path) -> list[str]:
    raw = _read_dataset(f, name, path)
    if raw.ndim != 1:
        raise UserError(f"{path}: dataset {name!r} must be 1-D, got shape {raw.shape}")
    if raw.size and not isinstance(raw.flat[0], (bytes, str)):
        raise UserError(f"{path}: dataset {name!r} must hold strings, got {raw.dtype}")
    try:
        return [image_id(v) for v in raw]
    except UnicodeDecodeError:
        raise UserError(f"{path}: dataset {name!r} holds non-ASCII ids") from None


def _ascii_ids(ids: Sequence[str], what: str) -> np.ndarray:
    try:
        return np.array([i.encode("ascii") for i in ids], dtype=object)
    except UnicodeEncodeError:
        raise UserError(f"{what}: ids must be ASCII") from None


# --------------------------------------------------------------------------- per-set descriptors
@dataclass
class Descriptors:
    """A set of image descriptors: ids[i] is the image of row i of vectors."""

    ids: list[str]
    vectors: np.ndarray  # float32, n x d

    def __post_init__(self) -> None:
        if len(self.ids) != len(self.vectors):
            raise UserError(f"{len(self.ids)} ids for {len(self.vectors)} vectors")

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def sorted(self) -> "Descriptors":
        order = np.argsort(np.array(self.ids, dtype=object), kind="stable")
        return Descriptors([self.ids[i] for i in order], self.vectors[order])


def read_descriptors(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> Descriptors:
    """Read one or several per-set HDF5 files and stack them (official baseline layout)."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    all_ids: list[str] = []
    parts: list[np.ndarray] = []
    dim = None
    for p in paths:
        p = Path(p)
        with _open_h5(p) as f:
            x = _read_vectors(f, "vectors", p)
            ids = _read_ids(f, "image_names", p)
        if x.ndim != 2:
            raise UserError(f"{p}: 'vectors' must be 2-D (n x d), got shape {x.shape}")
        if len(ids) != len(x):
            raise UserError(f"{p}: {len(ids)} image_names for {len(x)} vectors")
        if dim is not None and x.shape[1] != dim:
            raise UserError(f"{p}: dimension {x.shape[1]} differs from {dim} in the other files")
        dim = x.shape[1]
        all_ids += ids
        parts.append(x)
    if not parts:
        raise UserError("no descriptor file given")
    vectors = np.concatenate(parts) if len(parts) > 1 else parts[0]
    what = ", ".join(str(p) for p in paths)  # type: ignore[union-attr]
    check_vectors(vectors, what)
    check_unique(all_ids, what)
    return Descriptors(all_ids, vectors)


def write_descriptors(path: str | os.PathLike, desc: Descriptors) -> None:
    """Write the official per-set layout: `vectors` float32 and `image_names` ASCII bytes."""
    import h5py

    check_vectors(desc.vectors, str(path))
    check_unique(desc.ids, str(path))
    names = _ascii_ids(desc.ids, str(path))
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("vectors", data=np.asarray(desc.vectors, dtype=np.float32))
            f.create_dataset("image_names", data=names, dtype=h5py.string_dtype("ascii"))


# --------------------------------------------------------------------------- ground truth
@dataclass
class GroundTruth:
    """Queries listed in the ground truth and their true (query, reference) pairs."""

    query_ids: list[str]  # every query listed, matched or not, in file order, unique
    pairs: list[tuple[str, str]]  # every (query, reference) match, unique

    @property
    def n_positives(self) -> int:
        return len(self.pairs)


def read_ground_truth(path: str | os.PathLike) -> GroundTruth:
    """Read `query_id,reference_id` rows; an empty reference id means a distractor query."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text CSV file") from None
    if not rows or [c.strip() for c in rows[0][:2]] != ["query_id", "reference_id"]:
        raise UserError(f"{path}: expected header 'query_id,reference_id'")
    queries: dict[str, None] = {}
    pairs: dict[tuple[str, str], None] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) < 2 or len(row) > 2:
            raise UserError(f"{path}:{lineno}: expected 2 columns, got {len(row)}")
        q, r = row[0].strip(), row[1].strip()
        if not q:
            raise UserError(f"{path}:{lineno}: empty query_id")
        queries.setdefault(q)
        if r:
            if (q, r) in pairs:
                raise UserError(f"{path}:{lineno}: duplicate pair {q},{r}")
            pairs.setdefault((q, r))
    return GroundTruth(list(queries), list(pairs))


def write_ground_truth(path: str | os.PathLike, rows: Iterable[tuple[str, str | None]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["query_id", "reference_id"])
            for q, r in rows:
                w.writerow([q, r or ""])


# --------------------------------------------------------------------------- submission
@dataclass
class Submission:
    query: Descriptors
    reference: Descriptors


def validate_submission(query: Descriptors, reference: Descriptors) -> None:
    """The descriptor-track rules: same dimension, d <= 256, finite, unique ids, non-empty."""
    check_vectors(query.vectors, "query descriptors")
    check_vectors(reference.vectors, "reference descriptors")
    if query.dim != reference.dim:
        raise UserError(f"query dimension {query.dim} differs from reference dimension {reference.dim}")
    if query.dim > MAX_SUBMISSION_DIM:
        raise UserError(f"descriptor dimension {query.dim} exceeds the track's limit of {MAX_SUBMISSION_DIM}")
    check_unique(query.ids, "query descriptors")
    check_unique(reference.ids, "reference descriptors")


def write_submission(path: str | os.PathLike, query: Descriptors, reference: Descriptors) -> None:
    """Write the official single-file submission, ids sorted ascending."""
    import h5py

    validate_submission(query, reference)
    q, r = query.sorted(), reference.sorted()
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset("query", data=q.vectors.astype(np.float32))
            f.create_dataset("reference", data=r.vectors.astype(np.float32))
            f.create_dataset("query_ids", data=_ascii_ids(q.ids, "query"), dtype=h5py.string_dtype("ascii"))
            f.create_dataset(
                "reference_ids", data=_ascii_ids(r.ids, "reference"), dtype=h5py.string_dtype("ascii")
            )


def read_submission(path: str | os.PathLike) -> Submission:
    p = Path(path)
    with _open_h5(p) as f:
        q = Descriptors(_read_ids(f, "query_ids", p), _read_vectors(f, "query", p))
        r = Descriptors(_read_ids(f, "reference_ids", p), _read_vectors(f, "reference", p))
    validate_submission(q, r)
    return Submission(q, r)


# --------------------------------------------------------------------------- feature tables
def feature_table_paths(prefix: str | os.PathLike) -> tuple[Path, Path]:
    """A feature table is ``PREFIX.npy`` (float16, n x D) plus ``PREFIX.ids.txt``.

    Built by appending to the prefix, so a prefix with a dot (``feats.shard-0-of-4``) keeps its
    name; a trailing ``.npy`` on the prefix is ignored.
    """
    s = os.fspath(prefix)
    if s.endswith(".npy"):
        s = s[:-4]
    return Path(s + ".npy"), Path(s + ".ids.txt")


def write_ids(path: str | os.PathLike, ids: Sequence[str]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text("".join(f"{i}\n" for i in ids))


def read_ids(path: str | os.PathLike) -> list[str]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    return [line for line in path.read_text().splitlines() if line]


def open_feature_table(prefix: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Memory-map a finished feature table read-only; its ids must match its rows one to one."""
    npy, ids_path = feature_table_paths(prefix)
    if not npy.is_file():
        raise UserError(f"{npy}: feature table not found (run `isc-qk precompute` first)")
    try:
        x = np.load(npy, mmap_mode="r")
    except ValueError as e:
        raise UserError(f"{npy}: not a valid .npy file ({e})") from None
    if x.ndim != 2:
        raise UserError(f"{npy}: expected a 2-D table, got shape {x.shape}")
    ids = read_ids(ids_path)
    if len(ids) != x.shape[0]:
        raise UserError(f"{npy}: {x.shape[0]} rows but {len(ids)} ids in {ids_path}")
    check_unique(ids, str(ids_path))
    return ids, x


# --------------------------------------------------------------------------- augmentation manifest
MANIFEST_FIELDS = ("query_id", "source_id", "ops")


def append_manifest_rows(path: str | os.PathLike, rows: Iterable[tuple[str, str, str]]) -> None:
    """Append rows as work proceeds (a crash loses at most the rows not yet appended)."""
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        if new:
            w.writerow(MANIFEST_FIELDS)
        w.writerows(rows)
        fh.flush()
        os.fsync(fh.fileno())


def read_manifest(path: str | os.PathLike) -> list[dict[str, str]]:
    """Read the manifest; a truncated last line (crash mid-write) is dropped."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: augmentation manifest not found (run `isc-qk augment` first)")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if tuple(reader.fieldnames or ()) != MANIFEST_FIELDS:
            raise UserError(f"{path}: expected header {','.join(MANIFEST_FIELDS)}")
        rows = []
        for row in reader:
            if None in row.values() or not row["query_id"]:
                continue
            rows.append(row)
    return rows
