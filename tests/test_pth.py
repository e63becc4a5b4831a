"""The torch-free .pth reader on small synthetic checkpoints in both container formats.

Why synthetic: torch is not a dependency, so we write the files ourselves with the exact
pickle layout ``torch.save`` uses, pretending to be torch through stand-in modules that
exist only while pickling (pickle stores globals by module and name, nothing more).
"""

from __future__ import annotations

import io
import pickle
import struct
import sys
import types
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

from isc_qk.encoders.nets.pth import PthError, load_state_dict


class _FakeStorage:
    def __init__(self, key: str, array: np.ndarray, storage_cls: type) -> None:
        self.key, self.array, self.storage_cls = key, array, storage_cls


class _FakeTensor:
    def __init__(self, storage: _FakeStorage, offset: int, size: tuple, stride: tuple) -> None:
        self.args = (storage, offset, size, stride)

    def __reduce_ex__(self, protocol: int):  # what torch.Tensor pickles to
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (*self.args, False, OrderedDict())


@pytest.fixture
def fake_torch(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Stand-in ``torch`` / ``torch._utils`` modules, so pickle records torch globals."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # pragma: no cover - never called when writing
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    classes = {}
    for name in ("FloatStorage", "LongStorage"):
        cls = type(name, (), {"__module__": "torch", "__qualname__": name})
        setattr(torch, name, cls)
        classes[name] = cls
    torch._utils = utils
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return types.SimpleNamespace(**classes)


def _sample(fake_torch: types.SimpleNamespace):
    """Tensors covering a transposed (non-contiguous) view, a shared storage and int64."""
    base = np.arange(12, dtype=np.float32)
    s_float = _FakeStorage("0", base, fake_torch.FloatStorage)
    s_long = _FakeStorage("1", np.array([7], dtype=np.int64), fake_torch.LongStorage)
    obj = OrderedDict(
        [
            ("w", _FakeTensor(s_float, 0, (2, 3), (3, 1))),
            ("w_t", _FakeTensor(s_float, 0, (3, 2), (1, 3))),
            ("tail", _FakeTensor(s_float, 6, (6,), (1,))),
            ("count", _FakeTensor(s_long, 0, (), ())),
        ]
    )
    expected = {
        "w": base[:6].reshape(2, 3),
        "w_t": base[:6].reshape(2, 3).T,
        "tail": base[6:],
        "count": np.array(7, dtype=np.int64),
    }
    return obj, [s_float, s_long], expected


def _pickler(buf: io.BytesIO, legacy: bool) -> pickle.Pickler:
    class P(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _FakeStorage):
                pid = ("storage", obj.storage_cls, obj.key, "cpu", obj.array.size)
                return pid + (None,) if legacy else pid
            return None

    return P(buf, protocol=2)


def _write_zip(path: Path, fake_torch) -> dict:
    obj, storages, expected = _sample(fake_torch)
    buf = io.BytesIO()
    _pickler(buf, legacy=False).dump(obj)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", buf.getvalue())
        zf.writestr("archive/byteorder", "little")
        for s in storages:
            zf.writestr(f"archive/data/{s.key}", s.array.tobytes())
    return expected


def _write_legacy(path: Path, fake_torch) -> dict:
    obj, storages, expected = _sample(fake_torch)
    buf = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, buf, protocol=2)
    _pickler(buf, legacy=True).dump(obj)
    pickle.dump([s.key for s in storages], buf, protocol=2)
    for s in storages:
        buf.write(struct.pack("<q", s.array.size))
        buf.write(s.array.tobytes())
    path.write_bytes(buf.getvalue())
    return expected


@pytest.mark.parametrize("writer", [_write_zip, _write_legacy], ids=["zip", "legacy"])
def test_reads_both_formats(tmp_path: Path, fake_torch, writer) -> None:
    path = tmp_path / "ckpt.pth"
    expected = writer(path, fake_torch)
    got = load_state_dict(path)
    assert list(got) == list(expected)
    for k, v in expected.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v)
        assert got[k].flags.writeable and got[k].flags.c_contiguous


def test_refuses_unknown_globals(tmp_path: Path) -> None:
    """A checkpoint that would run code under torch.load must be rejected, not run."""

    class Evil:
        def __reduce__(self):
            import os

            return os.system, ("echo pwned",)

    path = tmp_path / "evil.pth"
    buf = io.BytesIO()
    for header in (0x1950A86A20F9469CFC6C, 1001, {}):
        pickle.dump(header, buf, protocol=2)
    pickle.dump({"x": Evil()}, buf, protocol=2)
    path.write_bytes(buf.getvalue())
    with pytest.raises(PthError, match="refusing to load global"):
        load_state_dict(path)


def test_rejects_non_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "junk.pth"
    path.write_bytes(pickle.dumps(123))
    with pytest.raises(PthError, match="magic"):
        load_state_dict(path)


def test_rejects_truncated_storage(tmp_path: Path, fake_torch) -> None:
    path = tmp_path / "short.pth"
    _write_legacy(path, fake_torch)
    path.write_bytes(path.read_bytes()[:-4])
    with pytest.raises(PthError, match="truncated"):
        load_state_dict(path)
