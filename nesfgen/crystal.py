"""The crystal record: one immutable conventional cell, and its conversion to pymatgen and batches."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from nesfgen.errors import UserError

if TYPE_CHECKING:  # pymatgen is imported lazily: the training path never needs it
    from pymatgen.core import Structure

#: atoms given to Crystal.create further than this outside [0, 1) are refused, not wrapped (a wrong frame or
#: unit); parsed files are wrapped first, since CIF and POSCAR allow any fractional coordinate
OUTSIDE_TOLERANCE = 0.5
#: two atoms closer than this (Å) are considered duplicates
DUPLICATE_DISTANCE = 0.1
MAX_ATOMIC_NUMBER = 118


def lattice_matrix(lengths: Sequence[float], angles: Sequence[float]) -> np.ndarray:
    """Row-vector lattice matrix from (a, b, c) in Å and (α, β, γ) in degrees.

    Follows pymatgen's ``Lattice.from_parameters`` convention (c along z, a in the xz plane), so
    Cartesian coordinates agree with pymatgen's for the same parameters.
    """
    a, b, c = (float(x) for x in lengths)
    alpha, beta, gamma = np.radians(np.asarray(angles, dtype=float))
    cos_gamma_star = (np.cos(alpha) * np.cos(beta) - np.cos(gamma)) / (np.sin(alpha) * np.sin(beta))
    gamma_star = np.arccos(np.clip(cos_gamma_star, -1.0, 1.0))
    return np.array(
        [
            [a * np.sin(beta), 0.0, a * np.cos(beta)],
            [-b * np.sin(alpha) * np.cos(gamma_star), b * np.sin(alpha) * np.sin(gamma_star), b * np.cos(alpha)],
            [0.0, 0.0, c],
        ]
    )


def _frozen(array: np.ndarray) -> np.ndarray:
    array = np.array(array, copy=True)
    array.setflags(write=False)
    return array


@dataclass(frozen=True, eq=False)
class Crystal:
    """A conventional cell: lattice parameters, Cartesian positions inside the cell, atomic numbers.

    Build one with :meth:`Crystal.create` (validates and wraps) rather than the raw constructor.
    """

    lengths: np.ndarray  # (3,) a, b, c in Å
    angles: np.ndarray  # (3,) α, β, γ in degrees
    cart_coords: np.ndarray  # (N, 3) Å, in the frame of `lattice`
    atomic_numbers: np.ndarray  # (N,) int
    id: str = ""
    properties: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def create(
        cls,
        lengths: Sequence[float],
        angles: Sequence[float],
        cart_coords: Any = None,
        atomic_numbers: Sequence[int] = (),
        id: str = "",
        properties: Mapping[str, Any] | None = None,
        frac_coords: Any = None,
    ) -> Crystal:
        """Validate, wrap positions into the cell and freeze. Give Cartesian or fractional coords.

        Raises:
            UserError: naming the crystal's id and what is wrong with it.
        """
        where = f"structure {id!r}" if id else "structure"
        lengths = np.asarray(lengths, dtype=float).reshape(-1)
        angles = np.asarray(angles, dtype=float).reshape(-1)
        if lengths.shape != (3,) or angles.shape != (3,):
            raise UserError(f"{where}: expected 3 lattice lengths and 3 angles")
        if not (np.all(np.isfinite(lengths)) and np.all(np.isfinite(angles))):
            raise UserError(f"{where}: lattice parameters contain NaN or infinity: {lengths}, {angles}")
        if np.any(lengths <= 0):
            raise UserError(f"{where}: lattice lengths must be positive, got {lengths.tolist()}")
        if np.any(angles <= 0) or np.any(angles >= 180):
            raise UserError(f"{where}: lattice angles must lie in (0, 180) degrees, got {angles.tolist()}")
        matrix = lattice_matrix(lengths, angles)
        volume = abs(np.linalg.det(matrix))
        if not np.isfinite(volume) or volume < 1e-3 * np.prod(lengths):
            raise UserError(f"{where}: lattice angles {angles.tolist()} give a degenerate cell")
        numbers = np.asarray(atomic_numbers, dtype=np.int64).reshape(-1)
        if numbers.size == 0:
            raise UserError(f"{where}: has no atoms")
        if np.any(numbers < 1) or np.any(numbers > MAX_ATOMIC_NUMBER):
            bad = numbers[(numbers < 1) | (numbers > MAX_ATOMIC_NUMBER)]
            raise UserError(f"{where}: unknown element with atomic number {int(bad[0])}")
        if frac_coords is None:
            cart = np.asarray(cart_coords, dtype=float).reshape(-1, 3)
            frac = cart @ np.linalg.inv(matrix)
        else:
            frac = np.asarray(frac_coords, dtype=float).reshape(-1, 3)
        if frac.shape[0] != numbers.size:
            raise UserError(f"{where}: {frac.shape[0]} positions but {numbers.size} species")
        if not np.all(np.isfinite(frac)):
            raise UserError(f"{where}: atom positions contain NaN or infinity")
        outside = np.any((frac < -OUTSIDE_TOLERANCE) | (frac > 1 + OUTSIDE_TOLERANCE), axis=1)
        if np.any(outside):
            index = int(np.argmax(outside))
            raise UserError(
                f"{where}: atom {index} lies far outside the cell (fractional {frac[index].round(3).tolist()}); "
                "positions must be within the conventional cell"
            )
        frac = wrap_fractional(frac)
        cart = frac @ matrix
        _check_duplicates(frac, matrix, where)
        return cls(
            lengths=_frozen(lengths),
            angles=_frozen(angles),
            cart_coords=_frozen(cart),
            atomic_numbers=_frozen(numbers),
            id=str(id),
            properties=MappingProxyType(dict(properties or {})),
        )

    @property
    def num_atoms(self) -> int:
        return int(self.atomic_numbers.size)

    @property
    def lattice(self) -> np.ndarray:
        """(3, 3) row-vector lattice matrix in pymatgen's convention."""
        return lattice_matrix(self.lengths, self.angles)

    @property
    def frac_coords(self) -> np.ndarray:
        return self.cart_coords @ np.linalg.inv(self.lattice)

    @property
    def volume(self) -> float:
        return float(abs(np.linalg.det(self.lattice)))

    @property
    def formula(self) -> str:
        """Formula of the cell, elements in electronegativity order (pymatgen's convention)."""
        return self.to_structure().composition.formula.replace(" ", "")

    @property
    def reduced_formula(self) -> str:
        return self.to_structure().composition.reduced_formula

    def to_structure(self) -> Structure:
        """The pymatgen Structure with the same lattice parameters and fractional coordinates."""
        from pymatgen.core import Lattice, Structure

        lattice = Lattice.from_parameters(*self.lengths, *self.angles)
        return Structure(
            lattice,
            [int(z) for z in self.atomic_numbers],
            self.frac_coords,
            properties={"id": self.id} if self.id else None,
        )

    @classmethod
    def from_structure(
        cls, structure: Structure, id: str = "", properties: Mapping[str, Any] | None = None, conventional: bool = False
    ) -> Crystal:
        """Record a pymatgen Structure; with ``conventional=True`` standardise it first (spglib).

        Raises:
            UserError: for partial occupancy, unknown species or an invalid cell.
        """
        where = f"structure {id!r}" if id else "structure"
        if not structure.is_ordered:
            raise UserError(f"{where}: has partial occupancy (disordered sites); only ordered structures are supported")
        numbers = []
        for site in structure:
            element = getattr(site.specie, "element", site.specie)
            number = getattr(element, "Z", None)
            if number is None:
                raise UserError(f"{where}: unknown species {site.specie!s}")
            numbers.append(int(number))
        if len(numbers) == 0:
            raise UserError(f"{where}: has no atoms")
        if conventional:
            return standardize(cls.from_structure(structure, id=id, properties=properties))
        lattice = structure.lattice
        return cls.create(
            lattice.abc,
            lattice.angles,
            atomic_numbers=numbers,
            frac_coords=wrap_fractional(structure.frac_coords),  # CIF and POSCAR allow sites outside the cell
            id=id,
            properties=properties,
        )

    def to_cif(self) -> str:
        from pymatgen.io.cif import CifWriter

        return str(CifWriter(self.to_structure()))

    def with_id(self, id: str) -> Crystal:
        return Crystal.create(self.lengths, self.angles, self.cart_coords, self.atomic_numbers, id, self.properties)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Crystal):
            return NotImplemented
        return (
            self.id == other.id
            and np.allclose(self.lengths, other.lengths)
            and np.allclose(self.angles, other.angles)
            and np.array_equal(self.atomic_numbers, other.atomic_numbers)
            and np.allclose(self.cart_coords, other.cart_coords, atol=1e-6)
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        a, b, c = self.lengths
        return f"Crystal({self.id or '?'}: {self.num_atoms} atoms, a={a:.3f} b={b:.3f} c={c:.3f} Å)"


def wrap_fractional(frac: np.ndarray) -> np.ndarray:
    """Wrap fractional coordinates into [0, 1), mapping values within 1e-8 of 1 to 0."""
    wrapped = np.mod(frac, 1.0)
    wrapped[np.isclose(wrapped, 1.0, atol=1e-8)] = 0.0
    return wrapped


def _check_duplicates(frac: np.ndarray, matrix: np.ndarray, where: str) -> None:
    """Refuse two atoms closer than DUPLICATE_DISTANCE, periodic images included."""
    if len(frac) < 2:
        return
    delta = frac[:, None, :] - frac[None, :, :]
    delta -= np.round(delta)
    distance = np.linalg.norm(delta @ matrix, axis=-1)
    np.fill_diagonal(distance, np.inf)
    i, j = np.unravel_index(np.argmin(distance), distance.shape)
    if distance[i, j] < DUPLICATE_DISTANCE:
        raise UserError(
            f"{where}: atoms {min(i, j)} and {max(i, j)} are {distance[i, j]:.3f} Å apart (duplicated atoms?)"
        )


def spglib_module() -> Any:
    """spglib, switched to raising its errors (the old return-None handling is deprecated) and quiet.

    spglib's C library prints lines such as "spglib: get_bravais_exact_positions_and_lattice failed." straight
    to the console when a symmetry search is inconclusive; the failure reaches us as an exception or a result
    anyway. It reads SPGLIB_WARNING at each print, so setting it here silences it (a user's own setting wins).
    """
    os.environ.setdefault("SPGLIB_WARNING", "OFF")
    import spglib
    import spglib.error

    spglib.error.OLD_ERROR_HANDLING = False
    return spglib


def symmetry_dataset(crystal: Crystal, symprec: float = 0.01) -> Any:
    """spglib's symmetry dataset of a crystal, or None when spglib cannot find one."""
    spglib = spglib_module()
    cell = (crystal.lattice, crystal.frac_coords, crystal.atomic_numbers)
    try:
        return spglib.get_symmetry_dataset(cell, symprec=symprec)
    except spglib.error.SpglibError:
        return None


def standardize(crystal: Crystal, symprec: float = 0.01) -> Crystal:
    """The conventional standard cell of a crystal found by spglib (positions wrapped into it)."""
    dataset = symmetry_dataset(crystal, symprec)
    if dataset is None:
        raise UserError(f"structure {crystal.id!r}: spglib could not determine its symmetry")
    std_lattice = np.asarray(dataset.std_lattice)
    lengths = np.linalg.norm(std_lattice, axis=1)
    a, b, c = std_lattice
    angles = np.degrees(
        [
            np.arccos(np.dot(b, c) / (lengths[1] * lengths[2])),
            np.arccos(np.dot(a, c) / (lengths[0] * lengths[2])),
            np.arccos(np.dot(a, b) / (lengths[0] * lengths[1])),
        ]
    )
    return Crystal.create(
        lengths,
        angles,
        atomic_numbers=np.asarray(dataset.std_types),
        frac_coords=np.asarray(dataset.std_positions),
        id=crystal.id,
        properties=crystal.properties,
    )


def parse_formula(text: str) -> dict[int, float] | None:
    """Atomic number -> amount of a chemical formula of real elements ("ZnS", "S Zn", "Sr Ti O3"), or None if
    ``text`` is not one: pymatgen reads unknown symbols (Xx) as dummy species, which are not elements."""
    from pymatgen.core import Composition, Element

    try:
        with warnings.catch_warnings():  # pymatgen warns before accepting unknown symbols as dummy species
            warnings.simplefilter("ignore")
            composition = Composition(text)
    except (ValueError, TypeError, KeyError):
        return None
    if len(composition) == 0 or any(not isinstance(species, Element) for species in composition):
        return None
    return {int(element.Z): float(amount) for element, amount in composition.items()}


def formula_unit(composition: Mapping[int, float]) -> dict[int, int] | None:
    """Atomic number -> count in the smallest whole-number formula unit of ``composition`` (Zn2S2 -> ZnS,
    Li0.5CoO2 -> LiCo2O4), or None when it is empty or an amount is not positive.

    A cell of the composition holds a whole number of these units: decoding (``formula=``) rounds to them and
    conditions check against them. Amounts are read as fractions of denominator at most 100.
    """
    amounts = {int(z): Fraction(float(a)).limit_denominator(100) for z, a in composition.items()}
    if not amounts or any(a <= 0 for a in amounts.values()):
        return None
    scale = math.lcm(*(a.denominator for a in amounts.values()))
    whole = {z: int(a * scale) for z, a in amounts.items()}
    common = math.gcd(*whole.values())
    return {z: n // common for z, n in whole.items()}
