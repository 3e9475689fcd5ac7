"""Tensors for the model: packed atoms of a split, the training query grids and their targets.

Every sampler works on a whole batch at once (no Python loop per atom or per point). Grids follow
numpy's ``arange`` semantics, as the reference configuration does: a local grid of range r and
interval d has offsets ``arange(-r/2, r/2, d)`` per axis (4 × 4 × 4 points for 1.2 Å / 0.3 Å), and
the global grid spans the dataset's bounding box widened by one interval on each side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from nesfgen.config import SamplingConfig
from nesfgen.crystal import MAX_ATOMIC_NUMBER
from nesfgen.data.store import CrystalSet
from nesfgen.errors import UserError


@dataclass(frozen=True)
class Atoms:
    """Packed atoms of a batch of structures (the encoder's input)."""

    cart_coords: Tensor  # (A, 3) Å
    species: Tensor  # (A,) int64 species-table index
    structure: Tensor  # (A,) int64 index of the atom's structure in the batch
    lengths: Tensor  # (B, 3) Å
    angles: Tensor  # (B, 3) radians

    @property
    def num_structures(self) -> int:
        return self.lengths.shape[0]


def cell_matrices(lengths: Tensor, angles: Tensor) -> Tensor:
    """(B, 3, 3) row-vector lattice matrices from (B, 3) lengths in Å and angles in radians (nesfgen.crystal's frame)."""
    cos_alpha, cos_beta, cos_gamma = torch.cos(angles).unbind(-1)
    sin_alpha, sin_beta = torch.sin(angles[:, 0]), torch.sin(angles[:, 1])
    cos_gamma_star = ((cos_alpha * cos_beta - cos_gamma) / (sin_alpha * sin_beta)).clamp(-1.0, 1.0)
    sin_gamma_star = torch.sqrt(1.0 - cos_gamma_star**2)
    a, b, c = lengths.unbind(-1)
    zero = torch.zeros_like(a)
    rows = [
        torch.stack([a * sin_beta, zero, a * cos_beta], -1),
        torch.stack([-b * sin_alpha * cos_gamma_star, b * sin_alpha * sin_gamma_star, b * cos_alpha], -1),
        torch.stack([zero, zero, c], -1),
    ]
    return torch.stack(rows, -2)


def fractional_coords(atoms: Atoms) -> tuple[Tensor, Tensor]:
    """(A, 3) float32 fractional coordinates of the atoms, and (B, 3, 3) their cells' lattice matrices.

    Elementwise products, not matmuls, so bf16 autocast leaves them in float32.
    """
    matrices = cell_matrices(atoms.lengths.float(), atoms.angles.float())
    frac = (atoms.cart_coords.float()[:, :, None] * torch.linalg.inv(matrices)[atoms.structure]).sum(1)
    return frac, matrices


def shift_origins(atoms: Atoms, generator: torch.Generator) -> Atoms:
    """The atoms of each structure moved by its own random fraction of its cell vectors, wrapped into the cell.

    The same crystal with another origin: a training augmentation, so that arrangements the training split holds
    only at one origin are learnt at any (docs/large-cells.md).
    """
    frac, matrices = fractional_coords(atoms)
    shift = torch.rand(atoms.num_structures, 3, generator=generator, device=generator.device)
    frac = torch.remainder(frac + shift.to(frac.device)[atoms.structure], 1.0)
    cart = (frac[:, :, None] * matrices[atoms.structure]).sum(1).to(atoms.cart_coords.dtype)
    return Atoms(cart, atoms.species, atoms.structure, atoms.lengths, atoms.angles)


def species_indices(atomic_numbers: np.ndarray, species_table: Sequence[int], where: str) -> np.ndarray:
    """Map atomic numbers to species-table indices.

    Raises:
        UserError: naming ``where`` and the elements missing from the table.
    """
    index_of = np.full(MAX_ATOMIC_NUMBER + 1, -1, dtype=np.int64)
    index_of[np.asarray(species_table, dtype=np.int64)] = np.arange(len(species_table))
    indices = index_of[np.asarray(atomic_numbers, dtype=np.int64)]
    if np.any(indices < 0):
        missing = sorted({int(z) for z in np.asarray(atomic_numbers)[indices < 0]})
        raise UserError(
            f"{where} holds elements with atomic numbers {missing} that are missing from the species table "
            f"{list(species_table)} (of the model or dataset)"
        )
    return indices


class TensorSet:
    """A split held as flat tensors on one device, from which batches are gathered without copying lists."""

    def __init__(self, crystals: CrystalSet, species_table: Sequence[int], device: torch.device | str = "cpu") -> None:
        species = species_indices(crystals.atomic_numbers, species_table, "the data")
        self.ids = crystals.ids
        self.device = torch.device(device)
        self.cart_coords = torch.as_tensor(crystals.cart_coords, dtype=torch.float32, device=device)
        self.species = torch.as_tensor(species, device=device)
        self.offsets = torch.as_tensor(crystals.offsets, device=device)
        self.lengths = torch.as_tensor(crystals.lengths, dtype=torch.float32, device=device)
        self.angles = torch.as_tensor(np.radians(crystals.angles), dtype=torch.float32, device=device)

    def __len__(self) -> int:
        return self.lengths.shape[0]

    def batch(self, indices: Tensor) -> Atoms:
        """Gather structures ``indices`` (B,) into packed atoms."""
        indices = indices.to(self.device)
        starts = self.offsets[indices]
        counts = self.offsets[indices + 1] - starts  # (B,)
        structure = torch.repeat_interleave(torch.arange(len(indices), device=self.device), counts)  # (A,)
        first_of_structure = torch.cumsum(counts, 0) - counts
        rank = torch.arange(structure.numel(), device=self.device) - first_of_structure[structure]
        atom = starts[structure] + rank
        return Atoms(self.cart_coords[atom], self.species[atom], structure, self.lengths[indices], self.angles[indices])


def atoms_bounding_box(crystals: CrystalSet) -> np.ndarray:
    """(2, 3) [lo, hi] of all atom positions: the box the global grid and the estimator's particles span."""
    return np.stack([crystals.cart_coords.min(axis=0), crystals.cart_coords.max(axis=0)])


#: Points of the global training grid or of the estimator's particles; each is a field query per structure,
#: so far more than the paper's 7280 particles would exhaust memory in the first batch.
MAX_GRID_POINTS = 1_000_000


def box_grid(
    box: np.ndarray | Tensor | Sequence[Sequence[float]], interval: float, key: str = "the grid interval"
) -> Tensor:
    """(G, 3) regular grid over ``box`` [lo, hi] widened by one interval on each side.

    The global training grid and the estimator's particles; the LCS6Å box of the released files' frame
    at 0.5 Å gives the paper's 26 × 20 × 14 = 7280 particles. ``key`` names the interval's setting in errors.
    """
    box = np.asarray(box.cpu() if isinstance(box, Tensor) else box, dtype=float)
    if box.shape != (2, 3) or not np.all(np.isfinite(box)) or np.any(box[0] > box[1]):
        raise UserError(
            f"a grid box must be [[lo_x, lo_y, lo_z], [hi_x, hi_y, hi_z]] with lo <= hi, got {box.tolist()}"
        )
    if not interval > 0:
        raise UserError(f"grid intervals must be positive, got {interval}")
    points = int(np.prod(np.ceil((box[1] - box[0] + 2 * interval) / interval)))
    if points > MAX_GRID_POINTS:
        raise UserError(
            f"{key} = {interval:g} Å gives about {points:,} grid points over the model's box "
            f"{np.round(box, 2).tolist()} (at most {MAX_GRID_POINTS:,}, else memory runs out); raise {key}"
        )
    axes = [np.arange(lo - interval, hi + interval, interval) for lo, hi in zip(box[0], box[1])]
    mesh = np.meshgrid(*axes, indexing="ij")
    return torch.as_tensor(np.stack([m.reshape(-1) for m in mesh], axis=1), dtype=torch.float32)


#: a decoded cell whose particles would outnumber the box grid's this many times gets the box grid instead
MAX_CELL_PARTICLES_PER_BOX = 8
#: Å³: a decoded lattice with a smaller volume (or a NaN) is no cell to spread particles over
MIN_CELL_VOLUME = 1e-3
CORNERS = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)], dtype=float)  # (8, 3) fractional


def cell_grid(
    matrix: np.ndarray, box: np.ndarray | Tensor | Sequence[Sequence[float]], interval: float, margin: float
) -> Tensor:
    """(P, 3) points of the box grid's lattice that lie within ``margin`` Å of the cell ``matrix`` (rows a, b, c).

    The fast estimator's particles: the same origin and spacing as :func:`box_grid`, so where the cell lies in
    the box they are a subset of the paper's particles, but spanning the decoded cell (where its atoms are)
    rather than the dataset's box. The margin is measured along each face's normal. An invalid cell, or one
    so large that it would need more than MAX_CELL_PARTICLES_PER_BOX times the box grid, gets the box grid.
    """
    box = np.asarray(box.cpu() if isinstance(box, Tensor) else box, dtype=float)
    fallback = box_grid(box, interval)
    matrix = np.asarray(matrix, dtype=float)
    if not np.all(np.isfinite(matrix)) or not np.linalg.det(matrix) > MIN_CELL_VOLUME:
        return fallback
    origin = box[0] - interval  # the box grid's first point
    corners = CORNERS @ matrix  # (8, 3)
    first = np.ceil((corners.min(axis=0) - margin - origin) / interval)
    last = np.floor((corners.max(axis=0) + margin - origin) / interval)
    if np.prod(last - first + 1) > MAX_CELL_PARTICLES_PER_BOX * fallback.shape[0]:
        return fallback
    axes = [origin[k] + interval * np.arange(first[k], last[k] + 1) for k in range(3)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)  # (G, 3)
    inverse = np.linalg.inv(matrix)
    frac = points @ inverse  # (G, 3)
    plane_spacing = 1.0 / np.linalg.norm(inverse, axis=0)  # (3,) Å between the lattice planes of each axis
    beyond = np.maximum(-frac, frac - 1.0) * plane_spacing  # (G, 3) Å outside each pair of faces
    return torch.as_tensor(points[np.all(beyond <= margin, axis=1)], dtype=torch.float32)


def local_offsets(interval: float, width: float) -> Tensor:
    """(L, 3) offsets of a local grid of full width ``width`` around a point (0.1 Å, 0.6 Å -> 6³ = 216)."""
    if not interval > 0 or not width > 0:
        raise UserError(f"local grid interval and range must be positive, got {interval} and {width}")
    axis = np.arange(-width / 2, width / 2, interval)
    mesh = np.meshgrid(axis, axis, axis, indexing="ij")
    return torch.as_tensor(np.stack([m.reshape(-1) for m in mesh], axis=1), dtype=torch.float32)


@dataclass(frozen=True)
class Queries:
    """Training queries of one batch and their targets."""

    position_points: Tensor  # (Q, 3)
    position_structure: Tensor  # (Q,)
    position_targets: Tensor  # (Q, 3) vector from the point to its nearest atom
    species_points: Tensor  # (S, 3)
    species_structure: Tensor  # (S,)
    species_targets: Tensor  # (S,) species index of the nearest atom


class QuerySampler:
    """Draws the paper's three query sets (global, local, species grids) for a batch of structures."""

    def __init__(self, config: SamplingConfig, box: np.ndarray, device: torch.device | str = "cpu") -> None:
        self.config = config
        self.global_fraction = (
            config.query_fraction if config.global_query_fraction is None else config.global_query_fraction
        )
        self.global_grid = box_grid(box, config.global_interval, "sampling.global_interval").to(device)  # (G, 3)
        self.local_grid = local_offsets(config.local_interval, config.local_range).to(device)  # (L, 3)
        self.species_grid = local_offsets(config.species_interval, config.species_range).to(device)  # (S, 3)

    def sample(self, atoms: Atoms, generator: torch.Generator) -> Queries:
        """Thin each grid to its fraction first, then draw noise and targets for the kept points only.

        With fractions of 1 nothing is thinned and the draws are the paper recipe's: position noise, then
        species noise. Thinned grids draw their keep masks first.
        """
        c = self.config
        count = atoms.num_structures
        device = atoms.cart_coords.device
        fraction = self.global_fraction
        if c.global_per_atom:
            atoms_per_structure = torch.bincount(atoms.structure, minlength=count).to(torch.float32)  # (B,)
            per_structure = (fraction * atoms_per_structure / atoms_per_structure.mean()).clamp(max=1.0)
            fraction = per_structure.repeat_interleave(self.global_grid.shape[0])  # (B·G,)
        global_slot = _kept_slots(count * self.global_grid.shape[0], fraction, generator, device)
        global_points = self.global_grid[global_slot % self.global_grid.shape[0]]
        global_structure = global_slot // self.global_grid.shape[0]
        local_fraction: float | Tensor = c.query_fraction
        if c.close_neighbour_distance is not None:
            close = nearest_neighbour_distances(atoms) < c.close_neighbour_distance  # (A,)
            local_fraction = torch.where(close, 1.0, c.query_fraction).repeat_interleave(self.local_grid.shape[0])
        local_atom, local_offset = _kept_atom_slots(atoms, self.local_grid, local_fraction, generator)
        local_points = atoms.cart_coords[local_atom] + local_offset
        stds = torch.cat(
            [
                torch.full((global_points.shape[0], 1), c.global_std, device=device),
                torch.full((local_points.shape[0], 1), c.local_std, device=device),
            ]
        )
        points = torch.cat([global_points, local_points])
        points = points + stds * torch.randn(points.shape, generator=generator, device=device)
        structure = torch.cat([global_structure, atoms.structure[local_atom]])
        species_atom, species_offset = _kept_atom_slots(atoms, self.species_grid, c.query_fraction, generator)
        species_points = atoms.cart_coords[species_atom] + species_offset
        species_points = species_points + c.species_std * torch.randn(
            species_points.shape, generator=generator, device=device
        )
        species_structure = atoms.structure[species_atom]
        nearest = nearest_atoms(points, structure, atoms)
        nearest_species = nearest_atoms(species_points, species_structure, atoms)
        return Queries(
            position_points=points,
            position_structure=structure,
            position_targets=atoms.cart_coords[nearest] - points,
            species_points=species_points,
            species_structure=species_structure,
            species_targets=atoms.species[nearest_species],
        )


def _kept_slots(total: int, fraction: float | Tensor, generator: torch.Generator, device: torch.device) -> Tensor:
    """Indices of ``total`` slots, each kept with probability ``fraction`` (all of them, drawing nothing, at 1).

    ``fraction`` is one probability for every slot or a (total,) tensor of them.
    """
    if not isinstance(fraction, Tensor) and fraction >= 1.0:
        return torch.arange(total, device=device)
    return torch.nonzero(torch.rand(total, generator=generator, device=device) < fraction).squeeze(1)


def _kept_atom_slots(
    atoms: Atoms, grid: Tensor, fraction: float | Tensor, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """The kept points of a local grid around every atom: (atom index, offset from that atom).

    ``fraction`` is one for every point or an (A·L,) tensor, atom-major like the slots."""
    slot = _kept_slots(atoms.cart_coords.shape[0] * grid.shape[0], fraction, generator, atoms.cart_coords.device)
    return slot // grid.shape[0], grid[slot % grid.shape[0]]


#: the (points, atoms) temporaries of the nearest-atom search are bounded by this many elements (16 MB)
TEMPORARY_ELEMENTS = 1 << 22
#: stands in for the missing atoms of smaller structures in the padded search: never the nearest
FAR_AWAY = 1e6


def _padded(atoms: Atoms) -> tuple[Tensor, Tensor]:
    """(B, N) index into the packed atoms of each structure's atoms, padded to the largest, and which are real."""
    counts = torch.bincount(atoms.structure, minlength=atoms.num_structures)
    first = torch.cumsum(counts, 0) - counts  # (B,)
    slot = torch.arange(int(counts.max()), device=atoms.cart_coords.device)  # (N,)
    padded_index = (first[:, None] + slot).clamp(max=atoms.cart_coords.shape[0] - 1)  # (B, N)
    return padded_index, slot < counts[:, None]


def nearest_neighbour_distances(atoms: Atoms) -> Tensor:
    """(A,) distance from each atom to the nearest other atom of its structure, without periodic images, as the
    position targets see them (inf for a structure of one atom)."""
    padded_index, valid = _padded(atoms)
    coords = atoms.cart_coords[padded_index]  # (B, N, 3)
    distances = torch.cdist(coords, coords)
    others = valid[:, :, None] & valid[:, None, :] & ~torch.eye(valid.shape[1], dtype=torch.bool, device=valid.device)
    nearest = distances.masked_fill(~others, torch.inf).amin(dim=2)  # (B, N)
    return nearest[valid]


def nearest_atoms(points: Tensor, structure: Tensor, atoms: Atoms) -> Tensor:
    """(Q,) index into the packed atoms of each point's nearest atom in its own structure (no images).

    Squared distances to the (B, N) padded atoms of each structure, one coordinate plane at a time:
    (Q, N) temporaries instead of (Q, N, 3), and no square root.
    """
    padded_index, valid = _padded(atoms)
    planes = atoms.cart_coords[padded_index].masked_fill(~valid[..., None], FAR_AWAY).permute(2, 0, 1).contiguous()
    result = torch.empty(points.shape[0], dtype=torch.long, device=points.device)
    chunk = max(1, TEMPORARY_ELEMENTS // valid.shape[1])
    for start in range(0, points.shape[0], chunk):
        own, part = structure[start : start + chunk], points[start : start + chunk]
        squared = (planes[0].index_select(0, own) - part[:, 0:1]).square()  # (q, N)
        for axis in (1, 2):
            squared += (planes[axis].index_select(0, own) - part[:, axis : axis + 1]).square()
        result[start : start + chunk] = padded_index[own, squared.argmin(dim=1)]
    return result


def rank_share(atoms: Atoms, queries: Queries, rank: int, world: int) -> tuple[Atoms, Queries]:
    """The structures ``rank, rank + world, ...`` of a batch, with their atoms and queries, renumbered.

    Every data-parallel rank draws the queries of the whole batch from the same random stream and
    keeps its share, so the union over ranks is exactly what one process would train on.
    """
    if world == 1:
        return atoms, queries

    def mine(structure: Tensor) -> Tensor:
        return structure % world == rank

    atom_mask = mine(atoms.structure)
    local_atoms = Atoms(
        atoms.cart_coords[atom_mask],
        atoms.species[atom_mask],
        atoms.structure[atom_mask] // world,
        atoms.lengths[rank::world],
        atoms.angles[rank::world],
    )
    position_mask = mine(queries.position_structure)
    species_mask = mine(queries.species_structure)
    local_queries = Queries(
        queries.position_points[position_mask],
        queries.position_structure[position_mask] // world,
        queries.position_targets[position_mask],
        queries.species_points[species_mask],
        queries.species_structure[species_mask] // world,
        queries.species_targets[species_mask],
    )
    return local_atoms, local_queries
