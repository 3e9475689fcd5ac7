"""The estimator recovers crystals from their exact field, batched or not, deterministically."""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import zinc_blende

from nesfgen.allocator import SWITCH
from nesfgen.config import EstimatorConfig, ModelConfig
from nesfgen.crystal import Crystal
from nesfgen.data.importers import load_paper_folder
from nesfgen.decoder import estimator_config
from nesfgen.errors import UserError
from nesfgen.estimator import (
    Decoded,
    ExactField,
    _suppress,
    constrain_species,
    estimate,
    exact_atom_count,
    fill_from_field,
    whole_formula_units,
)
from nesfgen.metrics import mean_over_structures, structure_metrics
from nesfgen.model import NeSF
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


@pytest.mark.parametrize(
    ("mode", "chunk_size", "expected_calls"),
    [
        ("paper", 2, [(2, 5), (4, 5), (5, 5)]),  # chunk_size structures at a time
        # chunk_size × 1331 box particles: 2 × 1331 < twice any cell's ~1900-3600, so one at a time ...
        ("fast", 2, [(1, 5), (2, 5), (3, 5), (4, 5), (5, 5)]),
        ("fast", 16, [(5, 5)]),  # ... and 16 × 1331 holds all five
    ],
)
def test_batched_equals_one_at_a_time_and_chunks(tiny: tuple, mode: str, chunk_size: int, expected_calls) -> None:
    _, field, box = tiny
    z = field.latents()
    config = replace(FAST, mode=mode)
    batched = estimate(field, z, box, field.species_table, config)
    single = [estimate(field, z[i : i + 1], box, field.species_table, config)[0] for i in range(len(z))]
    assert_same(batched, single)
    calls = []
    chunked = estimate(
        field, z, box, field.species_table, replace(config, chunk_size=chunk_size), progress=lambda *a: calls.append(a)
    )
    assert_same(batched, chunked)
    assert calls == expected_calls


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
    atoms, found, support = _suppress(points, score, EstimatorConfig(score_threshold=1.5))
    assert found.tolist() == [[True, False], [False, False]] and support.tolist() == [[10, 9], [0, 0]]
    expected = 0.2 * 9 * math.exp(-1) / (1 + 9 * math.exp(-1))  # softmax(-score)-weighted mean
    np.testing.assert_allclose(atoms[0, 0].numpy(), [expected, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(atoms[0, 1].numpy(), [3.0, 3.0, 3.0])  # the rejected cluster is kept, after


def _decoded(support, spares, spare_support):
    """Atoms along x every 1.5 Å in a 12 Å cube, with their cluster support, and rejected clusters."""
    count = len(support)
    coords = np.stack([np.arange(count) * 1.5, np.zeros(count), np.zeros(count)], 1)
    kinds = np.zeros(count, dtype=np.int64)
    return Decoded(
        np.full(3, 12.0),
        np.full(3, 90.0),
        coords,
        kinds,
        kinds + 30,
        support=np.asarray(support),
        spares=np.asarray(spares, dtype=float).reshape(-1, 3),
        spare_support=np.asarray(spare_support),
    )


def test_a_formula_count_is_reached_by_the_smaller_change() -> None:
    """3 atoms of ZnS (2 a unit): drop the weakest, or add the best spare, whichever is closer to the threshold."""
    far = [[0.0, 6.0, 6.0]]
    weak_atom = whole_formula_units(_decoded([40, 11, 40], far, [3]), 2, 10)  # 11 is 2 above, 3 is 7 below
    assert weak_atom.num_atoms == 2 and weak_atom.support.tolist() == [40, 40]
    near_miss = whole_formula_units(_decoded([40, 30, 40], far, [9]), 2, 10)  # the spare missed by one particle
    assert near_miss.num_atoms == 4 and near_miss.cart_coords[-1].tolist() == far[0]
    crowded = whole_formula_units(_decoded([40, 30, 40], [[0.5, 0.0, 0.0]], [9]), 2, 10)  # a satellite of atom 0
    assert crowded.num_atoms == 2
    wrapped = whole_formula_units(_decoded([40, 30, 40], [[11.8, 0.0, 0.0]], [9]), 2, 10)  # 0.2 Å from atom 0's image
    assert wrapped.num_atoms == 2
    whole = _decoded([40, 40], far, [9])
    assert whole_formula_units(whole, 2, 10) is whole


def test_an_asked_atom_count_drops_the_weakest_or_adds_the_strongest_spares():
    spares = [[0.0, 6.0, 6.0], [6.0, 6.0, 0.0], [0.5, 0.0, 0.0]]  # the third a satellite of atom 0
    decoded = _decoded([40, 11, 30], spares, [3, 9, 9])
    assert exact_atom_count(decoded, 2, 10).support.tolist() == [40, 30]
    four = exact_atom_count(decoded, 4, 10)
    assert four.num_atoms == 4 and four.cart_coords[-1].tolist() == spares[1]  # 9 particles before 3
    five = exact_atom_count(decoded, 5, 10)
    assert five.num_atoms == 5 and five.support.tolist() == [40, 11, 30, 9, 3]
    assert exact_atom_count(decoded, 6, 10) is decoded  # only two spares are atoms apart: left as found
    assert exact_atom_count(decoded, 3, 10) is decoded


def test_a_missed_atom_is_filled_in_where_the_field_marks_it() -> None:
    """The exact field of zinc blende, decoded without one sulfur: the fill puts it back (its site lies on the
    search grid at a = 5.6 Å) and, through the species constraint, votes it sulfur."""
    crystal = zinc_blende(a=5.6)
    field = ExactField([crystal], [16, 30])
    z = field.latents()
    (found,) = estimate(field, z, bounding_box([crystal]), [16, 30], FAST)
    assert found.num_atoms == 8
    missing = found.cart_coords[5].copy()
    keep = np.arange(8) != 5
    short = Decoded(
        found.lengths, found.angles, found.cart_coords[keep], found.species[keep], found.atomic_numbers[keep]
    )
    filled = fill_from_field(field, z, short, 8)
    assert filled.num_atoms == 8 and np.allclose(filled.cart_coords[-1], missing, atol=1e-4)
    assert fill_from_field(field, z, short, 7) is short  # already there: left as it is
    (voted,) = constrain_species(field, z, [short], [16, 30], (), config=FAST, num_atoms=8)
    assert voted.num_atoms == 8 and sorted(voted.atomic_numbers.tolist()) == [16] * 4 + [30] * 4
    crowded = fill_from_field(field, z, short, 200)  # 175 Å³ holds no 200 atoms 1.4 Å apart: as many as fit
    assert 8 < crowded.num_atoms < 200
    for lengths, angles in (
        (np.array([np.nan, 5.6, 5.6]), short.angles),  # a decoded lattice that is no cell: left for to_crystal
        (short.lengths, np.array([90.0, 90.0, 180.0])),
        (np.array([400.0, 400.0, 400.0]), short.angles),  # far larger than any training cell: not searched
    ):
        odd = Decoded(lengths, angles, short.cart_coords, short.species, short.atomic_numbers)
        assert fill_from_field(field, z, odd, 8) is odd


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
    with pytest.raises(UserError, match="estimator.precision = 'fp16' is not allowed; expected one of fp32, bf16"):
        replace(FAST, precision="fp16")


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


def _paper_reference(field, z, box, table, config):
    """Today's paper algorithm, frozen here as it stood before the fast mode: estimator.mode=paper must match it."""
    grid = box_grid(box, config.particle_interval)
    offsets = local_offsets(config.species_interval, config.species_range)
    lengths, angles = field.lattice(z)
    points = grid.expand(z.shape[0], -1, -1)
    for _ in range(config.steps):
        points = points + field.position(points, z)
    score = torch.linalg.vector_norm(field.position(points, z), dim=-1)
    rows = torch.arange(z.shape[0])
    alive = score <= config.score_threshold
    order = torch.argsort((~alive).to(torch.uint8), dim=1, stable=True)[:, : int(alive.sum(1).max())]
    points = points.gather(1, order[..., None].expand(-1, -1, 3))
    score, alive = score.gather(1, order), alive.gather(1, order)
    positions, accepted = [], []
    while bool(alive.any()):
        best = score.masked_fill(~alive, math.inf).argmin(dim=1)
        centre = points[rows, best]
        offset = points - centre[:, None, :]
        sphere = alive & (torch.linalg.vector_norm(offset, dim=-1) <= config.nms_radius)
        weight = torch.exp(score[rows, best][:, None] - score).masked_fill(~sphere, 0.0)
        shift = torch.where(sphere[..., None], weight[..., None] * offset, 0.0).sum(1)
        positions.append(centre + shift / weight.sum(1, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny))
        accepted.append(sphere.sum(1) >= config.nms_min_particles)
        alive = alive & ~sphere
    positions_, accepted_ = torch.stack(positions, 1), torch.stack(accepted, 1)
    order = torch.argsort((~accepted_).to(torch.uint8), dim=1, stable=True)[:, : int(accepted_.sum(1).max())]
    atoms, found = positions_.gather(1, order[..., None].expand(-1, -1, 3)), accepted_.gather(1, order)
    atoms = torch.where(found[..., None], atoms, 0.0)
    group = max(1, grid.shape[0] // offsets.shape[0])
    votes = []
    for start in range(0, atoms.shape[1], group):
        queries = atoms[:, start : start + group, None, :] + offsets
        choice = field.species(queries.reshape(z.shape[0], -1, 3), z).argmax(-1).reshape(z.shape[0], -1, len(offsets))
        tally = torch.zeros(*choice.shape[:2], len(table), dtype=torch.long)
        votes.append(tally.scatter_add_(2, choice, torch.ones_like(choice)).argmax(-1))
    species = torch.cat(votes, 1).numpy()
    found = found.numpy()
    return [
        Decoded(
            lengths[b].double().numpy(),
            angles[b].double().numpy(),
            atoms[b].double().numpy()[found[b]],
            species[b, found[b]],
            np.asarray(table)[species[b, found[b]]],
        )
        for b in range(z.shape[0])
    ]


def test_paper_mode_is_the_paper_algorithm_bit_for_bit() -> None:
    """A tiny random network whose particles gather into many clusters; every output bit is the reference's."""
    torch.manual_seed(0)
    config = ModelConfig(
        latent_size=8, position_widths=(16, 16), species_widths=(16,), encoder_mix_width=16, lattice_hidden=8
    )
    model = NeSF(config, num_species=3).eval()
    z = torch.randn(3, 8)
    box, table = [[0.0, 0.0, 0.0], [3.0, 2.5, 2.0]], [11, 17, 55]
    settings = EstimatorConfig(mode="paper", steps=3, score_threshold=10.0, nms_min_particles=1, nms_radius=0.3)
    with torch.inference_mode():
        expected = _paper_reference(model, z, box, table, settings)
    found = estimate(model, z, box, table, settings)
    assert sum(d.num_atoms for d in expected) > 10  # the suppression and the vote are exercised
    assert_same(found, expected)


@pytest.mark.parametrize("mode", ["fast", "paper"])
def test_both_modes_recover_the_exact_field(tiny: tuple, mode: str) -> None:
    crystals, field, box = tiny
    assert_recovered(crystals, estimate(field, field.latents(), box, field.species_table, replace(FAST, mode=mode)))


def test_fast_mode_moves_only_unsettled_particles_near_the_cell(tiny: tuple) -> None:
    """The exact field puts every particle on its atom in one move: the second pass settles them all."""
    crystals, exact, box = tiny
    asked: list[int] = []

    class CountingField:
        def lattice(self, z):
            return exact.lattice(z)

        def position(self, points, z):
            asked.append(points.shape[1])
            return exact.position(points, z)

        def species(self, points, z):
            return exact.species(points, z)

    config = EstimatorConfig()  # the default mode, 64 steps
    found = estimate(CountingField(), exact.latents()[2:3], box, exact.species_table, config)  # CsCl, 4.12 Å
    assert_recovered(crystals[2:3], found)
    assert len(asked) == 2 and asked[1] >= asked[0] - 1  # one move; then all settle (one sat on its atom at once)
    side = 4.12 + 2 * config.cell_margin  # the cube within the margin of the cell's faces
    assert abs(asked[0] - (side / config.particle_interval) ** 3) < 0.25 * asked[0]


def test_mode_is_an_estimator_override() -> None:
    assert estimator_config(None, {"estimator.mode": "paper"}).mode == "paper"
    assert EstimatorConfig().mode == "fast"
    with pytest.raises(UserError, match="estimator.mode = 'quick' is not allowed; expected one of fast, paper"):
        EstimatorConfig(mode="quick")
    with pytest.raises(UserError, match="estimator.cell_margin = -1.0 is not allowed"):
        EstimatorConfig(cell_margin=-1.0)


LIBRARY_DECODE = """
import resource, torch
from nesfgen.crystal import Crystal
from nesfgen.estimator import ExactField, estimate
crystal = Crystal.create([4.12] * 3, [90] * 3, atomic_numbers=[55, 17], frac_coords=[[0, 0, 0], [0.5, 0.5, 0.5]])
field = ExactField([crystal], [17, 55])
estimate(field, field.latents(), [[0, 0, 0], [4, 4, 4]], [17, 55])  # no set-up call before decoding
for _ in range(10):
    torch.ones(1 << 24)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(1 << 24)  # 64 MB, allocated and freed as the estimator's activations are
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="mallopt settings apply to glibc only"
)
def test_library_decoding_keeps_freed_memory_without_a_set_up_call() -> None:
    env = {key: value for key, value in os.environ.items() if key != SWITCH}
    result = subprocess.run([sys.executable, "-c", LIBRARY_DECODE], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    pages = 20 * (1 << 26) // 4096  # every page of every block, were each one mapped afresh
    assert int(result.stdout) < pages // 20


def test_constrained_species_keep_positions_and_hold_the_asked_elements_and_formula():
    crystal = zinc_blende()
    table = [16, 30, 48]  # S, Zn, Cd: a third element the vote may not choose
    field, box = ExactField([crystal], table), bounding_box([crystal])
    z = torch.tensor([[0.0]])
    decoded = estimate(field, z, box, table, FAST)
    assert sorted(decoded[0].atomic_numbers.tolist()) == [16] * 4 + [30] * 4
    only_zinc = constrain_species(field, z, decoded, table, allowed=(30,), config=FAST)[0]
    assert only_zinc.atomic_numbers.tolist() == [30] * 8
    np.testing.assert_array_equal(only_zinc.cart_coords, decoded[0].cart_coords)
    same = constrain_species(field, z, decoded, table, (30, 16), {30: 1.0, 16: 1.0}, FAST)[0]
    np.testing.assert_array_equal(same.atomic_numbers, decoded[0].atomic_numbers)  # the votes already hold ZnS
    zn3s = constrain_species(field, z, decoded, table, (30, 16), {30: 3.0, 16: 1.0}, FAST)[0]
    assert sorted(zn3s.atomic_numbers.tolist()) == [16] * 2 + [30] * 6  # exactly Zn3S on 8 atoms
    assert set(np.flatnonzero(zn3s.atomic_numbers == 16)) <= set(np.flatnonzero(decoded[0].atomic_numbers == 16))
    thirds = constrain_species(field, z, decoded, table, (30, 16), {30: 1.0, 16: 2.0}, FAST)[0]
    assert sorted(thirds.atomic_numbers.tolist()) == [16] * 4 + [30] * 2  # 8 atoms are no ZnS2: two dropped
    kept = {tuple(row) for row in decoded[0].cart_coords.round(6)}
    assert {tuple(row) for row in thirds.cart_coords.round(6)} <= kept
    halves = constrain_species(field, z, decoded, table, (30, 16), {30: 0.5, 16: 1.5}, FAST)[0]
    assert sorted(halves.atomic_numbers.tolist()) == [16] * 6 + [30] * 2  # Zn0.5S1.5 is ZnS3: two units on 8 atoms
    six = constrain_species(field, z, decoded, table, (), None, FAST, num_atoms=6)[0]  # any species, 6 atoms
    assert six.num_atoms == 6 and {tuple(row) for row in six.cart_coords.round(6)} <= kept
    assert set(six.atomic_numbers.tolist()) <= {16, 30}  # the field's own votes, no element forced in


def test_every_asked_element_gets_the_atom_that_costs_the_fewest_votes():
    from nesfgen.estimator import _cover_elements

    votes = np.array([[10, 0, 0], [8, 6, 0], [9, 1, 0]])  # every atom votes species 0 most
    assert _cover_elements(votes.copy(), [0, 1]).tolist() == [0, 1, 0]  # atom 1 gives up 2 votes, the fewest
    assert _cover_elements(votes.copy(), [0, 1, 2]).tolist() in ([0, 1, 2], [2, 1, 0])  # 3 atoms, 3 elements
    assert _cover_elements(votes[:1].copy(), [0, 1]).tolist() == [0]  # one atom cannot hold two elements
