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

import numpy as np
import pytest

import rnn_mnist
from plumbing import mnist_files, pictures, reading, server, using
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
]


@pytest.mark.parametrize("body,status,message", BAD_BODIES, ids=["empty", "not-a-picture", "blank",
                                                                 "oversized", "too-many-pixels"])
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
