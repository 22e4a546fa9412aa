"""How `rnn_mnist.py serve` holds up under load and against idle clients, on 127.0.0.1.

    python bench/serve_load.py --model Visualize/seed1/model.keras --data ../shared/data/mnist.npz

Starts `serve` (of `--script`, this repo's by default) as a process of its own on a free
port of 127.0.0.1, then:
- for each of `--clients` (1, 16, 128): that many clients, each on its own connection,
  POST a test digit to /api/read at the same moment, `--rounds` times: requests/s, the
  median and 95th percentile of the latency, how many were not answered with 200 and
  the digit that one request alone gets, and the server's CPU time a request (read from
  Linux's /proc: the server is killed at the end, so timing the benchmark leaves it out);
- with `--large K`, all the while, K more clients post a 4,096x4,096 picture of a digit
  again and again (the largest the server reads), and the report says how many were read;
- opens `--idle` connections that send nothing, and then: the server's threads, whether
  a well-behaved request is still answered meanwhile and in how long, and how many of the
  idle connections the server has closed after `--wait` seconds.
Every request and connection goes to 127.0.0.1 only; the server is stopped at the end.
Prints one JSON object.
"""

import argparse
import contextlib
import http.client
import io
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time

import numpy

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "bench"))
from serve_latency import drawn_pictures  # noqa: E402  (the page's kind of picture)


def start_server(script, model):
    process = subprocess.Popen([sys.executable, script, "serve", "--model", model, "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(2):
        line = process.stdout.readline()
        found = re.search(r"http://(127\.0\.0\.1:\d+)/", line)
        if found:
            return process, found.group(1)
    process.kill()
    raise SystemExit(f"serve did not start: {process.stderr.read()}")


def post(address, body, timeout=120):
    """(status, digit or None, seconds) of one POST on a new connection."""
    started = time.perf_counter()
    try:
        connection = http.client.HTTPConnection(address, timeout=timeout)
        connection.request("POST", "/api/read", body=body)
        response = connection.getresponse()
        answer = json.loads(response.read())
        connection.close()
        return response.status, answer.get("digit"), time.perf_counter() - started
    except (OSError, http.client.HTTPException, ValueError) as e:
        return type(e).__name__, None, time.perf_counter() - started


def at_once(address, bodies):
    """Every body POSTed by its own client thread, all released at the same moment."""
    results, gate = [None] * len(bodies), threading.Barrier(len(bodies))

    def client(i):
        gate.wait()
        results[i] = post(address, bodies[i])
    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(bodies))]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results, time.perf_counter() - started


def cpu_seconds(pid):
    """The CPU time process `pid` has used, all its threads (None without Linux's /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def load(address, pid, pictures, expected, clients, rounds):
    latencies, failed, answered, seconds = [], 0, 0, 0.0
    cpu_before = cpu_seconds(pid)
    for round_ in range(rounds):
        chosen = [(round_ * clients + i) % len(pictures) for i in range(clients)]
        results, took = at_once(address, [pictures[i] for i in chosen])
        seconds += took
        for i, (status, digit, latency) in zip(chosen, results):
            latencies.append(latency)
            if status == 200 and digit == expected[i]:
                answered += 1
            else:
                failed += 1
    cpu_after = cpu_seconds(pid)
    latencies.sort()
    return {"clients": clients, "requests": len(latencies), "answered_right": answered,
            "failed": failed, "requests_per_second": round(len(latencies) / seconds, 1),
            "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p95_ms": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1),
            "server_cpu_ms_per_request": None if cpu_before is None else
            round(1000 * (cpu_after - cpu_before) / len(latencies), 2)}


def large_picture(data):
    """The first test digit as a PNG of 4,096x4,096 pixels, RGB, dark on light."""
    from PIL import Image  # tests/requirements.txt
    with numpy.load(data) as npz:
        digit = npz["x_test"][0]
    buffer = io.BytesIO()
    Image.fromarray(255 - digit).resize((4096, 4096), Image.BILINEAR).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()


@contextlib.contextmanager
def posting_again_and_again(address, body, clients):
    """`clients` threads that post `body` until the block ends; yields the count of answers."""
    stop, answered = threading.Event(), [0]

    def client():
        while not stop.is_set():
            answered[0] += post(address, body)[0] == 200
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield answered
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def threads_of(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^Threads:\s+(\d+)", f.read(), re.M).group(1))


def idle(address, pid, count, picture, wait):
    host, port = address.split(":")
    sockets = []
    for _ in range(count):
        s = socket.create_connection((host, int(port)), timeout=5)
        sockets.append(s)
    time.sleep(1)
    report = {"idle_connections": count, "server_threads_with_idle": threads_of(pid)}
    status, _, seconds = post(address, picture)
    report.update(meanwhile_status=status, meanwhile_ms=round(1000 * seconds, 1))
    time.sleep(wait)
    closed = 0
    for s in sockets:
        s.settimeout(0.05)
        try:
            closed += s.recv(1) == b""
        except (socket.timeout, BlockingIOError):
            pass
        except OSError:  # reset by the server: closed too
            closed += 1
        s.close()
    report.update({f"closed_by_server_after_{wait}_s": closed,
                   "server_threads_after": threads_of(pid)})
    return report


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", required=True, help="a trained model.keras")
    parser.add_argument("--data", required=True, help="mnist.npz, for the test digits sent")
    parser.add_argument("--script", default=os.path.join(REPO, "rnn_mnist.py"),
                        help="the rnn_mnist.py whose serve to measure")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 16, 128])
    parser.add_argument("--rounds", type=int, default=4, help="bursts of each size")
    parser.add_argument("--idle", type=int, default=300, help="idle connections to open")
    parser.add_argument("--wait", type=int, default=70, help="seconds to wait for them to be closed")
    parser.add_argument("--large", type=int, default=0,
                        help="clients posting a 4,096x4,096 picture again and again meanwhile")
    args = parser.parse_args(argv)
    pictures = drawn_pictures(args.data, 128)
    process, address = start_server(args.script, args.model)
    try:
        expected = [post(address, body)[1] for body in pictures]  # each alone, one at a time
        report = {"script": args.script, "large_clients": args.large}
        large = large_picture(args.data) if args.large else b""
        with posting_again_and_again(address, large, args.large) as large_answered:
            report["load"] = [load(address, process.pid, pictures, expected, n, args.rounds)
                              for n in args.clients]
        report["large_answered"] = large_answered[0]
        report["idle"] = idle(address, process.pid, args.idle, pictures[0], args.wait)
    finally:
        process.kill()
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
