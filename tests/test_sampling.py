import numpy as np
import pytest
import torch

from nesfgen.config import SamplingConfig
from nesfgen.crystal import lattice_matrix
from nesfgen.data.store import CrystalSet
from nesfgen.errors import UserError
from nesfgen.sampling import (
    QuerySampler,
    TensorSet,
    atoms_bounding_box,
    box_grid,
    cell_grid,
    local_offsets,
    nearest_atoms,
    nearest_neighbour_distances,
    shift_origins,
)


@pytest.fixture
def tensors(tiny_crystals):
    crystals = CrystalSet.from_crystals(list(tiny_crystals.values()))
    table = sorted({int(z) for c in tiny_crystals.values() for z in c.atomic_numbers})
    return crystals, TensorSet(crystals, table)


def test_grid_sizes_follow_the_reference():
    assert local_offsets(0.3, 1.2).shape == (64, 3)
    assert local_offsets(0.1, 0.6).shape == (216, 3)
    lcs6_box = np.array([[0, 0, 0], [11.65, 8.50, 5.97]])
    assert box_grid(lcs6_box, 1.0).shape == (14 * 11 * 8, 3) == (1232, 3)
    assert np.allclose(sorted(set(local_offsets(0.3, 1.2)[:, 0].tolist())), [-0.6, -0.3, 0.0, 0.3], atol=1e-6)


def test_batch_gathers_the_right_atoms(tensors):
    crystals, data = tensors
    atoms = data.batch(torch.tensor([3, 0]))
    counts = torch.bincount(atoms.structure).tolist()
    assert counts == [crystals[3].num_atoms, crystals[0].num_atoms]
    assert np.allclose(atoms.cart_coords[: counts[0]].numpy(), crystals[3].cart_coords, atol=1e-5)
    assert np.allclose(atoms.angles.numpy(), np.radians([crystals[3].angles, crystals[0].angles]))


def test_missing_species_is_a_clear_error(tensors):
    crystals, _ = tensors
    with pytest.raises(UserError, match="missing from the species table"):
        TensorSet(crystals, [11, 17])


def test_targets_equal_brute_force_nearest_atoms(tensors):
    crystals, data = tensors
    sampler = QuerySampler(SamplingConfig(global_interval=1.5), atoms_bounding_box(crystals))
    atoms = data.batch(torch.arange(len(data)))
    queries = sampler.sample(atoms, torch.Generator().manual_seed(0))
    for points, structure, targets in [
        (queries.position_points, queries.position_structure, queries.position_targets),
    ]:
        for q in range(0, len(points), 97):
            own = atoms.cart_coords[atoms.structure == structure[q]]
            nearest = own[torch.linalg.vector_norm(own - points[q], dim=1).argmin()]
            assert torch.allclose(points[q] + targets[q], nearest, atol=1e-5)
    for q in range(0, len(queries.species_points), 53):
        mask = atoms.structure == queries.species_structure[q]
        distance = torch.linalg.vector_norm(atoms.cart_coords[mask] - queries.species_points[q], dim=1)
        assert atoms.species[mask][distance.argmin()] == queries.species_targets[q]


def test_sample_counts_and_noise(tensors):
    crystals, data = tensors
    config = SamplingConfig()
    box = atoms_bounding_box(crystals)
    sampler = QuerySampler(config, box)
    atoms = data.batch(torch.arange(len(data)))
    queries = sampler.sample(atoms, torch.Generator().manual_seed(0))
    total_atoms = atoms.cart_coords.shape[0]
    grid = box_grid(box, config.global_interval).shape[0]
    assert queries.position_points.shape[0] == len(data) * grid + total_atoms * 64
    assert queries.species_points.shape[0] == total_atoms * 216
    # species queries: grid offsets plus N(0, 0.05²) noise around their atom
    offsets = queries.species_points.reshape(total_atoms, 216, 3) - atoms.cart_coords[:, None, :]
    residual = offsets - local_offsets(0.1, 0.6)
    assert abs(residual.std().item() - 0.05) < 0.005 and abs(residual.mean().item()) < 0.005


def test_query_fraction_keeps_about_that_share(tensors):
    crystals, data = tensors
    full = QuerySampler(SamplingConfig(), atoms_bounding_box(crystals))
    half = QuerySampler(SamplingConfig(query_fraction=0.5), atoms_bounding_box(crystals))
    atoms = data.batch(torch.arange(len(data)))
    n_full = full.sample(atoms, torch.Generator().manual_seed(0)).position_points.shape[0]
    n_half = half.sample(atoms, torch.Generator().manual_seed(0)).position_points.shape[0]
    assert abs(n_half / n_full - 0.5) < 0.05


def test_global_query_fraction_thins_only_the_global_grid(tensors):
    crystals, data = tensors
    box = atoms_bounding_box(crystals)
    sampler = QuerySampler(SamplingConfig(global_query_fraction=0.2), box)
    atoms = data.batch(torch.arange(len(data)))
    queries = sampler.sample(atoms, torch.Generator().manual_seed(0))
    local = atoms.cart_coords.shape[0] * 64  # every local point is kept at query_fraction 1
    global_total = len(data) * sampler.global_grid.shape[0]
    kept_global = queries.position_points.shape[0] - local
    assert abs(kept_global / global_total - 0.2) < 0.03
    assert queries.species_points.shape[0] == atoms.cart_coords.shape[0] * 216


def test_global_per_atom_gives_every_atom_the_same_far_field_share(tensors):
    crystals, data = tensors
    box = atoms_bounding_box(crystals)
    atoms = data.batch(torch.arange(len(data)))
    sizes = torch.bincount(atoms.structure).double()
    grid = QuerySampler(SamplingConfig(), box).global_grid.shape[0]

    def global_counts(per_atom: bool) -> torch.Tensor:
        sampler = QuerySampler(SamplingConfig(global_query_fraction=0.1, global_per_atom=per_atom), box)
        generator, counts = torch.Generator().manual_seed(0), torch.zeros(len(data), dtype=torch.float64)
        for _ in range(40):
            queries = sampler.sample(atoms, generator)
            far = queries.position_structure[: queries.position_points.shape[0] - atoms.cart_coords.shape[0] * 64]
            counts += torch.bincount(far, minlength=len(data))
        return counts / 40

    assert sizes.max() > 2 * sizes.min()  # the fixture has small and crowded cells
    per_structure, per_atom = global_counts(False), global_counts(True)
    assert torch.allclose(per_structure, torch.full_like(per_structure, 0.1 * grid), rtol=0.1)
    expected = 0.1 * grid * sizes / sizes.mean()  # the batch's total unchanged, shared by atoms
    assert torch.allclose(per_atom, expected.clamp(max=grid), rtol=0.1)
    assert abs(per_atom.sum() / per_structure.sum() - 1) < 0.05


def test_nearest_neighbour_distances_are_within_the_cell(tensors):
    crystals, data = tensors
    atoms = data.batch(torch.arange(len(data)))
    distances = nearest_neighbour_distances(atoms)
    expected = []
    for crystal in crystals:
        pairwise = np.linalg.norm(crystal.cart_coords[:, None] - crystal.cart_coords[None], axis=-1)
        np.fill_diagonal(pairwise, np.inf)
        expected.extend(pairwise.min(axis=1))
    assert np.allclose(distances.numpy(), expected, atol=1e-5)


def test_atoms_with_a_close_neighbour_keep_their_whole_local_grid(tensors):
    crystals, data = tensors
    box = atoms_bounding_box(crystals)
    atoms = data.batch(torch.arange(len(data)))
    distances = nearest_neighbour_distances(atoms)
    threshold = float(distances.median())
    close = distances < threshold
    assert 0 < int(close.sum()) < len(close)
    tiny = 1e-9  # the other atoms and the global grid keep (almost surely) nothing
    config = SamplingConfig(query_fraction=tiny, local_std=0.0, close_neighbour_distance=threshold)
    sampler = QuerySampler(config, box)
    queries = sampler.sample(atoms, torch.Generator().manual_seed(0))
    grid = sampler.local_grid
    expected = (atoms.cart_coords[close][:, None] + grid[None]).reshape(-1, 3)
    assert torch.allclose(queries.position_points, expected)
    default = QuerySampler(SamplingConfig(query_fraction=tiny, local_std=0.0), box)
    assert default.sample(atoms, torch.Generator().manual_seed(0)).position_points.shape[0] == 0


def test_global_query_fraction_defaults_to_query_fraction(tensors):
    crystals, data = tensors
    box = atoms_bounding_box(crystals)
    atoms = data.batch(torch.arange(len(data)))
    implicit = QuerySampler(SamplingConfig(query_fraction=0.3), box).sample(atoms, torch.Generator().manual_seed(0))
    explicit = QuerySampler(SamplingConfig(query_fraction=0.3, global_query_fraction=0.3), box).sample(
        atoms, torch.Generator().manual_seed(0)
    )
    assert torch.equal(implicit.position_points, explicit.position_points)


@pytest.mark.parametrize("key", ["query_fraction", "global_query_fraction"])
@pytest.mark.parametrize("value", [0.0, 1.5])
def test_query_fractions_outside_zero_one_are_refused(key, value):
    with pytest.raises(
        UserError, match=rf"sampling.{key} = {value} is not allowed; expected a finite number in \(0, 1\]"
    ):
        SamplingConfig(**{key: value})


def test_nearest_atoms_ignores_other_structures(tensors):
    _, data = tensors
    atoms = data.batch(torch.tensor([0, 1]))
    point = atoms.cart_coords[atoms.structure == 1][0:1] + 0.01
    index = nearest_atoms(point, torch.tensor([0]), atoms)
    assert atoms.structure[index].item() == 0


def test_nearest_atoms_in_chunks_equals_one_pass(tensors, monkeypatch):
    import nesfgen.sampling as sampling

    crystals, data = tensors
    sampler = QuerySampler(SamplingConfig(global_interval=1.5), atoms_bounding_box(crystals))
    atoms = data.batch(torch.arange(len(data)))
    queries = sampler.sample(atoms, torch.Generator().manual_seed(1))
    whole = nearest_atoms(queries.position_points, queries.position_structure, atoms)
    monkeypatch.setattr(sampling, "TEMPORARY_ELEMENTS", 50)  # a few points per chunk
    assert torch.equal(nearest_atoms(queries.position_points, queries.position_structure, atoms), whole)


def test_full_grids_draw_the_paper_recipes_noise_in_order(tensors):
    # At query fractions of 1 nothing is thinned and no keep mask is drawn: position noise, then species noise.
    crystals, data = tensors
    config = SamplingConfig()
    sampler = QuerySampler(config, atoms_bounding_box(crystals))
    atoms = data.batch(torch.arange(len(data)))
    queries = sampler.sample(atoms, torch.Generator().manual_seed(7))
    grid, local, species = sampler.global_grid, sampler.local_grid, sampler.species_grid
    generator = torch.Generator().manual_seed(7)
    centres = torch.cat([grid.repeat(len(data), 1), (atoms.cart_coords[:, None] + local).reshape(-1, 3)])
    stds = torch.cat(
        [
            torch.full((len(data) * len(grid), 1), config.global_std),
            torch.full((len(centres) - len(data) * len(grid), 1), config.local_std),
        ]
    )
    assert torch.equal(queries.position_points, centres + stds * torch.randn(centres.shape, generator=generator))
    species_centres = (atoms.cart_coords[:, None] + species).reshape(-1, 3)
    expected = species_centres + config.species_std * torch.randn(species_centres.shape, generator=generator)
    assert torch.equal(queries.species_points, expected)


def test_cell_grid_covers_the_cell_and_its_margin_on_the_box_grid() -> None:
    box = np.array([[0.0, 0.0, 0.0], [8.0, 6.0, 11.0]])
    matrix = lattice_matrix([4.0, 4.5, 5.0], [90.0, 100.0, 90.0])
    points = cell_grid(matrix, box, 0.5, 1.0).double().numpy()
    paper = box_grid(box, 0.5).double().numpy()
    # the same lattice of points as the paper's particles: within the box, a subset of them
    assert np.allclose((points - paper[0]) / 0.5, np.round((points - paper[0]) / 0.5), atol=1e-4)
    frac = points @ np.linalg.inv(matrix)
    spacing = 1 / np.linalg.norm(np.linalg.inv(matrix), axis=0)
    assert np.all(np.maximum(-frac, frac - 1) * spacing <= 1.0 + 1e-6)  # nothing beyond the margin
    dense = np.random.default_rng(0).random((2000, 3)) @ matrix  # places atoms of the cell can be
    nearest = np.linalg.norm(dense[:, None, :] - points[None, :, :], axis=-1).min(axis=1)
    assert nearest.max() <= 0.5 * np.sqrt(3) / 2 + 1e-6  # every place in the cell has a particle within half a cube
    assert len(points) < len(paper) / 2


def test_cell_grid_falls_back_to_the_box_grid_for_a_broken_or_runaway_lattice() -> None:
    box = np.array([[0.0, 0.0, 0.0], [4.0, 4.0, 4.0]])
    paper = box_grid(box, 0.5)
    assert torch.equal(cell_grid(np.full((3, 3), np.nan), box, 0.5, 1.0), paper)
    assert torch.equal(cell_grid(lattice_matrix([-3.0, 4.0, 4.0], [90.0] * 3), box, 0.5, 1.0), paper)
    assert torch.equal(cell_grid(lattice_matrix([60.0, 60.0, 60.0], [90.0] * 3), box, 0.5, 1.0), paper)


def test_shift_origins_gives_the_same_crystals_at_other_origins(tensors):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from nesfgen.crystal import Crystal

    crystals, tensor_set = tensors
    atoms = tensor_set.batch(torch.arange(len(tensor_set)))
    shifted = shift_origins(atoms, torch.Generator().manual_seed(0))
    again = shift_origins(atoms, torch.Generator().manual_seed(0))
    assert torch.equal(shifted.cart_coords, again.cart_coords)  # seeded
    assert not torch.allclose(shifted.cart_coords, atoms.cart_coords)
    assert torch.equal(shifted.species, atoms.species) and torch.equal(shifted.lengths, atoms.lengths)
    matcher = StructureMatcher(primitive_cell=False, scale=False)
    for index in range(len(crystals)):
        original = crystals[index]
        rows = shifted.structure == index
        cart = shifted.cart_coords[rows].double().numpy()
        frac = cart @ np.linalg.inv(lattice_matrix(original.lengths, original.angles))
        assert np.all((frac > -1e-4) & (frac < 1 + 1e-4))  # wrapped into the cell
        moved = Crystal.create(
            original.lengths, original.angles, cart_coords=cart, atomic_numbers=original.atomic_numbers
        )
        assert matcher.fit(original.to_structure(), moved.to_structure())
