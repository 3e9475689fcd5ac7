"""Why atoms of crowded cells get no attractor: the training signal one atom gets, and the field's error near atoms.

Global training queries are drawn per structure and local ones per atom, so an atom of a 12-atom
cell shares its cell's global queries with eleven others where an atom of a 2-atom cell shares
them with one. These measurements put numbers on that, on a trained model and a split, without
changing either: ``training_signal`` draws training steps as training does and splits each step's
position loss and gradient by the cell size of each query's target atom; ``field_error_near_atoms``
probes the decoded field on the local grid around every atom and, given the estimator's decodes,
tells apart the atoms it missed. ``missed_by_neighbour_distance`` sorts the misses by how close each atom's
nearest neighbour is; ``fit_latents`` and ``field_across_closest_pair`` tell whether the encoder or the
field is what loses the atoms of close pairs. ``training_twins`` asks, without a model, whether a cell's
arrangement is one the training split holds at the same origin and setting.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pymatgen.core import Element

from nesfgen.checkpoint import TrainedModel, load_model
from nesfgen.crystal import Crystal, wrap_fractional
from nesfgen.data.names import resolve_dataset
from nesfgen.data.store import CrystalSet
from nesfgen.decoder import encode
from nesfgen.estimator import Decoded, estimate
from nesfgen.latent_fit import fit_latents
from nesfgen.sampling import QuerySampler, TensorSet, local_offsets, nearest_atoms
from nesfgen.train import epoch_batches

#: distance bands (Å) of a position query from its target atom: inside the estimator's basin, around it, far
NEAR, MID = 0.5, 1.5


def training_signal(trained: TrainedModel, crystals: CrystalSet, steps: int = 8, seed: int = 0) -> dict[int, dict]:
    """Per cell size N: what one atom of an N-atom cell gets of a training step's position term, on average.

    Batches (the recipe's batch size) and queries (the recipe's sampler) are drawn as training draws
    them; the model runs in train mode (batch statistics, dropout) without updating anything. Each
    position query belongs to its target, the nearest atom of its structure. For the atoms of
    N-atom cells, per atom and step: the queries in each distance band, the share of the batch's
    position loss, and the share of its gradient on the position field's parameters, taken as the
    projection <g_N, g> / |g|² of the cell size's gradient g_N on the whole one g (the shares of all
    cell sizes add up to 1).

    Returns:
        {N: {"atoms": atom-steps seen, "queries_near", "queries_mid", "queries_far", "loss_share",
        "gradient_share"}}, the last five per atom and step.
    """
    model, recipe = trained.model, trained.recipe
    device = next(model.parameters()).device
    tensors = TensorSet(crystals, trained.species_table, device)
    sampler = QuerySampler(recipe.sampling, trained.box, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    torch.manual_seed(seed)  # dropout
    parameters = [p for p in model.position_field.parameters() if p.requires_grad]
    sums: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    model.train()
    try:
        batches = epoch_batches(len(tensors), recipe.train.batch_size, generator)[:steps]
        for indices in batches:
            atoms = tensors.batch(indices)
            queries = sampler.sample(atoms, generator)
            target = nearest_atoms(queries.position_points, queries.position_structure, atoms)  # (Q,)
            cell_size = torch.bincount(atoms.structure)[atoms.structure]  # (A,) atoms in each atom's cell
            predicted = model.position_field(queries.position_points, queries.position_structure, model.encode(atoms))
            squared = (predicted.float() - queries.position_targets).square().sum(dim=1)  # (Q,)
            loss = recipe.loss.position * squared.sum() / (3 * squared.numel())
            whole = torch.autograd.grad(loss, parameters, retain_graph=True)
            whole_norm2 = sum(g.square().sum() for g in whole)
            distance = queries.position_targets.norm(dim=1)  # (Q,)
            query_size = cell_size[target]
            for size in torch.unique(cell_size).tolist():
                mine = query_size == size
                count = int((cell_size == size).sum())
                part = recipe.loss.position * squared[mine].sum() / (3 * squared.numel())
                grads = torch.autograd.grad(part, parameters, retain_graph=True)
                projection = sum((g * w).sum() for g, w in zip(grads, whole)) / whole_norm2
                row = sums[size]
                row["atoms"] += count
                row["queries_near"] += float((distance[mine] < NEAR).sum())
                row["queries_mid"] += float(((distance[mine] >= NEAR) & (distance[mine] < MID)).sum())
                row["queries_far"] += float((distance[mine] >= MID).sum())
                row["loss_share"] += float(part.detach() / loss.detach())
                row["gradient_share"] += float(projection)
    finally:
        model.eval()
    return {
        size: {"atoms": int(row["atoms"])} | {k: v / row["atoms"] for k, v in row.items() if k != "atoms"}
        for size, row in sorted(sums.items())
    }


@torch.no_grad()
def field_error_near_atoms(
    trained: TrainedModel,
    crystals: CrystalSet,
    decoded: Sequence[Decoded | None] | None = None,
    latents: torch.Tensor | None = None,
    missed_within: float = 0.5,
) -> list[dict[str, Any]]:
    """Per atom: the position field's error on the training local grid around it, and whether it was missed.

    The field is probed in eval mode (the decoding latents) at the atom and at the local grid's
    offsets around it (the recipe's local interval and range); the error is |predicted − true| of
    the vector to the nearest atom, in Å. An atom is missed when no decoded atom lies within
    ``missed_within`` Å (Cartesian, as the paper's metrics); for a structure without a decode
    (``decoded`` None, or None at its index) that is None.

    Returns:
        one row per atom: structure, num_atoms (its cell's), missed, error_mean and error_max over the
        grid, and at_atom (|predicted vector| at the atom itself: 0 for a perfect attractor).
    """
    model, sampling = trained.model, trained.recipe.sampling
    device = next(model.parameters()).device
    z = encode(trained, crystals) if latents is None else latents
    tensors = TensorSet(crystals, trained.species_table, device)
    offsets = torch.cat([torch.zeros(1, 3), local_offsets(sampling.local_interval, sampling.local_range)]).to(device)
    rows = []
    for index in range(len(crystals)):
        atoms = tensors.batch(torch.tensor([index]))
        points = (atoms.cart_coords[:, None, :] + offsets[None]).reshape(-1, 3)  # (N·(1+L), 3)
        structure = torch.zeros(points.shape[0], dtype=torch.long, device=device)
        truth = atoms.cart_coords[nearest_atoms(points, structure, atoms)] - points
        predicted = model.position(points[None], z[index : index + 1])[0].float()
        error = (predicted - truth).norm(dim=1).reshape(-1, offsets.shape[0])  # (N, 1+L)
        at_atom = predicted.norm(dim=1).reshape(-1, offsets.shape[0])[:, 0]
        found = decoded[index] if decoded else None
        missed = None if found is None else _missed(atoms.cart_coords.cpu().numpy(), found, missed_within)
        for atom in range(error.shape[0]):
            rows.append(
                {
                    "structure": index,
                    "num_atoms": error.shape[0],
                    "missed": None if missed is None else bool(missed[atom]),
                    "error_mean": float(error[atom].mean()),
                    "error_max": float(error[atom].max()),
                    "at_atom": float(at_atom[atom]),
                }
            )
    return rows


def _missed(cart_coords: np.ndarray, decoded: Decoded, within: float) -> np.ndarray:
    """(N,) whether no decoded atom lies within ``within`` Å of each true atom."""
    if decoded.num_atoms == 0:
        return np.ones(len(cart_coords), dtype=bool)
    distance = np.linalg.norm(cart_coords[:, None, :] - np.asarray(decoded.cart_coords)[None, :, :], axis=-1)
    return distance.min(axis=1) > within


def summarise_field_errors(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean field error per (cell size, missed): atoms, error_mean, error_max and at_atom averaged."""
    groups: dict[tuple[int, Any], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["num_atoms"], row["missed"])].append(row)
    return [
        {
            "num_atoms": size,
            "missed": missed,
            "atoms": len(members),
            **{k: float(np.mean([m[k] for m in members])) for k in ("error_mean", "error_max", "at_atom")},
        }
        for (size, missed), members in sorted(groups.items(), key=lambda item: (item[0][0], str(item[0][1])))
    ]


def measure_crowding(
    checkpoint: str, data: str, split: str = "val", steps: int = 8, decode_sizes: Sequence[int] = (12,)
) -> dict[str, Any]:
    """Both measurements on one split: the training signal over ``steps`` steps, and the field's error near
    every atom, with the cells of ``decode_sizes`` atoms decoded (the model's own estimator settings) to
    tell missed atoms apart; decoding is the slow part, so only those cells are decoded."""
    trained = load_model(checkpoint)
    crystals = resolve_dataset(data).load(split)
    signal = training_signal(trained, crystals, steps)
    z = encode(trained, crystals)
    chosen = [i for i, size in enumerate(np.diff(crystals.offsets)) if size in decode_sizes]
    decoded: list[Decoded | None] = [None] * len(crystals)
    if chosen:
        found = estimate(trained.model, z[chosen], trained.box, trained.species_table, trained.recipe.estimator)
        for index, result in zip(chosen, found):
            decoded[index] = result
    rows = field_error_near_atoms(trained, crystals, decoded, latents=z)
    return {
        "checkpoint": checkpoint,
        "data": data,
        "split": split,
        "training_signal": signal,
        "decoded_structures": len(chosen),
        "field_errors": summarise_field_errors(rows),
    }


#: upper edges (Å) of the nearest-neighbour distance bands of :func:`missed_by_neighbour_distance`
NEIGHBOUR_BANDS = (1.3, 1.5, 1.8, 2.1, 2.5, math.inf)


def nearest_neighbour_distances(crystal: Crystal) -> np.ndarray:
    """(N,) each atom's distance (Å) to its nearest other atom, periodic images included."""
    structure = crystal.to_structure()
    if len(structure) == 1:
        return np.array([min(structure.lattice.abc)])
    distances = structure.distance_matrix + np.diag(np.full(len(structure), np.inf))
    return distances.min(axis=1)


def missed_by_neighbour_distance(
    checkpoint: str,
    data: str,
    split: str = "val",
    min_atoms: int = 8,
    missed_within: float = 0.5,
    limit: int | None = None,
    refine_steps: int = 0,
    refine_lr: float = 0.02,
) -> dict[str, Any]:
    """Which atoms the model's estimator misses, by how close their nearest neighbour is.

    Decodes the cells of at least ``min_atoms`` atoms of a split (the first ``limit`` of them) with the
    model's own estimator; an atom is missed when no decoded atom lies within ``missed_within`` Å. With
    ``refine_steps``, the decoded latents are first fitted to each cell's own position and species targets
    (:func:`nesfgen.latent_fit.fit_latents`),
    which tells misses the encoder causes from those the field cannot draw. Returns
    per nearest-neighbour band (upper edges NEIGHBOUR_BANDS) the atoms and the share missed, the elements
    of the missed atoms, and the share of cells decoded with a wrong atom count.
    """
    trained = load_model(checkpoint)
    crystals = resolve_dataset(data).load(split)
    chosen = [i for i, size in enumerate(np.diff(crystals.offsets)) if size >= min_atoms][:limit]
    decoded = []
    if chosen:
        z = encode(trained, crystals)[chosen]
        if refine_steps:
            z = fit_latents(trained, crystals.subset(chosen), z, refine_steps, refine_lr, terms=("position", "species"))
        decoded = estimate(trained.model, z, trained.box, trained.species_table, trained.recipe.estimator)
    neighbour, missed, elements = [], [], []
    for index, found in zip(chosen, decoded):
        crystal = crystals[index]
        neighbour.append(nearest_neighbour_distances(crystal))
        missed.append(_missed(np.asarray(crystal.cart_coords), found, missed_within))
        elements.extend(Element.from_Z(int(z)).symbol for z in crystal.atomic_numbers)
    wrong = [found.num_atoms != crystals[index].num_atoms for index, found in zip(chosen, decoded)]
    distance = np.concatenate(neighbour) if neighbour else np.zeros(0)
    miss = np.concatenate(missed) if missed else np.zeros(0, dtype=bool)
    bands, low = [], 0.0
    for high in NEIGHBOUR_BANDS:
        inside = (distance >= low) & (distance < high)
        share = 100.0 * float(miss[inside].mean()) if inside.any() else None
        bands.append({"from": low, "to": high, "atoms": int(inside.sum()), "missed_pct": share})
        low = high
    return {
        "checkpoint": checkpoint,
        "data": data,
        "split": split,
        "refine_steps": refine_steps,
        "structures": len(chosen),
        "atoms": int(miss.size),
        "missed_pct": 100.0 * float(miss.mean()) if miss.size else None,
        "wrong_count_pct": 100.0 * float(np.mean(wrong)) if wrong else None,
        "bands": bands,
        "missed_elements": Counter(e for e, m in zip(elements, miss) if m).most_common(),
    }


@torch.no_grad()
def field_across_closest_pair(
    trained: TrainedModel, crystal: Crystal, latent: torch.Tensor, points: int = 15, margin: float = 0.4
) -> dict[str, Any]:
    """The position field along the line through a cell's two closest atoms (no periodic images).

    Points run from ``margin`` Å before the first atom to ``margin`` Å past the second; at each, the component
    along the line (from the first atom to the second) of the true vector to the nearest atom and of the
    predicted one. A field that draws both atoms crosses zero downwards at each of them; one that merges
    them crosses once, between them.
    """
    cart = np.asarray(crystal.cart_coords, dtype=np.float64)
    if len(cart) < 2:
        raise ValueError("a closest pair needs at least two atoms")
    gaps = np.linalg.norm(cart[:, None] - cart[None], axis=-1) + np.diag(np.full(len(cart), np.inf))
    first, second = np.unravel_index(gaps.argmin(), gaps.shape)
    distance = float(gaps[first, second])
    direction = (cart[second] - cart[first]) / distance
    along = np.linspace(-margin, distance + margin, points)
    line = cart[first] + along[:, None] * direction  # (P, 3)
    nearest = np.linalg.norm(line[:, None] - cart[None], axis=-1).argmin(axis=1)
    device = latent.device
    predicted = trained.model.position(torch.as_tensor(line, dtype=torch.float32, device=device)[None], latent[None])
    return {
        "pair": [int(crystal.atomic_numbers[first]), int(crystal.atomic_numbers[second])],
        "distance": distance,
        "along": along.tolist(),
        "true": ((cart[nearest] - line) @ direction).tolist(),
        "predicted": (predicted[0].double().cpu().numpy() @ direction).tolist(),
    }


#: the other frames of a cell that a standard setting may have put it in: the six orders of its axes (odd ones
#: mirror it) and the eight half-cell origin shifts
AXIS_ORDERS = tuple(itertools.permutations(range(3)))
HALF_SHIFTS = tuple(np.array(shift) for shift in itertools.product((0.0, 0.5), repeat=3))


def _makeup(crystal: Crystal) -> tuple[int, tuple[int, ...]]:
    """The atom count and the sorted counts per element: what a twin must share, whatever its elements."""
    return len(crystal.atomic_numbers), tuple(sorted(Counter(crystal.atomic_numbers.tolist()).values()))


def _species_roles(crystal: Crystal) -> np.ndarray:
    """(N,) each atom's element as its rank by count (rarest first, then heaviest): ZrO2 and HfO2 alike."""
    counts = Counter(int(z) for z in crystal.atomic_numbers)
    order = sorted(counts, key=lambda z: (counts[z], -z))
    return np.array([order.index(int(z)) for z in crystal.atomic_numbers])


def arrangement_mismatch(frac_a: np.ndarray, roles_a: np.ndarray, frac_b: np.ndarray, roles_b: np.ndarray) -> float:
    """Mean distance per fractional coordinate between two arrangements, atoms paired one to one within their
    species role, in the cell as given (no periodic images: the field is of the cell as given)."""
    from scipy.optimize import linear_sum_assignment

    cost = np.abs(frac_a[:, None, :] - frac_b[None, :, :]).sum(-1) + 3.0 * (roles_a[:, None] != roles_b[None, :])
    rows, columns = linear_sum_assignment(cost)
    return float(cost[rows, columns].mean() / 3)


def training_twins(
    data: str,
    split: str = "val",
    other_frames: bool = False,
    length_tolerance: float = 0.15,
    angle_tolerance: float = 5.0,
) -> list[dict[str, Any]]:
    """Per cell of ``split``, how close the nearest training cell of the same make-up comes to its arrangement.

    A twin has the same atom count and the same counts per element (elements may differ: ZrO2 and HfO2), cell
    edges within ``length_tolerance`` (relative) and angles within ``angle_tolerance`` degrees. ``mismatch`` is
    :func:`arrangement_mismatch` to the nearest twin at the origin and setting as given; with ``other_frames``,
    ``mismatch_other_frames`` also tries each twin in every frame of AXIS_ORDERS x HALF_SHIFTS, which tells
    whether a twin exists that the data's choice of origin and setting hides. Slow with ``other_frames`` (48
    assignments per twin): seconds per cell.
    """
    dataset = resolve_dataset(data)
    by_makeup: dict[tuple, list[tuple[Crystal, np.ndarray]]] = defaultdict(list)
    for crystal in dataset.load("train"):
        by_makeup[_makeup(crystal)].append((crystal, _species_roles(crystal)))
    rows = []
    for crystal in dataset.load(split):
        frac, roles = wrap_fractional(crystal.frac_coords), _species_roles(crystal)
        as_given, any_frame, twins = math.inf, math.inf, 0
        for twin, twin_roles in by_makeup[_makeup(crystal)]:
            for order in AXIS_ORDERS if other_frames else AXIS_ORDERS[:1]:
                axes = list(order)
                close = np.all(np.abs(twin.lengths[axes] / crystal.lengths - 1) < length_tolerance) and np.all(
                    np.abs(twin.angles[axes] - crystal.angles) < angle_tolerance
                )
                if not close:
                    continue
                twins += order == AXIS_ORDERS[0]
                twin_frac = twin.frac_coords[:, axes]
                for shift in HALF_SHIFTS if other_frames else HALF_SHIFTS[:1]:
                    found = arrangement_mismatch(frac, roles, wrap_fractional(twin_frac + shift), twin_roles)
                    any_frame = min(any_frame, found)
                    if order == AXIS_ORDERS[0] and not shift.any():
                        as_given = min(as_given, found)
        rows.append(
            {"id": crystal.id, "num_atoms": len(crystal.atomic_numbers), "twins": int(twins), "mismatch": as_given}
            | ({"mismatch_other_frames": any_frame} if other_frames else {})
        )
    return rows
