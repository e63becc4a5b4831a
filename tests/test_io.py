"""The existing io module: round trips of every format and every malformed-file error."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from isc_qk.errors import UserError
from isc_qk import formats as io


def _h5(path, **datasets):
    with h5py.File(path, "w") as f:
        for k, v in datasets.items():
            f.create_dataset(k, data=v)
    return path


# --------------------------------------------------------------------------- round trips
def test_descriptors_round_trip_and_id_stripping(tmp_path):
    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    io.write_descriptors(tmp_path / "a.h5", io.Descriptors(["Q2", "Q0", "Q1"], x))
    d = io.read_descriptors(tmp_path / "a.h5")
    assert d.ids == ["Q2", "Q0", "Q1"] and np.array_equal(d.vectors, x)
    _h5(tmp_path / "b.h5", vectors=x[:2].astype(np.float64), image_names=np.array([b"dir/R1.jpg", b"R2.png"]))
    b = io.read_descriptors(tmp_path / "b.h5")
    assert b.ids == ["R1", "R2"] and b.vectors.dtype == np.float32


def test_read_several_descriptor_files_stacks_them(tmp_path):
    io.write_descriptors(tmp_path / "a.h5", io.Descriptors(["A"], np.ones((1, 4), np.float32)))
    io.write_descriptors(tmp_path / "b.h5", io.Descriptors(["B", "C"], np.zeros((2, 4), np.float32)))
    d = io.read_descriptors([tmp_path / "a.h5", tmp_path / "b.h5"])
    assert d.ids == ["A", "B", "C"] and d.vectors.shape == (3, 4)


def test_submission_round_trip_sorts_ids(tmp_path):
    q = io.Descriptors(["Q1", "Q0"], np.array([[1, 1], [0, 0]], np.float32))
    r = io.Descriptors(["R0"], np.array([[2, 2]], np.float32))
    io.write_submission(tmp_path / "s.h5", q, r)
    s = io.read_submission(tmp_path / "s.h5")
    assert s.query.ids == ["Q0", "Q1"] and s.query.vectors.tolist() == [[0, 0], [1, 1]]
    assert s.reference.ids == ["R0"]
    with h5py.File(tmp_path / "s.h5") as f:
        assert f["query_ids"][0] == b"Q0"


def test_ground_truth_round_trip(tmp_path):
    io.write_ground_truth(tmp_path / "gt.csv", [("Q0", "R5"), ("Q1", None), ("Q0", "R6")])
    assert (tmp_path / "gt.csv").read_text().splitlines()[2] == "Q1,"
    gt = io.read_ground_truth(tmp_path / "gt.csv")
    assert gt.query_ids == ["Q0", "Q1"] and gt.pairs == [("Q0", "R5"), ("Q0", "R6")] and gt.n_positives == 2


def test_json_and_ids_and_feature_table(tmp_path):
    io.write_json(tmp_path / "a.json", {"x": np.float32(1.5), "v": np.arange(2)})
    assert io.read_json(tmp_path / "a.json") == {"x": 1.5, "v": [0, 1]}
    io.write_ids(tmp_path / "t.ids.txt", ["T0", "T1"])
    np.save(tmp_path / "t.npy", np.zeros((2, 3), np.float16))
    ids, x = io.open_feature_table(tmp_path / "t")
    assert ids == ["T0", "T1"] and x.shape == (2, 3)


def test_manifest_append_and_truncated_last_line(tmp_path):
    p = tmp_path / "m.csv"
    io.append_manifest_rows(p, [("Q0", "T1", json.dumps({"op": "crop"}))])
    io.append_manifest_rows(p, [("Q1", "T2", "{}")])
    with open(p, "a") as fh:
        fh.write("Q2,T3")  # crash mid-row: no ops column
    rows = io.read_manifest(p)
    assert [r["query_id"] for r in rows] == ["Q0", "Q1"] and json.loads(rows[0]["ops"]) == {"op": "crop"}


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    with pytest.raises(RuntimeError):
        with io.atomic_path(tmp_path / "out.bin") as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_image_id():
    assert io.image_id("a/b/Q00001.jpg") == "Q00001"
    assert io.image_id(b"R000001.png") == "R000001"
    assert io.image_id("T1.tar") == "T1.tar"


# --------------------------------------------------------------------------- malformed files
@pytest.mark.parametrize(
    "make,fragment",
    [
        (lambda p: p, "not found"),
        (lambda p: (p.write_text("text"), p)[1], "not an HDF5"),
        (lambda p: _h5(p, image_names=np.array([b"a"])), "missing dataset 'vectors'"),
        (lambda p: _h5(p, vectors=np.ones((1, 2), np.float32)), "missing dataset 'image_names'"),
        (lambda p: _h5(p, vectors=np.ones((1, 2), np.int64), image_names=np.array([b"a"])), "floating point"),
        (lambda p: _h5(p, vectors=np.ones((2,), np.float32), image_names=np.array([b"a", b"b"])), "2-D"),
        (lambda p: _h5(p, vectors=np.ones((2, 2), np.float32), image_names=np.array([b"a"])), "1 image_names for 2"),
        (lambda p: _h5(p, vectors=np.ones((1, 2), np.float32), image_names=np.array([[b"a"]])), "1-D"),
        (lambda p: _h5(p, vectors=np.array([[np.nan, 1]], np.float32), image_names=np.array([b"a"])), "NaN or inf"),
        (lambda p: _h5(p, vectors=np.ones((0, 2), np.float32), image_names=np.array([], dtype="S1")), "empty"),
        (lambda p: _h5(p, vectors=np.ones((2, 2), np.float32), image_names=np.array([b"a", b"a"])), "duplicate id 'a'"),
        (lambda p: _h5(p, vectors=np.ones((1, 2), np.float32), image_names=np.array([b"\xff"])), "non-ASCII"),
    ],
)
def test_read_descriptors_errors(tmp_path, make, fragment):
    path = make(tmp_path / "d.h5")
    with pytest.raises(UserError, match=fragment):
        io.read_descriptors(path)


def test_read_descriptors_dimension_mismatch_between_files(tmp_path):
    io.write_descriptors(tmp_path / "a.h5", io.Descriptors(["A"], np.ones((1, 4), np.float32)))
    io.write_descriptors(tmp_path / "b.h5", io.Descriptors(["B"], np.ones((1, 5), np.float32)))
    with pytest.raises(UserError, match="dimension 5 differs"):
        io.read_descriptors([tmp_path / "a.h5", tmp_path / "b.h5"])
    with pytest.raises(UserError, match="duplicate"):
        io.read_descriptors([tmp_path / "a.h5", tmp_path / "a.h5"])
    with pytest.raises(UserError, match="no descriptor file"):
        io.read_descriptors([])


@pytest.mark.parametrize(
    "content,fragment",
    [
        ("query_id,ref\nQ0,R0\n", "header"),
        ("", "header"),
        ("query_id,reference_id\nQ0,R0,extra\n", ":2: expected 2 columns"),
        ("query_id,reference_id\n,R0\n", "empty query_id"),
        ("query_id,reference_id\nQ0,R0\nQ0,R0\n", ":3: duplicate pair"),
    ],
)
def test_read_ground_truth_errors(tmp_path, content, fragment):
    (tmp_path / "gt.csv").write_text(content)
    with pytest.raises(UserError, match=fragment):
        io.read_ground_truth(tmp_path / "gt.csv")


def test_read_ground_truth_missing_and_binary(tmp_path):
    with pytest.raises(UserError, match="not found"):
        io.read_ground_truth(tmp_path / "none.csv")
    (tmp_path / "gt.csv").write_bytes(b"\x89HDF\r\n\x1a\n\x00\x00")
    with pytest.raises(UserError, match="not a text CSV"):
        io.read_ground_truth(tmp_path / "gt.csv")


@pytest.mark.parametrize(
    "datasets,fragment",
    [
        (dict(query=np.ones((1, 2), np.float32), query_ids=np.array([b"Q"]), reference=np.ones((1, 2), np.float32)),
         "missing dataset 'reference_ids'"),
        (dict(query=np.ones((1, 300), np.float32), query_ids=np.array([b"Q"]),
              reference=np.ones((1, 300), np.float32), reference_ids=np.array([b"R"])), "exceeds"),
        (dict(query=np.ones((1, 2), np.float32), query_ids=np.array([b"Q"]),
              reference=np.ones((1, 3), np.float32), reference_ids=np.array([b"R"])), "differs"),
        (dict(query=np.ones((2, 2), np.float32), query_ids=np.array([b"Q"]),
              reference=np.ones((1, 2), np.float32), reference_ids=np.array([b"R"])), "1 ids for 2 vectors"),
    ],
)
def test_read_submission_errors(tmp_path, datasets, fragment):
    _h5(tmp_path / "s.h5", **datasets)
    with pytest.raises(UserError, match=fragment):
        io.read_submission(tmp_path / "s.h5")


def test_write_submission_refuses_and_writes_nothing(tmp_path):
    q = io.Descriptors(["Q0"], np.ones((1, 257), np.float32))
    with pytest.raises(UserError, match="256"):
        io.write_submission(tmp_path / "s.h5", q, q)
    with pytest.raises(UserError, match="ASCII"):
        io.write_descriptors(tmp_path / "d.h5", io.Descriptors(["Qé"], np.ones((1, 2), np.float32)))
    assert list(tmp_path.iterdir()) == []


def test_other_malformed_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        io.read_json(tmp_path / "x.json")
    (tmp_path / "x.json").write_text("{nope")
    with pytest.raises(UserError, match="not valid JSON"):
        io.read_json(tmp_path / "x.json")
    with pytest.raises(UserError, match="not found"):
        io.open_feature_table(tmp_path / "t")
    np.save(tmp_path / "t.npy", np.zeros((2, 3), np.float16))
    io.write_ids(tmp_path / "t.ids.txt", ["T0"])
    with pytest.raises(UserError, match="2 rows but 1 ids"):
        io.open_feature_table(tmp_path / "t")
    (tmp_path / "m.csv").write_text("a,b\n")
    with pytest.raises(UserError, match="expected header"):
        io.read_manifest(tmp_path / "m.csv")
    with pytest.raises(UserError, match="not found"):
        io.read_manifest(tmp_path / "none.csv")
    with pytest.raises(UserError, match="2 ids for 1 vectors"):
        io.Descriptors(["a", "b"], np.ones((1, 2), np.float32))
