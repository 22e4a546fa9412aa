"""The ways to write a model for a microcontroller, side by side: its LSTM fused into one
operation or unrolled over the steps, in int8 or in float; each file's size, and its accuracy,
time per digit and (in TFLM) tensor arena, measured without TensorFlow.

    python bench/micro.py --model Visualize/seed1 --data ../shared/data/mnist.npz

Needs requirements-micro.txt. `--images N` measures on the first N test images (default all
10,000: about two minutes a way on 2 cores). Prints a Markdown table, and one JSON object.
"""

import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import rnn_mnist  # noqa: E402  (the repo root is put on the path above)
from plumbing import micro, mnist_files  # noqa: E402

WAYS = {"int8, LSTM fused": (True, True), "int8, LSTM unrolled": (False, True),
        "float, LSTM fused": (True, False)}


def measured_way(model, fused, integer, data, scratch):
    x_train, _, x_test, y_test = data
    flat = micro.one_image_flatbuffer(model, rnn_mnist.lstm_step if fused else None,
                                      os.path.join(scratch, "graph"),
                                      micro.calibration_images(x_train) if integer else None)
    path = os.path.join(scratch, "model.tflite")
    with open(path, "wb") as f:
        f.write(flat)
    run = micro.measured_apart(path, x_test, [name for name, there in micro.runtimes().items() if there])
    result = {"bytes": len(flat), "operations": len(run["operations"])}
    for name in ("litert", "tflm"):
        if name in run:
            answers = rnn_mnist.np.argmax(rnn_mnist.np.array(run[name]["outputs"]), axis=1)
            result[f"accuracy_{name}"] = float((answers == y_test).mean())
            result[f"ms_{name}"] = 1000 * run[name]["seconds_per_image"]
    result["arena_bytes"] = run.get("tflm", {}).get("arena_bytes")
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model.keras, or its run folder")
    parser.add_argument("--data", required=True, help="mnist.npz")
    parser.add_argument("--images", type=int, default=10_000, help="test images measured on")
    args = parser.parse_args()
    model = rnn_mnist.load_model(args.model)
    x_train, y_train, x_test, y_test = mnist_files.load_mnist(args.data)
    data = (x_train, y_train, x_test[:args.images], y_test[:args.images])
    float_accuracy = float((rnn_mnist.predict(model, mnist_files.as_sequences(data[2])).argmax(1) == data[3]).mean())
    results = {"model": args.model, "images": len(data[3]), "keras_float_accuracy": float_accuracy}
    print("| way | bytes | accuracy in TFLM | in LiteRT | ms a digit, TFLM | LiteRT | arena, bytes |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for name, (fused, integer) in WAYS.items():
        with tempfile.TemporaryDirectory() as scratch:
            r = results[name] = measured_way(model, fused, integer, data, scratch)
        print(f"| {name} | {r['bytes']:,} | {r.get('accuracy_tflm', float('nan')):.2%} | "
              f"{r['accuracy_litert']:.2%} | {r.get('ms_tflm', float('nan')):.2f} | {r['ms_litert']:.2f} | "
              f"{format(r['arena_bytes'], ',') if r['arena_bytes'] else 'n/a'} |", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
