"""export --micro: the model in full integers for a microcontroller, as TensorFlow Lite Micro
runs it (docs/micro.md): the .tflite file, the same as a C array, and what it measured.

The converter turns an LSTM layer into its one fused operation, UNIDIRECTIONAL_SEQUENCE_LSTM,
only when it meets the layer as a function that says it implements Keras's LSTM (the
attribute `api_implements`, "lstm_" and a unique name, that Keras 2 put on its LSTM and Keras
3 no longer does): the converter then replaces the function's body with the fused operation,
the weights split per gate. Unrolled instead, the 28 steps convert to hundreds of operations
and their tensors: for the default model in int8, 211 KB and a 324 KB tensor arena, against
88 KB and 8.6 KB fused (bench/micro.py).
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import uuid

import numpy as np

from .errors import Fault, UsageError
from .graphs import predict
from .lazy_tensorflow import keras, tf
from .mnist_files import FEATURES, MAX_PIXEL, TIMESTEPS, as_sequences
from .orders import UNROLL_MAX_STEPS, reading_of, reading_words
from .reading import rebuilt, recurrent_layers
from .runs import REASON_CHARS

FILE = "model_int8"  # model_int8.tflite, model_int8.cc, model_int8.h
CALIBRATION_IMAGES = 1000  # training images that set the int8 ranges of every tensor
# How TensorFlow Lite Micro's MicroMutableOpResolver adds each operation these models use.
RESOLVER = {"UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM",
            "FULLY_CONNECTED": "AddFullyConnected", "SOFTMAX": "AddSoftmax",
            "STRIDED_SLICE": "AddStridedSlice", "RESHAPE": "AddReshape", "GATHER": "AddGather",
            "ADD": "AddAdd", "SUB": "AddSub", "MUL": "AddMul", "LOGISTIC": "AddLogistic",
            "TANH": "AddTanh", "SPLIT": "AddSplit", "UNPACK": "AddUnpack", "PACK": "AddPack",
            "QUANTIZE": "AddQuantize", "DEQUANTIZE": "AddDequantize", "TRANSPOSE": "AddTranspose"}


def runtimes():
    """The interpreters this machine has for the measurements: {"litert": ..., "tflm": ...}
    (tflite-micro has builds for Linux on x86-64 only); LiteRT is needed."""
    have = {name: importlib.util.find_spec(module) is not None
            for name, module in (("litert", "ai_edge_litert"), ("tflm", "tflite_micro"))}
    if not have["litert"]:
        raise UsageError("export --micro measures the int8 model in LiteRT, which is not installed "
                         "in this Python; install it with: pip install -r requirements-micro.txt")
    return have


def refusal(model):
    """Why `model` cannot be written for a microcontroller, in one line, or None."""
    steps = recurrent_layers(model)[0].input.shape[1]
    gru = [layer.name for layer in recurrent_layers(model) if isinstance(layer, keras.layers.GRU)]
    if gru and steps > UNROLL_MAX_STEPS:
        return (f"a GRU that reads {steps} steps has no form TensorFlow Lite Micro runs: TFLite has "
                f"no fused GRU, and unrolled over {steps} steps it would be one copy of the cell per "
                "step; export --micro takes an LSTM of any length, or a GRU of up to "
                f"{UNROLL_MAX_STEPS} steps")
    return None


def fused(lstm_step):
    """The LSTM layer over all its steps as a function the converter fuses. Its body, the
    layer's equations step by step, is what TensorFlow runs (and checks against Keras); the
    converter replaces it with UNIDIRECTIONAL_SEQUENCE_LSTM, keeping the arguments' contract
    of Keras 2's: (inputs [N, T, F], h0, c0, kernel, recurrent kernel, bias) -> (last output,
    outputs [N, T, units], h, c, a runtime tag)."""
    def lstm(inputs, h, c, kernel, recurrent_kernel, bias):
        outputs = []
        for x in tf.unstack(inputs, axis=1):
            h, c = lstm_step(x, h, c, kernel, recurrent_kernel, bias)
            outputs.append(h)
        return h, tf.stack(outputs, axis=1), h, c, tf.constant(0.0)
    attributes = {"api_implements": f"lstm_{uuid.uuid4()}", "time_major": False, "go_backwards": False}
    return tf.function(lstm, experimental_attributes=attributes, autograph=False)


def one_image_graph(model, lstm_step):
    """The model for one image [1, 28, 28] (floats in [0, 1]) -> probabilities [1, 10]: each
    LSTM layer as the fused function, a GRU unrolled (TFLite has no fused GRU), every other
    layer (the reading order's, the head) as it is."""
    steps = {layer.name: fused(lstm_step) for layer in model.layers
             if isinstance(layer, keras.layers.LSTM) and lstm_step is not None}

    @tf.function(input_signature=[tf.TensorSpec([1, TIMESTEPS, FEATURES], tf.float32, name="image")])
    def probabilities(image):
        x = image
        for layer in model.layers[1:]:
            if layer.name in steps:
                kernel, recurrent_kernel, bias = (tf.convert_to_tensor(w.value) for w in layer.weights)
                zeros = tf.zeros([1, layer.units])
                last, outputs, _, _, _ = steps[layer.name](x, zeros, zeros, kernel, recurrent_kernel, bias)
                x = outputs if layer.return_sequences else last
            else:
                x = layer(x)
        return {"probabilities": x}
    return probabilities


def one_image_flatbuffer(model, lstm_step, scratch, calibration=None):
    """The model for one image as a .tflite file: with `calibration` images, the whole of it in
    int8 (weights, activations, input and output; the LSTM's cell state in int16, as TFLite
    quantizes it), each tensor's range set by those images; else in float. Each LSTM layer
    fused, or, with `lstm_step` None, unrolled (bench/micro.py compares the two)."""
    model = rebuilt(model, lambda recurrent: [c.update(unroll=True) for c in recurrent])  # a GRU's
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", one_image_graph(model, lstm_step))
    archive.write_out(scratch, verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(scratch)
    if calibration is None:
        return converter.convert()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    converter.representative_dataset = lambda: ([image[None]] for image in calibration)
    return converter.convert()


def calibration_images(x_train):
    """CALIBRATION_IMAGES training images spread over the set, floats in [0, 1]."""
    pick = np.linspace(0, len(x_train) - 1, min(CALIBRATION_IMAGES, len(x_train))).astype(int)
    return x_train[pick].astype(np.float32) / MAX_PIXEL


def c_source(flat, record):
    """model_int8.cc and model_int8.h: the file as a C array, aligned as TFLM needs (16
    bytes), and what a program needs to run it: the input's and output's scale and zero
    point, the arena, and a function that adds the model's operations to TFLM's resolver."""
    about, quantization = record["model"], record["quantization"]
    rows = [", ".join(f"0x{b:02x}" for b in flat[i:i + 12]) for i in range(0, len(flat), 12)]
    arena = (f"constexpr std::size_t kModelInt8ArenaSize = {record['arena_bytes']};  // bytes: the "
             "fewest TFLM's interpreter took it in, on a 64-bit machine\n" if "arena_bytes" in record
             else "// kModelInt8ArenaSize: not measured (tflite-micro was not installed)\n")
    adds = " &&\n         ".join(f"resolver.{RESOLVER[op]}() == 0" for op in record["operations"])
    header = (f"// {about}\n// Written by rnn_mnist.py export --micro (docs/micro.md).\n"
              "#ifndef RNN_MNIST_MODEL_INT8_H_\n#define RNN_MNIST_MODEL_INT8_H_\n\n#include <cstddef>\n\n"
              "// Input int8 [1, 28, 28], white digit on black: q = round(pixel / 255 / scale) + zero point.\n"
              f"constexpr float kModelInt8InputScale = {quantization['input']['scale']!r}f;\n"
              f"constexpr int kModelInt8InputZeroPoint = {quantization['input']['zero_point']};\n"
              "// Output int8 [1, 10]: the probability of digit d is scale * (q[d] - zero point).\n"
              f"constexpr float kModelInt8OutputScale = {quantization['output']['scale']!r}f;\n"
              f"constexpr int kModelInt8OutputZeroPoint = {quantization['output']['zero_point']};\n"
              + arena + "\nextern const unsigned char g_model_int8[];\nextern const unsigned int g_model_int8_len;\n\n"
              "// The model's operations, added to a tflite::MicroMutableOpResolver<kModelInt8Operations>;\n"
              "// true when each was added (0 is kTfLiteOk).\n"
              f"constexpr int kModelInt8Operations = {len(record['operations'])};\n"
              f"template <typename Resolver>\nbool AddModelInt8Operations(Resolver& resolver) {{\n  return {adds};\n}}\n"
              "\n#endif  // RNN_MNIST_MODEL_INT8_H_\n")
    source = (f'#include "{FILE}.h"\n\n// {about}\nalignas(16) const unsigned char g_model_int8[] = {{\n    '
              + ",\n    ".join(rows) + f"\n}};\nconst unsigned int g_model_int8_len = {len(flat)};\n")
    return source, header


def measured_apart(path, images, which):
    """plumbing/interpreters.py run on the file in a process without TensorFlow."""
    with tempfile.TemporaryDirectory() as scratch:
        np.save(os.path.join(scratch, "images.npy"), images)
        out = os.path.join(scratch, "out.json")
        done = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "interpreters.py"),
                               path, os.path.join(scratch, "images.npy"), out, *which],
                              capture_output=True, text=True)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or [f"status {done.returncode}"])[-1]
            raise Fault(f"the int8 model did not run in {' and '.join(which)}: {last[:REASON_CHARS]}")
        with open(out) as f:
            return json.load(f)


def export_micro(model, out, x_train, test, lstm_step, about):
    """Write model_int8.tflite, .cc, .h and measured.json into the new folder `out`, all or
    none; -> what was measured. `test`: (images, labels) the accuracy is measured on."""
    which = [name for name, there in runtimes().items() if there]
    x_test, y_test = test
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    partial = tempfile.mkdtemp(dir=parent, prefix=".micro-")
    try:
        os.chmod(partial, 0o777 & ~current_umask())  # as a folder made by makedirs
        with tempfile.TemporaryDirectory() as scratch:
            flat = one_image_flatbuffer(model, lstm_step, scratch, calibration_images(x_train))
        path = os.path.join(partial, FILE + ".tflite")
        with open(path, "wb") as f:
            f.write(flat)
        record = measurements(model, flat, measured_apart(path, x_test, which), test, about)
        source, header = c_source(flat, record)
        for name, text in ((FILE + ".cc", source), (FILE + ".h", header),
                           ("measured.json", json.dumps(record, indent=2) + "\n")):
            with open(os.path.join(partial, name), "w") as f:
                f.write(text)
        if os.path.isdir(out):
            os.rmdir(out)  # empty (export_command checked): replaced by the whole folder
        os.rename(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # nothing half written stays behind
        raise
    return record


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def measurements(model, flat, run, test, about):
    """measured.json: accuracy of the float model and of the int8 one in each interpreter, on
    the same images; the file's size, its operations, the arena, the time per image."""
    x_test, y_test = test
    float_answers = np.argmax(predict(model, as_sequences(x_test)), axis=1)
    record = {"model": about, "images": len(y_test), "bytes": len(flat),
              "float_accuracy": float(np.mean(float_answers == y_test)),
              "operations": run["operations"], "quantization": run["quantization"]}
    for name in ("litert", "tflm"):
        if name in run:
            answers = np.argmax(np.array(run[name]["outputs"]), axis=1)
            record[f"int8_accuracy_{name}"] = float(np.mean(answers == y_test))
            record[f"ms_per_image_{name}"] = 1000 * run[name]["seconds_per_image"]
    if "tflm" in run:
        record["arena_bytes"] = run["tflm"]["arena_bytes"]
    return record


def described(model):
    """'LSTM of 128 units, reading rows, 28 pixels a step (28 steps)': what a header names."""
    recurrent = recurrent_layers(model)
    cells = " over ".join(f"{type(layer).__name__} of {layer.units} units" for layer in recurrent)
    return f"{cells}, reading {reading_words(*reading_of(model))}"


def report(record, out):
    """What export --micro prints: the files, the accuracies, the size, arena and time."""
    lines = [f"exported for a microcontroller: {out}",
             f"  {FILE}.tflite  {record['bytes']:,} bytes, int8; operations: {', '.join(record['operations'])}",
             f"  {FILE}.cc, {FILE}.h  the same as a C array, and the constants to feed it",
             "  measured.json  what follows",
             f"test accuracy on {record['images']:,} images: float {record['float_accuracy']:.2%}"]
    for name, words in (("tflm", "TensorFlow Lite Micro"), ("litert", "LiteRT")):
        if f"int8_accuracy_{name}" in record:
            lines[-1] += (f", int8 {record[f'int8_accuracy_{name}']:.2%} in {words} "
                          f"({record[f'ms_per_image_{name}']:.2f} ms a digit here)")
    if "arena_bytes" in record:
        lines.append(f"tensor arena: {record['arena_bytes']:,} bytes (the fewest TFLM's interpreter "
                     "took it in, on this 64-bit machine)")
    else:
        lines.append("tensor arena: not measured (tflite-micro, which has builds for Linux on "
                     "x86-64 only, is not installed)")
    given = record["quantization"]["input"]
    lines.append(f"input int8 [1, 28, 28]: q = round(pixel / 255 / {given['scale']:.6g}) "
                 f"{'-' if given['zero_point'] < 0 else '+'} {abs(given['zero_point'])}; reset the "
                 "interpreter after each digit: the LSTM keeps its state between calls")
    return "\n".join(lines)
