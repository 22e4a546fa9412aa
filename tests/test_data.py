"""Loading MNIST: the npz and IDX readers, the download, and rows as timesteps."""
import hashlib
import http.server
import io
import os
import threading

import numpy as np
import pytest

import rnn_mnist
from plumbing import batches, errors, mnist_files
from conftest import write_idx, write_idx_folder


def test_rows_become_timesteps_in_order():
    images = np.arange(2 * 28 * 28, dtype=np.int64).reshape(2, 28, 28) % 256
    images = images.astype(np.uint8)
    seq = mnist_files.as_sequences(images)
    assert seq.shape == (2, mnist_files.TIMESTEPS, mnist_files.FEATURES)
    assert seq.dtype == np.float32
    for t in (0, 13, 27):  # timestep t is row t of the image, scaled to [0, 1]
        np.testing.assert_allclose(seq[1, t], images[1, t] / 255.0, rtol=1e-6)
    assert seq.min() >= 0.0 and seq.max() <= 1.0


def test_validation_is_the_last_images():
    x, y = np.arange(10)[:, None], np.arange(10)
    (x_fit, y_fit), (x_val, y_val) = rnn_mnist.split_validation(x, y, 3)
    assert list(y_fit) == list(range(7)) and list(y_val) == [7, 8, 9]
    (x_fit, _), (x_val, _) = rnn_mnist.split_validation(x, y, 0)
    assert len(x_fit) == 10 and len(x_val) == 0


def test_npz_reads_all_four_arrays(tiny_npz, tiny_arrays):
    x_train, y_train, x_test, y_test = mnist_files.load_mnist(tiny_npz)
    np.testing.assert_array_equal(x_train, tiny_arrays["x_train"])
    np.testing.assert_array_equal(y_test, tiny_arrays["y_test"])
    assert x_test.shape == (60, 28, 28) and y_train.shape == (240,)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_reads_the_same_arrays(tmp_path, tiny_arrays, gz):
    folder = write_idx_folder(str(tmp_path / "idx"), tiny_arrays, gz=gz)
    loaded = mnist_files.load_mnist(folder)
    for key, array in zip(mnist_files.NPZ_KEYS, loaded):
        np.testing.assert_array_equal(array, tiny_arrays[key])


def broken_npz(tmp_path, tiny_arrays, change):
    arrays = dict(tiny_arrays)
    change(arrays)
    path = tmp_path / "broken.npz"
    np.savez(path, **arrays)
    return str(path)


NPZ_FAULTS = {
    "missing key": (lambda a: a.pop("y_test"), "lacks the array(s) y_test"),
    "wrong shape": (lambda a: a.update(x_train=a["x_train"].reshape(240, 784)), "expected (N, 28, 28)"),
    "wrong dtype": (lambda a: a.update(x_test=a["x_test"].astype(np.float64)), "expected uint8"),
    "label out of range": (lambda a: a["y_train"].__setitem__(0, 10), "expected 0-9"),
    "counts disagree": (lambda a: a.update(y_train=a["y_train"][:-1]), "240 images but 239 labels"),
    "object array": (lambda a: a.update(y_test=np.array([1, "x"], dtype=object)), "refused"),
}


@pytest.mark.parametrize("fault", sorted(NPZ_FAULTS))
def test_npz_faults_are_named(tmp_path, tiny_arrays, fault):
    change, message = NPZ_FAULTS[fault]
    path = broken_npz(tmp_path, tiny_arrays, change)
    with pytest.raises(errors.UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        mnist_files.load_mnist(path)


@pytest.mark.parametrize("content", [b"", b"not an npz at all\n" * 10])
def test_a_file_that_is_not_an_npz_is_refused(tmp_path, content):
    path = tmp_path / "mnist.npz"
    path.write_bytes(content)
    with pytest.raises(errors.UsageError, match="is not an npz file"):
        mnist_files.load_mnist(str(path))


def test_missing_path_is_named(tmp_path):
    with pytest.raises(errors.UsageError, match="does not exist"):
        mnist_files.load_mnist(str(tmp_path / "nowhere.npz"))


def test_folder_without_idx_files_is_named(tmp_path):
    with pytest.raises(errors.UsageError, match="has no train-images-idx3-ubyte"):
        mnist_files.load_mnist(str(tmp_path))


def idx_folder_with(tmp_path, tiny_arrays, key, write):
    folder = write_idx_folder(str(tmp_path / "idx"), tiny_arrays)
    path = os.path.join(folder, mnist_files.IDX_FILES["train"][0 if key == "x_train" else 1])
    write(path)
    return folder


def test_idx_wrong_magic(tmp_path, tiny_arrays):
    # labels written where the images belong: magic 0x801, not 0x803
    folder = idx_folder_with(tmp_path, tiny_arrays, "x_train",
                             lambda p: write_idx(p, tiny_arrays["y_train"]))
    with pytest.raises(errors.UsageError, match="not the IDX magic number 0x00000803"):
        mnist_files.load_mnist(folder)


def test_idx_wrong_dimensions(tmp_path, tiny_arrays):
    folder = idx_folder_with(tmp_path, tiny_arrays, "x_train",
                             lambda p: write_idx(p, tiny_arrays["x_train"].reshape(240, 14, 56)))
    with pytest.raises(errors.UsageError, match=r"expected \(N, 28, 28\)"):
        mnist_files.load_mnist(folder)


def test_idx_cut_short(tmp_path, tiny_arrays):
    def cut(path):
        write_idx(path, tiny_arrays["x_train"])
        with open(path, "r+b") as f:
            f.truncate(1000)
    folder = idx_folder_with(tmp_path, tiny_arrays, "x_train", cut)
    with pytest.raises(errors.UsageError, match="download it again"):
        mnist_files.load_mnist(folder)


def test_idx_counts_disagree(tmp_path, tiny_arrays):
    folder = idx_folder_with(tmp_path, tiny_arrays, "y_train",
                             lambda p: write_idx(p, tiny_arrays["y_train"][:200]))
    with pytest.raises(errors.UsageError, match="240 images but 200 labels"):
        mnist_files.load_mnist(folder)


def test_idx_truncated_gzip(tmp_path, tiny_arrays):
    folder = write_idx_folder(str(tmp_path / "idx"), tiny_arrays, gz=True)
    path = os.path.join(folder, "train-images-idx3-ubyte.gz")
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])
    with pytest.raises(errors.UsageError, match="train-images-idx3-ubyte.gz cannot be"):
        mnist_files.load_mnist(folder)


# ---------------------------------------------------------------------------
# The download, served from this machine


class Server:
    """A one-file HTTP server on 127.0.0.1 that counts the requests it answers."""

    def __init__(self, body):
        self.body, self.requests = body, 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests += 1
                self.send_response(200)
                self.send_header("Content-Length", str(len(outer.body)))
                self.end_headers()
                self.wfile.write(outer.body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/mnist.npz"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def npz_bytes(arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def test_download_fetches_verifies_and_caches(tmp_path, tiny_arrays):
    body = npz_bytes(tiny_arrays)
    sha = hashlib.sha256(body).hexdigest()
    cache = str(tmp_path / "cache")
    with Server(body) as server:
        first = mnist_files.load_mnist(url=server.url, sha256=sha, cache_dir=cache)
        again = mnist_files.load_mnist(url=server.url, sha256=sha, cache_dir=cache)
        assert server.requests == 1  # the second load came from the cache
    assert os.listdir(cache) == ["mnist.npz"]
    assert hashlib.sha256(open(os.path.join(cache, "mnist.npz"), "rb").read()).hexdigest() == sha
    np.testing.assert_array_equal(first[0], tiny_arrays["x_train"])
    np.testing.assert_array_equal(again[3], tiny_arrays["y_test"])


def test_download_with_wrong_hash_is_refused_and_not_kept(tmp_path, tiny_arrays):
    cache = str(tmp_path / "cache")
    with Server(npz_bytes(tiny_arrays)) as server:
        with pytest.raises(errors.UsageError, match="it was not kept"):
            mnist_files.load_mnist(url=server.url, sha256="0" * 64, cache_dir=cache)
    assert os.listdir(cache) == []


def test_unreachable_server_points_to_data_flag(tmp_path):
    with Server(b"") as server:
        url = server.url  # the port is closed once the server stops
    with pytest.raises(errors.UsageError, match="could not download MNIST.*--data PATH"):
        mnist_files.load_mnist(url=url, cache_dir=str(tmp_path / "cache"))
    assert os.listdir(tmp_path / "cache") == []


def test_random_shift_moves_each_image_within_the_limit():
    images = np.zeros((64, 28, 28), np.float32)
    images[:, 14, 10] = 1.0  # one bright pixel per image
    shifted = rnn_mnist.shift_randomly(images, 2, seed=[1, 2])
    assert shifted.shape == images.shape
    assert (shifted.sum(axis=(1, 2)) == 1.0).all()  # moved, not lost or blurred
    rows, cols = np.nonzero(shifted.max(axis=2))[1], np.nonzero(shifted.max(axis=1))[1]
    assert set(rows) <= set(range(12, 17)) and set(cols) <= set(range(8, 13))
    assert len(set(zip(rows, cols))) > 5  # the shifts differ from image to image
    np.testing.assert_array_equal(shifted, rnn_mnist.shift_randomly(images, 2, seed=[1, 2]))


def labelled_ramp(n):
    """n images whose every pixel holds the image's own label, so pairs can be checked."""
    return np.arange(n, dtype=np.float32)[:, None, None] * np.ones((1, 28, 28), np.float32), np.arange(n)


def collect(batches):
    return [(np.asarray(bx), np.asarray(by)) for bx, by in batches]


def test_an_epoch_covers_every_image_once_in_a_shuffled_order():
    x, y = labelled_ramp(10)
    epoch = collect(rnn_mnist.epoch_batches(x, y, 4, seed=1, epoch=0))
    assert [len(by) for _, by in epoch] == [4, 4, 2]
    labels = np.concatenate([by for _, by in epoch])
    assert sorted(labels) == list(range(10)) and list(labels) != list(range(10))
    for bx, by in epoch:  # images stay with their labels
        np.testing.assert_array_equal(bx[:, 0, 0], by)
    next_epoch = collect(rnn_mnist.epoch_batches(x, y, 4, seed=1, epoch=1))
    assert list(np.concatenate([by for _, by in next_epoch])) != list(labels)


def test_an_epoch_resumed_mid_way_continues_with_the_same_batches():
    x, y = labelled_ramp(40)
    x = x * 0 + np.random.default_rng(0).random((40, 28, 28), dtype=np.float32)
    whole = collect(rnn_mnist.epoch_batches(x, y, 8, seed=3, epoch=2, max_shift=2))
    rest = collect(rnn_mnist.epoch_batches(x, y, 8, seed=3, epoch=2, max_shift=2, first_step=3))
    assert len(rest) == 2
    for (wx, wy), (rx, ry) in zip(whole[3:], rest):
        np.testing.assert_array_equal(wy, ry)
        np.testing.assert_array_equal(wx, rx)  # same images, shifted the same way


def test_prefetched_batches_keep_their_order_and_errors():
    assert list(batches.prefetched(iter(range(50)), depth=3)) == list(range(50))

    def failing():
        yield 1
        raise ValueError("broken batch")
    with pytest.raises(ValueError, match="broken batch"):
        list(batches.prefetched(failing()))

    import threading
    import time
    before = threading.active_count()
    for source in (iter(range(10_000)), iter(range(2))):  # stopped mid-way, or already done
        stream = batches.prefetched(source, depth=1)
        assert next(stream) == 0
        time.sleep(0.3)  # the producer runs ahead until the queue is full
        stream.close()  # a consumer that stops early leaves no producer behind
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() == before
