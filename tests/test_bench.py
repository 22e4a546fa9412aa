"""The benchmark's plumbing on tiny data: the recipe it names, one run per seed, their
median, and the PyTorch peer given the same recipe (a stand-in peer that reports what it
was asked, so no PyTorch is needed here). Its figures are timings: they are measured by
running it (bench/README.md), never asserted here."""
import os
import sys

import pytest

from conftest import REPO

sys.path.insert(0, os.path.join(REPO, "bench"))

PEER = """
import json, sys
options = dict(zip(sys.argv[2::2], sys.argv[3::2]))
print("a line that is not JSON")
for epoch in range(1, int(options["--epochs"]) + 1):
    print(json.dumps({"epoch": epoch, "train_s": 2.0 * epoch, "test_acc": 0.985 + 0.003 * epoch,
                      "samples_per_s": 1000}))
"""


@pytest.mark.full
def test_the_benchmark_names_its_recipe_and_gives_the_peer_the_same(tmp_path, tiny_npz):
    import benchmark
    peer = tmp_path / "peer.py"
    peer.write_text(PEER)
    report = benchmark.main(["--data", tiny_npz, "--seeds", "3", "4", "--torch-python", sys.executable,
                             "--torch-peer", str(peer), "--torch-batch", "64:0.004", "32:0.01",
                             "--epochs", "2", "--batch-size", "32", "--units", "8",
                             "--learning-rate", "0.01", "--validation-size", "40"])
    assert report["recipe"] == {"model": "1 x LSTM(8)", "training_images": 200, "batch_size": 32,
                                "optimizer": "Adam", "learning_rate": 0.01,
                                "lr_schedule": "cosine to zero over all steps", "epochs": 2,
                                "shift_pixels": 2}
    assert [run["seed"] for run in report["runs"]] == [3, 4]
    assert all(len(run["curve"]) == 2 for run in report["runs"])
    same, other = report["torch_tuned"]  # 32:0.01 is rnn_mnist's own: run once, not twice
    for tuned, batch, rate in ((same, "32", "0.01"), (other, "64", "0.004")):
        assert len(tuned["runs"]) == 2  # one per seed
        for run, seed in zip(tuned["runs"], ("3", "4")):
            assert run["peer_options"] == (f"--recipe tuned --epochs 2 --batch {batch} --lr {rate} "
                                           f"--shift 2 --seed {seed}")
            assert run["reached"] == {"98.76%": {"epoch": 1, "train_seconds": 2.0},
                                      "99.00%": {"epoch": 2, "train_seconds": 4.0}}
        assert tuned["median_seconds_to_accuracy"] == {"98.76%": 2.0, "99.00%": 4.0}
    assert report["median_seconds_to_accuracy"].keys() == {"98.76%", "99.00%"}
    assert report["ratio_to_torch_plain"] == pytest.approx(report["samples_per_second"] / 1000, rel=1e-2)


def test_a_seed_that_never_reaches_the_target_counts_as_the_slowest():
    import benchmark

    def run(*seconds):
        return {"reached": {target: {"epoch": 1, "train_seconds": s}
                            for target, s in zip(("98.76%", "99.00%"), seconds)}}
    assert benchmark.medians([run(10.0, 30.0), run(12.0), run(11.0, 20.0)]) == {"98.76%": 11.0,
                                                                               "99.00%": 30.0}
    assert benchmark.medians([run(10.0), run(12.0), run(11.0, 20.0)])["99.00%"] is None


def test_the_sitting_is_told_seed_by_seed_with_the_ratio_to_the_peer():
    import benchmark

    def run(seed, *reached, final=0.991):
        return {"seed": seed, "final_test_accuracy": final,
                "reached": {target: {"epoch": epoch, "train_seconds": s}
                            for target, (epoch, s) in zip(("98.76%", "99.00%"), reached)}}
    report = {"runs": [run(1, (3, 14.0), (5, 24.0)), run(2, (4, 19.0))],
              "median_seconds_to_accuracy": {"98.76%": 16.5, "99.00%": None},
              "torch_tuned": [{"batch_size": 128, "learning_rate": 0.005,
                               "runs": [run(1, (4, 18.0), (6, 26.0)), run(2, (4, 17.0), (6, 27.0))],
                               "median_seconds_to_accuracy": {"98.76%": 17.5, "99.00%": 26.5}}]}
    lines = benchmark.seed_table(report).splitlines()
    assert lines[0].split() == ["seed", "engine", "98.76%", "reached", "99.00%", "reached", "final"]
    assert lines[1].split()[:8] == ["1", "rnn_mnist", "epoch", "3,", "14.0", "s", "epoch", "5,"]
    assert lines[2].startswith("1") and "PyTorch, batch 128, 0.005" in lines[2] and "epoch 6, 26.0 s" in lines[2]
    assert "not reached" in lines[3] and lines[3].startswith("2")  # seed 2 never reached 99%
    assert lines[5].startswith("median") and "16.5 s" in lines[5] and "not reached" in lines[5]
    assert "17.5 s (rnn_mnist 0.94x)" in lines[6] and "26.5 s" in lines[6]
