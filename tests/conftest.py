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


def as_command(argv):
    """rnn_mnist.main(argv) answered as the command line answers it: what ends it early as its
    one line on stderr, and its exit status as SystemExit."""
    import rnn_mnist
    try:
        return rnn_mnist.main(argv)
    except rnn_mnist.Error as e:
        print(e.line(), file=sys.stderr)
        raise SystemExit(e.status) from None


def one_quick(cases, ids, quick=0):
    """pytest.param of each case: the one at index `quick` in the quick tier, the others in the
    full one (the same behaviour, other inputs)."""
    return [pytest.param(*(case if isinstance(case, tuple) else (case,)), id=name,
                         marks=() if i == quick else pytest.mark.full)
            for i, (case, name) in enumerate(zip(cases, ids))]


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
    opener = (lambda p, mode: gzip.open(p, mode, compresslevel=1)) if gz else open  # level 1: fast
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


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny model trained on synthetic digits, in a run folder."""
    folder = tmp_path_factory.mktemp("trained")
    data = folder / "tiny.npz"
    np.savez(data, **synthetic_mnist())
    import rnn_mnist
    rnn_mnist.main(["--data", str(data), "--epochs", "2", "--batch-size", "32", "--units", "8",
                    "--validation-size", "40", "--logdir", str(folder / "runs"), "--run-name", "r",
                    "--quiet"])
    return {"data": str(data), "logdir": str(folder / "runs"),
            "model": str(folder / "runs" / "r" / "model.keras")}


@pytest.fixture(scope="session")
def trained_permuted(tmp_path_factory):
    """A tiny model trained on synthetic digits read in a fixed scrambled order, 7 pixels a step:
    112 steps, past the length unrolled, so its layer runs TensorFlow's loop."""
    folder = tmp_path_factory.mktemp("permuted")
    data = folder / "tiny.npz"
    np.savez(data, **synthetic_mnist())
    import rnn_mnist
    rnn_mnist.main(["--data", str(data), "--epochs", "1", "--batch-size", "32", "--units", "8",
                    "--validation-size", "40", "--logdir", str(folder / "runs"), "--run-name", "p",
                    "--order", "permuted", "--pixels-per-step", "7", "--permutation", "3",
                    "--clip-norm", "1", "--quiet"])
    return {"data": str(data), "logdir": str(folder / "runs"), "run": str(folder / "runs" / "p"),
            "model": str(folder / "runs" / "p" / "model.keras")}


def write_picture(path, pixels):
    import tensorflow as tf
    encode = tf.io.encode_jpeg if str(path).endswith(".jpg") else tf.io.encode_png
    tf.io.write_file(str(path), encode(pixels))


def drawn_digit(height=160, width=120, ink=(20, 20, 20), paper=(250, 245, 235)):
    """An RGB picture of a thick '7', dark ink on light paper, off-centre on a large canvas."""
    picture = np.empty((height, width, 3), np.uint8)
    picture[:] = paper
    picture[30:42, 20:90] = ink  # the top bar
    for row in range(42, 130):  # the stroke down and to the left
        col = 90 - (row - 42) * 45 // 88
        picture[row, col - 6:col + 6] = ink
    return picture


@pytest.fixture(scope="session")
def real_model(tmp_path_factory):
    """A model trained quickly on a slice of the real MNIST: 20,000 images, 3 epochs."""
    if not os.path.isfile(REAL_MNIST):
        pytest.skip(f"the real MNIST file {REAL_MNIST} is absent (set RNN_MNIST_DATA to its path)")
    import rnn_mnist
    runs = tmp_path_factory.mktemp("real")
    rnn_mnist.main(["--data", REAL_MNIST, "--max-train-samples", "20000", "--validation-size", "2000",
                    "--epochs", "3", "--units", "64", "--batch-size", "128", "--learning-rate", "5e-3",
                    "--logdir", str(runs), "--run-name", "real", "--quiet"])
    return str(runs / "real" / "model.keras")


def as_user_picture(digit, path, rng):
    """An MNIST digit as someone would photograph it: black on white, bigger, RGB, off-centre, JPEG."""
    import tensorflow as tf
    big = tf.image.resize(digit[..., None].astype(np.float32), (84, 84)).numpy()[..., 0]
    canvas = np.full((200, 150), 255.0, np.float32)
    top, left = rng.integers(5, 200 - 84 - 5), rng.integers(5, 150 - 84 - 5)
    canvas[top:top + 84, left:left + 84] = 255 - np.clip(big, 0, 255)
    rgb = np.repeat(canvas[..., None], 3, axis=-1) * np.array([1.0, 0.97, 0.92], np.float32)
    tf.io.write_file(path, tf.io.encode_jpeg(np.round(rgb).astype(np.uint8), quality=85))


@pytest.fixture(scope="session")
def user_pictures(tmp_path_factory):
    """The first 200 test digits as people's pictures (JPEG files), and their labels."""
    if not os.path.isfile(REAL_MNIST):
        pytest.skip(f"the real MNIST file {REAL_MNIST} is absent (set RNN_MNIST_DATA to its path)")
    folder = tmp_path_factory.mktemp("pictures")
    with np.load(REAL_MNIST) as npz:
        digits, labels = npz["x_test"][:200], npz["y_test"][:200]
    rng = np.random.default_rng(0)
    pictures = []
    for i, digit in enumerate(digits):
        pictures.append(str(folder / f"digit{i:03d}.jpg"))
        as_user_picture(digit, pictures[-1], rng)
    return pictures, labels


FULL_TIER = ("the full tier: the slow end-to-end tests (real data, the browser, workers, load, "
             "faults of whole processes, fresh processes) and the other inputs of a behaviour "
             "the quick tier tries once, run with --full")


def pytest_addoption(parser):
    parser.addoption("--full", action="store_true", help="run the full tier too: " + FULL_TIER)


def pytest_collection_modifyitems(config, items):
    """Without --full, the tests marked `full` are skipped, with the switch that runs them."""
    if not config.getoption("--full"):
        for item in items:
            if "full" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=FULL_TIER))


def pytest_configure(config):
    config.addinivalue_line("markers", "full: " + FULL_TIER)

    # Two CPU devices, as `python rnn_mnist.py` makes on a 2-core machine, set before any
    # test starts TensorFlow: the runs made in this process then train as the command does.
    from plumbing import lazy_tensorflow
    tf = lazy_tensorflow.import_tensorflow()["tf"]  # quietly, as the script imports it
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2)

    # Keras 3.15 calls np.array(tensor) in a way NumPy 2 warns about; it is not ours to fix.
    config.addinivalue_line("filterwarnings",
                            "ignore:__array__ implementation doesn't accept a copy keyword")
