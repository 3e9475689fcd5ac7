"""The estimator recovers crystals from their exact field, batched or not, deterministically."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from nesfgen.config import EstimatorConfig
from nesfgen.crystal import Crystal
from nesfgen.data.importers import load_paper_folder
from nesfgen.errors import UserError
from nesfgen.estimator import (
    Decoded,
    ExactField,
    _suppress,
    estimate,
)
from nesfgen.metrics import mean_over_structures, structure_metrics
from nesfgen.sampling import box_grid, local_offsets

FAST = EstimatorConfig(steps=4)  # the exact field converges in one step


def species_table_of(crystals: list[Crystal]) -> list[int]:
    return sorted({int(z) for c in crystals for z in c.atomic_numbers})


def bounding_box(crystals: list[Crystal]) -> np.ndarray:
    coords = np.concatenate([c.cart_coords for c in crystals])
    return np.stack([coords.min(axis=0), coords.max(axis=0)])


@pytest.fixture
def tiny(tiny_crystals: dict[str, Crystal]) -> tuple[list[Crystal], ExactField, np.ndarray]:
    crystals = list(tiny_crystals.values())
    return crystals, ExactField(crystals, species_table_of(crystals)), bounding_box(crystals)


def assert_same(a: list[Decoded], b: list[Decoded]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for name in ("lengths", "angles", "cart_coords", "species", "atomic_numbers"):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name))


def assert_recovered(crystals: list[Crystal], found: list[Decoded]) -> None:
    summary = mean_over_structures([structure_metrics(c, d) for c, d in zip(crystals, found)])
    assert summary["atom_count_error_pct"] == 0.0 and summary["empty_decodes"] == 0
    assert summary["position_error_actual"] < 1e-3 and summary["position_error_detected"] < 1e-3
    assert summary["species_error_actual_pct"] == 0.0 and summary["species_error_detected_pct"] == 0.0
    assert summary["length_error"] < 1e-5 and summary["angle_error"] < 1e-4


def test_particle_grid_matches_the_paper_count() -> None:
    box = [[-0.0077, -0.0055, 0.0], [11.6497, 8.4958, 5.9674]]  # LCS6Å training atoms
    assert box_grid(box, 0.5).shape == (26 * 20 * 14, 3) == (7280, 3)
    assert local_offsets(0.1, 0.6).shape == (216, 3)
    with pytest.raises(UserError, match="lo <= hi"):
        box_grid([[1, 0, 0], [0, 1, 1]], 0.5)


def test_exact_field_points_to_the_nearest_listed_atom(tiny: tuple) -> None:
    crystals, field, _ = tiny
    # near the origin Na; and next to the origin's periodic image, which is ignored: the Cl at the centre wins
    points = torch.tensor([[[0.3, 0.2, 0.1], [5.5, 5.5, 5.5]]])
    z = field.latents()[:1]
    vectors = field.position(points, z)
    np.testing.assert_allclose(vectors[0, 0].numpy(), [-0.3, -0.2, -0.1], atol=1e-6)
    target = crystals[0].cart_coords[np.linalg.norm(crystals[0].cart_coords - [5.5] * 3, axis=1).argmin()]
    np.testing.assert_allclose((points[0, 1] + vectors[0, 1]).numpy(), target, atol=1e-5)
    np.testing.assert_allclose(target, [2.82] * 3)
    assert field.species(points, z).argmax(-1)[0].tolist() == [
        field.species_table.index(11),
        field.species_table.index(17),
    ]


def test_exact_field_is_recovered(tiny: tuple) -> None:
    crystals, field, box = tiny
    assert_recovered(crystals, estimate(field, field.latents(), box, field.species_table, FAST))


def test_paper_steps_recover_too(tiny: tuple) -> None:
    crystals, field, box = tiny
    assert_recovered(crystals, estimate(field, field.latents(), box, field.species_table))


def test_batched_equals_one_at_a_time_and_chunks(tiny: tuple) -> None:
    _, field, box = tiny
    z = field.latents()
    batched = estimate(field, z, box, field.species_table, FAST)
    single = [estimate(field, z[i : i + 1], box, field.species_table, FAST)[0] for i in range(len(z))]
    assert_same(batched, single)
    calls = []
    chunked = estimate(
        field, z, box, field.species_table, replace(FAST, chunk_size=2), progress=lambda *a: calls.append(a)
    )
    assert_same(batched, chunked)
    assert calls == [(2, 5), (4, 5), (5, 5)]


def test_deterministic(tiny: tuple) -> None:
    _, field, box = tiny
    z = field.latents().flip(0)
    assert_same(estimate(field, z, box, field.species_table, FAST), estimate(field, z, box, field.species_table, FAST))


def test_suppression_weights_and_rejects_per_structure() -> None:
    """Structure 0: a 10-particle cluster (accepted) and a 9-particle one (rejected); structure 1: nothing."""
    cluster = torch.zeros(10, 3)
    cluster[1:, 0] = 0.2  # 1 particle at the origin with score 0, 9 at x = 0.2 with score 1
    stray = torch.full((9, 3), 3.0)
    points = torch.stack([torch.cat([cluster, stray]), torch.zeros(19, 3)])  # (2, 19, 3)
    score = torch.stack([torch.cat([torch.tensor([0.0] + [1.0] * 9), torch.full((9,), 0.5)]), torch.full((19,), 2.0)])
    atoms, found = _suppress(points, score, EstimatorConfig(score_threshold=1.5))
    assert found.tolist() == [[True], [False]]
    expected = 0.2 * 9 * math.exp(-1) / (1 + 9 * math.exp(-1))  # softmax(-score)-weighted mean
    np.testing.assert_allclose(atoms[0, 0].numpy(), [expected, 0, 0], rtol=1e-6)


def test_module_field_is_decoded_in_eval_mode(tiny: tuple) -> None:
    crystals, exact, box = tiny

    class ModuleField(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.modes: set[bool] = set()

        def lattice(self, z):
            self.modes.add(self.training)
            return exact.lattice(z)

        def position(self, points, z):
            return exact.position(points, z)

        def species(self, points, z):
            return exact.species(points, z)

    field = ModuleField().train()
    assert_recovered(crystals, estimate(field, exact.latents(), box, exact.species_table, FAST))
    assert field.modes == {False} and field.training


def test_bf16_rounds_the_field_passes_but_not_the_lattice(tiny: tuple) -> None:
    crystals, exact, box = tiny
    seen: dict[str, set[bool]] = {"lattice": set(), "position": set(), "species": set()}

    class RecordingField:
        def lattice(self, z):
            seen["lattice"].add(torch.is_autocast_enabled("cpu"))
            return exact.lattice(z)

        def position(self, points, z):
            seen["position"].add(torch.is_autocast_enabled("cpu"))
            return exact.position(points, z).bfloat16()  # what a network's last layer gives under autocast

        def species(self, points, z):
            seen["species"].add(torch.is_autocast_enabled("cpu"))
            return exact.species(points, z)

    found = estimate(RecordingField(), exact.latents(), box, exact.species_table, replace(FAST, precision="bf16"))
    assert seen == {"lattice": {False}, "position": {True}, "species": {True}}
    summary = mean_over_structures([structure_metrics(c, d) for c, d in zip(crystals, found)])
    assert summary["atom_count_error_pct"] == 0.0 and summary["species_error_actual_pct"] == 0.0
    assert summary["length_error"] < 1e-5 and summary["position_error_actual"] < 0.05  # bf16 rounding of moves
    with pytest.raises(UserError, match="estimator.precision must be fp32 or bf16"):
        estimate(exact, exact.latents(), box, exact.species_table, replace(FAST, precision="fp16"))


def test_sparse_atoms_are_rejected(tiny: tuple) -> None:
    """An atom needs nms_min_particles particles: with a coarse grid a small cell decodes empty."""
    crystals, field, box = tiny
    coarse = replace(FAST, particle_interval=3.0, nms_min_particles=50)
    found = estimate(field, field.latents()[2:3], box, field.species_table, coarse)  # CsCl
    assert found[0].num_atoms == 0 and found[0].cart_coords.shape == (0, 3)
    assert found[0].to_crystal("CsCl") is None


def test_to_crystal_wraps_and_drops_duplicates() -> None:
    decoded = Decoded(
        np.array([4.0, 4.0, 4.0]),
        np.array([90.0, 90.0, 90.0]),
        np.array([[0.0, 0.0, 0.0], [4.02, 0.0, 0.0], [2.0, 2.0, -1.0]]),  # the 2nd is the 1st's image
        np.array([0, 1, 1]),
        np.array([11, 17, 17]),
    )
    crystal = decoded.to_crystal("x")
    assert crystal is not None and crystal.id == "x"
    assert crystal.atomic_numbers.tolist() == [11, 17]
    np.testing.assert_allclose(crystal.cart_coords[1], [2.0, 2.0, 3.0], atol=1e-9)
    bad_lattice = replace(decoded, lengths=np.array([-1.0, 4.0, 4.0]))
    assert bad_lattice.to_crystal() is None


@pytest.mark.paper_data
@pytest.mark.slow
def test_exact_field_recovers_the_lcs6_test_split(paper_data: Path) -> None:
    """All 301 LCS6Å test structures with the paper's estimator settings (about 10 s on 2 CPU cores).

    The importer stores positions in pymatgen's frame (c along z) rather than the release's (a along
    x), so the training box is about [0, 8.16] × [0, 5.98] × [-0.02, 11.68]: 6916 particles, not 7280.
    """
    train = load_paper_folder(paper_data / "dataset_lim_l6_train")
    test = load_paper_folder(paper_data / "dataset_lim_l6_test")
    assert len(test) == 301
    box = bounding_box(train)
    field = ExactField(test, species_table_of(train + test))
    found = estimate(field, field.latents(), box, field.species_table, EstimatorConfig())
    assert_recovered(test, found)
