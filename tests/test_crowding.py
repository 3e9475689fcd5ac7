"""The crowding measurements on a tiny trained model: shares that add up, missed atoms told apart."""

import numpy as np
import pytest
from conftest import tiny_recipe

from nesfgen.checkpoint import load_model
from nesfgen.crowding import field_error_near_atoms, summarise_field_errors, training_signal
from nesfgen.estimator import Decoded
from nesfgen.train import train


def test_training_signal_shares_add_up_and_fields_errors_tell_missed_atoms(tiny_dataset, tmp_path):
    train(tiny_recipe(tiny_dataset, **{"train.epochs": 1}), tmp_path / "run")
    trained = load_model(tmp_path / "run")
    signal = training_signal(trained, tiny_dataset.load("train"), steps=2)  # 48 structures, batches of 8
    # per step the cell sizes' loss and gradient shares add up to one: per atom times atoms, summed over sizes
    assert sum(row["loss_share"] * row["atoms"] for row in signal.values()) == pytest.approx(2)
    assert sum(row["gradient_share"] * row["atoms"] for row in signal.values()) == pytest.approx(2, rel=1e-3)
    assert len(signal) > 1 and all(row["queries_near"] > 0 for row in signal.values())

    crystals = tiny_dataset.load("test")

    exact = [
        Decoded(c.lengths, c.angles, c.cart_coords, np.zeros(c.num_atoms, int), c.atomic_numbers) for c in crystals
    ]
    exact[0] = Decoded(exact[0].lengths, exact[0].angles, np.zeros((0, 3)), np.zeros(0, int), np.zeros(0, int))
    rows = field_error_near_atoms(trained, crystals, exact)
    assert len(rows) == crystals.cart_coords.shape[0]
    assert [row["missed"] for row in rows] == [row["structure"] == 0 for row in rows]
    assert all(row["error_max"] >= row["error_mean"] >= 0 for row in rows)
    summary = summarise_field_errors(rows)
    assert sum(group["atoms"] for group in summary) == len(rows)
