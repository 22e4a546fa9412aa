"""The facts of MNIST, its files (a Keras npz, the four original IDX files, the
download), and how an image becomes a sequence."""

import gzip
import hashlib
import os
import tempfile
import urllib.error
import urllib.request
import zipfile

import numpy as np

from .atomic import replaced_atomically
from .errors import UsageError

TIMESTEPS = 28  # image rows, read one per step
FEATURES = 28  # pixels in a row
NUM_CLASSES = 10
TRAIN_IMAGES = 60_000  # in MNIST's training set (and 10,000 in its test set)
MAX_PIXEL = 255

MNIST_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"
MNIST_SHA256 = "731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
IDX_FILES = {  # split -> (images file, labels file), as published
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension


def keras_cache_dir():
    """The folder where `keras.datasets` caches its downloads, so both share one copy."""
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return os.path.join(home, "datasets")


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url, sha256, cache_dir, filename="mnist.npz"):
    """Return the path of a verified copy of `url` in `cache_dir`, downloading it if needed.

    Written here rather than with `keras.utils.get_file`, which keeps a download
    that fails its hash check in the cache: this one writes to a temporary file,
    checks the hash, and only then moves it into place, so a bad file is never kept.
    """
    target = os.path.join(cache_dir, filename)
    if os.path.isfile(target) and sha256_of(target) == sha256:
        return target
    offline_hint = "pass --data PATH to read a local mnist.npz or a folder of the IDX files"
    try:
        os.makedirs(cache_dir, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=cache_dir, prefix=f".{filename}.", suffix=".part")
        os.close(fd)
    except OSError as e:
        raise UsageError(f"cannot write the download cache {cache_dir} ({e.strerror}); "
                         f"set KERAS_HOME to a writable folder, or {offline_hint}") from None
    try:
        with replaced_atomically(target, partial):
            with open(partial, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
            got = sha256_of(partial)
            if got != sha256:
                raise UsageError(f"the file downloaded from {url} has sha256 {got[:12]}..., not the "
                                 f"published {sha256[:12]}...; it was not kept. Try again, or {offline_hint}")
        return target
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        raise UsageError(f"could not download MNIST from {url} ({reason}); "
                         f"to work offline, {offline_hint}") from None


def check_split(images, labels, name):
    """Refuse arrays that are not MNIST-shaped digits with labels 0-9."""
    if images.dtype != np.uint8:
        raise UsageError(f"{name} images are {images.dtype}, expected uint8 pixels 0-{MAX_PIXEL}")
    if images.ndim != 3 or images.shape[1:] != (TIMESTEPS, FEATURES):
        raise UsageError(f"{name} images have shape {images.shape}, "
                         f"expected (N, {TIMESTEPS}, {FEATURES})")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise UsageError(f"{name} labels have shape {labels.shape} and dtype {labels.dtype}, "
                         "expected one integer per image")
    if len(images) != len(labels):
        raise UsageError(f"{name} has {len(images)} images but {len(labels)} labels")
    if len(images) == 0:
        raise UsageError(f"{name} holds no images")
    if labels.min() < 0 or labels.max() >= NUM_CLASSES:
        raise UsageError(f"{name} labels run from {labels.min()} to {labels.max()}, "
                         f"expected 0-{NUM_CLASSES - 1}")


def load_npz(path):
    """Read (x_train, y_train, x_test, y_test) from an npz in `keras.datasets.mnist` layout."""
    if not zipfile.is_zipfile(path):
        raise UsageError(f"{path} is not an npz file (it is not a zip archive); "
                         "give a mnist.npz or a folder of the IDX files")
    try:
        # allow_pickle=False: an npz holding object arrays is refused, never unpickled.
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in NPZ_KEYS if key not in npz.files]
            if missing:
                raise UsageError(f"{path} lacks the array(s) {', '.join(missing)}; "
                                 f"an MNIST npz holds {', '.join(NPZ_KEYS)}")
            arrays = [npz[key] for key in NPZ_KEYS]
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise UsageError(f"{path} holds object arrays, which would need unpickling; "
                             "refused: save the arrays as plain uint8 numbers") from None
        raise UsageError(f"{path} cannot be read as an npz ({e})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise UsageError(f"{path} cannot be read as an npz ({e})") from None
    check_split(arrays[0], arrays[1], f"{path} train split")
    check_split(arrays[2], arrays[3], f"{path} test split")
    return tuple(arrays)


def read_idx(path, magic):
    """Read one IDX file (optionally gzip-compressed) whose header must carry `magic`."""
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise UsageError(f"{path} cannot be read ({e}); download it again") from None
    except Exception as e:  # zlib.error for a corrupt stream
        raise UsageError(f"{path} cannot be decompressed ({e}); download it again") from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        found = f"0x{int.from_bytes(raw[:4], 'big'):08x}" if len(raw) >= 4 else "nothing"
        raise UsageError(f"{path} starts with {found}, not the IDX magic number 0x{magic:08x}; "
                         "is it the right file?")
    if len(raw) < header:
        raise UsageError(f"{path} is cut short inside its header; download it again")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise UsageError(f"{path} holds {len(raw)} bytes, but its header {dims} promises "
                         f"{expected}; download it again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def find_idx_file(folder, name):
    for candidate in (name, name + ".gz"):
        path = os.path.join(folder, candidate)
        if os.path.isfile(path):
            return path
    raise UsageError(f"{folder} has no {name} (or {name}.gz); the folder must hold the four "
                     "MNIST IDX files, or give --data a mnist.npz")


def load_idx_folder(folder):
    """Read (x_train, y_train, x_test, y_test) from the four original IDX files."""
    arrays = []
    for split, (images_name, labels_name) in IDX_FILES.items():
        images = read_idx(find_idx_file(folder, images_name), IDX_IMAGES_MAGIC)
        labels = read_idx(find_idx_file(folder, labels_name), IDX_LABELS_MAGIC)
        check_split(images, labels, f"{folder} {split} split")
        arrays += [images, labels]
    return tuple(arrays)


def load_mnist(data=None, url=MNIST_URL, sha256=MNIST_SHA256, cache_dir=None):
    """(x_train, y_train, x_test, y_test) as uint8 images and integer labels.

    `data` is a local mnist.npz or a folder of IDX files; without it, the Keras
    copy is downloaded (once, then served from the Keras cache).
    """
    if data is None:
        return load_npz(download(url, sha256, cache_dir or keras_cache_dir()))
    check_data(data)
    return load_idx_folder(data) if os.path.isdir(data) else load_npz(data)


def check_data(data):
    """A --data that names nothing is refused (None: the download, nothing to check)."""
    if data is not None and not os.path.exists(data):
        raise UsageError(f"--data {data} does not exist; give the path of a mnist.npz or of a "
                         "folder holding the four IDX files")


def as_sequences(images):
    """uint8 images [N, rows, cols] -> float32 sequences [N, timesteps, features] in [0, 1].

    An image's rows are already in reading order, so row r becomes timestep r.
    """
    return images.astype(np.float32) / MAX_PIXEL
