"""THE per-image stage runner (`stages.runner`): file order, one decode error policy, resume,
chunking and threads that do not change a row."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from isc_qk.encoders import create
from isc_qk.formats.images import list_images, load_rgb
from isc_qk.gist import descriptor as gist
from isc_qk.stages.artifact import Artifact
from isc_qk.stages.rows import read_good_rows
from isc_qk.stages.runner import decode_file, fill_from_images
from isc_qk.starts.stage import RawJob


def _write_images(folder) -> list:
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, arr in [("a_astronaut", data.astronaut()), ("b_chelsea", data.chelsea()),
                      ("c_coffee", data.coffee()), ("d_rocket", data.rocket())]:
        p = folder / f"{name}.jpg"
        Image.fromarray(arr).save(p, quality=90)
        paths.append(p)
    (folder / "c_broken.jpg").write_bytes(b"this is not a jpeg")
    (folder / "e_truncated.jpg").write_bytes(paths[0].read_bytes()[:300])
    return paths


def _run(tmp_path, folder, name, chunk=2, workers=1):
    files = list_images(folder)
    art = Artifact(tmp_path / name, "test rows", layout="file")
    filled = fill_from_images(art, files, RawJob(create("gist")), chunk, workers)
    return files, filled, read_good_rows(filled, [f.id for f in files])


def test_rows_keep_the_file_order_and_bad_files_are_listed_with_a_reason(tmp_path):
    paths = _write_images(tmp_path / "img")
    files, filled, good = _run(tmp_path, tmp_path / "img", "rows")
    assert good.ids == ["a_astronaut", "b_chelsea", "c_coffee", "d_rocket"]
    bad = filled.bad_list([f.path for f in files])
    assert [b.split(":")[0] for b in bad] == [str(tmp_path / "img" / "c_broken.jpg"), str(tmp_path / "img" / "e_truncated.jpg")]
    np.testing.assert_allclose(np.linalg.norm(good.vectors, axis=1), 1.0, atol=1e-6)
    expected = gist.gist_descriptors(gist.preprocess(load_rgb(paths[1]))[None])[0]  # decoded by hand
    np.testing.assert_array_equal(good.vectors[1], expected)


def test_chunking_and_threads_do_not_change_a_row(tmp_path):
    _write_images(tmp_path / "img")
    _, _, a = _run(tmp_path, tmp_path / "img", "a", chunk=1, workers=1)
    _, _, b = _run(tmp_path, tmp_path / "img", "b", chunk=4, workers=2)
    assert a.ids == b.ids
    np.testing.assert_array_equal(a.vectors, b.vectors)


def test_one_error_policy_a_failing_decoder_skips_the_file_but_memory_errors_stop(tmp_path):
    paths = _write_images(tmp_path / "img")

    def odd(image):
        raise ZeroDivisionError("a decoder bug on one odd file")

    values, why = decode_file(paths[0], [odd])
    assert values is None and "ZeroDivisionError: a decoder bug on one odd file" in why and str(paths[0]) in why

    def oom(image):
        raise MemoryError

    with pytest.raises(MemoryError):
        decode_file(paths[0], [oom])
    values, why = decode_file(paths[0], [lambda im: im.size])
    assert why is None and values == [load_rgb(paths[0]).size]
