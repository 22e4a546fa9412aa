"""Using a trained model: finding and loading it, saying which it is, and the commands
evaluate, predict and export (a SavedModel, and TFLite)."""

import json
import os
import sys
import tempfile
import time
import zipfile

import numpy as np

from . import micro
from .errors import Fault, Refused, UsageError
from .graphs import configure_for_predicting, predict
from .lazy_tensorflow import keras, quiet_tensorflow, tf
from .metrics import confusion_matrix, per_class, scores
from .mnist_files import FEATURES, MAX_PIXEL, NUM_CLASSES, TIMESTEPS, as_sequences, check_data, load_mnist
from .pictures import decode_picture, picture_bytes, read_picture, to_mnist_form, write_png
from .orders import reading_order_layer
from .reading import rebuilt
from .runs import DEFAULT_LOGDIR, MODEL_FILE, REASON_CHARS, counted, newest_model_run, tested, trial_of


def damaged_archive(path):
    """Why a file named .keras is not a whole zip archive, as every .keras file is, or None.
    Keras answers such a file with `File not found`, about a file that exists."""
    if not path.endswith(".keras"):
        return None  # not meant to be a .keras file: Keras says what it is not
    try:
        with zipfile.ZipFile(path) as archive:
            broken = archive.testzip()  # the first member whose CRC does not match, or None
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        return f"{os.path.getsize(path):,} bytes that are not a whole .keras archive: {e}"
    return f"its {broken} does not read back whole" if broken else None


def load_trained_model(path, logdir=DEFAULT_LOGDIR):
    """Load a model this tool trained (Keras safe mode: no arbitrary code), or explain why
    not; (the model, its path)."""
    path = model_path(path, logdir)
    reading_order_layer()  # registered with Keras: a model that reads in another order holds it
    try:
        model = keras.models.load_model(path, safe_mode=True)
    except Exception as e:  # Keras raises many kinds for a file that is not a model
        reason = str(e).strip().splitlines()[0][:REASON_CHARS] if str(e).strip() else type(e).__name__
        raise UsageError(f"{path} is not a Keras model this tool can load ({reason}); "
                         "give the model.keras of a run") from None
    expected_in, expected_out = (None, TIMESTEPS, FEATURES), (None, NUM_CLASSES)
    if tuple(model.input_shape) != expected_in or tuple(model.output_shape) != expected_out:
        raise UsageError(f"{path} maps {model.input_shape} to {model.output_shape}, not MNIST "
                         f"rows {expected_in} to {NUM_CLASSES} classes; give a model this tool trained")
    return model, path


def model_path(path, logdir=DEFAULT_LOGDIR):
    """The model.keras that --model names (a file, or a run folder; None: the newest in
    `logdir`), checked to be there and whole; found without TensorFlow."""
    if path is None:
        run, _ = newest_model_run(logdir)
        if run is None:
            raise UsageError(f"no trained model in {logdir}; train one first, or give --model PATH")
        path = os.path.join(logdir, run, MODEL_FILE)
    if os.path.isdir(path):  # a run folder: its model
        if not os.path.isfile(os.path.join(path, MODEL_FILE)):
            raise UsageError(f"--model {path} is a folder that holds no {MODEL_FILE}; give a run "
                             f"folder that does, or the {MODEL_FILE} of a run")
        path = os.path.join(path, MODEL_FILE)
    if not os.path.isfile(path):
        raise UsageError(f"--model {path} does not exist; give the model.keras of a run, or its folder")
    damage = damaged_archive(path)
    if damage:
        raise Fault(f"{path} is damaged ({damage}); train the run again, or give the model.keras "
                    "of another run")
    return path


def tested_accuracy(run_dir):
    """The test accuracy in a run folder's metrics.json, or None (unfinished, or no run)."""
    return tested(run_dir, "test_accuracy", float)


def model_line(path, picked):
    """Which model a command uses, with its run and test accuracy, said before it answers."""
    run_dir = os.path.dirname(path)
    accuracy = tested_accuracy(run_dir)
    if accuracy is not None:
        tested = f"test accuracy {accuracy:.2%}"
    else:
        tested = "not tested: its run has not finished" if os.path.isfile(
            os.path.join(run_dir, "config.json")) else "not trained in a run folder of this tool"
    trial = trial_of(run_dir)
    if trial:
        tested += f"; a quick trial on the first {trial:,} training images (--max-train-samples)"
    passed_over = newest_model_run(os.path.dirname(run_dir))[1] if picked else []
    if passed_over:
        tested += (f"; {counted(len(passed_over), 'newer quick trial')} passed over, the newest "
                   f"{os.path.join(os.path.dirname(run_dir), passed_over[0])}: give --model to use one")
    which = "the newest model in --logdir" if picked else "model"
    return f"using {which}: {path} (run {os.path.basename(run_dir) or '.'}, {tested})"


def format_confusion(counts):
    width = max(5, len(str(counts.max())) + 1)
    head = "true\\pred" + "".join(f"{c:>{width}}" for c in range(len(counts)))
    rows = [f"{t:>9}" + "".join(f"{n:>{width}}" for n in row) for t, row in enumerate(counts)]
    return "\n".join([head] + rows)


def format_per_class(counts):
    lines = ["digit  images  correct  accuracy  precision"]
    for digit, total, right, recall, precision in per_class(counts):
        lines.append(f"{digit:>5}  {total:>6,}  {right:>7,}  {recall:>8.2%}  {precision:>9.2%}")
    return "\n".join(lines)


def serving_function(model):
    """uint8 images [N, 28, 28], 0-255, MNIST polarity -> {"probabilities": [N, 10]}."""
    @tf.function(input_signature=[tf.TensorSpec([None, TIMESTEPS, FEATURES], tf.uint8, name="images")])
    def serve(images):
        return {"probabilities": model(tf.cast(images, tf.float32) / MAX_PIXEL, training=False)}
    return serve


def write_saved_model(model, out_dir):
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serving_function(model))
    archive.write_out(out_dir, verbose=False)


def tflite_ready(model):
    """The model as TFLite's own ops can run it: its recurrent layers unrolled over the steps
    (the same weights, the same outputs), since they have no while loop over tensor lists.
    This tool's models of up to 56 steps are unrolled already; longer ones, and one trained
    on a GPU, are not. (Kept as a loop, a model needs TensorFlow's ops in TFLite, the Flex
    delegate, which tf.lite.Interpreter of TensorFlow 2.21 does not have. Unrolled, 784 steps of
    128 units convert in under a minute on 2 cores, to a 2.5 MB file that runs on TFLite alone.)"""
    return rebuilt(model, lambda recurrent: [c.update(unroll=True) for c in recurrent])


def export_model(model, out_dir, tflite=False):
    """Write a SavedModel (signature `serving_default`) and, if asked, a .tflite file."""
    write_saved_model(model, out_dir)
    written = [out_dir]
    if tflite:
        with tempfile.TemporaryDirectory() as scratch:
            write_saved_model(tflite_ready(model), scratch)
            flat = tf.lite.TFLiteConverter.from_saved_model(scratch).convert()
        path = os.path.join(out_dir, "model.tflite")
        with open(path, "wb") as f:
            f.write(flat)
        written.append(path)
    return written


def export_micro_command(args, model, path, out, lstm_step):
    refused = micro.refusal(model)
    if refused:
        raise UsageError(refused)
    x_train, _, x_test, y_test = load_mnist(args.data, url=args.download_url)
    about = f"{os.path.basename(os.path.dirname(os.path.abspath(path)))}: {micro.described(model)}"
    print(f"converting to int8 with {min(micro.CALIBRATION_IMAGES, len(x_train)):,} training images, "
          f"then measuring it on the {len(y_test):,} test images ...", flush=True)
    try:
        record = micro.export_micro(model, out, x_train, (x_test, y_test), lstm_step, about)
    except OSError as e:
        raise UsageError(f"cannot write {out} ({e.strerror}); give --out a folder you can write to") from None
    print(micro.report(record, out))
    return record


def evaluate_command(args):
    """The whole test set through a trained model: printed tables, and the figures returned."""
    path = model_path(args.model, args.logdir)  # found before TensorFlow is imported
    check_data(args.data)  # its one line, before TensorFlow too
    quiet_tensorflow(args.verbose)
    configure_for_predicting()
    model, path = load_trained_model(path)  # before the data: no download for a model that fails
    _, _, x_test, y_test = load_mnist(args.data, url=args.download_url)
    print(model_line(path, args.model is None), file=sys.stderr if args.json else sys.stdout)
    x = as_sequences(x_test)
    predict(model, x[:args.batch_size], args.batch_size)  # warm-up: tracing
    started = time.perf_counter()
    probabilities = predict(model, x, args.batch_size)
    seconds = time.perf_counter() - started
    counts = confusion_matrix(probabilities, y_test)
    results = {
        "model": path,
        "images": len(y_test),
        **scores(probabilities, y_test),
        "per_class_accuracy": [float(recall) for _, _, _, recall, _ in per_class(counts)],
        "confusion_matrix": counts.tolist(),
        "images_per_second": len(y_test) / seconds,
    }
    if args.json:
        print(json.dumps(results))
    else:
        print(f"\ntest accuracy {results['accuracy']:.2%}  loss {results['loss']:.4f}  "
              f"({results['images']:,} images, {results['images_per_second']:,.0f} images/s)\n")
        print(format_per_class(counts) + "\n")
        print("confusion matrix (rows: true digit, columns: predicted)")
        print(format_confusion(counts))
    return results


def picture_as_mnist(path, data=None):
    """A picture file of one digit (or its bytes, `data`) -> MNIST's uint8 [28, 28]; a blank
    one is refused."""
    image = to_mnist_form(read_picture(path) if data is None else decode_picture(data, path))
    if image is None:
        raise UsageError(f"{path} is blank: no digit to read")
    return image


def readable(paths, read):
    """({path: read(path)} for the paths that read, [the UsageError of each that did not])."""
    done, refused = {}, []
    for path in paths:
        try:
            done[path] = read(path)
        except UsageError as e:
            refused.append(e)
    return done, refused


def predict_command(args):
    """Name the digit in each picture that reads; return one record per picture. The pictures
    that do not read are each named in a line: those that are no picture at all before
    TensorFlow is imported, blank ones before the model is loaded."""
    files, refused = readable(args.images, picture_bytes)
    shown = {}
    if args.show_input:
        shown = {p: os.path.join(args.show_input, os.path.splitext(os.path.basename(p))[0] + "-28x28.png")
                 for p in files}
        clashes = [p for p in shown.values() if os.path.exists(p)] or (
            [p for p in shown.values() if list(shown.values()).count(p) > 1])
        if clashes:
            raise UsageError(f"{clashes[0]} exists already or would be written twice; "
                             "give --show-input an empty folder")
    path = model_path(args.model, args.logdir) if files else None  # a missing model, at once too
    if files:
        quiet_tensorflow(args.verbose)
        configure_for_predicting()
        inputs, blank = readable(files, lambda p: picture_as_mnist(p, files[p]))
        refused += blank
        files = inputs
    if not files:
        raise Refused(refused)
    model, path = load_trained_model(path)
    print(model_line(path, args.model is None), file=sys.stderr if args.json else sys.stdout)
    probabilities = predict(model, as_sequences(np.stack(list(files.values()))))
    records = [answered(picture, p, image, shown.get(picture), args.json)
               for (picture, image), p in zip(files.items(), probabilities)]
    if refused:
        raise Refused(refused)
    return records


def answered(picture, p, image, shown, as_json):
    """One picture's answer (a record, printed as a line or as JSON); its 28x28 image written
    where `shown` says."""
    ranked = np.argsort(p)[::-1]
    record = {"image": picture, "digit": int(ranked[0]), "probability": float(p[ranked[0]]),
              "probabilities": [round(float(v), 6) for v in p]}
    if shown:
        os.makedirs(os.path.dirname(shown) or ".", exist_ok=True)
        write_png(shown, image)
        record["model_input"] = shown
    if as_json:
        print(json.dumps(record))
    else:
        runners_up = ", ".join(f"{d} ({p[d]:.1%})" if p[d] >= 0.001 else f"{d} (<0.1%)"
                               for d in ranked[1:3])
        print(f"{picture}: {ranked[0]}  ({p[ranked[0]]:.1%})   then {runners_up}"
              + (f"   model saw {shown}" if shown else ""))
    return record


def export_command(args, lstm_step=None):
    """Export a SavedModel (and model.tflite), or with --micro the int8 model for TFLM, written
    with the LSTM's equations `lstm_step` (the recipe's)."""
    path = model_path(args.model, args.logdir)
    out = args.out or os.path.join(os.path.dirname(path), "micro" if args.micro else "saved_model")
    if os.path.exists(out) and (not os.path.isdir(out) or os.listdir(out)):  # before TensorFlow
        raise UsageError(f"{out} exists already; give --out a new folder")
    if args.micro:
        micro.runtimes()
        check_data(args.data)
    quiet_tensorflow(args.verbose)
    configure_for_predicting()
    model, path = load_trained_model(path)
    print(model_line(path, args.model is None))
    if args.micro:
        return export_micro_command(args, model, path, out, lstm_step)
    try:
        written = export_model(model, out, tflite=args.tflite)
    except OSError as e:
        raise UsageError(f"cannot write {out} ({e.strerror}); give --out a folder you can write to") from None
    print("exported")
    for item in written:
        print(f"  {item}")
    print("serving signature 'serving_default': images uint8 [N, 28, 28] (0-255, white digit on "
          "black) -> probabilities float32 [N, 10]")
    if args.tflite:
        print("model.tflite: the same, one image at a time ([1, 28, 28]) until resized with "
              "interpreter.resize_tensor_input(input_index, [N, 28, 28]) and allocate_tensors()")
    return {"model": path, "written": written}
