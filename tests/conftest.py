"""Shared fixtures: tiny synthetic MNIST-shaped data, and the real data when it is beside the repo."""
import gzip
import os
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

REAL_MNIST = os.environ.get("RNN_MNIST_DATA",
                            os.path.join(os.path.dirname(REPO), "shared", "data", "mnist.npz"))


def synthetic_mnist(n_train=240, n_test=60, seed=0):
    """Random uint8 digits in MNIST's shapes: each class is a bright band at its own rows."""
    rng = np.random.default_rng(seed)

    def split(n):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        for image, label in zip(images, labels):
            image[2 + 2 * label:4 + 2 * label, 4:24] = 255
        return images, labels

    x_train, y_train = split(n_train)
    x_test, y_test = split(n_test)
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def write_idx(path, array, gz=False):
    """Write `array` as an IDX file: magic (0x0000 08 ndim), big-endian sizes, raw bytes."""
    header = (0x0800 | array.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


IDX_NAMES = {"x_train": "train-images-idx3-ubyte", "y_train": "train-labels-idx1-ubyte",
             "x_test": "t10k-images-idx3-ubyte", "y_test": "t10k-labels-idx1-ubyte"}


def write_idx_folder(folder, arrays, gz=False):
    os.makedirs(folder, exist_ok=True)
    for key, name in IDX_NAMES.items():
        write_idx(os.path.join(folder, name + (".gz" if gz else "")), arrays[key], gz)
    return folder


@pytest.fixture
def tiny_arrays():
    return synthetic_mnist()


@pytest.fixture
def tiny_npz(tmp_path, tiny_arrays):
    path = tmp_path / "tiny.npz"
    np.savez(path, **tiny_arrays)
    return str(path)


@pytest.fixture
def real_mnist():
    if not os.path.isfile(REAL_MNIST):
        pytest.skip(f"the real MNIST file {REAL_MNIST} is absent (set RNN_MNIST_DATA to its path)")
    return REAL_MNIST


def pytest_configure(config):
    # Keras 3.15 calls np.array(tensor) in a way NumPy 2 warns about; it is not ours to fix.
    config.addinivalue_line("filterwarnings",
                            "ignore:__array__ implementation doesn't accept a copy keyword")
