"""The watcher of a worker that waits for the others to join (distribute.cluster_forming),
run as a small process of its own, so that it runs while TensorFlow holds the worker's
every thread:

    python -I cluster_watch.py WORKER_PID SECONDS INDEX COUNT

The worker writes "formed" to its standard input once the cluster has formed (and the
watcher ends without a word). Standard input closed without it: the worker ended while it
waited, and the watcher says so. Nothing by the time SECONDS are up: it ends the worker,
and says why. Only the standard library: it starts in a few milliseconds, on any system.
"""

import os
import signal
import sys
import threading


def watch(worker_pid, seconds, index, count):
    for name in ("SIGINT", "SIGBREAK"):  # a terminal's Ctrl-C (or Ctrl-Break) reaches it too
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    said = []
    reader = threading.Thread(target=lambda: said.append(sys.stdin.buffer.read(16)), daemon=True)
    reader.start()
    reader.join(seconds)  # a thread, not select(): Windows cannot select() on a pipe
    if reader.is_alive():  # time is up, and the worker still waits
        # SIGKILL: TensorFlow's own SIGTERM handler would keep it waiting. Windows has no
        # SIGKILL, and there os.kill ends the process whatever the signal.
        os.kill(worker_pid, getattr(signal, "SIGKILL", signal.SIGTERM))
        print(f"rnn_mnist.py: error: worker {index} of {count} waited {seconds:g} s for the "
              "others and gives up: start every worker, each with its TF_CONFIG, within "
              "--worker-wait of one another", file=sys.stderr, flush=True)
    elif not said[0]:  # closed without a word: the worker ended while it waited
        print(f"rnn_mnist.py: worker {index} of {count} stopped (Ctrl-C, SIGTERM or a crash) "
              "while it waited for the others to join; nothing was trained or saved",
              file=sys.stderr, flush=True)


if __name__ == "__main__":
    watch(int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    os._exit(0)  # at once: the thread that may still read standard input would make Python's
    # own ending fail (it cannot take that stream's lock)
