"""The int8 model run as a microcontroller's program runs it, without TensorFlow: in TensorFlow
Lite Micro's interpreter (its reference kernels, `tflite-micro`) and in LiteRT's
(`ai-edge-litert`). export --micro runs this file in a process of its own,

    python plumbing/interpreters.py MODEL.tflite IMAGES.npy OUT.json litert tflm

in which TensorFlow cannot be imported, so what it measures needs only those packages; and
the two interpreters, each with its own copy of TFLite's kernels, never share a process.
OUT.json: for each interpreter, the int8 answers [N, 10] and the seconds per image; for
TFLM, the tensor arena it takes; and the model's operations.
"""

import json
import os
import re
import sys
import tempfile
import time

import numpy as np

PIXEL_MAX = 255  # the model's real input is pixel / 255
ARENA_ALIGNMENT = 16  # bytes: how finely the arena is measured
ARENA_MOST = 16 * 2**20  # the largest arena tried


def as_input(images, dtype, details):
    """uint8 images [N, 28, 28] -> what the model takes: its real input is pixel / 255, and in
    int8 q = round(real / scale) + zero point."""
    real = images.astype(np.float32) / PIXEL_MAX
    if dtype == np.float32:
        return real
    scale, zero_point = details
    return np.clip(np.round(real / scale) + zero_point, -128, 127).astype(np.int8)


def answers(set_input, invoke, get_output, reset, images, dtype, input_details):
    """Each image alone (the LSTM's state reset after it, as between two digits on a
    device): (the int8 outputs [N, 10], seconds per image)."""
    outputs, started = [], time.perf_counter()
    for image in as_input(images, dtype, input_details):
        set_input(image[None])
        invoke()
        outputs.append(get_output().copy())
        reset()
    seconds = (time.perf_counter() - started) / max(1, len(images))
    return np.concatenate(outputs), seconds


def lite_interpreter(flat):
    """LiteRT's interpreter with its builtin kernels only: its default delegate, XNNPACK, frees a
    buffer twice on an unrolled int8 GRU (LiteRT 2.3), and would hide the operations it takes."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    lite = Interpreter(model_content=flat,
                       experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    lite.allocate_tensors()
    return lite


def litert(flat, images):
    lite = lite_interpreter(flat)
    given, taken = lite.get_input_details()[0], lite.get_output_details()[0]
    return answers(lambda q: lite.set_tensor(given["index"], q), lite.invoke,
                   lambda: lite.get_tensor(taken["index"]), lite.reset_all_variables, images,
                   given["dtype"], given["quantization"])  # (scale, zero point)


def tflm(flat, images, arena):
    from tflite_micro.python.tflite_micro import runtime
    micro = runtime.Interpreter.from_bytes(flat, arena_size=arena)
    given = micro.get_input_details(0)
    q = given["quantization_parameters"]
    return answers(lambda image: micro.set_input(image, 0), micro.invoke,
                   lambda: micro.get_output(0), micro.reset, images, given["dtype"],
                   (float(q["scales"][0]), int(q["zero_points"][0])) if len(q["scales"]) else None)


def arena_needed(flat):
    """The fewest bytes of tensor arena (to 16) in which TFLM's interpreter reads a digit. Each
    size is tried in a child process: at some sizes a kernel's preparation fails and TFLM
    aborts the process; and the total its recording allocator reports falls short for some
    models (tiny ones, a GRU), so it is only where the search starts."""
    low = recorded_arena(flat)
    high = low
    while not reads_in(flat, high):
        low, high = high, high * 2
        if high > ARENA_MOST:
            raise SystemExit(f"TFLM's interpreter did not read a digit in a tensor arena of {ARENA_MOST:,} bytes")
    while high - low > ARENA_ALIGNMENT:
        middle = (low + high) // 2
        low, high = (low, middle) if reads_in(flat, middle) else (middle, high)
    return high


def reads_in(flat, arena):
    """Whether TFLM's interpreter reads a blank digit with an arena of `arena` bytes, tried in
    a forked child (tflite-micro is built for Linux only), its messages silenced."""
    child = os.fork()
    if child == 0:
        silent = os.open(os.devnull, os.O_WRONLY)
        os.dup2(silent, 1)
        os.dup2(silent, 2)
        try:
            from tflite_micro.python.tflite_micro import runtime
            micro = runtime.Interpreter.from_bytes(flat, arena_size=arena)
            given = micro.get_input_details(0)
            micro.set_input(np.zeros(given["shape"], given["dtype"]), 0)
            micro.invoke()
        except BaseException:
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(child, 0)
    return os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def recorded_arena(flat):
    """The arena TFLM's recording allocator reports for the model (only on the process's
    stderr, read back here)."""
    from tflite_micro.python.tflite_micro import runtime
    micro = runtime.Interpreter.from_bytes(flat, arena_size=ARENA_MOST)
    with tempfile.TemporaryFile() as report:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(report.fileno(), 2)
        try:
            micro.print_allocations()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        report.seek(0)
        found = re.search(rb"Arena allocation total (\d+) bytes", report.read())
    return int(found.group(1)) if found else ARENA_ALIGNMENT


def operations(lite):
    """The model's operations, each once, in the order of its graph (LiteRT lists them only
    through its interpreter's _get_ops_details)."""
    names = [op["op_name"] for op in lite._get_ops_details()]
    return list(dict.fromkeys(names))


def measure(flat, images, which):
    lite = lite_interpreter(flat)
    results = {"operations": operations(lite), "quantization": {
        side: dict(zip(("scale", "zero_point"), details[0]["quantization"]))
        for side, details in (("input", lite.get_input_details()), ("output", lite.get_output_details()))}}
    if "litert" in which:
        outputs, seconds = litert(flat, images)
        results["litert"] = {"outputs": outputs.tolist(), "seconds_per_image": seconds}
    if "tflm" in which:
        arena = arena_needed(flat)
        outputs, seconds = tflm(flat, images, arena)
        results["tflm"] = {"outputs": outputs.tolist(), "seconds_per_image": seconds, "arena_bytes": arena}
    return results


def main(argv):
    sys.modules["tensorflow"] = None  # measured without it: importing it fails from here on
    model, images, out, *which = argv
    with open(model, "rb") as f:
        flat = f.read()
    results = measure(flat, np.load(images), which)
    with open(out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1:])
