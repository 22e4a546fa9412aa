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
