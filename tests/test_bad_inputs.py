"""Bad inputs against the real CLI, each in its own process: one `error:` line, exit 2, no
traceback, and every file that existed before is byte-identical afterwards (no input and no
finished artifact is ever damaged, and a failed run leaves no partial files behind).

Plus: valid but unusual images (16-bit, CMYK, palette, alpha, greyscale, EXIF-rotated) give the
descriptor of the picture they show; two writers on one output; Ctrl-C says how to resume.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image_folder

DIM = 8


def _env() -> dict:
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent.parent), env.get("PYTHONPATH", "")])
    return env


def isc(*args, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "isc_qk", *map(str, args)], capture_output=True, text=True,
                          env=_env(), cwd=cwd, timeout=timeout)


def tree(root: Path) -> dict[str, str]:
    """sha256 of every file under root (the state no bad input may change)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.is_symlink():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Every kind of artifact, made with the library: images, GIST PCA and sets, a submission,
    training queries, a tiny model, a K table, a normaliser, shards, and some broken files."""
    import h5py

    from isc_qk.augment.runner import augment_folder
    from isc_qk.configs import AugmentConfig, ModelConfig, NormConfig, PCAFitConfig
    from isc_qk.formats import Descriptors, read_descriptors, write_descriptors, write_ground_truth, write_submission
    from isc_qk.models.init import init_model
    from isc_qk.normalize.files import fit_normalizer_files
    from isc_qk.qk.precompute import precompute
    from isc_qk.starts.stage import describe_start_set, fit_start_pca

    root = tmp_path_factory.mktemp("bad")
    make_image_folder(root / "train", 12, "T", seed=0, size=72)
    make_image_folder(root / "refs", 6, "R", seed=1, size=72)
    make_image_folder(root / "queries", 6, "Q", seed=2, size=72)
    make_image_folder(root / "other", 6, "O", seed=3, size=72)
    write_ground_truth(root / "gt.csv", [(f"Q{i:06d}", f"R{i:06d}" if i < 3 else None) for i in range(6)])
    pca = fit_start_pca("gist", root / "train", root / "gist", PCAFitConfig(n_train=None, dim=DIM))
    for name, folder in (("refs", "refs"), ("queries", "queries"), ("train", "train")):
        describe_start_set(pca, root / folder, root / "gist" / f"{name}.h5", progress=False)
    describe_start_set(pca, root / "refs", root / "gist" / "sh.h5", shard="0/2", progress=False)
    describe_start_set(pca, root / "other", root / "gist" / "sh.h5", shard="1/2", progress=False)
    q, r = read_descriptors(root / "gist" / "queries.h5"), read_descriptors(root / "gist" / "refs.h5")
    write_descriptors(root / "q.h5", q)
    write_descriptors(root / "r.h5", r)
    write_submission(root / "sub.h5", q, r)
    write_descriptors(root / "big.h5", Descriptors(q.ids, q.vectors * 1e30))
    write_descriptors(root / "wide.h5", Descriptors(q.ids, np.ones((len(q.ids), 300), np.float32)))
    nan = q.vectors.copy()
    nan[0, 0] = np.nan
    with h5py.File(root / "nan.h5", "w") as f:
        f.create_dataset("vectors", data=nan)
        f.create_dataset("image_names", data=np.array([i.encode() for i in q.ids], dtype=object),
                         dtype=h5py.string_dtype("ascii"))
    augment_folder(root / "train", root / "aug", AugmentConfig(copies=1), progress=False)
    m0 = init_model(pca, ModelConfig(backbone="tiny", backbone_weights=None, dim=DIM, head_hidden=16), root / "m0")
    precompute(m0, "k", root / "train", root / "k0", batch=16, progress=False)
    precompute(m0, "k", root / "refs", root / "pk", shard="0/2", batch=16, progress=False)
    precompute(m0, "q", root / "refs", root / "pk", shard="1/2", batch=16, progress=False)
    fit_normalizer_files(root / "gist" / "train.h5", NormConfig(method="nes", k=3), root / "norm")
    table = np.load(root / "k0.npy")
    table[0, 0] = np.nan
    np.save(root / "knan.npy", table)
    shutil.copy(root / "k0.ids.txt", root / "knan.ids.txt")
    np.save(root / "khalf.npy", np.load(root / "k0.npy")[:6])
    (root / "khalf.ids.txt").write_text("".join(ln + "\n" for ln in (root / "k0.ids.txt").read_text().split()[:6]))
    (root / "bad_pca").mkdir()
    (root / "bad_pca" / "pca.npz").write_bytes(b"PK\x03\x04 this is no zip")
    (root / "garbage.csv").write_bytes(bytes(range(256)) * 4)
    (root / "afile").write_text("a file where a folder must be\n")
    (root / "empty").mkdir()
    (root / "uni").mkdir()
    shutil.copy(root / "refs" / "R000000.jpg", root / "uni" / "R\u00e9sum\u00e9.jpg")
    disc = root / "disc"
    for sub, src in (("train", "train"), ("references", "refs"), ("queries", "queries")):
        shutil.copytree(root / src, disc / sub)
    shutil.copy(root / "gt.csv", disc / "ground_truth.csv")
    (root / "bom.csv").write_bytes(b"\xef\xbb\xbf" + (root / "gt.csv").read_bytes())
    return root


# (name, argv, a piece of the expected message); paths are relative to the world folder
CASES = [
    # 1. an output that is, contains or lies inside an input
    ("submit over its query", ["submit", "--query", "q.h5", "--reference", "r.h5", "--out", "q.h5"], "also the input"),
    ("submit over its reference", ["submit", "--query", "q.h5", "--reference", "r.h5", "--out", "r.h5"], "also the input"),
    ("submit over another artifact", ["submit", "--query", "q.h5", "--reference", "r.h5", "--out", "gist/refs.h5"],
     "not a submission"),
    ("json over the ground truth", ["evaluate-uap", "--ground-truth", "gt.csv", "--submission", "sub.h5", "--json", "gt.csv"],
     "also the input"),
    ("plot over the submission", ["evaluate-uap", "--ground-truth", "gt.csv", "--submission", "sub.h5", "--plot", "sub.h5"],
     "also the input"),
    ("json over a descriptor file", ["evaluate-uap", "--ground-truth", "gt.csv", "--submission", "sub.h5", "--json", "q.h5"],
     "not a metrics JSON"),
    ("plot over a descriptor file", ["evaluate-uap", "--ground-truth", "gt.csv", "--submission", "sub.h5", "--plot", "r.h5"],
     "not a PNG"),
    ("gist-pca out = an input image", ["gist-pca", "--pca", "gist", "--images", "refs", "--out", "refs/R000000.h5"], "inside the input"),
    ("gist-pca out = the PCA file", ["gist-pca", "--pca", "gist/pca.npz", "--images", "refs", "--out", "gist/pca.npz"], ".h5"),
    ("gist-pca fit into its training folder", ["gist-pca", "--train", "train", "--out", "train"], "also the input"),
    ("describe into the model folder", ["describe", "--model", "m0", "--side", "k", "--images", "refs", "--out", "m0/r.h5"],
     "inside the input"),
    ("describe into the image folder", ["describe", "--model", "m0", "--side", "k", "--images", "refs", "--out", "refs/r.h5"],
     "inside the input"),
    ("precompute into the model folder", ["precompute", "--model", "m0", "--side", "k", "--images", "refs", "--out", "m0/t"],
     "inside the input"),
    ("normalize in place", ["normalize", "--norm", "norm", "--in", "q.h5", "--out", "q.h5"], "also the input"),
    ("normalize into the normaliser", ["normalize", "--norm", "norm", "--in", "q.h5", "--out", "norm/q.h5"], "inside the input"),
    ("normalize-fit over its input", ["normalize-fit", "--train", "gist/train.h5", "--out", "gist/train.h5"], "also the input"),
    ("augment into its source", ["augment", "train", "--out", "train"], "also the input"),
    ("augment inside its source", ["augment", "train", "--out", "train/aug"], "inside the input"),
    ("augment around its source", ["augment", "train", "--out", "."], "contains the input"),
    ("init-model around its PCA", ["init-model", "--pca", "gist/pca.npz", "--backbone", "tiny", "--out", "gist"], "contains the input"),
    ("train-q over its model", ["train-q", "--model", "m0", "--keys", "k0", "--queries", "aug", "--out", "m0", "--steps", "1"],
     "also the input"),
    ("train-q inside its queries", ["train-q", "--model", "m0", "--keys", "k0", "--queries", "aug", "--out", "aug/m", "--steps", "1"],
     "inside the input"),
    ("pipeline work inside data", ["pipeline", "--data", "disc", "--work", "disc/w"], "inside the input"),
    ("pipeline work around data", ["pipeline", "--data", "disc", "--work", "."], "contains the input"),
    # 2. other inputs into a finished output
    ("gist set from another folder", ["gist-pca", "--pca", "gist", "--images", "other", "--out", "gist/refs.h5"], "other inputs"),
    ("gist fit on other images", ["gist-pca", "--train", "other", "--out", "gist", "--n-train", "0"], "other"),
    ("merge shards of two folders", ["gist-pca", "--merge", "--out", "gist/sh.h5"], "other inputs"),
    ("augment another source", ["augment", "other", "--out", "aug"], "other inputs"),
    ("precompute another folder", ["precompute", "--model", "m0", "--side", "k", "--images", "other", "--out", "k0"], "was made with other"),
    ("precompute other side", ["precompute", "--model", "m0", "--side", "q", "--images", "train", "--out", "k0"], "other settings"),
    ("merge tables of two sides", ["precompute", "--merge", "--out", "pk"], "other settings"),
    ("describe over another artifact", ["describe", "--model", "m0", "--side", "k", "--images", "refs", "--out", "q.h5"],
     "not made by this"),
    ("normalize-fit on another file", ["normalize-fit", "--train", "q.h5", "--out", "norm", "--k", "3"], "other inputs"),
    # 5. outputs that cannot be written
    ("submit under a file", ["submit", "--query", "q.h5", "--reference", "r.h5", "--out", "afile/sub.h5"], "is a file"),
    ("json under a file", ["evaluate-uap", "--ground-truth", "gt.csv", "--submission", "sub.h5", "--json", "afile/m.json"], "is a file"),
    ("gist fit under a file", ["gist-pca", "--train", "train", "--out", "afile/gist"], "is a file"),
    ("describe to a folder", ["describe", "--model", "m0", "--side", "k", "--images", "refs", "--out", "empty"], ".h5"),
    ("describe folder named .h5", ["describe", "--model", "m0", "--side", "k", "--images", "refs", "--out", "gist"], ".h5"),
    ("precompute under a file", ["precompute", "--model", "m0", "--side", "k", "--images", "refs", "--out", "afile/t"], "is a file"),
    ("normalize to a folder", ["normalize", "--norm", "norm", "--in", "q.h5", "--out", "empty"], "existing folder"),
    ("train-q to a file", ["train-q", "--model", "m0", "--keys", "k0", "--queries", "aug", "--out", "afile", "--steps", "1"],
     "existing file"),
    ("init-model to a file", ["init-model", "--pca", "gist", "--backbone", "tiny", "--out", "afile"], "existing file"),
    ("augment to a file", ["augment", "train", "--out", "afile"], "existing file"),
    ("submit to a folder", ["submit", "--query", "q.h5", "--reference", "r.h5", "--out", "empty"], "existing folder"),
    # 5./6. bad values and broken files
    ("huge vectors", ["evaluate-uap", "--ground-truth", "gt.csv", "--query", "big.h5", "--reference", "r.h5"], "too large"),
    ("negative n-train", ["gist-pca", "--train", "train", "--out", "g2", "--n-train", "-5"], "n-train"),
    ("corrupt pca", ["init-model", "--pca", "bad_pca", "--backbone", "tiny", "--out", "m9"], "not a PCA file"),
    ("nan residual scale", ["init-model", "--pca", "gist", "--backbone", "tiny", "--out", "m9", "--residual-scale", "nan"],
     "residual-scale"),
    ("nan tau", ["train-q", "--model", "m0", "--keys", "k0", "--queries", "aug", "--out", "m9", "--tau", "nan"], "tau"),
    ("negative lr", ["train-q", "--model", "m0", "--keys", "k0", "--queries", "aug", "--out", "m9", "--lr", "-1"], "lr"),
    ("nan in the key table", ["train-q", "--model", "m0", "--keys", "knan", "--queries", "aug", "--out", "m9", "--steps", "2",
                              "--batch", "4", "--workers", "1", "--no-progress"], "NaN or inf"),
    ("missing queries folder", ["train-q", "--model", "m0", "--keys", "k0", "--queries", "nope", "--out", "m9"], "not found"),
    ("K table as train-k queries", ["train-k", "--model", "m0", "--keys", "train", "--queries", "k0", "--out", "m9"],
     "K features"),
    ("binary ground truth", ["evaluate-uap", "--ground-truth", "garbage.csv", "--submission", "sub.h5"], "garbage.csv"),
    ("wide submission", ["submit", "--query", "wide.h5", "--reference", "wide.h5", "--out", "s2.h5"], "256"),
    ("nan descriptors", ["submit", "--query", "nan.h5", "--reference", "r.h5", "--out", "s2.h5"], "NaN"),
    ("normalize-fit k 0", ["normalize-fit", "--train", "q.h5", "--out", "n2", "--k", "0"], "--k"),
    ("describe bad side", ["describe", "--model", "m0", "--side", "x", "--images", "refs", "--out", "d.h5"], "side"),
    ("batch 0", ["precompute", "--model", "m0", "--side", "k", "--images", "refs", "--out", "t2", "--batch", "0"], "--batch"),
    ("shard 5 of 2", ["describe", "--model", "m0", "--side", "k", "--images", "refs", "--out", "d.h5", "--shard", "5/2"], "shard"),
    ("phases out of order", ["pipeline", "--data", "disc", "--work", "w2", "--phases", "Q1,Q2"], "alternate"),
    ("no images", ["describe", "--model", "m0", "--side", "k", "--images", "empty", "--out", "d.h5"], "no .jpg"),
    ("non-ASCII file name", ["gist-pca", "--pca", "gist", "--images", "uni", "--out", "u.h5"], "not ASCII"),
    ("augment an empty folder", ["augment", "empty", "--out", "a2"], "no .jpg"),
    ("both submission and query", ["evaluate-uap", "--ground-truth", "gt.csv", "--submission", "sub.h5", "--query", "q.h5"],
     "either"),
    ("not a normaliser", ["normalize", "--norm", "gist", "--in", "q.h5", "--out", "n.h5"], "normalize-fit"),
    ("not a model", ["train-q", "--model", "gist", "--keys", "k0", "--queries", "aug", "--out", "m9"], "model folder"),
    ("merge without shards", ["precompute", "--merge", "--out", "k0"], "no shard outputs"),
    ("augment-merge without shards", ["augment-merge", "aug"], "no shard outputs"),
    ("unknown backbone", ["init-model", "--pca", "gist", "--backbone", "resnet9000", "--out", "m9"], "unknown backbone"),
    ("missing onnx model", ["descriptor-pca", "--descriptor", "onnx:nope.onnx", "--train", "train", "--out", "o2"], "not found"),
    ("unknown recipe", ["pipeline", "--data", "disc", "--work", "w3", "--recipe", "magic"], "recipe"),
    ("unknown command", ["evaluate"], "No such command"),
]


def refused_cleanly(world: Path, name: str, argv: list, message: str) -> None:
    """The assertions of every bad input: exit 2, one `error:` line saying `message`, no
    traceback, every file under `world` byte-identical, nothing left behind."""
    before = tree(world)
    res = isc(*argv, cwd=world)
    after = tree(world)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert res.returncode == 2, (name, res.returncode, res.stderr[-2000:])
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    assert len(errors) == 1, res.stderr
    assert message in errors[0], (message, errors[0])
    changed = sorted(k for k in before if before[k] != after.get(k))
    assert not changed, f"{name} changed or removed {changed}"
    assert not sorted(set(after) - set(before)), f"{name} left files behind: {sorted(set(after) - set(before))}"


@pytest.mark.parametrize("name,argv,message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_damages_nothing(world, name, argv, message):
    refused_cleanly(world, name, argv, message)


def test_there_are_at_least_sixty_bad_inputs():
    assert len(CASES) >= 60


def test_half_size_table_warns_about_the_pairs_it_leaves_out(world, tmp_path):
    res = isc("train-q", "--model", world / "m0", "--keys", world / "khalf", "--queries", world / "aug",
              "--out", tmp_path / "m", "--steps", "1", "--batch", "4", "--workers", "1", "--no-progress")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "6 of 12 training queries have no key row" in res.stderr


def test_a_ground_truth_with_a_bom_is_read(world):
    res = isc("evaluate-uap", "--ground-truth", world / "bom.csv", "--submission", world / "sub.h5")
    assert res.returncode == 0, res.stderr
    assert "micro-AP" in res.stdout


# --------------------------------------------------------------------------- unusual images
def _unusual(folder: Path) -> dict[str, str]:
    """Unusual encodings of pictures, and the plain 8-bit RGB file each must equal."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    photo = Image.fromarray(data.astronaut()).resize((96, 80))
    grey = photo.convert("L")
    pairs = {}

    def save(name, im, ref, **kw):
        im.save(folder / name, **kw)
        ref.save(folder / ("ref_" + Path(name).stem + ".png"))
        pairs[Path(name).stem] = "ref_" + Path(name).stem

    save("g16.png", Image.fromarray((np.asarray(grey, np.uint16) * 257)), grey.convert("RGB"))
    save("grey.png", grey, grey.convert("RGB"))
    pal = photo.quantize(64)
    save("palette.png", pal, pal.convert("RGB"))
    save("alpha.png", photo.convert("RGBA"), photo)
    half = Image.new("RGBA", photo.size, (0, 0, 0, 0))
    half.paste(photo.crop((0, 0, 48, 80)).convert("RGBA"), (0, 0))
    white = Image.new("RGB", photo.size, (255, 255, 255))
    white.paste(photo.crop((0, 0, 48, 80)), (0, 0))
    save("transparent.png", half, white)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: a viewer turns it 90 degrees clockwise
    stored = photo.transpose(Image.Transpose.ROTATE_90)
    save("rotated.png", stored, photo, exif=exif.tobytes())
    cmyk = photo.convert("CMYK")
    save("cmyk.jpg", cmyk, cmyk.convert("RGB"), quality=100)
    return pairs


def test_unusual_images_give_the_descriptor_of_the_picture(tmp_path, image_folder):
    from isc_qk.configs import PCAFitConfig
    from isc_qk.formats import read_descriptors
    from isc_qk.starts.stage import describe_start_set, fit_start_pca

    train, _ = image_folder(12, "T", seed=0, size=72)
    pca = fit_start_pca("gist", train, tmp_path / "gist", PCAFitConfig(n_train=None, dim=DIM))
    pairs = _unusual(tmp_path / "odd")
    d = read_descriptors(describe_start_set(pca, tmp_path / "odd", tmp_path / "odd.h5", progress=False).out_raw)
    v = dict(zip(d.ids, d.vectors))
    assert set(v) == set(pairs) | set(pairs.values())
    for odd, ref in pairs.items():
        tol = 2e-2 if odd == "cmyk" else 1e-5  # CMYK -> RGB is Pillow's own conversion, JPEG-compressed
        assert np.linalg.norm(v[odd] - v[ref]) < tol, (odd, np.linalg.norm(v[odd] - v[ref]))
    # and every stage reads them: augment edits all of them
    res = isc("augment", tmp_path / "odd", "--out", tmp_path / "aug", "--quiet")
    assert res.returncode == 0, res.stderr
    assert len(list((tmp_path / "aug").glob("*.jpg"))) == 2 * len(pairs)


def test_a_decompression_bomb_is_skipped_not_fatal(tmp_path, image_folder):
    from PIL import Image

    folder, _ = image_folder(3, "T", seed=0, size=64)
    Image.new("L", (14000, 14000)).save(folder / "T999999.png", optimize=True)  # 196 Mpx: over Pillow's limit
    res = isc("augment", folder, "--out", tmp_path / "aug", "--quiet")
    assert res.returncode == 0, res.stderr
    assert "DecompressionBomb" in res.stderr and "T999999.png" in res.stderr
    assert len(list((tmp_path / "aug").glob("*.jpg"))) == 3


# --------------------------------------------------------------------------- concurrency, Ctrl-C
def test_two_writers_on_one_output_one_is_refused_and_the_result_is_correct(tmp_path):
    src = tmp_path / "src"
    make_image_folder(src, 150, "T", seed=4, size=256)
    cmd = [sys.executable, "-m", "isc_qk", "augment", str(src), "--out", str(tmp_path / "aug"), "--copies", "3",
           "--workers", "1", "--quiet"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.time() + 60
    while not list((tmp_path / "aug").glob("*.jpg")) and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 2 and "being written by another process (PID" in second.stderr, second.stderr
    assert "Traceback" not in second.stderr
    from isc_qk.formats import read_manifest

    rows = read_manifest(tmp_path / "aug" / "manifest.csv")
    assert len(rows) == 450 and len(list((tmp_path / "aug").glob("*.jpg"))) == 450
    assert not list((tmp_path / "aug").glob(".*"))  # no temp or lock files left


def test_ctrl_c_says_finished_work_is_kept_and_resumes(tmp_path):
    src = tmp_path / "src"
    make_image_folder(src, 150, "T", seed=5, size=200)
    cmd = [sys.executable, "-m", "isc_qk", "augment", str(src), "--out", str(tmp_path / "aug"), "--copies", "2",
           "--workers", "1", "--quiet"]
    # as from an interactive shell: a test run started in the background (`cmd &` in a script)
    # inherits SIGINT ignored, and the child would inherit that too and never see Ctrl-C
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while len(list((tmp_path / "aug").glob("*.jpg"))) < 4 and time.time() < deadline:
        time.sleep(0.1)
    assert p.poll() is None, "augment finished before the test could interrupt it"
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "interrupted: finished work is kept" in err and "Traceback" not in err
    done = len(list((tmp_path / "aug").glob("*.jpg")))
    assert 0 < done < 300
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    assert res.returncode == 0, res.stderr
    assert len(list((tmp_path / "aug").glob("*.jpg"))) == 300
