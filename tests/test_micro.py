"""export --micro: the int8 model that TensorFlow Lite Micro and LiteRT run, without TensorFlow."""
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import rnn_mnist
from plumbing import micro
from conftest import as_command, one_quick

pytest.importorskip("ai_edge_litert", reason="export --micro needs requirements-micro.txt")
pytest.importorskip("tflite_micro", reason="TFLM's interpreter: tests/requirements.txt (Linux x86-64)")

# The int8 file read as a program without TensorFlow reads it, each digit alone, in both
# interpreters: their details and their answers, as probabilities.
WITHOUT_TENSORFLOW = """
import json, sys
import numpy as np
sys.modules["tensorflow"] = None  # an import of TensorFlow fails in this process
from ai_edge_litert.interpreter import Interpreter
from tflite_micro.python.tflite_micro import runtime
flat = open(sys.argv[1], "rb").read()
images = np.load(sys.argv[2])
lite = Interpreter(model_content=flat)
lite.allocate_tensors()
given, taken = lite.get_input_details()[0], lite.get_output_details()[0]
tflm = runtime.Interpreter.from_bytes(flat, arena_size=int(sys.argv[3]))
(scale, zero), (out_scale, out_zero) = given["quantization"], taken["quantization"]
answers = {"litert": [], "tflm": []}
for image in images:
    q = np.clip(np.round(image / 255 / scale) + zero, -128, 127).astype(np.int8)[None]
    lite.set_tensor(given["index"], q)
    lite.invoke()
    answers["litert"].append((lite.get_tensor(taken["index"]).astype(float) - out_zero) * out_scale)
    lite.reset_all_variables()
    tflm.set_input(q, 0)
    tflm.invoke()
    answers["tflm"].append((tflm.get_output(0).astype(float) - out_zero) * out_scale)
    tflm.reset()
print(json.dumps({"input": [str(given["dtype"].__name__), given["shape"].tolist()],
                  "output": [str(taken["dtype"].__name__), taken["shape"].tolist()],
                  **{k: np.concatenate(v).tolist() for k, v in answers.items()}}))
"""


def run_without_tensorflow(folder, images, arena):
    np.save(folder / "images.npy", images)
    done = subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW, str(folder / "model_int8.tflite"),
                           str(folder / "images.npy"), str(arena)],
                          capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])  # after TFLM's own line


def keras_probabilities(model_path, images):
    model = rnn_mnist.load_model(model_path)
    return np.asarray(model(images.astype(np.float32) / 255))


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    """export --micro of the tiny trained model: (its folder, what it returned, what it printed)."""
    out = tmp_path_factory.mktemp("exported") / "micro"
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        record = rnn_mnist.main(["export", "--micro", "--model", trained["model"],
                                 "--data", trained["data"], "--out", str(out)])
    return out, record, printed.getvalue()


def test_the_int8_model_runs_in_tflm_and_litert_as_the_keras_model_does(exported, trained):
    out, record, printed = exported
    assert sorted(os.listdir(out)) == ["measured.json", "model_int8.cc", "model_int8.h", "model_int8.tflite"]
    assert json.loads((out / "measured.json").read_text()) == record
    flat = (out / "model_int8.tflite").read_bytes()
    assert record["bytes"] == len(flat) and f"{len(flat):,} bytes" in printed
    assert record["operations"][0] == "UNIDIRECTIONAL_SEQUENCE_LSTM"  # the layer as one operation

    data = np.load(trained["data"])
    x_test, y_test = data["x_test"], data["y_test"]
    seen = run_without_tensorflow(out, x_test, record["arena_bytes"])
    assert seen["input"] == ["int8", [1, 28, 28]] and seen["output"] == ["int8", [1, 10]]
    expected = keras_probabilities(trained["model"], x_test)
    assert record["float_accuracy"] == pytest.approx(np.mean(expected.argmax(1) == y_test))
    for name in ("tflm", "litert"):
        probabilities = np.array(seen[name])
        assert record[f"int8_accuracy_{name}"] == pytest.approx(np.mean(probabilities.argmax(1) == y_test))
        assert f"{record[f'int8_accuracy_{name}']:.2%} in" in printed
    # TFLM, the target, follows the float model to a step or two of 1/256; LiteRT's int8 LSTM
    # computes otherwise, and on this tiny model strays further (docs/micro.md).
    assert np.abs(np.array(seen["tflm"]) - expected).max() < 0.02
    assert np.abs(np.array(seen["litert"]) - expected).max() < 0.06
    assert f"tensor arena: {record['arena_bytes']:,} bytes" in printed


CHECK_ARRAY = r"""
#include <cstdint>
#include <cstdio>
#include <string>
#include "model_int8.h"
struct Names {  // stands for TFLM's MicroMutableOpResolver: records what is added
  std::string added;
#define ADD(name) int name() { added += #name " "; return 0; }
  ADD(AddUnidirectionalSequenceLSTM) ADD(AddStridedSlice) ADD(AddFullyConnected) ADD(AddSoftmax)
  ADD(AddReshape) ADD(AddGather)
};
int main(int, char** argv) {
  Names resolver;
  bool ok = AddModelInt8Operations(resolver);
  std::printf("%d %d %d %s\n", ok, kModelInt8Operations,
              int(reinterpret_cast<std::uintptr_t>(g_model_int8) % 16), resolver.added.c_str());
  std::FILE* f = std::fopen(argv[1], "wb");
  std::fwrite(g_model_int8, 1, g_model_int8_len, f);
  std::fclose(f);
}
"""


@pytest.mark.skipif(shutil.which("g++") is None, reason="needs a C++ compiler, g++")
def test_the_c_array_compiles_as_cpp17_and_holds_the_model(tmp_path, exported):
    out, record, _ = exported
    (tmp_path / "check.cc").write_text(CHECK_ARRAY)
    subprocess.run(["g++", "-std=c++17", "-Wall", "-Wextra", "-Werror", "-pedantic", f"-I{out}",
                    str(tmp_path / "check.cc"), str(out / "model_int8.cc"), "-o", str(tmp_path / "check")],
                   check=True, capture_output=True, timeout=300)
    printed = subprocess.run([str(tmp_path / "check"), str(tmp_path / "copy.tflite")], check=True,
                             capture_output=True, text=True).stdout.split()
    ok, count, misalignment, *added = printed
    assert (ok, count, misalignment) == ("1", str(len(record["operations"])), "0")
    assert added == [micro.RESOLVER[op] for op in record["operations"]]
    assert (tmp_path / "copy.tflite").read_bytes() == (out / "model_int8.tflite").read_bytes()
    header = (out / "model_int8.h").read_text()
    assert f"kModelInt8ArenaSize = {record['arena_bytes']};" in header
    assert f"kModelInt8InputZeroPoint = {record['quantization']['input']['zero_point']};" in header


def saved_model(tmp_path, **shape):
    """An untrained model of the given shape, saved in a run folder as training saves one."""
    reading = shape.pop("reading", None)
    model = rnn_mnist.make_model((28, 28), reading=reading, **shape)
    (tmp_path / "run").mkdir()
    model.save(tmp_path / "run" / "model.keras")
    return str(tmp_path / "run" / "model.keras")


KINDS = [dict(cell="lstm", units=16, reading=(rnn_mnist.pixel_order("permuted", "3"), 16)),
         dict(cell="gru", units=8), dict(cell="lstm", units=8, layers=2),
         dict(cell="lstm", units=16, reading=(rnn_mnist.pixel_order("columns"), 28))]


@pytest.mark.parametrize("shape", one_quick(KINDS, ["permuted", "gru", "two-layers", "columns"]))
def test_every_kind_of_model_exports_and_reads_plain_rows(tmp_path, tiny_npz, shape):
    expected_ops = {"permuted": {"GATHER", "UNIDIRECTIONAL_SEQUENCE_LSTM"}, "gru": {"LOGISTIC", "TANH"}}
    path = saved_model(tmp_path, **dict(shape))
    out = tmp_path / "micro"
    record = rnn_mnist.main(["export", "--micro", "--model", path, "--data", tiny_npz, "--out", str(out)])
    kind = "gru" if shape["cell"] == "gru" else "permuted" if "reading" in shape else "lstm"
    assert expected_ops.get(kind, {"UNIDIRECTIONAL_SEQUENCE_LSTM"}) <= set(record["operations"])
    if shape.get("layers") == 2:
        assert len(micro.recurrent_layers(rnn_mnist.load_model(path))) == 2
    images = np.load(tiny_npz)["x_test"][:12]
    seen = run_without_tensorflow(out, images, record["arena_bytes"])  # the image, not its sequence
    assert np.abs(np.array(seen["tflm"]) - keras_probabilities(path, images)).max() < 0.02


def test_a_gru_too_long_to_unroll_is_refused_in_one_line(tmp_path, tiny_npz, capsys):
    path = saved_model(tmp_path, cell="gru", units=8, reading=(rnn_mnist.pixel_order("rows"), 1))
    with pytest.raises(SystemExit) as stop:
        as_command(["export", "--micro", "--model", path, "--data", tiny_npz])
    line = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(line.splitlines()) == 1
    assert "GRU that reads 784 steps" in line and "an LSTM of any length" in line
    assert os.listdir(tmp_path / "run") == ["model.keras"]  # no folder begun


def test_without_litert_the_export_says_what_to_install(tmp_path, trained, capsys, monkeypatch):
    real_find_spec = micro.importlib.util.find_spec
    monkeypatch.setattr(micro.importlib.util, "find_spec",
                        lambda name: None if name == "ai_edge_litert" else real_find_spec(name))
    with pytest.raises(SystemExit) as stop:
        as_command(["export", "--micro", "--model", trained["model"], "--data", trained["data"],
                    "--out", str(tmp_path / "micro")])
    assert stop.value.code == 2
    assert "pip install -r requirements-micro.txt" in capsys.readouterr().err
    assert not (tmp_path / "micro").exists()


@pytest.mark.full
def test_where_tflm_has_no_build_the_export_measures_in_litert_alone(tmp_path, trained, capsys, monkeypatch):
    real_find_spec = micro.importlib.util.find_spec
    monkeypatch.setattr(micro.importlib.util, "find_spec",
                        lambda name: None if name == "tflite_micro" else real_find_spec(name))
    out = tmp_path / "micro"
    record = rnn_mnist.main(["export", "--micro", "--model", trained["model"], "--data", trained["data"],
                             "--out", str(out)])
    assert "int8_accuracy_litert" in record and "int8_accuracy_tflm" not in record and "arena_bytes" not in record
    assert "tensor arena: not measured" in capsys.readouterr().out
    assert "kModelInt8ArenaSize: not measured" in (out / "model_int8.h").read_text()


def test_micro_and_tflite_together_or_over_a_folder_are_refused(tmp_path, trained, capsys):
    with pytest.raises(SystemExit):
        as_command(["export", "--micro", "--tflite", "--model", trained["model"]])
    assert "not allowed with argument" in capsys.readouterr().err
    (tmp_path / "micro").mkdir()
    (tmp_path / "micro" / "mine.txt").write_text("kept")
    with pytest.raises(SystemExit):
        as_command(["export", "--micro", "--model", trained["model"], "--out", str(tmp_path / "micro")])
    assert "exists already; give --out a new folder" in capsys.readouterr().err
    assert os.listdir(tmp_path / "micro") == ["mine.txt"]


def test_a_failed_measurement_leaves_no_folder_behind(tmp_path, trained, monkeypatch):
    def fails(*args):
        raise rnn_mnist.Fault("the int8 model did not run in tflm: (simulated)")
    monkeypatch.setattr(micro, "measured_apart", fails)
    with pytest.raises(rnn_mnist.Fault):
        rnn_mnist.main(["export", "--micro", "--model", trained["model"], "--data", trained["data"],
                        "--out", str(tmp_path / "micro")])
    assert os.listdir(tmp_path) == []


def test_the_default_model_fits_in_150_kb(tmp_path, tiny_npz):
    path = saved_model(tmp_path)  # 128 units, rows: the shape the recipe trains
    record = rnn_mnist.main(["export", "--micro", "--model", path, "--data", tiny_npz,
                             "--out", str(tmp_path / "micro")])
    assert record["bytes"] <= 150_000
    assert record["operations"] == ["UNIDIRECTIONAL_SEQUENCE_LSTM", "STRIDED_SLICE", "FULLY_CONNECTED", "SOFTMAX"]


@pytest.mark.full
def test_on_real_digits_int8_is_within_half_a_point_of_float(tmp_path, real_model, real_mnist):
    data = dict(np.load(real_mnist))
    data["x_test"], data["y_test"] = data["x_test"][:2000], data["y_test"][:2000]
    np.savez(tmp_path / "slice.npz", **data)
    record = rnn_mnist.main(["export", "--micro", "--model", real_model, "--data", str(tmp_path / "slice.npz"),
                             "--out", str(tmp_path / "micro")])
    assert record["images"] == 2000 and record["float_accuracy"] > 0.9
    for name in ("tflm", "litert"):
        assert abs(record[f"int8_accuracy_{name}"] - record["float_accuracy"]) <= 0.005
