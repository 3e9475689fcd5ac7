"""The crowding measurements on a tiny trained model: shares that add up, missed atoms told apart."""

import numpy as np
import pytest
from conftest import perovskite, rock_salt, tiny_recipe

from nesfgen.checkpoint import load_model
from nesfgen.crowding import (
    field_across_closest_pair,
    field_error_near_atoms,
    missed_by_neighbour_distance,
    nearest_neighbour_distances,
    summarise_field_errors,
    training_signal,
    training_twins,
)
from nesfgen.crystal import Crystal
from nesfgen.data.store import CrystalSet, write_dataset
from nesfgen.decoder import encode
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


def test_nearest_neighbour_distances_see_periodic_images():
    assert nearest_neighbour_distances(rock_salt(a=5.64)) == pytest.approx([2.82] * 8)


def test_missed_atoms_by_neighbour_distance_cover_every_decoded_atom(tiny_dataset, tmp_path):
    train(tiny_recipe(tiny_dataset, **{"train.epochs": 1}), tmp_path / "run")
    found = missed_by_neighbour_distance(str(tmp_path / "run"), str(tiny_dataset.path), "test", min_atoms=1)
    assert (
        found["structures"] == 6
        and found["wrong_count_pct"] is not None
        and sum(band["atoms"] for band in found["bands"]) == found["atoms"] > 0
    )
    assert sum(count for _, count in found["missed_elements"]) == round(found["missed_pct"] * found["atoms"] / 100)


def test_misses_after_fitting_the_latents_are_counted_over_the_same_cells(tiny_dataset, tmp_path):
    train(tiny_recipe(tiny_dataset, **{"train.epochs": 1}), tmp_path / "run")
    found = missed_by_neighbour_distance(
        str(tmp_path / "run"), str(tiny_dataset.path), "test", min_atoms=1, refine_steps=2
    )
    assert found["refine_steps"] == 2 and found["structures"] == 6


def test_field_across_the_closest_pair_gives_the_true_component_along_it(tiny_dataset, tmp_path):
    train(tiny_recipe(tiny_dataset, **{"train.epochs": 1}), tmp_path / "run")
    trained = load_model(tmp_path / "run")
    salt = rock_salt(a=5.64)
    latent = encode(trained, CrystalSet.from_crystals([salt]))[0]
    line = field_across_closest_pair(trained, salt, latent, points=4, margin=0.4)
    assert line["distance"] == pytest.approx(2.82) and line["pair"] == [11, 17]
    step = (2.82 + 0.8) / 3
    assert line["along"] == pytest.approx([-0.4, step - 0.4, 2 * step - 0.4, 3.22])
    # before the first atom the nearest atom lies ahead; past the midpoint the second atom is the target
    assert line["true"] == pytest.approx([0.4, 0.4 - step, 3.22 - 2 * step, -0.4], abs=1e-9)
    assert len(line["predicted"]) == 4 and all(np.isfinite(line["predicted"]))
    single = Crystal.create([3.0] * 3, [90] * 3, atomic_numbers=[11], frac_coords=[[0, 0, 0]])
    with pytest.raises(ValueError, match="two atoms"):
        field_across_closest_pair(trained, single, latent)


def test_training_twins_are_found_as_given_and_in_other_frames(tmp_path):
    def tetragonal(c: float, id: str, shift=(0.0, 0.0, 0.0), axes=(0, 1, 2)) -> Crystal:
        """SrTiO3 stretched along c, optionally at another origin or with its axes reordered."""
        frac = (perovskite().frac_coords + shift)[:, list(axes)] % 1.0
        lengths = np.array([3.9, 3.9, c])[list(axes)]
        return Crystal.create(
            lengths, [90, 90, 90], atomic_numbers=perovskite().atomic_numbers, frac_coords=frac, id=id
        )

    splits = {
        "train": [tetragonal(5.0, "twin"), rock_salt(id="other")],
        "val": [
            tetragonal(5.05, "same"),  # the twin's arrangement, a slightly longer c
            tetragonal(5.0, "half", shift=(0.5, 0.5, 0.5)),  # Sr and Ti swap places: a new arrangement as given
            tetragonal(5.0, "reordered", axes=(2, 0, 1)),  # c first: no twin as given, one in another frame
            Crystal.create([3.0] * 3, [90] * 3, atomic_numbers=[3], frac_coords=[[0, 0, 0]], id="Li"),  # no twin
        ],
    }
    write_dataset(tmp_path / "ds", splits, name="ds")
    rows = {row["id"]: row for row in training_twins(str(tmp_path / "ds"), "val", other_frames=True)}
    assert rows["same"]["twins"] == 1 and rows["same"]["mismatch"] == pytest.approx(0.0, abs=1e-9)
    assert rows["half"]["twins"] == 1 and rows["half"]["mismatch"] > 0.2
    assert rows["half"]["mismatch_other_frames"] == pytest.approx(0.0, abs=1e-9)
    assert rows["reordered"]["twins"] == 0 and rows["reordered"]["mismatch"] == np.inf
    assert rows["reordered"]["mismatch_other_frames"] == pytest.approx(0.0, abs=1e-9)
    assert rows["Li"]["twins"] == 0 and rows["Li"]["mismatch_other_frames"] == np.inf
    assert "mismatch_other_frames" not in training_twins(str(tmp_path / "ds"), "val")[0]
