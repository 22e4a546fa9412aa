"""`serve`: the page's API over HTTP on 127.0.0.1, and the command that serves it."""
import concurrent.futures
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import rnn_mnist
from plumbing import batching, mnist_files, pictures, reading, server, using
from plumbing.errors import UsageError
from conftest import REPO, as_command, drawn_digit


def serve_in_thread(model_path):
    """A page server for `model_path` on a free port of 127.0.0.1, serving from a daemon thread
    (so it ends with the test process whatever happens); returns (server, base URL)."""
    model, path = using.load_trained_model(model_path)
    page = server.page_server(server.Reader(model, path), "127.0.0.1", 0)
    threading.Thread(target=page.serve_forever, daemon=True).start()
    return page, f"127.0.0.1:{page.server_address[1]}"


@pytest.fixture(scope="module")
def page(trained):
    server, address = serve_in_thread(trained["model"])
    yield address
    server.shutdown()
    server.server_close()


def request(address, method, path, body=None, headers=None):
    """(status, content type, body) of one request on a new connection."""
    connection = http.client.HTTPConnection(address, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        connection.close()


def read(address, body):
    status, content_type, answer = request(address, "POST", "/api/read", body)
    assert content_type == "application/json"
    return status, json.loads(answer)


def png_bytes(pixels):
    import tensorflow as tf
    return tf.io.encode_png(pixels).numpy()


def test_the_api_reads_a_picture_as_predict_does(page, trained, tmp_path, capsys):
    picture = drawn_digit()
    status, answer = read(page, png_bytes(picture))
    assert status == 200
    (tmp_path / "seven.png").write_bytes(png_bytes(picture))
    record, = rnn_mnist.main(["predict", str(tmp_path / "seven.png"), "--model", trained["model"], "--json"])
    capsys.readouterr()
    assert answer["digit"] == record["digit"]
    np.testing.assert_allclose(answer["probabilities"], record["probabilities"], atol=2e-4)
    assert answer["seen"] == pictures.to_mnist_form(picture).tolist()  # made as predict makes it
    readout = np.array(answer["readout"])
    assert readout.shape == (mnist_files.TIMESTEPS, mnist_files.NUM_CLASSES)
    np.testing.assert_allclose(readout.sum(axis=1), 1, atol=1e-3)
    np.testing.assert_allclose(readout[-1], answer["probabilities"], atol=1e-4)  # the last row is the answer
    shown = len(answer["units"])
    assert shown == len(answer["unit_digits"]) == reading.UNITS_PER_DIGIT * mnist_files.NUM_CLASSES
    assert set(answer["state"]) == {"input gate", "forget gate", "output gate", "cell state"}
    for name, values in answer["state"].items():
        assert np.array(values).shape == (mnist_files.TIMESTEPS, shown), name


BAD_BODIES = [
    (b"", 400, "the body is empty; send the bytes of a PNG, JPEG, BMP or GIF picture"),
    (b"GIF89a but not really", 400, "the picture is not a PNG, JPEG, BMP or GIF image; give a picture of a digit"),
    ("blank", 400, "the picture is blank: no digit to read"),
    ("huge", 413, "more than the 4,194,304 a picture may have; send a smaller one"),
    ("bomb", 400, "the picture is 20000x20000 pixels, larger than the 4096x4096 this tool reads"),
    (b"GIF89a\x20\x4e\x20\x4e\0\0\0\x2c" + b"\0" * 100, 400,  # a GIF's screen of 20,000 x 20,000
     "the picture is 20000x20000 pixels, larger than the 4096x4096 this tool reads"),
    (b"BM" + b"\0" * 12 + (40).to_bytes(4, "little") + (20000).to_bytes(4, "little")  # a BMP's,
     + (-20000).to_bytes(4, "little", signed=True) + (1).to_bytes(2, "little") + b"\0" * 100, 400,  # top down
     "the picture is 20000x20000 pixels, larger than the 4096x4096 this tool reads"),
]


@pytest.mark.parametrize("body,status,message", BAD_BODIES, ids=["empty", "not-a-picture", "blank",
                                                                 "oversized", "too-many-pixels",
                                                                 "gif-too-many-pixels", "bmp-too-many-pixels"])
def test_bad_bodies_get_json_errors_and_the_server_goes_on(page, body, status, message):
    if body == "blank":
        body = png_bytes(np.full((60, 60, 3), 250, np.uint8))
    elif body == "huge":
        body = b"\0" * (server.MAX_BODY + 1)
    elif body == "bomb":  # a valid PNG header declaring 20,000 x 20,000 pixels
        import struct
        import zlib
        header = b"IHDR" + struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)
        body = (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + header
                + struct.pack(">I", zlib.crc32(header)) + b"\0" * 100)
    got, answer = read(page, body)
    assert got == status and set(answer) == {"error"} and message in answer["error"], answer
    assert "Traceback" not in answer["error"]
    assert read(page, png_bytes(drawn_digit()))[0] == 200  # still serving


def test_a_form_upload_is_told_to_send_the_bytes_themselves(page):
    boundary = "xyz"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png_bytes(drawn_digit()) + f"\r\n--{boundary}--\r\n".encode()
    got, _, answer = request(page, "POST", "/api/read", body,
                             {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert got == 400 and "--data-binary" in json.loads(answer)["error"]
    assert read(page, png_bytes(drawn_digit()))[0] == 200  # still serving


def test_requests_the_api_does_not_take_get_json_errors(page):
    for method, path, status in [("GET", "/api/read", 405), ("GET", "/nothing", 404),
                                 ("POST", "/api/other", 404), ("GET", "/../rnn_mnist.py", 404)]:
        got, content_type, body = request(page, method, path, b"x" if method == "POST" else None)
        assert (got, content_type) == (status, "application/json") and "error" in json.loads(body)
    for length in ("-1", "many"):
        got, _, body = request(page, "POST", "/api/read", headers={"Content-Length": length})
        assert got == 411 and "Content-Length" in json.loads(body)["error"]
    connection = http.client.HTTPConnection(page, timeout=30)  # no Content-Length at all
    connection.putrequest("POST", "/api/read")
    connection.endheaders()
    response = connection.getresponse()
    assert response.status == 411 and "Content-Length" in json.loads(response.read())["error"]
    connection.close()
    assert request(page, "GET", "/api/model")[0] == 200


def test_several_requests_at_once_are_all_answered(page):
    bodies = [png_bytes(np.roll(drawn_digit(), shift, axis=1)) for shift in range(-8, 8)]
    alone = [read(page, body)[1]["probabilities"] for body in bodies]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda body: read(page, body), bodies))
    assert [status for status, _ in together] == [200] * len(bodies)
    np.testing.assert_allclose([answer["probabilities"] for _, answer in together], alone, atol=1e-6)


def test_pictures_that_arrive_together_are_read_in_few_calls_each_getting_its_own_answer():
    calls = []

    def read_batch(images):  # the model, slow enough that the others arrive while it reads
        calls.append(len(images))
        time.sleep(0.05)
        return [int(image.sum()) for image in images]

    batcher = batching.Batcher(read_batch, most=8, wait_ms=20)

    def one(n):
        with batcher.request() as ticket:
            return batcher.read(np.full((2, 2), n), ticket)
    with concurrent.futures.ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(one, range(24)))
    assert answers == [4 * n for n in range(24)]
    assert sum(calls) == 24 and max(calls) <= 8 and len(calls) <= 8, calls
    batcher.close()


def test_a_picture_that_cannot_be_read_is_refused_alone_and_its_batch_is_read(trained):
    model, path = using.load_trained_model(trained["model"])
    reader = server.Reader(model, path)
    good = [png_bytes(drawn_digit()), png_bytes(np.roll(drawn_digit(), 4, axis=1))]
    alone = [reader.read_batch([body])[0] for body in good]
    answers = reader.read_batch([good[0], b"GIF89a but not really", png_bytes(np.full((9, 9, 1), 255, np.uint8)),
                                 good[1]])
    assert [type(a).__name__ for a in answers] == ["dict", "UsageError", "UsageError", "dict"]
    assert "not a PNG, JPEG, BMP or GIF" in str(answers[1]) and "blank" in str(answers[2])
    for answer, lone in zip([answers[0], answers[3]], alone):
        assert answer["digit"] == lone["digit"]
        np.testing.assert_allclose(answer["probabilities"], lone["probabilities"], atol=1e-4)
    reader.batcher.close()


def test_a_picture_larger_than_the_pages_is_prepared_in_its_own_requests_thread(trained):
    model, path = using.load_trained_model(trained["model"])
    reader = server.Reader(model, path)
    taken, read_batch = [], reader.batcher.read_batch
    reader.batcher.read_batch = lambda pictures: taken.extend(pictures) or read_batch(pictures)
    small = png_bytes(drawn_digit())  # 120x160, smaller than the page's 280x280
    large = png_bytes(np.kron(drawn_digit(), np.ones((4, 4, 1), np.uint8)))  # 480x640
    answers = [reader.answer(body) for body in (small, large)]
    assert taken[0] == small  # the bytes, prepared by the batch
    assert isinstance(taken[1], np.ndarray) and taken[1].shape == (28, 28)  # prepared before
    assert answers[0]["digit"] == answers[1]["digit"] and answers[1]["seen"].tolist() == taken[1].tolist()
    with pytest.raises(UsageError, match="blank"):  # a large picture's error raised to its request
        reader.answer(png_bytes(np.full((600, 600, 1), 255, np.uint8)))
    reader.batcher.close()


def test_an_error_answered_for_one_picture_is_raised_to_its_request_alone():
    batcher = batching.Batcher(lambda pictures: [ValueError(p) if p < 0 else 2 * p for p in pictures])
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda n: in_request(batcher, n), [1, -1, 3, -4]))
    assert results[0] == 2 and results[2] == 6
    assert [type(results[i]).__name__ for i in (1, 3)] == ["ValueError", "ValueError"]
    batcher.close()


def in_request(batcher, picture):
    """What a request of `picture` gets: its answer, or the error raised to it."""
    with batcher.request() as ticket:
        try:
            return batcher.read(picture, ticket)
        except Exception as e:
            return e


def test_connections_one_after_another_are_served_by_a_thread_kept_for_the_next(trained):
    page, address = serve_in_thread(trained["model"])
    served_by = set()
    for _ in range(5):
        assert request(address, "GET", "/api/model")[0] == 200  # a new connection each
        served_by |= {t.ident for t in threading.enumerate() if t.name == server.connection_thread(page)}
        ended = time.monotonic() + 5
        while page.threads.idle < 1 and time.monotonic() < ended:  # until it has seen the client close
            time.sleep(0.01)
    assert len(served_by) == 1
    page.shutdown()
    page.server_close()


def test_a_lone_picture_does_not_wait_for_a_batch_to_fill():
    batcher = batching.Batcher(lambda images: list(images), most=64, wait_ms=10_000)
    started = time.monotonic()
    with batcher.request() as ticket:
        assert batcher.read(np.ones(3), ticket).tolist() == [1, 1, 1]
    assert time.monotonic() - started < 5  # far less than the 10 s it would wait for company
    batcher.close()


def blocked_batcher(**sizes):
    """A Batcher whose first batch waits until `release` is set; the images it read."""
    release, read = threading.Event(), []

    def read_batch(images):
        release.wait(30)
        read.extend(int(image) for image in images)
        return list(images)
    return batching.Batcher(read_batch, **sizes), release, read


def in_thread(batcher, image, gone=lambda: False):
    result = {}

    def go():
        with batcher.request() as ticket:
            try:
                result["answer"] = batcher.read(np.array(image), ticket, gone)
            except Exception as e:
                result["error"] = e
    thread = threading.Thread(target=go)
    thread.start()
    time.sleep(0.2)  # in the queue, or being read
    return thread, result


def test_a_full_queue_refuses_and_a_client_that_left_is_not_read():
    batcher, release, read = blocked_batcher(most=1, wait_ms=0, queue_most=2)
    first, _ = in_thread(batcher, 1)  # being read
    left, left_result = in_thread(batcher, 2, gone=lambda: True)  # queued, then its client goes
    left.join(5)
    queued = [in_thread(batcher, n) for n in (3, 4)]
    with batcher.request() as ticket, pytest.raises(batching.Full):
        batcher.read(np.array(5), ticket)
    release.set()
    for thread, _ in [(first, None), *queued]:
        thread.join(5)
    assert left_result == {"answer": None} and read == [1, 3, 4]  # 2 was never read
    assert [result["answer"] for _, result in queued] == [3, 4]
    batcher.close()


def test_closing_answers_the_picture_being_read_and_refuses_the_queued():
    batcher, release, read = blocked_batcher(most=1, wait_ms=0)
    (reading_thread, being_read), (queued_thread, queued) = in_thread(batcher, 1), in_thread(batcher, 2)
    closer = threading.Thread(target=batcher.close)
    closer.start()
    time.sleep(0.2)
    release.set()
    for thread in (closer, reading_thread, queued_thread):
        thread.join(5)
        assert not thread.is_alive()
    assert being_read == {"answer": 1} and isinstance(queued["error"], batching.Closing)
    with batcher.request() as ticket, pytest.raises(batching.Closing):
        batcher.read(np.array(3), ticket)


def test_a_full_queue_is_answered_503_with_retry_after(trained):
    model, path = using.load_trained_model(trained["model"])
    reader = server.Reader(model, path, (1, 0, 1))  # one picture read at a time, one waiting
    read_each = reader.batcher.read_batch
    reader.batcher.read_batch = lambda images: time.sleep(0.3) or read_each(images)
    page = server.page_server(reader, "127.0.0.1", 0)
    threading.Thread(target=page.serve_forever, daemon=True).start()
    address, body = f"127.0.0.1:{page.server_address[1]}", png_bytes(drawn_digit())

    def post(_):
        connection = http.client.HTTPConnection(address, timeout=30)
        connection.request("POST", "/api/read", body=body)
        response = connection.getresponse()
        return response.status, response.getheader("Retry-After"), json.loads(response.read())
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(post, range(6)))
    page.shutdown()
    page.server_close()
    refused = [a for a in answers if a[0] == 503]
    assert 1 <= len(refused) <= 4 and all(a[0] in (200, 503) for a in answers), answers
    assert all(retry == "1" and "1 pictures waiting to be read; try again" in answer["error"]
               for _, retry, answer in refused)
    assert len({a[2]["digit"] for a in answers if a[0] == 200}) == 1


@pytest.mark.parametrize("error, port, status, said", [
    (socket.gaierror(-2, "Name or service not known"), 8000, 2,
     "--host nothere is not an address this machine has (Name or service not known)"),
    (PermissionError(13, "Permission denied"), 80, 1,
     "cannot listen on nothere:80 (Permission denied): ports below 1024 need root's rights here; "
     "give --port 1024 or more"),
    (OSError(98, "Address already in use"), 8000, 2, "cannot listen on nothere:8000 (Address already in use)"),
], ids=["bad-host", "privileged-port", "port-in-use"])
def test_an_address_that_cannot_be_listened_on_gets_one_line(error, port, status, said):
    refused = server.listen_refused("nothere", port, error)
    assert refused.status == status and refused.line().startswith(f"rnn_mnist.py: error: {said}")


def test_the_page_is_served_from_the_repo_and_fetches_nothing_from_elsewhere(page):
    for path, kind in [("/", "text/html"), ("/page.js", "text/javascript"), ("/page.css", "text/css")]:
        status, content_type, body = request(page, "GET", path)
        assert status == 200 and content_type.startswith(kind)
        text = body.decode()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text.replace("http://127.0.0.1", "")), path
    about = json.loads(request(page, "GET", "/api/model")[2])
    assert about["run"] == "r" and about["cell"] == "LSTM" and len(about["units"]) == 40


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_prints_its_address_and_stops_cleanly_on_ctrl_c(trained, tmp_path):
    server = subprocess.Popen([sys.executable, os.path.join(REPO, "rnn_mnist.py"), "serve",
                               "--logdir", trained["logdir"], "--port", "0"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        said = server.stdout.readline()
        assert said.startswith("using the newest model in --logdir: ") and "(run r, test accuracy" in said
        address = re.match(r"serving the page at http://(127\.0\.0\.1:\d+)/", server.stdout.readline())
        assert address, "no address printed"
        assert request(address.group(1), "GET", "/")[0] == 200
        server.send_signal(signal.SIGINT)
        out, err = server.communicate(timeout=60)
    finally:
        server.kill()
    assert server.returncode == 0 and out == "stopped serving\n" and err == ""


def test_a_port_in_use_gets_one_line(trained, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as exit_:
            as_command(["serve", "--model", trained["model"], "--port", str(port)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in err
    assert "give --port another number (0: any free one)" in err
