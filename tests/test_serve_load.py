"""`serve` under load and against idle or slow clients, on 127.0.0.1 only: every request
and connection here is bounded in count and time, and the server stops with the test."""
import http.client
import json
import socket
import threading
import time

import pytest

from conftest import drawn_digit
from plumbing import server, using
from test_serve import png_bytes

pytestmark = pytest.mark.full  # the full tier: python -m pytest tests --full

REQUEST_SECONDS = 2  # the deadline the server is given here, in place of its 30 s
MOST = 16  # connections open at once, in place of its 64


@pytest.fixture
def hardened(trained):
    """A page server with a short deadline and few connections, serving from a thread."""
    page = server.page_server(server.Reader(*using.load_trained_model(trained["model"])),
                              "127.0.0.1", 0, request_seconds=REQUEST_SECONDS, most=MOST)
    serving = threading.Thread(target=page.serve_forever, daemon=True)
    serving.start()
    yield page, f"127.0.0.1:{page.server_address[1]}"
    page.shutdown()
    page.server_close()


def post(address, body):
    connection = http.client.HTTPConnection(address, timeout=60)
    try:
        connection.request("POST", "/api/read", body=body)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def server_threads(page):
    """The threads that serve `page`'s connections (busy, or kept a moment for the next one)."""
    return sum(thread.name == server.connection_thread(page) for thread in threading.enumerate())


def test_128_clients_at_once_are_all_answered_with_the_digit(hardened):
    _, address = hardened
    body = png_bytes(drawn_digit())
    status, alone = post(address, body)
    assert status == 200
    answers, gate = [None] * 128, threading.Barrier(128)

    def client(i):
        gate.wait()  # all at the same moment
        try:
            answers[i] = post(address, body)
        except OSError as e:  # a reset: what the standard library's backlog of 5 gave
            answers[i] = (type(e).__name__, None)
    clients = [threading.Thread(target=client, args=(i,)) for i in range(128)]
    for thread in clients:
        thread.start()
    for thread in clients:
        thread.join(timeout=120)
    assert [status for status, _ in answers] == [200] * 128
    assert {answer["digit"] for _, answer in answers} == {alone["digit"]}


def closed_by_server(s, within):
    """Whether the server closes `s` within `within` seconds (the client sends nothing more)."""
    s.settimeout(within)
    try:
        return s.recv(1024) == b"" or s.recv(1024) == b""  # an error answer may come first
    except socket.timeout:
        return False
    except ConnectionError:
        return True


def test_idle_and_slow_clients_are_closed_in_time_and_hold_few_threads(hardened):
    page, address = hardened
    host, port = address.split(":")
    idle = [socket.create_connection((host, int(port)), timeout=5) for _ in range(300)]
    half = socket.create_connection((host, int(port)), timeout=5)
    half.sendall(b"POST /api/re")  # half a request line, and then nothing
    slow = socket.create_connection((host, int(port)), timeout=5)
    slow.sendall(b"POST /api/read HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
    try:
        time.sleep(0.5)
        assert server_threads(page) <= MOST  # a thread for each open connection, at most MOST
        status, answer = post(address, png_bytes(drawn_digit()))  # answered all the while
        assert status == 200 and 0 <= answer["digit"] <= 9
        stop = time.monotonic() + REQUEST_SECONDS + 1
        while time.monotonic() < stop:  # a byte at a time: too slow to finish in time
            try:
                slow.sendall(b"\x89")
            except OSError:  # closed by the server already
                break
            time.sleep(0.25)
        for s in [half, slow] + idle[-MOST:]:  # the newest were not closed to make room
            assert closed_by_server(s, within=REQUEST_SECONDS + 2)
        ended = time.monotonic() + 5
        while server_threads(page) and time.monotonic() < ended:  # each thread ends soon after its last connection
            time.sleep(0.05)
        assert server_threads(page) == 0
    finally:
        for s in idle + [half, slow]:
            s.close()
