"""Sampling new structures from a variational model, and the measures the field uses for generative models.

Latents are drawn from the prior (scaled by a temperature) or around an encoded structure, decoded
with the estimator, and measured as CDVAE and its successors do: structural validity (no two atoms
closer than 0.5 Å, periodic images included), compositional validity (a charge-balanced assignment
of common oxidation states exists, SMACT-like), uniqueness among the samples and novelty against the
training set (pymatgen's StructureMatcher), the space-group distribution (spglib), and Wasserstein
distances between the sampled and training distributions of atoms per cell, density and number of
elements.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nesfgen.checkpoint import DEFAULT_VAE_MODEL, PACKAGED_MODELS, TrainedModel, load_model
from nesfgen.crystal import Crystal, lattice_matrix, symmetry_dataset
from nesfgen.data.builtin import find_known
from nesfgen.data.importers import read_structure_file
from nesfgen.data.store import CrystalSet
from nesfgen.errors import UserError
from nesfgen.estimator import estimate
from nesfgen.evaluate import estimator_config
from nesfgen.files import atomic_write_text
from nesfgen.sampling import TensorSet
from nesfgen.stream import SAMPLE_CIFS, SampleStream
from nesfgen.symmetry import STATED_SYMPREC, symmetrize_decoded

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]

#: two atoms closer than this (Å), periodic images included, make a structure invalid (CDVAE's cutoff)
STRUCTURE_CUTOFF = 0.5
#: how far (Å) to look for the nearest neighbour reported per sample
NEIGHBOUR_SEARCH = 4.0
#: StructureMatcher settings for uniqueness and novelty: those of the reconstruction metrics (CDVAE)
MATCHER_SETTINGS = {"stol": 0.5, "angle_tol": 10.0, "ltol": 0.3}
#: grams per cm³ of one atomic mass unit per Å³
AMU_PER_CUBIC_ANGSTROM = 1.66053906660
#: the distributions compared with the training set
DISTRIBUTIONS = ("num_atoms", "density", "num_elements")
#: Samples past which ``sample`` needs force=true: at seconds per sample on a CPU, more is a run of days.
MAX_SAMPLES = 10_000


# --- validity -----------------------------------------------------------------------------------


def min_distance(crystal: Crystal, search: float = NEIGHBOUR_SEARCH) -> float:
    """Shortest distance (Å) between two atoms, periodic images included; inf if none within ``search``."""
    _, _, _, distances = crystal.to_structure().get_neighbor_list(search)
    return float(distances.min()) if len(distances) else math.inf


def structurally_valid(crystal: Crystal) -> bool:
    """No two atoms (or an atom and its own image) closer than STRUCTURE_CUTOFF."""
    return min_distance(crystal, STRUCTURE_CUTOFF) >= STRUCTURE_CUTOFF


def element_counts(atomic_numbers: Sequence[int] | np.ndarray) -> dict[str, int]:
    """Element symbol -> atoms in the cell."""
    from pymatgen.core import Element

    numbers, counts = np.unique(np.asarray(atomic_numbers, dtype=np.int64), return_counts=True)
    return {Element.from_Z(int(z)).symbol: int(n) for z, n in zip(numbers, counts)}


def charge_balanced_states(counts: Mapping[str, int]) -> dict[str, int] | None:
    """One common oxidation state per element (pymatgen's) with zero total charge, or None if none exists.

    Dynamic programming over the reachable partial charges, so the cost grows with the number of
    distinct totals, not with the product of the elements' choices.
    """
    from pymatgen.core import Element

    gcd = math.gcd(*counts.values())
    reachable: dict[int, tuple[int, ...]] = {0: ()}  # partial charge -> one choice of states giving it
    for symbol, count in counts.items():
        states = Element(symbol).common_oxidation_states
        reachable = {
            charge + (count // gcd) * state: (*chosen, state)
            for charge, chosen in reachable.items()
            for state in states
        }
    chosen = reachable.get(0)
    return None if chosen is None else dict(zip(counts, chosen))


def composition_check(counts: Mapping[str, int]) -> tuple[bool, str]:
    """Compositional validity and its reason: "element", "alloy" or the charge-balanced states ("Zn+2 S-2").

    A single element and an all-metal alloy count as valid, as SMACT does with ``include_alloys``; the
    reason is "" when invalid.
    """
    from pymatgen.core import Element

    if len(counts) == 1:
        return True, "element"
    if all(Element(symbol).is_metal for symbol in counts):
        return True, "alloy"
    states = charge_balanced_states(counts)
    if states is None:
        return False, ""
    return True, " ".join(f"{symbol}{state:+d}" for symbol, state in states.items())


def compositionally_valid(crystal: Crystal) -> bool:
    return composition_check(element_counts(crystal.atomic_numbers))[0]


# --- uniqueness and novelty ----------------------------------------------------------------------


def reduced_formula(atomic_numbers: Sequence[int] | np.ndarray) -> str:
    from pymatgen.core import Composition

    return Composition(element_counts(atomic_numbers)).reduced_formula


def _matcher() -> Any:
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher(**MATCHER_SETTINGS)


def unique_flags(crystals: Sequence[Crystal]) -> list[bool]:
    """True for the first crystal of each group of StructureMatcher-equal ones (compared within a formula)."""
    matcher = _matcher()
    kept: dict[str, list[Any]] = defaultdict(list)  # reduced formula -> structures of the unique ones
    flags = []
    for crystal in crystals:
        structure = crystal.to_structure()
        group = kept[reduced_formula(crystal.atomic_numbers)]
        unique = not any(matcher.fit(structure, other) for other in group)
        if unique:
            group.append(structure)
        flags.append(unique)
    return flags


def novel_flags(crystals: Sequence[Crystal], reference: CrystalSet) -> list[bool]:
    """True for each crystal that StructureMatcher matches to no reference structure of the same formula."""
    matcher = _matcher()
    by_formula: dict[str, list[int]] = defaultdict(list)
    for index in range(len(reference)):
        start, stop = reference.offsets[index], reference.offsets[index + 1]
        by_formula[reduced_formula(reference.atomic_numbers[start:stop])].append(index)

    @functools.cache
    def reference_structure(index: int) -> Any:
        return reference[index].to_structure()

    flags = []
    for crystal in crystals:
        structure = crystal.to_structure()
        candidates = by_formula.get(reduced_formula(crystal.atomic_numbers), [])
        flags.append(not any(matcher.fit(structure, reference_structure(i)) for i in candidates))
    return flags


# --- distributions -------------------------------------------------------------------------------


@functools.cache
def _atomic_masses() -> np.ndarray:
    from pymatgen.core import Element

    return np.array([0.0] + [float(Element.from_Z(z).atomic_mass) for z in range(1, 119)])


def cell_statistics(lengths: np.ndarray, angles: np.ndarray, atomic_numbers: np.ndarray) -> dict[str, float]:
    """Atoms per cell, density (g/cm³) and number of elements of one cell."""
    volume = abs(np.linalg.det(lattice_matrix(lengths, angles)))
    mass = _atomic_masses()[np.asarray(atomic_numbers, dtype=np.int64)].sum()
    return {
        "num_atoms": float(len(atomic_numbers)),
        "density": float(mass * AMU_PER_CUBIC_ANGSTROM / volume),
        "num_elements": float(len(np.unique(atomic_numbers))),
    }


def set_statistics(crystals: CrystalSet) -> dict[str, np.ndarray]:
    """cell_statistics of every structure of a split: name -> (S,)."""
    rows = [
        cell_statistics(
            crystals.lengths[i],
            crystals.angles[i],
            crystals.atomic_numbers[crystals.offsets[i] : crystals.offsets[i + 1]],
        )
        for i in range(len(crystals))
    ]
    return {name: np.array([row[name] for row in rows]) for name in DISTRIBUTIONS}


def wasserstein_distances(samples: Sequence[Mapping[str, float]], reference: Mapping[str, np.ndarray]) -> dict:
    """Earth mover's distance per statistic between the samples and the reference; None without samples."""
    from scipy.stats import wasserstein_distance

    if not samples:
        return dict.fromkeys(DISTRIBUTIONS)
    return {
        name: float(wasserstein_distance([row[name] for row in samples], reference[name])) for name in DISTRIBUTIONS
    }


def space_group(crystal: Crystal) -> tuple[str, int] | None:
    """spglib's international symbol and number at STATED_SYMPREC, or None when it finds no symmetry."""
    dataset = symmetry_dataset(crystal, STATED_SYMPREC)
    return None if dataset is None else (str(dataset.international), int(dataset.number))


# --- sampling ------------------------------------------------------------------------------------


@dataclass
class Generation:
    """What one sampling produced."""

    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    crystals: list[Crystal | None]  # None where the decode is not a valid crystal


def default_checkpoint() -> str:
    """The shipped VAE, or a UserError saying how to get a model to sample from."""
    if not (PACKAGED_MODELS / f"{DEFAULT_VAE_MODEL}.pt").is_file():
        raise UserError(
            f"the default model {DEFAULT_VAE_MODEL} is not shipped in this installation ({PACKAGED_MODELS}); "
            "give checkpoint=RUN_DIR|FILE.pt of a variational model, e.g. one trained with "
            "`nesfgen train recipe=vae-quickstart`"
        )
    return DEFAULT_VAE_MODEL


def sample_latents(
    count: int, size: int, seed: int, temperature: float = 1.0, center: torch.Tensor | None = None, radius: float = 0.5
) -> torch.Tensor:
    """(count, size) latents: temperature × N(0, I), or ``center`` (size,) + radius × N(0, I).

    Drawn on the CPU from their own generator, so a seed gives the same latents on every device.
    """
    noise = torch.randn(count, size, generator=torch.Generator().manual_seed(seed))
    return noise * temperature if center is None else center.cpu()[None, :] + radius * noise


def find_structure(text: str, reference: CrystalSet | None) -> Crystal:
    """A structure given as a CIF/POSCAR path, or a formula found in the reference set or the built-in table.

    A formula takes the first structure of the reference (training) set with that reduced formula, then
    the first textbook compound of the built-in table.

    Raises:
        UserError: if the file cannot be read or the formula is found nowhere.
    """
    path = Path(text).expanduser()
    if path.is_file() or path.suffix or "/" in text:
        return read_structure_file(path)
    known = find_known(text)  # raises a UserError for text that is not a formula
    if reference is not None:
        from pymatgen.core import Composition

        wanted = Composition(text).reduced_formula
        for index in range(len(reference)):
            start, stop = reference.offsets[index], reference.offsets[index + 1]
            if reduced_formula(reference.atomic_numbers[start:stop]) == wanted:
                return reference[index]
    if known:
        return known[0].crystal
    where = "the training set and " if reference is not None else ""
    raise UserError(
        f"near={text}: no structure with this formula in {where}the built-in table of textbook compounds; "
        "give a CIF or POSCAR path instead"
    )


def reference_set(trained: TrainedModel, data: str | None) -> tuple[CrystalSet | None, dict[str, Any]]:
    """The training split to measure novelty and distributions against, and a note on where it came from.

    Without ``data`` it is the model's own training data when that dataset is available here; otherwise
    novelty and the distribution distances are skipped, with the reason in the note.
    """
    from nesfgen.data.names import resolve_dataset

    name = data or trained.recipe.data.dataset_name
    split = trained.recipe.data.train_split
    try:
        dataset = resolve_dataset(name)
    except UserError:
        if data:
            raise
        reason = (
            f"the training dataset {name!r} is not available here, so novelty and the distribution distances were "
            "skipped; import it, or give data=NAME to compare against another dataset"
        )
        log.info(reason)
        return None, {"dataset": name, "skipped": reason}
    crystals = dataset.load(split)
    note = {
        "dataset": dataset.name,
        "split": split,
        "structures": len(crystals),
        "is_training_data": dataset.content_hash == trained.dataset_hash,
    }
    return crystals, note


def _encode_one(trained: TrainedModel, crystal: Crystal) -> torch.Tensor:
    """(D,) the latent (a VAE's posterior mean) of one structure."""
    missing = sorted(set(crystal.atomic_numbers.tolist()) - set(trained.species_table))
    if missing:
        from pymatgen.core import Element

        symbols = ", ".join(Element.from_Z(z).symbol for z in missing)
        raise UserError(f"near: {crystal.id or 'the structure'} holds {symbols}, which the model was not trained on")
    device = next(trained.model.parameters()).device
    tensors = TensorSet(CrystalSet.from_crystals([crystal]), trained.species_table, device)
    trained.model.eval()
    with torch.no_grad():
        return trained.model.encode(tensors.batch(torch.arange(1)))[0]


def sample_structures(
    checkpoint: str | None = None,
    n: int = 100,
    seed: int = 0,
    temperature: float = 1.0,
    near: str | None = None,
    radius: float = 0.5,
    data: str | None = None,
    device: str = "cpu",
    estimator_overrides: Mapping[str, str] | None = None,
    progress: Progress | None = None,
    symmetrize: bool = False,
    symprec: float = STATED_SYMPREC,
    out: Path | None = None,
    force: bool = False,
) -> Generation:
    """Decode ``n`` latents into structures and measure them.

    Args:
        checkpoint: a variational model (run folder, .pt file or shipped name); the shipped
            DEFAULT_VAE_MODEL when None. With ``near``, an autoencoder works too.
        n: number of samples. seed: seed of the latents. temperature: scale of the prior's samples.
        near: sample around this structure (a CIF/POSCAR path or a formula) instead of the prior:
            z = its latent + radius × N(0, I).
        data: the dataset to measure novelty and distributions against (default: the model's training data).
        estimator_overrides: ``{"estimator.steps": "32"}``-style overrides of the checkpoint's estimator.
        symmetrize: snap each decoded structure to the highest-symmetry space group spglib finds within
            ``symprec`` Å before measuring (those where that fails are kept as decoded).
        out: write each decoded chunk's CIFs there as it is finished and continue an interrupted sampling
            with the same settings (see nesfgen.stream); None keeps everything in memory.
        force: allow more than MAX_SAMPLES samples.
    """
    if n < 1:
        raise UserError(f"n must be at least 1, got {n}")
    if not temperature > 0 or not radius > 0:
        raise UserError(f"temperature and radius must be positive, got temperature={temperature} radius={radius}")
    trained = load_model(checkpoint or default_checkpoint(), device)
    variational = trained.recipe.model.variational
    if near is None and not variational:
        raise UserError(
            f"{trained.path} is an autoencoder (model.variational=false): its latents have no prior to sample. "
            "Train a VAE (e.g. `nesfgen train recipe=vae-quickstart`), or decode around a structure with near=FORMULA|PATH"
        )
    config = estimator_config(trained, estimator_overrides or {})
    reference, reference_note = reference_set(trained, data)
    center, anchor = None, None
    if near is not None:
        anchor = find_structure(near, reference)
        center = _encode_one(trained, anchor)
    z = sample_latents(n, trained.recipe.model.latent_size, seed, temperature, center, radius)
    settings = {"checkpoint": trained.path, "n": n, "seed": seed, "temperature": temperature, "near": near}
    settings |= {"radius": radius, "symmetrize": symmetrize, "symprec": symprec}
    settings["estimator"] = {k: getattr(config, k) for k in config.__dataclass_fields__}
    stream = SampleStream(out, settings)
    crystals, failed = stream.finished()
    if progress is not None:
        progress(len(crystals), n)
    started = time.monotonic()
    for start in range(len(crystals), n, config.chunk_size):
        chunk_z = z[start : start + config.chunk_size].to(next(trained.model.parameters()).device)
        decoded = estimate(trained.model, chunk_z, trained.box, trained.species_table, config)
        chunk = [d.to_crystal(f"sample-{start + k:04d}") for k, d in enumerate(decoded)]
        chunk_failed = 0
        if symmetrize:
            chunk, chunk_failed = symmetrize_decoded(chunk, symprec)
        stream.add(start, chunk, chunk_failed)
        crystals, failed = crystals + chunk, failed + chunk_failed
        if progress is not None:
            progress(len(crystals), n)
        if n > MAX_SAMPLES and not force:
            _refuse_long_run(n, len(chunk), time.monotonic() - started, out)
    symmetrized: dict[str, Any] = {"symmetrize": symmetrize}
    if symmetrize:
        symmetrized |= {"symmetrize_symprec": symprec, "symmetrize_failed": failed}
    rows, summary = measure(crystals, reference)
    summary = {
        "checkpoint": trained.path,
        "variational": variational,
        "n": n,
        "seed": seed,
        "temperature": temperature if near is None else None,
        "near": near,
        "near_structure": anchor.id if anchor is not None else None,
        "radius": radius if near is not None else None,
        **symmetrized,
        **summary,
        "reference": reference_note,
        "estimator": {k: getattr(config, k) for k in config.__dataclass_fields__},
    }
    return Generation(summary, rows, crystals)


def _refuse_long_run(n: int, timed: int, seconds: float, out: Path | None) -> None:
    """Stop a sampling of more than MAX_SAMPLES without force=true, saying how long it would take."""
    days = n * seconds / timed / 86400
    kept = f"; the {timed} decoded are saved in {out} and the same command with force=true continues" if out else ""
    raise UserError(
        f"n={n} samples would take about {days:.1f} days here ({seconds / timed:.2f} s each, timed on the first "
        f"{timed}); more than {MAX_SAMPLES:,} need force=true{kept}"
    )


def measure(crystals: Sequence[Crystal | None], reference: CrystalSet | None) -> tuple[list[dict], dict[str, Any]]:
    """Per-sample rows and the summary of a set of decoded structures (None: not a valid crystal).

    Validity rates are over all samples (an invalid decode is invalid); uniqueness and space groups are
    over the decoded crystals, novelty over the unique ones; the distributions are those of the valid
    ones (structurally and compositionally), as CDVAE reports them. Undefined rates are None.
    """
    rows = [_describe(index, crystal) for index, crystal in enumerate(crystals)]
    decoded = [(row, crystal) for row, crystal in zip(rows, crystals) if crystal is not None]
    for (row, _), unique in zip(decoded, unique_flags([c for _, c in decoded])):
        row["unique"] = unique
    unique = [(row, crystal) for row, crystal in decoded if row["unique"]]
    if reference is not None:
        for (row, _), novel in zip(unique, novel_flags([c for _, c in unique], reference)):
            row["novel"] = novel
    valid = [row for row in rows if row["structurally_valid"] and row["compositionally_valid"]]
    groups = Counter(row["space_group"] or "none" for row, _ in decoded)
    count = len(rows)
    summary: dict[str, Any] = {
        "decoded": len(decoded),
        "structural_validity_pct": 100.0 * sum(row["structurally_valid"] for row in rows) / count,
        "compositional_validity_pct": 100.0 * sum(row["compositionally_valid"] for row in rows) / count,
        "validity_pct": 100.0 * len(valid) / count,
        "unique": len(unique),
        "uniqueness_pct": 100.0 * len(unique) / len(decoded) if decoded else None,
        "novel": None,
        "novelty_pct": None,
        "space_groups": dict(groups.most_common()),
        "wasserstein": None,
    }
    if reference is not None:
        novel = sum(row["novel"] for row, _ in unique)
        statistics = set_statistics(reference)
        summary.update(
            novel=novel,
            novelty_pct=100.0 * novel / len(unique) if unique else None,
            wasserstein=wasserstein_distances(valid, statistics),
            reference_means={name: float(values.mean()) for name, values in statistics.items()},
            reference_compositional_validity_pct=_compositional_validity_pct(reference),
        )
    summary["sample_means"] = {
        name: float(np.mean([row[name] for row in valid])) if valid else None for name in DISTRIBUTIONS
    }
    return rows, summary


def _describe(index: int, crystal: Crystal | None) -> dict[str, Any]:
    """One CSV row: composition, cell, nearest-neighbour distance, validity and space group."""
    row: dict[str, Any] = {
        "id": f"sample-{index:04d}",
        "decoded": crystal is not None,
        "formula": "",
        "reduced_formula": "",
        **dict.fromkeys(DISTRIBUTIONS, math.nan),
        **dict.fromkeys(("a", "b", "c", "alpha", "beta", "gamma", "min_distance"), math.nan),
        "structurally_valid": False,
        "compositionally_valid": False,
        "oxidation_states": "",
        "space_group": "",
        "space_group_number": 0,
        "unique": False,
        "novel": None,
    }
    if crystal is None:
        return row
    counts = element_counts(crystal.atomic_numbers)
    valid_composition, states = composition_check(counts)
    distance = min_distance(crystal)
    group = space_group(crystal)
    row.update(
        formula=crystal.formula,
        reduced_formula=reduced_formula(crystal.atomic_numbers),
        **cell_statistics(crystal.lengths, crystal.angles, crystal.atomic_numbers),
        **dict(zip(("a", "b", "c"), crystal.lengths.tolist())),
        **dict(zip(("alpha", "beta", "gamma"), crystal.angles.tolist())),
        min_distance=distance,
        structurally_valid=distance >= STRUCTURE_CUTOFF,
        compositionally_valid=valid_composition,
        oxidation_states=states,
        space_group=f"{group[0]} ({group[1]})" if group else "",
        space_group_number=group[1] if group else 0,
    )
    return row


def _compositional_validity_pct(crystals: CrystalSet) -> float:
    """Share of a split's structures that pass composition_check (each distinct composition checked once)."""
    compositions = [
        tuple(sorted(element_counts(crystals.atomic_numbers[crystals.offsets[i] : crystals.offsets[i + 1]]).items()))
        for i in range(len(crystals))
    ]
    verdicts = {c: composition_check(dict(c))[0] for c in set(compositions)}
    return 100.0 * sum(verdicts[c] for c in compositions) / len(compositions)


def write_samples(generation: Generation, out: Path) -> list[Path]:
    """One CIF per decoded structure (unless streamed there already), samples.csv and summary.json.

    Earlier sample-*.cif files that are not this sampling's are removed.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ids = {crystal.id for crystal in generation.crystals if crystal is not None}
    for stale in out.glob(SAMPLE_CIFS):  # a previous sampling's
        if stale.stem not in ids:
            stale.unlink()
    written = []
    for crystal in generation.crystals:
        if crystal is not None:
            path = out / f"{crystal.id}.cif"
            written.append(path if path.is_file() else atomic_write_text(path, crystal.to_cif()))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(generation.rows[0]))
    writer.writeheader()
    writer.writerows(generation.rows)
    written.append(atomic_write_text(out / "samples.csv", buffer.getvalue()))
    written.append(atomic_write_text(out / "summary.json", json.dumps(generation.summary, indent=1, default=str)))
    return written
