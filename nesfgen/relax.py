"""Relaxing structures with the CHGNet universal potential: cell and positions by FIRE, many structures in lockstep.

Each relaxed structure is written (CIF plus a small JSON record) as soon as it finishes, so an interrupted
run resumes where it stopped; a structure the potential cannot handle is recorded as failed, never raised.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import math
import os
import queue
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase.calculators.calculator import Calculator
from ase.filters import FrechetCellFilter

from nesfgen.crystal import Crystal
from nesfgen.errors import UserError
from nesfgen.files import atomic_write_text, output_folder
from nesfgen.progress import Progress

log = logging.getLogger(__name__)

#: eV/Å on the atoms (and the scaled stress on the cell): CHGNet's own default, as FlowMM's pre-relaxation uses
DEFAULT_FMAX = 0.1
#: FIRE steps before a relaxation is called unconverged
DEFAULT_STEPS = 500
#: CHGNet's element embedding covers H (1) to Pu (94)
MAX_ATOMIC_NUMBER = 94
#: atoms closer than this (Å) are overlapping: the potential's energy there means nothing
OVERLAP_DISTANCE = 0.5
#: a relaxation whose volume grows or shrinks by more than this factor has exploded (or collapsed)
MAX_VOLUME_FACTOR = 4.0
#: energies per atom outside this range (eV/atom) are not a physical relaxation
ENERGY_RANGE = (-30.0, 10.0)
#: Å, the standard deviation of the displacement each atom gets before relaxing: forces keep a structure's
#: symmetry, so without it a sample snapped onto a high-symmetry saddle cannot leave it. On 300 snapped samples
#: 0.02 took the metastable share from 51 to 64 % and M.S.U.N. from 12 to 22 %; 0.05 gained 2 points more but
#: left rock salt relaxed at fmax 0.1 off its space group (docs/relax.md)
DEFAULT_RATTLE = 0.02
#: structures relaxed in lockstep, one potential call a step for all of them
DEFAULT_BATCH = 32
#: most worker processes ``workers=0`` (automatic) starts: each holds its own CHGNet (about 1 GB resident)
MAX_AUTO_WORKERS = 8
#: Å, the largest rattle accepted: more would move atoms into each other rather than off a saddle
MAX_RATTLE = 0.3
#: the CHGNet weights the chgnet wheel ships (offline). 0.3.0, chgnet's own default, is ours too: 0.2.0 is a little
#: closer to the Materials Project's energies at MP's relaxed structures (100 YBCO-like cells: 0.015 against 0.017
#: eV/atom; Si 0.053 against 0.112) but not away from them, where relaxations and elemental references go:
#: compressed nitrogen cells span -140 to +3000 eV/atom under 0.2.0, 0.3.0 keeps them within -8.1 to -0.5
#: (docs/relax.md)
POTENTIALS = ("0.2.0", "0.3.0")
DEFAULT_POTENTIAL = "0.3.0"
RECORD_SUFFIX = ".relax.json"
RELAXED_SUFFIX = ".relaxed.cif"


@dataclass(frozen=True)
class RelaxOptions:
    """How hard to relax: forces below ``fmax`` (eV/Å) within ``steps`` FIRE steps. Speed only (the result of
    each structure depends on neither): ``batch`` structures in lockstep in each of ``workers`` processes
    with one thread each (0: one per core on a CPU, one on a GPU). Default 1: two workers were not faster
    on 256 samples on 2 cores (docs/relax.md). ``rattle`` (Å) displaces the atoms before relaxing, see
    :func:`rattle_atoms`. ``potential``: which CHGNet weights (:data:`POTENTIALS`)."""

    fmax: float = DEFAULT_FMAX
    steps: int = DEFAULT_STEPS
    batch: int = DEFAULT_BATCH
    workers: int = 1
    rattle: float = DEFAULT_RATTLE
    potential: str = DEFAULT_POTENTIAL

    @property
    def record_settings(self) -> dict[str, float | str]:
        """What each relaxation record keeps of these options: a resumed run reuses only records that match."""
        return {"fmax": self.fmax, "max_steps": self.steps, "rattle": self.rattle, "potential": self.potential}

    def __post_init__(self) -> None:
        check_potential(self.potential)
        if not (math.isfinite(self.rattle) and 0 <= self.rattle <= MAX_RATTLE):
            raise UserError(f"rattle={self.rattle} must be a displacement from 0 to {MAX_RATTLE} Å (e.g. 0.05)")
        if self.batch < 1:
            raise UserError(f"batch={self.batch} must be at least 1")
        if self.workers < 0:
            raise UserError(f"workers={self.workers} must be 0 (one per core) or a number of processes")
        if not (math.isfinite(self.fmax) and self.fmax > 0):
            raise UserError(f"fmax={self.fmax} must be a positive force in eV/Å (e.g. 0.1)")
        if self.steps < 1:
            raise UserError(f"steps={self.steps} must be at least 1")


def check_potential(name: str) -> str:
    if name not in POTENTIALS:
        raise UserError(
            f"potential={name} is not a CHGNet version the chgnet wheel ships; give one of {', '.join(POTENTIALS)}"
        )
    return name


@functools.cache
def load_potential(name: str = DEFAULT_POTENTIAL) -> Any:
    """The pretrained CHGNet ``name`` shipped in the chgnet wheel (no network needed), loaded once per process."""
    check_potential(name)
    try:
        from chgnet.model import CHGNet
    except ImportError as error:
        raise UserError(f"nesfgen relax needs chgnet: pip install 'chgnet==0.4.2' ({error})") from None
    with contextlib.redirect_stdout(io.StringIO()) as printed:  # chgnet prints its version even when not verbose
        model = CHGNet.load(model_name=name, verbose=False)
    log.debug("chgnet: %s", printed.getvalue().strip())
    # an atom with no neighbour within the cutoff gets a meaningless energy: refuse such a structure (it is
    # reported as failed) rather than take chgnet's calculator default, which only warns
    model.graph_converter.set_isolated_atom_response("error")
    return model


def input_problem(structure: Any) -> str:
    """Why the potential cannot take this structure ("" when it can): elements outside its table, overlaps."""
    numbers = [site.specie.Z for site in structure]
    outside = sorted({structure[i].specie.symbol for i, z in enumerate(numbers) if z > MAX_ATOMIC_NUMBER})
    if outside:
        return f"element(s) {', '.join(outside)} outside CHGNet's table (H to Pu)"
    if len(structure) == 0:
        return "no atoms"
    _, _, _, distances = structure.get_neighbor_list(OVERLAP_DISTANCE)
    if len(distances):
        return f"overlapping atoms ({float(distances.min()):.2f} Å apart, below {OVERLAP_DISTANCE} Å)"
    return ""


def rmsd(decoded: Any, relaxed: Any) -> float | None:
    """RMS displacement (Å) between a structure and its relaxed form, after StructureMatcher's best mapping.

    StructureMatcher scales both cells to the same volume and normalises its RMS by (V/N)^(1/3); it is
    multiplied back by that length of the mean volume so the value reads in Å. None when they no longer match.
    """
    from pymatgen.analysis.structure_matcher import StructureMatcher

    from nesfgen.generative_metrics import MATCHER_SETTINGS

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        found = StructureMatcher(**MATCHER_SETTINGS).get_rms_dist(decoded, relaxed)
    if found is None:
        return None
    per_atom = (decoded.volume + relaxed.volume) / 2 / len(decoded)
    return float(found[0]) * per_atom ** (1 / 3)


def _space_group(structure: Any) -> str:
    from nesfgen.symmetry import as_crystal, space_group

    try:
        return str(space_group(as_crystal(structure)) or "")
    except UserError:
        return ""


def _new_record(structure: Any, options: RelaxOptions) -> dict[str, Any]:
    return {
        "formula": structure.composition.reduced_formula,
        "num_atoms": len(structure),
        "status": "failed",
        "reason": "",
        "converged": False,
        "steps": 0,
        "energy_before": math.nan,
        "energy_after": math.nan,
        "rmsd": math.nan,
        "volume_before": float(structure.volume),
        "volume_after": math.nan,
        "volume_change_pct": math.nan,
        "space_group_before": _space_group(structure),
        "space_group_after": "",
        **options.record_settings,
    }


def rattle_atoms(atoms: Any, stdev: float) -> None:
    """Displace every atom by N(0, stdev²) per axis, seeded by the structure itself: the same input moves the
    same way whatever its place in a batch or a resumed run."""
    if stdev == 0:
        return
    digest = hashlib.sha256(
        np.round(atoms.cell.array, 6).tobytes() + np.round(atoms.positions, 6).tobytes() + atoms.numbers.tobytes()
    ).digest()
    generator = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    atoms.positions = atoms.positions + generator.normal(0.0, stdev, atoms.positions.shape)


class _GivenResults(Calculator):
    """An ASE calculator that only hands back results set from outside (one batched potential call)."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def calculate(self, atoms: Any = None, properties: Any = None, system_changes: Any = None) -> None:
        raise RuntimeError("the potential is called in batches; results are set before they are read")

    def give(self, atoms: Any, energy: float, forces: np.ndarray, stress: np.ndarray) -> None:
        self.atoms = atoms.copy()  # ASE compares the atoms with this copy: unchanged, so the results are reused
        self.results = {"energy": energy, "free_energy": energy, "forces": forces, "stress": stress}


def _expm(matrix: np.ndarray) -> np.ndarray:
    """exp of a small matrix: Taylor series after halving it to norm ≤ 1/4, then squaring back.

    scipy's expm costs about a millisecond for a 3×3 matrix (argument checks, norm estimates); this costs
    microseconds. Twenty terms at norm 1/4 leave a truncation error far below double precision.
    """
    norm = float(np.abs(matrix).sum(axis=0).max())
    squarings = max(0, math.ceil(math.log2(norm / 0.25))) if norm > 0.25 else 0
    scaled = matrix / 2.0**squarings
    term = total = np.eye(len(matrix))
    for k in range(1, 21):
        term = term @ scaled / k
        total = total + term
    for _ in range(squarings):
        total = total @ total
    return total


def _expm_derivative(matrix: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """The Fréchet derivative of exp at ``matrix`` in ``direction``: the upper right block of exp of the block
    matrix [[A, E], [0, A]] (Higham 2008, Functions of Matrices, Thm 3.6), E scaled to unit norm first."""
    size = float(np.abs(direction).max())
    if size == 0.0:
        return np.zeros_like(direction)
    n = len(matrix)
    block = np.zeros((2 * n, 2 * n))
    block[:n, :n] = block[n:, n:] = matrix
    block[:n, n:] = direction / size
    return _expm(block)[:n, n:] * size


class _RememberingCellFilter(FrechetCellFilter):
    """ASE's FrechetCellFilter (what chgnet's relaxer uses) with its matrix functions done once a step.

    ASE's filter takes a matrix logarithm each time it reads its positions or forces, and nine Fréchet
    derivatives of the exponential for the cell forces: about a third of a relaxation's time (docs/relax.md).
    The same quantities cost one exponential and one derivative here: the logarithm of the deformation
    it has just set is the matrix it exponentiated, and the nine derivatives, each contracted with the cell
    gradient, are the entries of one derivative of exp at the transposed logarithm in the gradient's direction.
    FIRE asks for the forces twice a step (convergence, then the step); they are remembered for the same atoms.
    """

    def __init__(self, atoms: Any) -> None:
        super().__init__(atoms)
        self._log_of: tuple[np.ndarray, np.ndarray] = (np.eye(3), np.zeros((3, 3)))

    def _log_deformation(self, deformation: np.ndarray) -> np.ndarray:
        known, log_known = self._log_of
        if float(np.abs(deformation - known).max()) <= 1e-12:  # the rounding of setting the cell from it
            return log_known
        from scipy.linalg import logm

        self._log_of = (deformation.copy(), np.real(logm(deformation)))
        return self._log_of[1]

    def get_positions(self) -> np.ndarray:
        """ASE's: the positions undeformed, then the log of (number of atoms × the deformation), scaled."""
        count = len(self.atoms)
        deformation = self._utility.deform_grad(self.atoms.get_cell())
        positions = np.zeros((count + 3, 3))
        positions[:count] = np.linalg.solve(deformation, self.atoms.get_positions().T).T
        positions[count:] = (self._log_deformation(deformation) + math.log(count) * np.eye(3)) * self.exp_cell_factor
        return positions

    def set_positions(self, new: np.ndarray, **kwargs: Any) -> None:
        """ASE's: the deformation is exp of the cell coordinates (÷ the scale, less the log of the atom count)."""
        count = len(self.atoms)
        log_deformation = new[count:] / self.exp_cell_factor - math.log(count) * np.eye(3)
        transform = _expm(log_deformation).T
        self.atoms.set_cell(self._utility.orig_cell @ transform, scale_atoms=True)
        self.atoms.set_positions(new[:count] @ transform, **kwargs)
        self._log_of = (self._utility.deform_grad(self.atoms.get_cell()), log_deformation)

    def get_forces(self, *args: Any, **kwargs: Any) -> np.ndarray:
        key = (self.atoms.positions.tobytes(), self.atoms.cell.array.tobytes())
        if getattr(self, "_key", None) != key:
            self._key, self._forces = key, self._frechet_forces(**kwargs)
        return self._forces.copy()

    def _frechet_forces(self, **kwargs: Any) -> np.ndarray:
        """ASE's FrechetCellFilter.get_forces for its defaults (no mask, pressure or constraint on the cell)."""
        from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress

        cell = self.atoms.get_cell()
        virial = -cell.volume * voigt_6_to_full_3x3_stress(self.atoms.get_stress(**kwargs))
        deformation = self._utility.deform_grad(cell)
        cell_gradient = virial @ np.linalg.inv(deformation.T)
        log_deformation = self._log_deformation(deformation)
        log_force = _expm_derivative(log_deformation.T, cell_gradient)
        self.stress = full_3x3_to_voigt_6_stress(-virial / cell.volume)
        forces = np.zeros((len(self.atoms) + 3, 3))
        forces[: len(self.atoms)] = self.atoms.get_forces(**kwargs) @ deformation
        forces[len(self.atoms) :] = log_force / self.exp_cell_factor
        return forces


@dataclass
class _Relaxation:
    """One structure in the lockstep: its atoms under a cell filter, its FIRE, what it has done so far."""

    index: int
    structure: Any
    record: dict[str, Any]
    atoms: Any
    optimizer: Any
    started: float
    energies: list[float]


def _start(index: int, structure: Any, options: RelaxOptions) -> _Relaxation | tuple[int, dict[str, Any], None]:
    from ase.optimize import FIRE
    from pymatgen.io.ase import AseAtomsAdaptor

    record = _new_record(structure, options)
    problem = input_problem(structure)
    if problem:
        record["reason"] = problem
        return index, record, None
    atoms = AseAtomsAdaptor.get_atoms(structure)
    rattle_atoms(atoms, options.rattle)
    atoms.calc = _GivenResults()
    optimizer = FIRE(_RememberingCellFilter(atoms), logfile=None)
    optimizer.fmax = options.fmax  # what run(fmax=) would set; converged() reads it
    return _Relaxation(index, structure, record, atoms, optimizer, time.perf_counter(), [])


#: eV/Å³ to GPa, as chgnet converts its stress
EV_PER_CUBIC_ANGSTROM_IN_GPA = 160.21766208


@functools.cache
def _graph_builder_folder() -> tempfile.TemporaryDirectory:
    """The working folder of chgnet's graph builder, private to this process and removed at its exit: on a
    structure it cannot build a bond graph for, the builder writes ``bond_graph_error.cif`` into the working
    folder, which would otherwise be the user's."""
    return tempfile.TemporaryDirectory(prefix="nesfgen-chgnet-")


def energies_forces_stresses(model: Any, structures: Sequence[Any]) -> list[tuple[float, np.ndarray, np.ndarray]]:
    """CHGNet's energy per atom (eV), forces (eV/Å) and stress (GPa) of each structure, in one batch.

    The same quantities as ``model.predict_structure(structures, task="efs")``, with one backward pass for
    forces and stress together and no graph kept for second derivatives: chgnet's prediction takes two
    backward passes, each building the graph for training by forces, which a relaxation never needs
    (about half of its time; docs/relax.md). Uses chgnet 0.4's own batching and network.
    """
    from chgnet.model.model import BatchedGraph

    device = next(model.parameters()).device
    with contextlib.chdir(_graph_builder_folder().name):
        graphs = [model.graph_converter(structure).to(device) for structure in structures]
    if model.training:
        model.eval()
    batch = BatchedGraph.from_graphs(
        graphs,
        bond_basis_expansion=model.bond_basis_expansion,
        angle_basis_expansion=model.angle_basis_expansion,
        compute_stress=True,
    )
    prediction = model._compute(batch, compute_force=False, compute_stress=False)
    atoms = prediction["atoms_per_graph"]
    energy = prediction["e"] * atoms if model.is_intensive else prediction["e"]  # total energy per structure
    gradients = torch.autograd.grad(energy.sum(), [*batch.atom_positions, *batch.strains])
    per_atom = prediction["e"].detach() if model.is_intensive else energy.detach() / atoms
    if model.composition_model is not None:
        per_atom = per_atom + model.composition_model(graphs).detach()  # a per-element shift: no force
    count = len(structures)
    results = []
    for k in range(count):
        forces = -gradients[k].detach().cpu().numpy()
        stress = (gradients[count + k] / batch.volumes[k] * EV_PER_CUBIC_ANGSTROM_IN_GPA).detach().cpu().numpy()
        results.append((float(per_atom[k]), forces.astype(float), stress.astype(float)))
    return results


def _evaluate(model: Any, running: Sequence[_Relaxation]) -> list[str]:
    """One batched potential call for every running structure; gives each its results. Returns a failure
    reason per structure ("" when it got finite results); a batch that raises is retried one by one."""
    from ase import units
    from pymatgen.io.ase import AseAtomsAdaptor

    structures = [AseAtomsAdaptor.get_structure(r.atoms) for r in running]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # chgnet's tensor-to-scalar warnings
            predictions = energies_forces_stresses(model, structures)
    except Exception as error:  # the graph builder refusing one structure: find it, keep the others
        if len(running) == 1:
            message = str(error).removesuffix(", check bond_graph_error.cif")  # a file in a removed folder
            return [f"relaxation failed: {type(error).__name__}: {message}"[:300]]
        return [reason for r in running for reason in _evaluate(model, [r])]
    reasons = []
    for relaxation, (per_atom, forces, stress) in zip(running, predictions):
        energy = per_atom * len(relaxation.atoms)
        stress = stress * units.GPa
        if not (math.isfinite(energy) and np.isfinite(forces).all() and np.isfinite(stress).all()):
            reasons.append("the potential returned NaN or infinite energies")
            continue
        relaxation.atoms.calc.give(relaxation.atoms, energy, forces, stress)
        relaxation.energies.append(per_atom)
        reasons.append("")
    return reasons


def _finish(relaxation: _Relaxation, converged: bool, reason: str) -> tuple[int, dict[str, Any], Any]:
    """The record of a relaxation that stopped (converged, out of steps, or failed) and its structure."""
    from pymatgen.io.ase import AseAtomsAdaptor

    structure, record, energies = relaxation.structure, relaxation.record, relaxation.energies
    record["seconds"] = time.perf_counter() - relaxation.started
    record["steps"] = relaxation.optimizer.nsteps
    if energies:
        record.update(energy_before=energies[0], energy_after=energies[-1])
    if reason:
        record["reason"] = reason
        return relaxation.index, record, None
    relaxed = AseAtomsAdaptor.get_structure(relaxation.atoms)
    record.update(
        converged=converged,
        volume_after=float(relaxed.volume),
        volume_change_pct=100.0 * (relaxed.volume / structure.volume - 1.0),
    )
    if not np.isfinite(relaxed.lattice.matrix).all():
        record["reason"] = "the potential returned NaN or infinite energies"
    elif not is_physical_energy(energies[-1]):
        record["reason"] = f"exploding relaxation: {energies[-1]:.1f} eV/atom"
    elif input_problem(relaxed):
        record["reason"] = f"relaxed into {input_problem(relaxed)}"
    if record["reason"]:
        return relaxation.index, record, None
    record.update(status="relaxed", rmsd=rmsd(structure, relaxed), space_group_after=_space_group(relaxed))
    if record["rmsd"] is None:
        record["rmsd"] = math.nan
    return relaxation.index, record, relaxed


def is_physical_energy(energy_per_atom: float) -> bool:
    """Within ENERGY_RANGE (False for NaN): what a relaxation ends at, and a hull's single points, are held to."""
    low, high = ENERGY_RANGE
    return bool(low <= energy_per_atom <= high)


def _exploded(relaxation: _Relaxation) -> str:
    factor = relaxation.atoms.get_volume() / relaxation.structure.volume
    if not 1 / MAX_VOLUME_FACTOR <= factor <= MAX_VOLUME_FACTOR:
        return f"exploding relaxation: the volume changed by a factor {factor:.2f}"
    return ""


def relax_many(
    structures: Iterable[Any], options: RelaxOptions, model: Any | None = None, batch_size: int | None = None
) -> Iterator[tuple[int, dict[str, Any], Any]]:
    """Relax pymatgen Structures, cell and positions by FIRE, up to ``batch_size`` of them in lockstep.

    ``batch_size`` defaults to ``options.batch``. Each step calls the potential once for every structure
    still relaxing (the batched call costs a fraction of separate ones), then advances each structure's
    own ASE FIRE under a FrechetCellFilter, as chgnet's StructOptimizer does one at a time. A finished structure's place goes to the next input.
    Yields ``(input index, record, relaxed Structure or None)`` as each finishes, in finishing order; a
    structure the potential cannot handle gets a "failed" record with its reason, never an exception.
    """
    model = model or load_potential(options.potential)
    batch_size = batch_size or options.batch
    pending = iter(enumerate(structures))
    running: list[_Relaxation] = []
    while True:
        while len(running) < batch_size:
            index, structure = next(pending, (None, None))
            if index is None:
                break
            started = _start(index, structure, options)
            if isinstance(started, tuple):
                yield started
            else:
                running.append(started)
        if not running:
            return
        reasons = _evaluate(model, running)
        still = []
        for relaxation, reason in zip(running, reasons):
            reason = reason or _exploded(relaxation)
            if reason:
                yield _finish(relaxation, False, reason)
                continue
            optimizer = relaxation.optimizer
            converged = bool(optimizer.converged())
            if converged or optimizer.nsteps >= options.steps:
                yield _finish(relaxation, converged, "")
                continue
            optimizer.step()
            optimizer.nsteps += 1
            still.append(relaxation)
        running = still


def worker_count(options: RelaxOptions, structures: int) -> int:
    """How many processes relax ``structures`` structures: ``options.workers``, or with 0 one per core (at most
    MAX_AUTO_WORKERS, and no more than there are batches to fill); one when CHGNet runs on a GPU."""
    if options.workers:
        return min(options.workers, max(structures, 1))
    if torch.cuda.is_available():
        return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(cores, MAX_AUTO_WORKERS, math.ceil(structures / options.batch)))


def _relax_in_worker(tasks: Any, results: Any, options: RelaxOptions) -> None:
    """A worker process: one torch thread, its own CHGNet; relaxes what it takes from ``tasks`` (index,
    Structure) until a None, and puts each finished ``(index, record, relaxed)`` on ``results``."""
    torch.set_num_threads(1)
    taken: list[int] = []

    def pulled() -> Iterator[Any]:
        while (task := tasks.get()) is not None:
            taken.append(task[0])
            yield task[1]

    try:
        for position, record, relaxed in relax_many(pulled(), options):
            results.put((taken[position], record, relaxed))
    except BaseException as error:  # noqa: BLE001  # reported to the parent, which raises it
        results.put(("error", f"{type(error).__name__}: {error}", None))
    results.put(None)


def relax_in_workers(
    structures: Sequence[Any], options: RelaxOptions, workers: int
) -> Iterator[tuple[int, dict[str, Any], Any]]:
    """:func:`relax_many` spread over ``workers`` processes of one thread each, as each finishes.

    Meant for machines with many cores, where one process leaves most idle; on 2 cores two workers were
    slower than one process of two threads (docs/relax.md). Each worker takes the next structure when one
    of its own finishes, so the slow ones do not leave a worker idle at the end.
    """
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # a forked torch can deadlock in its thread pools
    tasks, results = context.Queue(), context.Queue()
    for task in enumerate(structures):
        tasks.put(task)
    for _ in range(workers):
        tasks.put(None)
    processes = [context.Process(target=_relax_in_worker, args=(tasks, results, options)) for _ in range(workers)]
    for process in processes:
        process.start()
    try:
        running = workers
        while running:
            try:
                result = results.get(timeout=30)
            except queue.Empty:
                if not any(process.is_alive() for process in processes):
                    raise RuntimeError("the relaxation workers ended without finishing (out of memory?)") from None
                continue
            if result is None:
                running -= 1
            elif result[0] == "error":
                raise RuntimeError(f"a relaxation worker stopped: {result[1]}")
            else:
                yield result
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()


def relax_structure(structure: Any, options: RelaxOptions, model: Any | None = None) -> tuple[dict[str, Any], Any]:
    """Relax one pymatgen Structure; returns its record and the relaxed Structure (None when it failed)."""
    _, record, relaxed = next(relax_many([structure], options, model, batch_size=1))
    return record, relaxed


# --- inputs ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RelaxInput:
    """One structure to relax, or the reason it could not be read."""

    id: str
    source: str
    structure: Any | None
    problem: str = ""


def gather_inputs(inputs: Sequence[str]) -> list[RelaxInput]:
    """CIF/POSCAR files, folders of them (a ``nesfgen sample`` output folder is one) or built-in formulas.

    An unreadable file becomes an input with its problem (reported as failed, not raised), unless no input is
    readable; a name that is neither a file, a folder nor a formula of the built-in table is a UserError.
    """
    from nesfgen.data.importers import structure_files, structures_from_file

    found: list[RelaxInput] = []
    for text in inputs:
        path = Path(text).expanduser()
        if path.is_dir():  # a folder relaxed before holds its relaxed CIFs too: they are outputs, not inputs
            files = [p for p in structure_files([path]) if not p.name.endswith(RELAXED_SUFFIX)]
            if not files:
                raise UserError(f"{path} holds no *.cif, POSCAR* or *.vasp files but relaxed ones")
        elif path.is_file() or path.suffix or "/" in text:
            files = structure_files([path])  # a UserError when it does not exist
        else:
            from nesfgen.data.builtin import find_known

            known = find_known(text)  # a UserError for text that is not a formula
            if not known:
                raise UserError(
                    f"{text} is neither a structure file nor a compound of the built-in table; give a CIF or POSCAR path"
                )
            crystal = known[0].crystal
            found.append(RelaxInput(crystal.id.removeprefix("known-"), "builtin", crystal.to_structure()))
            continue
        for file in files:
            stem = file.name.removesuffix(file.suffix) if file.suffix.lower() in (".cif", ".vasp") else file.name
            try:
                structures = structures_from_file(file)
            except Exception as error:  # pymatgen's parsers raise many types; the file is reported, not fatal
                found.append(RelaxInput(stem, str(file), None, f"unreadable: {error}"[:300]))
                continue
            for k, structure in enumerate(structures):
                id = stem if len(structures) == 1 else f"{stem}-{k}"
                problem = "" if structure.is_ordered else "disordered (partial occupancy)"
                found.append(RelaxInput(id, str(file), structure, problem))
    ids = [item.id for item in found]
    duplicated = sorted({id for id in ids if ids.count(id) > 1})
    if duplicated:
        raise UserError(f"several inputs are named {duplicated[0]}; give each structure a distinct file name")
    if found and all(item.structure is None for item in found):  # nothing to relax: a mistake, not a result
        raise UserError(f"no input could be read as a structure: {found[0].source}: {found[0].problem}")
    return found


# --- a run -----------------------------------------------------------------------------------------------------------


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def relax_all(
    items: Sequence[RelaxInput],
    out: Path,
    options: RelaxOptions,
    progress: Progress | None = None,
) -> list[dict[str, Any]]:
    """Relax every input into ``out``: ID.relaxed.cif and ID.relax.json each, written as it finishes.

    A record already in ``out`` for the same fmax, steps, rattle and weights is reused (resume); the others are relaxed
    ``options.batch`` at a time in lockstep, in :func:`worker_count` processes. Returns the records in input
    order.
    """
    out = output_folder(out, "relaxation folder")
    records: list[dict[str, Any] | None] = [None] * len(items)
    todo = []
    settings = options.record_settings
    for k, item in enumerate(items):
        record = _read_record(out / f"{item.id}{RECORD_SUFFIX}")
        # records written before the rattle and the choice of weights existed: no rattle, the default weights
        if record is not None and {"rattle": 0.0, "potential": DEFAULT_POTENTIAL, **record}.items() >= settings.items():
            records[k] = record
        elif item.structure is None or item.problem:
            record = {"formula": "", "num_atoms": 0, "status": "failed", "reason": item.problem}
            if item.structure is not None:
                record.update(formula=item.structure.composition.reduced_formula, num_atoms=len(item.structure))
            records[k] = _save(out, item, {**record, **settings}, None)
        else:
            todo.append(k)
    done = len(items) - len(todo)
    if progress:
        progress(done, len(items))
    if not todo:
        return records  # type: ignore[return-value]  # every input has its record
    structures = [items[k].structure for k in todo]
    workers = worker_count(options, len(structures))
    finished = relax_in_workers(structures, options, workers) if workers > 1 else relax_many(structures, options)
    for position, record, relaxed in finished:
        k = todo[position]
        records[k] = _save(out, items[k], record, relaxed)
        done += 1
        if progress:
            progress(done, len(items))
    return records  # type: ignore[return-value]  # every input has its record now


def _save(out: Path, item: RelaxInput, record: dict[str, Any], relaxed: Any) -> dict[str, Any]:
    """The relaxed CIF first, then the record that marks the structure done (what a resumed run reads)."""
    if relaxed is not None:
        from nesfgen.symmetry import as_crystal

        atomic_write_text(out / f"{item.id}{RELAXED_SUFFIX}", as_crystal(relaxed, item.id).to_cif())
    record = {"id": item.id, "source": item.source, **record}
    atomic_write_text(out / f"{item.id}{RECORD_SUFFIX}", json.dumps(record, indent=1))
    log.info("%s: %s %s", item.id, record["status"], record.get("reason", ""))
    return record


def relaxed_crystal(out: Path, id: str) -> Crystal:
    """The relaxed structure written for ``id`` by :func:`relax_all`."""
    from nesfgen.symmetry import read_crystals

    return read_crystals(Path(out) / f"{id}{RELAXED_SUFFIX}")[0].with_id(id)
