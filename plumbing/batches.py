"""The batches on their way to the training graph: made ahead in a thread, and grouped
into the calls of the graph."""

import queue
import threading


def batches_in(images, batch_size):
    """How many batches `images` images make, the last one perhaps smaller."""
    return -(-images // batch_size)


def prefetched(batches, depth=4):
    """Yield from `batches`, produced by a background thread up to `depth` ahead.

    Cutting and shifting a batch is made while the previous one trains, so it costs
    no training time. The order is kept, so runs stay reproducible.
    """
    ready, stop, end = queue.Queue(depth), threading.Event(), object()

    def offer(item):  # False once the consumer has gone, so the thread never hangs
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def produce():
        try:
            for item in batches:
                if not offer(item):
                    return
        except BaseException as error:  # handed to the consumer, raised there
            offer(error)
        offer(end)

    threading.Thread(target=produce, daemon=True).start()
    try:
        while (item := ready.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def chunked(batches, most, every, done=0):
    """Lists of up to `most` consecutive batches for one call of the training graph, cut
    also where the count of steps (`done` before the first) reaches a multiple of `every`,
    where a checkpoint is due. The cuts depend on the step count alone, so a resumed run
    makes the same ones."""
    chunk = []
    for batch in batches:
        chunk.append(batch)
        done += 1
        if len(chunk) == most or done % every == 0:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
