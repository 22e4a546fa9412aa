"""Reads that arrive together, run as one call of the model: server-side batching, as
TensorFlow Serving does it (a bounded queue, a bounded batch, a short wait for the batch to
fill), for the page's API. Each request's thread hands its picture in and waits for its own
answer; one thread runs the batches, the pictures' preparation included.

Written here rather than taken from a library: TensorFlow Serving's batcher is C++ inside its
model server, and Python's thread pools run each call on its own, which is the one-picture-
a-call this replaces.
"""

import collections
import contextlib
import threading
import time

MAX_BATCH = 64  # pictures in one call of the model at most (--max-batch)
BATCH_WAIT_MS = 5.0  # how long a batch waits for pictures on their way in (--batch-wait-ms)
MAX_QUEUE = 256  # pictures waiting at most; one more is refused (503) (--max-queue)
POLL_SECONDS = 0.05  # how often the queue's requests are checked for clients that left


class Full(Exception):
    """The queue holds `MAX_QUEUE` pictures: come back shortly."""


class Closing(Exception):
    """The server is stopping: the picture was not read."""


class Ticket:
    """One request of the API: whether its picture is still on its way into the queue."""

    def __init__(self):
        self.coming = True


class Waiting:
    """One picture in the queue, and its answer (or error) once its batch has run."""

    def __init__(self, picture, gone):
        self.picture, self.gone, self.answer, self.error = picture, gone, None, None
        self.since = time.monotonic()
        self.done = threading.Event()

    def settle(self, answer=None, error=None):
        self.answer, self.error = answer, error
        self.done.set()


class Batcher:
    """`read(picture)` -> that picture's answer, from `read_batch([N pictures]) -> N answers`
    run on whatever is queued together, at most `most` at a time. An answer that is an
    exception is that picture's error: raised to its request alone.

    A batch starts as soon as the model is free. It waits (at most `wait_ms`) only while other
    requests are on their way in (inside `request()`, not yet queued), so a lone read is
    answered as soon as it would be without batching, and a crowd is read in few calls.
    """

    def __init__(self, read_batch, most=MAX_BATCH, wait_ms=BATCH_WAIT_MS, queue_most=MAX_QUEUE):
        self.read_batch, self.most, self.wait, self.queue_most = read_batch, most, wait_ms / 1000, queue_most
        self.queue, self.incoming, self.in_flight, self.closed = collections.deque(), 0, 0, False
        self.changed = threading.Condition()
        self.runner = threading.Thread(target=self.run, daemon=True)
        self.runner.start()
        threading.Thread(target=self.watch, daemon=True).start()

    @contextlib.contextmanager
    def request(self):
        """Around one request of the API, from when its body has come until its answer is
        sent: until its picture is queued it counts as on its way in, and `close` waits for it."""
        ticket = Ticket()
        with self.changed:
            self.incoming += 1
            self.in_flight += 1
        try:
            yield ticket
        finally:
            with self.changed:
                self.incoming -= ticket.coming
                self.in_flight -= 1
                self.changed.notify_all()

    def read(self, picture, ticket, gone=lambda: False):
        """The answer for `picture` (of the request `ticket`), read in a batch; None if `gone()`
        became true while it waited (its client left: it is taken out of the queue unread).
        Raises Full, Closing, the picture's own error, or what the batch raised."""
        waiting = Waiting(picture, gone)
        with self.changed:
            self.incoming -= ticket.coming
            ticket.coming = False
            self.changed.notify_all()
            if self.closed:
                raise Closing()
            if len(self.queue) >= self.queue_most:
                raise Full()
            self.queue.append(waiting)
        waiting.done.wait()
        if waiting.error is not None:
            raise waiting.error
        return waiting.answer

    def watch(self):
        """Take out of the queue, unread, the pictures whose clients have left. One thread for
        the whole queue, asking only of those that have waited `POLL_SECONDS`: each request
        asking for itself 20 times a second took Python's lock from the batches 1,280 times a
        second at 64 connections."""
        while not self.closed:
            time.sleep(POLL_SECONDS)
            with self.changed:
                now = time.monotonic()
                waited = [w for w in self.queue if now - w.since >= POLL_SECONDS]
            left = [w for w in waited if w.gone()]
            with self.changed:
                left = [w for w in left if w in self.queue]
                for waiting in left:
                    self.queue.remove(waiting)
            for waiting in left:
                waiting.settle()

    def next_batch(self):
        """The pictures to read next (waiting for them), or None once closed."""
        with self.changed:
            while not self.queue and not self.closed:
                self.changed.wait()
            deadline = time.monotonic() + self.wait
            while self.incoming and len(self.queue) < self.most and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.changed.wait(left)
            if self.closed:
                return None
            return [self.queue.popleft() for _ in range(min(self.most, len(self.queue)))]

    def run(self):
        while (batch := self.next_batch()) is not None:
            if not batch:  # its requests' clients all left while it waited
                continue
            try:
                answers = self.read_batch([waiting.picture for waiting in batch])
            except Exception as e:  # each request of the batch answers with the error
                answers = [e] * len(batch)
            for waiting, answer in zip(batch, answers):
                if isinstance(answer, Exception):
                    waiting.settle(error=answer)
                else:
                    waiting.settle(answer)

    def close(self, seconds=5.0):
        """Stop: the queued pictures are refused (Closing), the batch being read is finished, and
        this waits (at most `seconds`) until every request has had its answer."""
        with self.changed:
            self.closed = True
            refused, self.queue = list(self.queue), collections.deque()
            self.changed.notify_all()
        for waiting in refused:
            waiting.settle(error=Closing())
        self.runner.join(seconds)
        deadline = time.monotonic() + seconds
        with self.changed:
            while self.in_flight and time.monotonic() < deadline:
                self.changed.wait(deadline - time.monotonic())
