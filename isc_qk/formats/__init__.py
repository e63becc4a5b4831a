"""Every file format isc-qk reads or writes, one module each; all writes are atomic.

Shared with the ISC2021 tools:

* `descriptors` - per-set descriptor HDF5 (``vectors`` float32 + ``image_names`` ASCII), as
  the official baselines write it;
* `ground_truth` - ``query_id,reference_id`` CSV, empty reference = distractor;
* `submission` - the descriptor-track submission HDF5 (``query``, ``reference``,
  ``query_ids``, ``reference_ids``; ids sorted; d <= 256);
* `images` - image folders (.jpg/.jpeg/.png; id = file stem) and the one decoder.

The tool's own:

* `feature_table` - ``PREFIX.npy`` (float16, memory-mapped) + ``PREFIX.ids.txt``;
* `manifest` - the augmentation manifest ``query_id,source_id,ops``;
* `pca` - fitted PCAs (``.npz`` + ``.json``); `normalizer` - ``norm.npz``;
* `checkpoint` - training checkpoints; `losses` - ``losses.csv``; `results` - the results table;
* `atomic` - temp-file-then-rename writes (room reserved), JSON; `npy` - ``.npy`` files
  written row by row through plain writes; `ids` (ids that round-trip), `hdf5` - helpers of the above.
"""

from .atomic import atomic_path, read_json, save_keras_weights, save_npz, write_json
from .descriptors import Descriptors, check_vectors, read_descriptors, write_descriptors
from .feature_table import feature_table_paths, is_feature_table, open_feature_table, read_ids, write_ids
from .ground_truth import GroundTruth, read_ground_truth, write_ground_truth
from .ids import IMAGE_SUFFIXES, check_unique, image_id
from .images import BadImage, ImageFile, list_images, load_rgb
from .manifest import append_manifest_rows, read_manifest, write_manifest
from .pca import PCAModel
from .submission import MAX_SUBMISSION_DIM, Submission, read_submission, validate_submission, write_submission

__all__ = [
    "atomic_path", "read_json", "save_keras_weights", "save_npz", "write_json",
    "Descriptors", "check_vectors", "read_descriptors", "write_descriptors",
    "feature_table_paths", "is_feature_table", "open_feature_table", "read_ids", "write_ids",
    "GroundTruth", "read_ground_truth", "write_ground_truth",
    "IMAGE_SUFFIXES", "check_unique", "image_id",
    "BadImage", "ImageFile", "list_images", "load_rgb",
    "append_manifest_rows", "read_manifest", "write_manifest",
    "PCAModel",
    "MAX_SUBMISSION_DIM", "Submission", "read_submission", "validate_submission", "write_submission",
]
