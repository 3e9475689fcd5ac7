"""The deterministic particle estimator: a structure field and latents -> lattice, atom positions and species."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import Tensor, nn

from nesfgen.allocator import keep_freed_memory
from nesfgen.config import EstimatorConfig
from nesfgen.crystal import DUPLICATE_DISTANCE, Crystal, formula_unit, lattice_matrix, wrap_fractional
from nesfgen.errors import UserError
from nesfgen.progress import Progress
from nesfgen.sampling import box_grid, cell_grid, local_offsets, species_indices

log = logging.getLogger(__name__)

#: logit of the true species in the exact field (the others are 0): a softmax of practically 1
EXACT_LOGIT = 50.0


class StructureField(Protocol):
    """What the estimator needs from a decoder; ``NeSF`` and ``ExactField`` both provide it."""

    def lattice(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """z (B, D) -> lengths (B, 3) Å and angles (B, 3) degrees."""
        ...

    def position(self, points: Tensor, z: Tensor) -> Tensor:
        """points (B, P, 3) Å -> (B, P, 3) vector from each point to its nearest atom."""
        ...

    def species(self, points: Tensor, z: Tensor) -> Tensor:
        """points (B, P, 3) Å -> (B, P, K) logits over the species table."""
        ...


class ExactField:
    """The analytic field of known structures, so the estimator can be checked without a trained model.

    The latent of structure ``i`` is simply ``i`` (see :meth:`latents`). As in the reference, the
    nearest atom is searched among the atoms listed in the cell, without periodic images.
    """

    def __init__(self, crystals: Sequence[Crystal], species_table: Sequence[int]) -> None:
        if len(crystals) == 0:
            raise UserError("ExactField needs at least one crystal")
        self.species_table = [int(z) for z in species_table]
        counts = np.array([c.num_atoms for c in crystals])
        coords = np.zeros((len(crystals), counts.max(), 3))
        species = np.zeros((len(crystals), counts.max()), dtype=np.int64)
        for i, crystal in enumerate(crystals):
            table_index = species_indices(crystal.atomic_numbers, self.species_table, f"structure {crystal.id!r}")
            coords[i, : crystal.num_atoms] = crystal.cart_coords
            species[i, : crystal.num_atoms] = table_index
        self._counts = torch.as_tensor(counts)  # (S,)
        self._coords = torch.as_tensor(coords, dtype=torch.float32)  # (S, N, 3)
        self._species = torch.as_tensor(species)  # (S, N)
        self._lengths = torch.as_tensor(np.stack([c.lengths for c in crystals]), dtype=torch.float32)  # (S, 3)
        self._angles = torch.as_tensor(np.stack([c.angles for c in crystals]), dtype=torch.float32)  # (S, 3)

    def __len__(self) -> int:
        return self._counts.numel()

    def latents(self) -> Tensor:
        """(S, 1) the structure indices as float latents."""
        return torch.arange(len(self), dtype=torch.float32)[:, None]

    def lattice(self, z: Tensor) -> tuple[Tensor, Tensor]:
        index = self._index(z).cpu()
        return self._lengths[index].to(z), self._angles[index].to(z)

    def position(self, points: Tensor, z: Tensor) -> Tensor:
        coords, nearest = self._nearest(points, z)
        return coords.gather(1, nearest[..., None].expand(-1, -1, 3)) - points  # (B, P, 3)

    def species(self, points: Tensor, z: Tensor) -> Tensor:
        _, nearest = self._nearest(points, z)
        species = self._species[self._index(z).cpu()].to(points.device).gather(1, nearest)  # (B, P)
        one_hot = nn.functional.one_hot(species, len(self.species_table)).to(points.dtype)
        return EXACT_LOGIT * one_hot  # (B, P, K)

    def _index(self, z: Tensor) -> Tensor:
        index = z[:, 0].round().long()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= len(self)):
            raise ValueError(
                f"ExactField latents must be structure indices in [0, {len(self)}), got {z[:, 0].tolist()}"
            )
        return index

    def _nearest(self, points: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """The structures' atoms (B, N, 3) and the index of each point's nearest one (B, P)."""
        index = self._index(z).cpu()
        counts = self._counts[index]
        most = int(counts.max())
        coords = self._coords[index, :most].to(points)  # (B, N, 3)
        padding = (torch.arange(most)[None, :] >= counts[:, None]).to(points.device)  # (B, N)
        # In slices of about 256k distances, axis by axis: temporaries stay in cache when batches are large.
        step = max(256, (1 << 18) // (most * points.shape[0]))
        nearest = []
        for start in range(0, points.shape[1], step):
            part = points[:, start : start + step]  # (B, p, 3)
            squared = sum((coords[:, None, :, k] - part[:, :, None, k]).square() for k in range(3))  # (B, p, N)
            nearest.append(squared.masked_fill(padding[:, None, :], math.inf).argmin(dim=-1))
        return coords, torch.cat(nearest, dim=1)


@dataclass(frozen=True, eq=False)
class Decoded:
    """One decoded structure, as the estimator found it (positions not yet wrapped into the cell)."""

    lengths: np.ndarray  # (3,) Å
    angles: np.ndarray  # (3,) degrees
    cart_coords: np.ndarray  # (M, 3) Å
    species: np.ndarray  # (M,) int species-table index
    atomic_numbers: np.ndarray  # (M,) int
    # particles in each atom's suppression sphere (M,), and the clusters NMS rejected for holding fewer than
    # nms_min_particles (K, 3) with theirs (K,): what a decoding that must hit an atom count chooses among
    support: np.ndarray | None = None
    spares: np.ndarray | None = None
    spare_support: np.ndarray | None = None

    @property
    def num_atoms(self) -> int:
        return int(self.atomic_numbers.size)

    def to_crystal(self, id: str = "") -> Crystal | None:
        """A valid Crystal: positions wrapped into the cell, of atoms closer than 0.1 Å the first kept.

        Returns None, with the reason logged, when nothing was detected or the decoded lattice is not a
        valid cell: such decodes are failures to count, not errors to stop an evaluation for.
        """
        if self.num_atoms == 0:
            log.debug("decoded structure %r has no atoms; no crystal", id)
            return None
        try:
            matrix = lattice_matrix(self.lengths, self.angles)
            frac = wrap_fractional(self.cart_coords @ np.linalg.inv(matrix))  # (M, 3)
            keep = _first_of_duplicates(frac, matrix)
            return Crystal.create(
                self.lengths, self.angles, atomic_numbers=self.atomic_numbers[keep], frac_coords=frac[keep], id=id
            )
        except (UserError, np.linalg.LinAlgError) as error:
            log.debug("decoded structure %r is not a valid crystal: %s", id, error)
            return None


def _first_of_duplicates(frac: np.ndarray, matrix: np.ndarray) -> list[int]:
    """Indices of the atoms to keep: each atom unless it lies within DUPLICATE_DISTANCE of an earlier kept one."""
    delta = frac[:, None, :] - frac[None, :, :]
    delta -= np.round(delta)  # nearest periodic image
    distance = np.linalg.norm(delta @ matrix, axis=-1)  # (M, M)
    keep: list[int] = []
    for i in range(len(frac)):
        if not keep or distance[i, keep].min() >= DUPLICATE_DISTANCE:
            keep.append(i)
    return keep


def estimate(
    field: StructureField,
    z: Tensor,
    box: np.ndarray | Tensor | Sequence[Sequence[float]],
    species_table: Sequence[int],
    config: EstimatorConfig = EstimatorConfig(),
    progress: Progress | None = None,
) -> list[Decoded]:
    """Decode latents z (B, D) into structures with the paper's five steps, a chunk of structures at a time.

    Runs on z's device without gradients. A module field is switched to eval mode for the call (and
    back), since dropout and batch statistics would make decoding random. ``config.mode`` picks the
    particles: the paper's over the whole box, each moved every step, or (fast) those near the decoded
    cell, each moved until it settles. The C library is first told to keep freed memory for reuse
    (see :mod:`nesfgen.allocator`), so a library caller decodes as fast as the command line.

    Args:
        field: the position, species and lattice fields.
        z: (B, D) latents.
        box: (2, 3) [lo, hi] bounding box of the training atoms, saved with the model.
        species_table: atomic number of each species index of the species field.
        config: particle grid, steps, score threshold, NMS and species-vote settings.
        progress: called with (structures done, total) after each chunk.
    """
    if z.ndim != 2:
        raise ValueError(f"z must be (B, D), got shape {tuple(z.shape)}")
    keep_freed_memory()
    dtype = z.dtype if z.is_floating_point() else torch.float32
    offsets = local_offsets(config.species_interval, config.species_range).to(z.device, dtype)  # (S, 3)
    table = np.asarray(species_table, dtype=np.int64)
    was_training = isinstance(field, nn.Module) and field.training
    if was_training:
        field.eval()
    try:
        low_precision = torch.autocast(z.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
        with torch.inference_mode(), low_precision:
            if config.mode == "paper":
                return _estimate_paper(field, z, box, offsets, table, config, progress)
            return _estimate_fast(field, z, box, offsets, table, config, progress)
    finally:
        if was_training:
            field.train()


def _estimate_paper(
    field: StructureField,
    z: Tensor,
    box: np.ndarray | Tensor | Sequence[Sequence[float]],
    offsets: Tensor,
    table: np.ndarray,
    config: EstimatorConfig,
    progress: Progress | None,
) -> list[Decoded]:
    """The paper's algorithm: the same box grid for every structure, all particles moved ``config.steps`` times."""
    grid = box_grid(box, config.particle_interval, "estimator.particle_interval").to(z.device, offsets.dtype)  # (P, 3)
    decoded: list[Decoded] = []
    for start in range(0, z.shape[0], config.chunk_size):
        decoded += _estimate_chunk(field, z[start : start + config.chunk_size], grid, offsets, table, config)
        if progress is not None:
            progress(len(decoded), z.shape[0])
    return decoded


def _estimate_chunk(
    field: StructureField, z: Tensor, grid: Tensor, offsets: Tensor, table: np.ndarray, config: EstimatorConfig
) -> list[Decoded]:
    count = z.shape[0]
    with torch.autocast(z.device.type, enabled=False):  # bf16 would round a 6 Å length by up to 0.02 Å
        lengths, angles = field.lattice(z)  # (B, 3), (B, 3)
    points = grid.expand(count, -1, -1)  # (B, P, 3); stays float32 under bf16: only the moves are rounded
    for _ in range(config.steps):
        points = points + field.position(points, z)
    score = torch.linalg.vector_norm(field.position(points, z).float(), dim=-1)  # (B, P)
    return _finish(field, z, lengths, angles, points, score, offsets, grid.shape[0], table, config)


def _finish(
    field: StructureField,
    z: Tensor,
    lengths: Tensor,
    angles: Tensor,
    points: Tensor,
    score: Tensor,
    offsets: Tensor,
    budget: int,
    table: np.ndarray,
    config: EstimatorConfig,
) -> list[Decoded]:
    """Moved particles (B, P, 3) and their scores (B, P) -> NMS, the species vote and one Decoded per structure."""
    clusters, found, support = _suppress(points, score, config)  # (B, T, 3), (B, T), (B, T)
    most = int(found.sum(1).max()) if found.numel() else 0  # accepted clusters come first
    atoms = torch.where(found[:, :most, None], clusters[:, :most], 0.0)  # (B, M, 3); empty slots may be NaN
    species = _vote_species(field, z, atoms, offsets, budget)  # (B, M)
    if species.numel() and int(species.max()) >= len(table):
        raise UserError(f"the species field has more classes than the species table's {len(table)} entries")
    lengths, angles = lengths.double().cpu().numpy(), angles.double().cpu().numpy()
    clusters, found, support = clusters.double().cpu().numpy(), found.cpu().numpy(), support.cpu().numpy()
    species = species.cpu().numpy()
    results = []
    for b in range(z.shape[0]):
        mine, spare = found[b, :most], ~found[b] & (support[b] > 0)
        kinds = species[b, mine]
        results.append(
            Decoded(
                lengths[b],
                angles[b],
                clusters[b, :most][mine],
                kinds,
                table[kinds],
                support=support[b, :most][mine],
                spares=clusters[b, spare],
                spare_support=support[b, spare],
            )
        )
    return results


def _estimate_fast(
    field: StructureField,
    z: Tensor,
    box: np.ndarray | Tensor | Sequence[Sequence[float]],
    offsets: Tensor,
    table: np.ndarray,
    config: EstimatorConfig,
    progress: Progress | None,
) -> list[Decoded]:
    """Particles near each decoded cell, in chunks of structures with similar particle counts.

    Sorting by count keeps a chunk's padding small. A chunk holds as many structures as fit in the
    particles of ``config.chunk_size`` paper-mode structures (the same memory bound): on LCS6Å about
    40 instead of 16, so the passes, whose fixed cost per call dominates once few particles still
    move, are shared by more structures.
    """
    with torch.autocast(z.device.type, enabled=False):  # bf16 would round a 6 Å length by up to 0.02 Å
        lengths, angles = field.lattice(z)  # (B, 3), (B, 3)
    lengths_, angles_ = lengths.double().cpu().numpy(), angles.double().cpu().numpy()
    particles = [
        cell_grid(lattice_matrix(a, b), box, config.particle_interval, config.cell_margin).to(z.device, offsets.dtype)
        for a, b in zip(lengths_, angles_)
    ]
    order = sorted(range(z.shape[0]), key=lambda index: particles[index].shape[0])
    budget = config.chunk_size * box_grid(box, config.particle_interval, "estimator.particle_interval").shape[0]
    chunks: list[list[int]] = []
    for index in order:  # ascending counts: the newest structure is the chunk's largest
        if chunks and (len(chunks[-1]) + 1) * particles[index].shape[0] <= budget:
            chunks[-1].append(index)
        else:
            chunks.append([index])
    decoded: dict[int, Decoded] = {}
    for indices in chunks:
        chunk, own = torch.as_tensor(indices, device=z.device), [particles[i] for i in indices]
        found = _estimate_chunk_fast(field, z[chunk], lengths[chunk], angles[chunk], own, offsets, table, config)
        decoded.update(zip(indices, found))
        if progress is not None:
            progress(len(decoded), z.shape[0])
    return [decoded[index] for index in range(z.shape[0])]


def _estimate_chunk_fast(
    field: StructureField,
    z: Tensor,
    lengths: Tensor,
    angles: Tensor,
    particles: list[Tensor],
    offsets: Tensor,
    table: np.ndarray,
    config: EstimatorConfig,
) -> list[Decoded]:
    """Each pass moves only the particles still moving; one whose move is below ``settle_distance`` stays put.

    A settled particle's score is the length of that last move, the field at the place where it stays.
    The last pass settles every particle left, so with ``settle_distance = 0`` this moves each particle
    as the paper does. Structures hold different numbers of particles: slots past a structure's own are
    padding that never moves and scores infinity, so NMS never sees it. A pass asks only about the
    structures that still have moving particles: one slow structure must not keep the whole chunk in
    the passes (on 32 LCS6Å test structures that padding had made 4 × the evaluations needed).
    """
    count, most = z.shape[0], max(p.shape[0] for p in particles)
    points = offsets.new_zeros(count, most, 3)  # (B, P, 3) float32, also under bf16
    moving = torch.zeros(count, most, dtype=torch.bool, device=z.device)  # (B, P)
    for b, own in enumerate(particles):
        points[b, : own.shape[0]] = own
        moving[b, : own.shape[0]] = True
    score = torch.full((count, most), math.inf, device=z.device)  # (B, P)
    for step in range(config.steps + 1):
        rows = torch.nonzero(moving.any(1)).squeeze(1)  # (R,) structures with particles still moving
        if rows.numel() == 0:
            break
        own_points, own_moving, own_score = points[rows], moving[rows], score[rows]
        # the moving particles of each structure first (in order), cut to the most any structure has
        live = int(own_moving.sum(1).max())
        slots = torch.argsort((~own_moving).to(torch.uint8), dim=1, stable=True)[:, :live]  # (R, L)
        slots3 = slots[..., None].expand(-1, -1, 3)
        here, was_moving = own_points.gather(1, slots3), own_moving.gather(1, slots)  # (R, L, 3), (R, L)
        move = field.position(here, z[rows]).float()  # (R, L, 3)
        length = torch.linalg.vector_norm(move, dim=-1)  # (R, L)
        settles = was_moving & ((length < config.settle_distance) | (step == config.steps))
        moves_on = was_moving & ~settles
        points[rows] = own_points.scatter(1, slots3, torch.where(moves_on[..., None], here + move, here))
        score[rows] = own_score.scatter(1, slots, torch.where(settles, length, own_score.gather(1, slots)))
        moving[rows] = own_moving.scatter(1, slots, moves_on)
    return _finish(field, z, lengths, angles, points, score, offsets, most, table, config)


def _suppress(points: Tensor, score: Tensor, config: EstimatorConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Non-maximum suppression, one candidate per structure per iteration.

    Returns every cluster's position (B, T, 3), whether it was accepted (B, T) and how many particles its
    sphere held (B, T; 0 for an empty slot): the accepted clusters first, in order of acceptance, then the
    rejected ones, most particles first.
    """
    count = points.shape[0]
    rows = torch.arange(count, device=points.device)
    alive = score <= config.score_threshold  # (B, P); NaN scores drop out here
    # Drop the discarded particles (keeping order) so each iteration only touches live ones.
    order = torch.argsort((~alive).to(torch.uint8), dim=1, stable=True)[:, : int(alive.sum(1).max())]
    points = points.gather(1, order[..., None].expand(-1, -1, 3))  # (B, P', 3)
    score, alive = score.gather(1, order), alive.gather(1, order)  # (B, P')
    positions, accepted, support = [], [], []
    while bool(alive.any()):
        best = score.masked_fill(~alive, math.inf).argmin(dim=1)  # (B,) lowest score, first on ties
        centre = points[rows, best]  # (B, 3)
        offset = points - centre[:, None, :]  # (B, P', 3)
        sphere = alive & (torch.linalg.vector_norm(offset, dim=-1) <= config.nms_radius)  # (B, P')
        # softmax(-score) over the sphere; relative to the centre so a collapsed cluster stays exact
        weight = torch.exp(score[rows, best][:, None] - score).masked_fill(~sphere, 0.0)  # (B, P')
        shift = torch.where(sphere[..., None], weight[..., None] * offset, 0.0).sum(1)  # (B, 3)
        positions.append(centre + shift / weight.sum(1, keepdim=True).clamp_min(torch.finfo(weight.dtype).tiny))
        support.append(sphere.sum(1))  # empty structures have an empty sphere
        accepted.append(support[-1] >= config.nms_min_particles)
        alive = alive & ~sphere
    if not positions:
        empty = torch.zeros(count, 0, dtype=torch.long, device=points.device)
        return points.new_zeros(count, 0, 3), empty.bool(), empty
    positions_, accepted_ = torch.stack(positions, 1), torch.stack(accepted, 1)  # (B, T, 3), (B, T)
    support_ = torch.stack(support, 1)  # (B, T)
    # accepted first (in order), then rejected by support: a stable sort on (rejected, -support for rejected)
    rank = torch.where(accepted_, torch.zeros_like(support_), support_.max() + 1 - support_)
    order = torch.argsort(rank, dim=1, stable=True)
    return (
        positions_.gather(1, order[..., None].expand(-1, -1, 3)),
        accepted_.gather(1, order),
        support_.gather(1, order),
    )


def _vote_species(field: StructureField, z: Tensor, atoms: Tensor, offsets: Tensor, budget: int) -> Tensor:
    """(B, M) majority species over the local grid around each atom (ties -> lowest index).

    Atoms are queried in groups of at most ``budget`` points per structure, bounding memory like the
    particle passes.
    """
    count, most, _ = atoms.shape
    per_atom = offsets.shape[0]
    votes = []
    group = max(1, budget // per_atom)
    for start in range(0, most, group):
        queries = atoms[:, start : start + group, None, :] + offsets  # (B, m, S, 3)
        logits = field.species(queries.reshape(count, -1, 3), z)  # (B, m*S, K)
        choice = logits.argmax(-1).reshape(count, -1, per_atom)  # (B, m, S)
        tally = torch.zeros(*choice.shape[:2], logits.shape[-1], dtype=torch.long, device=atoms.device)
        votes.append(tally.scatter_add_(2, choice, torch.ones_like(choice)).argmax(-1))  # (B, m)
    if not votes:
        return torch.zeros(count, 0, dtype=torch.long, device=atoms.device)
    return torch.cat(votes, 1)


def constrain_species(
    field: StructureField,
    z: Tensor,
    decoded: Sequence[Decoded],
    species_table: Sequence[int],
    allowed: Sequence[int],
    composition: Mapping[int, float] | None = None,
    config: EstimatorConfig = EstimatorConfig(),
    num_atoms: int | None = None,
    fill: bool = True,
) -> list[Decoded]:
    """Vote the decoded atoms' species again, choosing only among ``allowed`` atomic numbers (empty: any).

    The positions and the lattice stay as decoded; only the species vote is restricted, so a sample asked
    for ``elements=Zn,S`` cannot hold a third element. With ``num_atoms``, the decoded count is first brought
    to it where the estimator's evidence allows (:func:`exact_atom_count`) and, with ``fill``, the atoms still
    missing are added where the position field marks them (:func:`fill_from_field`). With ``composition`` (atomic
    number -> amount) and an atom count that is a whole number of formula units, the species are assigned
    to match it exactly, maximising the field's votes (an assignment problem). A count that is not is first
    brought to the nearest whole number of units the estimator's evidence allows (:func:`whole_formula_units`).
    Otherwise every allowed element is given at least one atom where there are enough atoms ("exactly
    these elements"), again with the most votes.
    """
    table = np.asarray(species_table, dtype=np.int64)
    allowed = tuple(allowed) or tuple(int(number) for number in table)
    allowed_index = [int(np.flatnonzero(table == number)[0]) for number in allowed if number in table]
    if len(allowed_index) != len(set(allowed)):
        raise UserError("constrain_species: an allowed element is not in the model's species table")
    cover = len(allowed_index) < len(table)  # "exactly these elements" means nothing when any may be chosen
    offsets = local_offsets(config.species_interval, config.species_range).to(z.device, torch.float32)
    blocked = torch.full((len(table),), -math.inf, device=z.device)
    blocked[allowed_index] = 0.0
    was_training = isinstance(field, nn.Module) and field.training
    if was_training:
        field.eval()
    try:
        out = []
        with torch.inference_mode():
            unit = formula_unit(composition) if composition else None
            units = sum(unit.values()) if unit else None
            for b, structure in enumerate(decoded):
                if num_atoms is not None and (units is None or num_atoms % units == 0):
                    structure = exact_atom_count(structure, num_atoms, config.nms_min_particles)
                    if fill:
                        structure = fill_from_field(field, z[b : b + 1], structure, num_atoms)
                if units is not None:
                    structure = whole_formula_units(structure, units, config.nms_min_particles)
                if structure.num_atoms == 0:
                    out.append(structure)
                    continue
                atoms = torch.as_tensor(structure.cart_coords, dtype=torch.float32, device=z.device)  # (M, 3)
                queries = (atoms[:, None, :] + offsets).reshape(1, -1, 3)  # (1, M*L, 3)
                choice = (field.species(queries, z[b : b + 1]).float() + blocked).argmax(-1).reshape(len(atoms), -1)
                votes = torch.zeros(len(atoms), len(table), dtype=torch.long, device=z.device)
                votes = votes.scatter_add_(1, choice, torch.ones_like(choice)).cpu().numpy()  # (M, K)
                kinds = _assign_composition(votes, table, unit) if unit else None
                if kinds is None:
                    kinds = _cover_elements(votes, allowed_index) if cover else votes.argmax(1)
                out.append(Decoded(structure.lengths, structure.angles, structure.cart_coords, kinds, table[kinds]))
        return out
    finally:
        if was_training:
            field.train()


#: Å: a rejected cluster closer than this to a decoded atom is part of that atom's basin, never a new atom
SPARE_MIN_DISTANCE = 1.0
#: Å: an atom the field marks with no attractor is placed at least this far from every decoded atom. Chosen on
#: LCS6Å's validation split, filling each cell to its true count: 1.0 / 1.4 / 1.8 Å gave position errors
#: (actual / detected) of 0.1187 / 0.1167, 0.1172 / 0.1153 and 0.1152 / 0.1175 Å (docs/large-cells.md)
FILL_MIN_DISTANCE = 1.4
#: Å: the spacing of the grid over the cell that is searched for the field's smallest predicted distance
FILL_GRID_SPACING = 0.2
#: field queries a fill sends at once, and the most grid points it searches (a 25 Å cube): a cell decoded far
#: larger than any training cell is left as it is rather than filled at the cost of minutes or gigabytes
FILL_CHUNK_POINTS = 65_536
FILL_MAX_POINTS = 2_000_000


def fill_from_field(field: StructureField, z: Tensor, structure: Decoded, target: int) -> Decoded:
    """``structure`` with atoms added up to ``target`` where the position field predicts the shortest distance to
    an atom, among grid points over the cell at least FILL_MIN_DISTANCE (periodic) from every atom.

    The missed atoms of crowded cells have no attractor for particles to find, but the field's predicted distance
    still dips near them (docs/large-cells.md). The added atoms' species are placeholders (index 0) for the caller
    to vote; a structure already at ``target`` or above is returned as it is.
    """
    if structure.num_atoms >= target:
        return structure
    try:
        matrix = lattice_matrix(structure.lengths, structure.angles)
        inverse = np.linalg.inv(matrix)
        steps = [max(2, math.ceil(length / FILL_GRID_SPACING)) for length in structure.lengths]
    except (UserError, np.linalg.LinAlgError, ValueError, OverflowError) as error:
        log.debug("no atoms filled: the decoded lattice is not a valid cell (%s)", error)
        return structure  # to_crystal counts it as the failure it is
    if math.prod(steps) > FILL_MAX_POINTS:
        log.debug("no atoms filled: a %s grid over a %s A cell is too large", steps, structure.lengths)
        return structure
    frac = np.stack(np.meshgrid(*[np.arange(n) / n for n in steps], indexing="ij"), -1).reshape(-1, 3)
    points = frac @ matrix  # (P, 3) Å
    queries = torch.as_tensor(points, dtype=torch.float32, device=z.device)[None]
    distance = np.concatenate(  # (P,), the grid in chunks, as the estimator bounds its field calls
        [
            torch.linalg.vector_norm(field.position(chunk, z)[0].float(), dim=-1).cpu().numpy()
            for chunk in queries.split(FILL_CHUNK_POINTS, dim=1)
        ]
    )
    nearest = np.full(len(points), np.inf)
    for atom in structure.cart_coords:
        nearest = np.minimum(nearest, _periodic_distance(frac, atom @ inverse, matrix))
    added = []
    while structure.num_atoms + len(added) < target:
        allowed = np.where(nearest >= FILL_MIN_DISTANCE, distance, np.inf)
        best = int(np.argmin(allowed))
        if not np.isfinite(allowed[best]):
            break  # the cell has no room left
        atom = _refine_minimum(field, z, points[best], [*structure.cart_coords, *added], matrix)
        added.append(atom)
        nearest = np.minimum(nearest, _periodic_distance(frac, atom @ inverse, matrix))
    if not added:
        return structure
    short = len(added)
    return Decoded(
        structure.lengths,
        structure.angles,
        np.concatenate([structure.cart_coords.reshape(-1, 3), np.asarray(added)]),
        np.concatenate([structure.species, np.zeros(short, dtype=structure.species.dtype)]),
        np.concatenate([structure.atomic_numbers, np.zeros(short, dtype=structure.atomic_numbers.dtype)]),
    )


def _refine_minimum(
    field: StructureField, z: Tensor, point: np.ndarray, atoms: Sequence[np.ndarray], matrix: np.ndarray
) -> np.ndarray:
    """The point of smallest predicted distance within one grid step of ``point``, on a grid five times finer
    and FILL_MIN_DISTANCE from ``atoms``, so that a filled atom can sit on a symmetric site between grid points."""
    ticks = np.linspace(-FILL_GRID_SPACING, FILL_GRID_SPACING, 11)
    candidates = point + np.stack(np.meshgrid(ticks, ticks, ticks, indexing="ij"), -1).reshape(-1, 3)  # (C, 3) Å
    queries = torch.as_tensor(candidates, dtype=torch.float32, device=z.device)[None]
    distance = torch.linalg.vector_norm(field.position(queries, z)[0].float(), dim=-1).cpu().numpy()
    inverse = np.linalg.inv(matrix)
    frac = candidates @ inverse
    for atom in atoms:
        distance[_periodic_distance(frac, atom @ inverse, matrix) < FILL_MIN_DISTANCE] = np.inf
    return candidates[int(np.argmin(distance))] if np.isfinite(distance.min()) else point


def _periodic_distance(frac: np.ndarray, to: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """(P,) shortest distances in Å from fractional points (P, 3) to the fractional point ``to`` and its images."""
    delta = frac - to
    delta -= np.round(delta)
    return np.linalg.norm(delta @ matrix, axis=-1)


def whole_formula_units(structure: Decoded, units: int, threshold: int) -> Decoded:
    """The decoded atoms brought to a whole number of ``units``-atom formula units, by the smaller change.

    Either the weakest accepted atoms are dropped (fewest particles in their suppression sphere) or the
    strongest rejected clusters at least SPARE_MIN_DISTANCE from every atom are added, whichever moves
    clusters less far across the estimator's ``threshold`` (nms_min_particles) in total. A structure
    without the estimator's cluster record, or already whole, is returned as it is.
    """
    below = structure.num_atoms - structure.num_atoms % units
    if below == structure.num_atoms or not _has_cluster_record(structure):
        return structure
    changes = [_to_count(structure, below, threshold), _to_count(structure, below + units, threshold)]
    reachable = [change for change in changes if change is not None]  # on a tie, dropping wins
    return min(reachable, key=lambda change: change[1])[0] if reachable else structure


def exact_atom_count(structure: Decoded, target: int, threshold: int) -> Decoded:
    """The decoded atoms brought to ``target``: the weakest dropped or the strongest rejected clusters added
    (as :func:`whole_formula_units`); returned as it is where the estimator found too few clusters to add."""
    if structure.num_atoms == target or not _has_cluster_record(structure):
        return structure
    change = _to_count(structure, target, threshold)
    return structure if change is None else change[0]


def _has_cluster_record(structure: Decoded) -> bool:
    return structure.support is not None and structure.spares is not None and structure.spare_support is not None


def _to_count(structure: Decoded, target: int, threshold: int) -> tuple[Decoded, float] | None:
    """``structure`` with ``target`` atoms and the change's cost (how far the dropped or added clusters
    were across ``threshold``, summed), or None where no such change exists."""
    count, support, spare_support = structure.num_atoms, structure.support, structure.spare_support
    assert support is not None and structure.spares is not None and spare_support is not None
    if 0 < target < count:
        weakest = np.argsort(support, kind="stable")[: count - target]
        keep = np.setdiff1d(np.arange(count), weakest)
        coords, kinds, numbers = structure.cart_coords[keep], structure.species[keep], structure.atomic_numbers[keep]
        support, cost = support[keep], float(np.sum(support[weakest] - threshold + 1))
    else:
        short = target - count
        added = _spares_to_add(structure, short) if short > 0 else []
        if short <= 0 or len(added) < short:
            return None
        coords = np.concatenate([structure.cart_coords, structure.spares[added]])
        kinds = np.concatenate([structure.species, np.zeros(short, dtype=structure.species.dtype)])
        numbers = np.concatenate([structure.atomic_numbers, np.zeros(short, dtype=structure.atomic_numbers.dtype)])
        support, cost = np.concatenate([support, spare_support[added]]), float(np.sum(threshold - spare_support[added]))
    return Decoded(structure.lengths, structure.angles, coords, kinds, numbers, support=support), cost


def _spares_to_add(structure: Decoded, wanted: int) -> list[int]:
    """Indices of up to ``wanted`` rejected clusters, most particles first, each SPARE_MIN_DISTANCE (periodic)
    from every decoded atom and from each other."""
    matrix = lattice_matrix(structure.lengths, structure.angles)
    inverse = np.linalg.inv(matrix)
    taken = [row @ inverse for row in structure.cart_coords]
    chosen = []
    for index in np.argsort(-structure.spare_support, kind="stable"):
        if len(chosen) == wanted:
            break
        frac = structure.spares[index] @ inverse
        if taken and _periodic_distance(np.asarray(taken), frac, matrix).min() < SPARE_MIN_DISTANCE:
            continue
        taken.append(frac)
        chosen.append(int(index))
    return chosen


def _assign_composition(votes: np.ndarray, table: np.ndarray, per_unit: Mapping[int, int]) -> np.ndarray | None:
    """(M,) species indices holding the formula unit ``per_unit`` (:func:`formula_unit`) a whole number of times
    with the most votes, or None when the M atoms are not a whole number of those units."""
    from scipy.optimize import linear_sum_assignment

    units = sum(per_unit.values())
    if len(votes) % units:
        return None
    slots = [int(np.flatnonzero(table == z)[0]) for z, n in per_unit.items() for _ in range(n * len(votes) // units)]
    rows, columns = linear_sum_assignment(-votes[:, slots])
    kinds = np.empty(len(votes), dtype=np.int64)
    kinds[rows] = np.asarray(slots)[columns]
    return kinds


def _cover_elements(votes: np.ndarray, allowed_index: Sequence[int]) -> np.ndarray:
    """(M,) species indices: each atom's most-voted species, except that every allowed species missing from
    that vote takes the atom where giving it up costs the fewest votes (an assignment problem), when the M
    atoms are at least as many as the allowed species."""
    from scipy.optimize import linear_sum_assignment

    kinds = votes.argmax(-1)
    if len(votes) < len(allowed_index) or set(allowed_index) <= set(kinds.tolist()):
        return kinds
    cost = votes.max(-1)[None, :] - votes[:, allowed_index].T  # (E, M): votes lost by giving atom m species e
    rows, columns = linear_sum_assignment(cost)
    kinds[columns] = np.asarray(allowed_index)[rows]
    return kinds
