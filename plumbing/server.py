"""The page's server: draw a digit and watch the network read it, row by row.

The page is three static files in page/ and one JSON endpoint, POST /api/read, served
by the standard library's ThreadingHTTPServer, hardened for clients that are many, slow
or idle (docs/serve.md, "Why the standard library's server"): a listen backlog that holds a
burst, a deadline for each request to arrive, and a cap on the connections (so on
the threads) that are open at once.
"""

import collections
import contextlib
import http.server
import os
import select
import selectors
import signal
import socket
import sys
import threading
import time

import numpy as np
import orjson

from .errors import STOP_SIGNALS, Fault, UsageError
from .graphs import configure_for_predicting
from .lazy_tensorflow import quiet_tensorflow
from .pictures import declared_size, decode_picture, to_mnist_form
from .orders import order_name, reading_of, reading_words
from .batching import Batcher, Closing, Full
from .reading import how_it_reads, read_each, recurrent_layers, voting_units
from .using import load_trained_model, model_line, model_path, tested_accuracy


PAGE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "page")
PAGE_FILES = {  # URL path -> (file in PAGE_DIR, content type); nothing else is served
    "/": ("index.html", "text/html; charset=utf-8"),
    "/page.js": ("page.js", "text/javascript; charset=utf-8"),
    "/page.css": ("page.css", "text/css; charset=utf-8"),
}
MAX_BODY = 4 << 20  # bytes of one picture sent to /api/read
DRAIN_LIMIT = 64 << 20  # a larger body is not even read to its end: the connection is closed
BACKLOG = 1024  # connections the kernel holds until they are accepted (the standard library's: 5)
REQUEST_SECONDS = 30  # for a request to arrive whole, or for the next one on a kept-alive connection
MAX_CONNECTIONS = 64  # open at once, a thread each; past it, the longest-waiting one is closed
EVICTABLE_SECONDS = 0.2  # an idle connection waiting this long may be closed for a new one
IDLE_THREAD_SECONDS = 2.0  # a thread with no connection to serve ends after this long
BATCH_PREPARES = 320 * 320  # pixels at most of a picture prepared in the batch's thread (the
# page's drawing is 280x280); a larger one is prepared in its request's own (for_the_batch)


class Reader:
    """One model reading pictures for the page and its API: the pictures that arrive together
    decoded, brought to MNIST's form and read in one call of the model, all in the batch's one
    thread (batching.Batcher, with `batching`'s sizes)."""

    def __init__(self, model, path, batching=()):
        self.model = model
        units, digits = voting_units(model)
        run_dir = os.path.dirname(path)
        pixel_order, pixels_per_step = reading_of(model)
        self.about = {"model": path, "run": os.path.basename(run_dir),
                      "test_accuracy": tested_accuracy(run_dir),
                      "cell": type(recurrent_layers(model)[-1]).__name__, "units": units.tolist(),
                      "unit_digits": digits.tolist(), "reads": reading_words(pixel_order, pixels_per_step),
                      "order": order_name(pixel_order), "pixels_per_step": pixels_per_step,
                      "steps": len(pixel_order) // pixels_per_step, "pixel_order": pixel_order.tolist()}
        how_it_reads(model, np.zeros((1, *model.input_shape[1:]), np.float32))  # traced now, so
        # the first drawing is answered as fast as the others
        self.batcher = Batcher(self.read_batch, *batching)

    def read_batch(self, pictures):
        """The pictures that came together (their bytes, or a large one's image, for_the_batch)
        -> for each, what the page shows of it, or the error that refuses it (a UsageError for a
        picture that is no digit to read).

        The pictures are prepared here, one after another in the batch's thread, rather than
        each in its request's own: there, with 128 threads contending for Python's lock, the
        same work cost 1.7 ms of CPU a picture against 0.45 ms in one thread (docs/serve.md,
        "Many readers at once")."""
        seen = [prepared(picture) for picture in pictures]
        images = [image for image in seen if not isinstance(image, Exception)]
        readings = iter(read_each(self.model, np.stack(images)) if images else ())
        return [image if isinstance(image, Exception) else shown(image, next(readings)) for image in seen]

    def answer(self, data, ticket=None, gone=lambda: False):
        """The bytes of a picture -> what the page shows (see docs/serve.md, "The API"); None
        when `gone()` (its client left while it waited). `ticket`: of the request it answers."""
        if not data:
            raise UsageError("the body is empty; send the bytes of a PNG, JPEG, BMP or GIF picture")
        with contextlib.nullcontext(ticket) if ticket else self.batcher.request() as ticket:
            return self.batcher.read(for_the_batch(data), ticket, gone)


def for_the_batch(data):
    """A picture's bytes as the batch takes them: the bytes themselves, or, for a picture of more
    than BATCH_PREPARES pixels, the 28x28 image prepared here, in its request's own thread
    (raising its error): in the batch's thread one picture of 4,096x4,096 would hold up every
    other for 0.3 s, and two clients sending such pictures cut 32 others' reads from 172.5 to
    47.8 a second (docs/serve.md, "Many readers at once")."""
    try:
        height, width = declared_size(data)
    except Exception:  # no size to read: the batch's decoding says what is wrong
        return data
    if height * width <= BATCH_PREPARES:
        return data
    seen = prepared(data)
    if isinstance(seen, Exception):
        raise seen
    return seen


def prepared(picture):
    """A picture's bytes -> the 28x28 image the model reads, or the error that refuses them
    (returned, not raised: the other pictures of its batch are read all the same); an image
    already prepared (for_the_batch) as it is."""
    if isinstance(picture, np.ndarray):
        return picture
    try:
        seen = to_mnist_form(decode_picture(picture, "the picture"))
    except Exception as e:  # a UsageError (400), or what went wrong reading it (500)
        return e
    return seen if seen is not None else UsageError("the picture is blank: no digit to read")


def shown(seen, reading):
    """What the page shows of a picture: the image the model read, and how it read it."""
    return {"digit": reading["digit"], "probabilities": rounded(reading["probabilities"]),
            "readout": rounded(reading["readout"]), "steps": reading["steps"],
            "seen": seen, "state": {name: rounded(values) for name, values in reading["state"].items()},
            "units": reading["units"], "unit_digits": reading["unit_digits"]}


def rounded(values, digits=4):
    """Floats for JSON, to 4 decimals: a readout is 280 of them, the state 4,480."""
    return np.round(np.ascontiguousarray(values, np.float64), digits)


def as_json(obj):
    """`obj` (NumPy arrays in it too) as compact JSON. orjson writes an answer's 5,600 numbers
    in a twentieth of the time the standard library's json takes (0.2 against 4 ms), which
    bounded how many pictures a second the server could answer."""
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def readable_now(connection):
    """Whether the socket has something to read (or has ended), without waiting. A poll object,
    not a selectors.DefaultSelector: every request waiting in the queue asks this 20 times a
    second, and building and closing a selector each time cost a sixth of the server's CPU at
    128 clients (profiled)."""
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(connection, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([connection], [], [], 0)[0])  # Windows: no poll


class PageHandler(http.server.BaseHTTPRequestHandler):
    """GET the page's files and /api/model; POST a picture to /api/read. Every answer of
    the API, errors included, is JSON; no request, however bad, stops the server."""

    server_version = "rnn_mnist"
    protocol_version = "HTTP/1.1"  # keep-alive, so the page's requests reuse one connection
    disable_nagle_algorithm = True  # else the body waits for the ACK of the headers
    timeout = 2 * REQUEST_SECONDS  # on each read and write; the deadline below is the real bound

    def handle_one_request(self):
        self.server.connections.waiting(self.connection)  # until the request has arrived whole
        super().handle_one_request()

    def do_GET(self):
        self.server.connections.working(self.connection)
        path = self.path.split("?")[0]
        if path == "/api/model":
            return self.send_json(200, self.server.reader.about)
        if path == "/api/read":
            return self.send_json(405, {"error": "POST the bytes of a picture to /api/read"})
        if path not in PAGE_FILES:
            return self.send_json(404, {"error": f"no page at {path}; the page is at /"})
        name, content_type = PAGE_FILES[path]
        with open(os.path.join(PAGE_DIR, name), "rb") as f:
            self.send_body(200, f.read(), content_type)

    def do_POST(self):
        if self.path.split("?")[0] != "/api/read":
            self.server.connections.working(self.connection)
            return self.send_json(404, {"error": f"nothing to POST to at {self.path}; "
                                                 "POST a picture to /api/read"})
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True  # what follows the headers cannot be told apart
            return self.send_json(411, {"error": "send the picture's bytes with a Content-Length"})
        if length > MAX_BODY:
            self.drain(length)
            return self.send_json(413, {"error": f"the body is {length:,} bytes, more than the "
                                                 f"{MAX_BODY:,} a picture may have; send a smaller one"})
        body = self.rfile.read(length)
        if len(body) < length:  # the client went, or was closed at its deadline: no one to answer
            self.close_connection = True
            return
        self.server.connections.working(self.connection)
        if self.headers.get("Content-Type", "").startswith("multipart/form-data"):
            return self.send_json(400, {"error": "the body is a form upload (multipart/form-data); send "
                                                 "the picture's own bytes as the body, as curl "
                                                 "--data-binary @digit.png does"})
        reader = self.server.reader
        with reader.batcher.request() as ticket:  # until answered: a stopping server waits for it
            self.read_picture(reader, body, ticket)

    def read_picture(self, reader, body, ticket):
        try:
            answer = reader.answer(body, ticket, gone=self.client_gone)
        except UsageError as e:
            return self.send_json(400, {"error": str(e)})
        except Full:
            return self.send_json(503, {"error": f"the server has {reader.batcher.queue_most} pictures "
                                                 "waiting to be read; try again in a second"},
                                  {"Retry-After": "1"})
        except Closing:
            self.close_connection = True
            return self.send_json(503, {"error": "the server is stopping; the picture was not read"})
        except Exception as e:  # the server keeps serving; the user gets one line, not a traceback
            print(f"rnn_mnist.py serve: could not read a picture ({type(e).__name__}: {e})",
                  file=sys.stderr)
            return self.send_json(500, {"error": f"could not read the picture ({type(e).__name__})"})
        if answer is None:  # the client left while its picture waited: no one to answer
            self.close_connection = True
            return
        self.send_json(200, answer)

    def client_gone(self):
        """Whether the client has closed its end (the connection reads as ended)."""
        try:
            return readable_now(self.connection) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def drain(self, length):
        """Read a refused body to its end, so the client hears the answer rather than a reset."""
        if length > DRAIN_LIMIT:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 20))
            if not chunk:  # the client gave up
                return
            length -= len(chunk)

    def send_json(self, status, obj, headers=()):
        self.send_body(status, as_json(obj), "application/json", headers)

    def send_body(self, status, body, content_type, headers=()):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in dict(headers).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format, *args):  # one line per request with --verbose, else none
        if self.server.verbose:
            super().log_message(format, *args)


class Connections:
    """The open connections of a server, and the deadline of each that waits for a request.

    ThreadingHTTPServer gives every connection a thread that blocks on it for as long as
    the client likes, so idle clients held threads for ever. Here a thread watches the
    deadlines and shuts a late connection's socket, which ends the read its thread is
    blocked in; and a new connection beyond `most` first closes the idle one that has
    waited longest, or waits until one ends.
    """

    def __init__(self, seconds, most, evictable=EVICTABLE_SECONDS):
        self.seconds, self.most, self.evictable = seconds, most, evictable
        self.since = {}  # socket -> when it began to wait, or None while its request is answered
        self.changed = threading.Condition()
        threading.Thread(target=self.close_late_ones, daemon=True).start()

    def opened(self, connection):
        """Make room for `connection`: returns when fewer than `most` are open."""
        with self.changed:
            while len(self.since) >= self.most:
                idle = self.idle_ones()
                if idle:
                    self.close(idle[0])
                else:
                    self.changed.wait(0.05)
            self.since[connection] = time.monotonic()

    def idle_ones(self):
        """The connections whose thread waits on the client (nothing sent is left unread)
        and has for `evictable` seconds, longest first. A client whose request has come but
        not yet been read is never among them."""
        now = time.monotonic()
        waited = [(since, s) for s, since in self.since.items()
                  if since is not None and now - since >= self.evictable]
        waiting = [s for _, s in sorted(waited, key=lambda pair: pair[0])]
        with selectors.DefaultSelector() as selector:  # epoll, kqueue, or select on Windows: not
            for s in waiting:                          # select() alone, whose descriptors stop at 1024
                selector.register(s, selectors.EVENT_READ)
            unread = {key.fileobj for key, _ in selector.select(0)}
        return [s for s in waiting if s not in unread]

    def waiting(self, connection):
        with self.changed:
            if connection in self.since:
                self.since[connection] = time.monotonic()

    def working(self, connection):
        with self.changed:
            if connection in self.since:
                self.since[connection] = None

    def closed(self, connection):
        with self.changed:
            self.since.pop(connection, None)
            self.changed.notify_all()

    def close_late_ones(self):
        while True:
            time.sleep(min(1.0, self.seconds / 4))
            with self.changed:
                now = time.monotonic()
                for connection, since in list(self.since.items()):
                    if since is not None and now - since > self.seconds:
                        self.close(connection)

    def close(self, connection):
        """Shut the socket (its thread's blocked read returns at once) and forget it."""
        try:
            connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # the client had gone already
        self.since.pop(connection, None)


class ConnectionThreads:
    """The threads that serve the connections, each kept for the next connection for
    `idle_seconds` after its last one ends, rather than a thread started for each connection
    and ended with it (ThreadingHTTPServer's way). Starting a thread makes the accepting thread
    wait for the new one to take Python's lock: at 128 clients, each on a connection of its
    own, the server spent a fifth more CPU a read (bench/README.md, "The page's server under
    load"). The standard library's ThreadPoolExecutor is not used: its threads are never
    daemons, so an interpreter that exits waits for every one still blocked on a client."""

    def __init__(self, serve, most, name, idle_seconds=IDLE_THREAD_SECONDS):
        self.serve, self.most, self.name, self.idle_seconds = serve, most, name, idle_seconds
        self.waiting = collections.deque()  # connections not yet taken by a thread
        self.count, self.idle = 0, 0  # threads, and those of them free
        self.changed = threading.Condition()

    def hand(self, *connection):
        """Serve `connection` on a free thread, or on a new one when none is free. With `most`
        threads, all busy, one of them is finishing a connection that was closed (no more than
        `most` are open): it takes this one next."""
        with self.changed:
            if self.idle > len(self.waiting) or self.count >= self.most:
                self.waiting.append(connection)
                self.changed.notify()
                return
            self.count += 1
        threading.Thread(target=self.run, args=(connection,), name=self.name, daemon=True).start()

    def run(self, connection):
        while connection is not None:
            self.serve(*connection)
            with self.changed:
                if not self.waiting:
                    self.idle += 1
                    self.changed.wait(self.idle_seconds)
                    self.idle -= 1
                connection = self.waiting.popleft() if self.waiting else None
                self.count -= connection is None  # the thread ends


class PageServer(http.server.ThreadingHTTPServer):
    request_queue_size = BACKLOG

    def process_request(self, request, client_address):  # in the accepting thread
        self.connections.opened(request)
        self.threads.hand(request, client_address)

    def shutdown_request(self, request):  # in the connection's thread, when it ends
        self.connections.closed(request)
        super().shutdown_request(request)

    def handle_error(self, request, client_address):  # one line, not the standard traceback
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            return  # the client went away or stalled; nobody is left to tell
        print(f"rnn_mnist.py serve: a request from {client_address[0]} failed "
              f"({type(error).__name__}: {error})", file=sys.stderr)


def page_server(reader, host="127.0.0.1", port=8000, verbose=False, request_seconds=REQUEST_SECONDS,
                most=MAX_CONNECTIONS):
    """An HTTP server for the page, bound but not yet serving (call serve_forever); a client
    has `request_seconds` to send each request whole, and `most` connections are open at once."""
    try:
        server = PageServer((host, port), PageHandler)
    except OSError as e:
        raise listen_refused(host, port, e) from None
    server.reader, server.verbose = reader, verbose
    server.connections = Connections(request_seconds, most)
    server.threads = ConnectionThreads(server.process_request_thread, most,  # the standard library's
                                       connection_thread(server))  # way to serve a connection, and end it
    return server


def connection_thread(server):
    """The name of the threads that serve `server`'s connections."""
    host, port = server.server_address[:2]
    return f"serving a connection to {host}:{port}"


PRIVILEGED_PORTS = 1024  # below it, a port needs root's rights on Linux and macOS


def listen_refused(host, port, error):
    """The one line for a server that could not listen: a host that is no address of this
    machine, or a port in use (the user's to change: exit 2), or a port the system keeps for
    root (exit 1)."""
    reason = error.strerror or type(error).__name__
    if isinstance(error, socket.gaierror):
        return UsageError(f"--host {host} is not an address this machine has ({reason}); give one "
                          "it has: 127.0.0.1 for this machine alone, 0.0.0.0 for every address")
    if isinstance(error, PermissionError) and 0 < port < PRIVILEGED_PORTS:
        return Fault(f"cannot listen on {host}:{port} ({reason}): ports below {PRIVILEGED_PORTS} need "
                     "root's rights here; give --port 1024 or more (0: any free one)")
    return UsageError(f"cannot listen on {host}:{port} ({reason}); give --port another "
                      "number (0: any free one) or --host an address of this machine")


def serve_command(args):
    """Serve the page until Ctrl-C (or SIGTERM); return where it was served."""
    path = model_path(args.model, args.logdir)
    server = page_server(None, args.host, args.port, args.verbose)  # a refused address: said at once
    try:
        quiet_tensorflow(args.verbose)
        configure_for_predicting()
        model, path = load_trained_model(path)
        server.reader = Reader(model, path, (args.max_batch, args.batch_wait_ms, args.max_queue))
        return serve_until_stopped(server, model_line(path, args.model is None))
    finally:
        server.server_close()


def serve_until_stopped(server, model_said):
    host, port = server.server_address[:2]
    address = f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/"
    print(model_said)
    print(f"serving the page at {address}  (Ctrl-C to stop)", flush=True)
    previous = {sig: signal.signal(sig, signal.default_int_handler)  # SIGTERM stops as Ctrl-C does,
                for sig in STOP_SIGNALS}                              # even where Ctrl-C was ignored
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        for sig in previous:  # a second Ctrl-C does not break into the shutdown
            signal.signal(sig, signal.SIG_IGN)
        print("stopped serving", flush=True)
    finally:
        server.reader.batcher.close()  # the queued pictures refused, those being read answered
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return {"model": server.reader.about["model"], "address": address}
