"""The built-in dataset: small prototypes decorated by chemical rules, plus a table of textbook compounds."""

from __future__ import annotations

import functools
import itertools
import logging
import math
import time
import warnings
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from nesfgen.crystal import Crystal, lattice_matrix, parse_formula
from nesfgen.data.store import Dataset, data_dir, open_dataset, write_dataset
from nesfgen.errors import UserError

logger = logging.getLogger(__name__)

#: bump when the generated structures change, so a cached copy of an older generator is not reused
GENERATOR_VERSION = 1
#: s, p and d elements without hydrogen, noble gases, f block (La aside) or the toxic Be/Hg/Tl: 57 in all
ELEMENTS = tuple(
    "Li Na K Rb Cs Mg Ca Sr Ba Sc Y La Ti Zr Hf V Nb Ta Cr Mo W Mn Fe Ru Co Rh Ir Ni Pd Pt Cu Ag Au Zn Cd "
    "B Al Ga In C Si Ge Sn Pb N P As Sb Bi O S Se Te F Cl Br I".split()
)
#: elements used as anions, at their most negative common oxidation state
ANIONS = ("C", "N", "P", "As", "Sb", "O", "S", "Se", "Te", "F", "Cl", "Br", "I")
#: pymatgen lists Cu2+ only; Cu+ is needed for the textbook cuprous halides (CuCl, CuBr, CuI)
EXTRA_OXIDATION_STATES = {"Cu": (1,)}
#: late transition metals: X of Heusler X2YZ, A of L1_2 A3B and of B2 (CsCl-type) intermetallics AB
LATE_METALS = ("Mn", "Fe", "Co", "Ni", "Cu", "Ru", "Rh", "Pd", "Ag", "Ir", "Pt", "Au")
#: early transition metals: Y of Heusler X2YZ
EARLY_METALS = ("Sc", "Ti", "V", "Cr", "Mn", "Fe", "Y", "Zr", "Nb", "Mo", "Hf", "Ta")
#: main-group elements: Z of Heusler X2YZ, B of L1_2 A3B
MAIN_GROUP = ("Al", "Ga", "In", "Si", "Ge", "Sn", "Sb")
#: valence electrons per formula unit of the half-Heuslers kept: the closed-shell (Slater–Pauling) count of TiNiSn
HALF_HEUSLER_ELECTRONS = 18
#: the partners of late transition metals in B2 intermetallics (NiAl, CuZn, AgMg, TiNi, ...)
B2_PARTNERS = ("Mg", "Al", "Ga", "In", "Zn", "Cd", "Sc", "Y", "La", "Ti", "Zr", "Hf")
#: tri-aluminides Al3X in the L1_2 structure (Al3Sc, Al3Zr, ...)
TRIALUMINIDE_PARTNERS = ("Sc", "Y", "La", "Ti", "Zr", "Hf", "V", "Nb", "Ta")
FCC_METALS = ("Al", "Ca", "Sr", "Ni", "Cu", "Rh", "Pd", "Ag", "Ir", "Pt", "Au")
BCC_METALS = ("Li", "Na", "K", "Rb", "Cs", "Ba", "V", "Cr", "Fe", "Nb", "Mo", "Ta", "W")
DIAMOND_ELEMENTS = ("C", "Si", "Ge", "Sn")

#: generated cells outside these lattice lengths (Å) or with closer atoms (Å) are dropped
MIN_LENGTH, MAX_LENGTH = 2.5, 7.5
MIN_DISTANCE = 1.5
#: relative standard deviation of the lattice jitter, clipped at three deviations
JITTER = 0.01
#: electronegativity difference above which an AB compound is too ionic for tetrahedral (zinc-blende) bonding
MAX_TETRAHEDRAL_DELTA_X = 1.8
#: Goldschmidt tolerance factors kept for cubic perovskites
TOLERANCE_WINDOW = (0.8, 1.1)
#: Pauling's radius ratio for eightfold (cubic) coordination, required of ionic CsCl-type compounds
CUBIC_RADIUS_RATIO = 0.732
#: fraction of space filled by close-packed spheres: an fcc metal gets a = 2√2 r exactly
CLOSE_PACKING = math.pi / (3 * math.sqrt(2))
#: Slater radii of metalloids times this approximate their missing metallic radii (Ge 1.37, Sn 1.58, Sb 1.59 Å)
METALLIC_FROM_SLATER = 1.1
#: rutile: oxygen parameter x and c/a of TiO2, shared by all generated rutiles
RUTILE_X, RUTILE_C_OVER_A = 0.305, 0.645
SPLIT_FRACTIONS = {"train": 0.9, "val": 0.05, "test": 0.05}

_FCC = np.array([[0.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.5, 0.0, 0.5], [0.5, 0.5, 0.0]])
_FACES = np.array([[0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]])
_RIGHT_ANGLES = (90.0, 90.0, 90.0)
_ROMAN = {"I": 1, "II": 2, "III": 3, "IV": 4, "V": 5, "VI": 6, "VII": 7, "VIII": 8, "IX": 9, "X": 10, "XII": 12}


def _fcc(shift: float) -> np.ndarray:
    return (_FCC + shift) % 1.0


def _rutile_sites(x: float) -> tuple[np.ndarray, np.ndarray]:
    cations = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    anions = np.array([[x, x, 0.0], [1 - x, 1 - x, 0.0], [0.5 + x, 0.5 - x, 0.5], [0.5 - x, 0.5 + x, 0.5]])
    return cations, anions


#: prototype -> (space group number, fractional sites of each role); role i holds the i-th element of a formula
PROTOTYPES: dict[str, tuple[int, tuple[np.ndarray, ...]]] = {
    "rocksalt": (225, (_fcc(0.0), _fcc(0.5))),
    "cscl": (221, (np.array([[0.0, 0.0, 0.0]]), np.array([[0.5, 0.5, 0.5]]))),
    "zincblende": (216, (_fcc(0.0), _fcc(0.25))),
    "heusler": (225, (np.concatenate([_fcc(0.25), _fcc(0.75)]), _fcc(0.5), _fcc(0.0))),
    "halfheusler": (216, (_fcc(0.25), _fcc(0.5), _fcc(0.0))),
    "perovskite": (221, (np.array([[0.0, 0.0, 0.0]]), np.array([[0.5, 0.5, 0.5]]), _FACES)),
    "fluorite": (225, (_fcc(0.0), np.concatenate([_fcc(0.25), _fcc(0.75)]))),
    "antifluorite": (225, (np.concatenate([_fcc(0.25), _fcc(0.75)]), _fcc(0.0))),
    "l12": (221, (_FACES, np.array([[0.0, 0.0, 0.0]]))),
    "rutile": (136, _rutile_sites(RUTILE_X)),
    "fcc": (225, (_fcc(0.0),)),
    "bcc": (229, (np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]]),)),
    "diamond": (227, (np.concatenate([_fcc(0.0), _fcc(0.25)]),)),
}


class _ElementData(NamedTuple):
    number: int
    slater_radius: float  # Å, pymatgen's empirical atomic radius
    metallic_radius: float  # Å, twelvefold coordination
    electronegativity: float  # Pauling
    group: int
    oxidation_states: tuple[int, ...]  # common ones


@functools.cache
def _element(symbol: str) -> _ElementData:
    """pymatgen's data for one element, looked up once: generation asks for the same elements thousands of times."""
    from pymatgen.core import Element

    element = Element(symbol)
    with warnings.catch_warnings():  # pymatgen warns for each missing metallic radius; we fall back instead
        warnings.simplefilter("ignore")
        metallic = element.metallic_radius
    slater = float(element.atomic_radius)
    states = tuple(sorted(set(element.common_oxidation_states) | set(EXTRA_OXIDATION_STATES.get(symbol, ()))))
    return _ElementData(
        number=int(element.Z),
        slater_radius=slater,
        metallic_radius=float(metallic) if metallic else METALLIC_FROM_SLATER * slater,
        electronegativity=float(element.X),
        group=int(element.group),
        oxidation_states=states,
    )


@functools.cache
def _shannon_radii(symbol: str, charge: int) -> dict[int, float]:
    """Shannon ionic radii (Å) of an ion by coordination number (high spin where spin matters)."""
    from pymatgen.core import Element

    table = Element(symbol).data.get("Shannon radii", {}).get(str(charge), {})
    radii = {}
    for cn, spins in table.items():
        if cn in _ROMAN:  # skip square-planar and pyramidal entries
            entry = spins.get("") or spins.get("High Spin") or next(iter(spins.values()))
            radii[_ROMAN[cn]] = float(entry["ionic_radius"])
    return radii


def _shannon_radius(symbol: str, charge: int, coordination: int) -> float | None:
    """Shannon radius at the tabulated coordination nearest to the wanted one; None if the ion is untabulated."""
    radii = _shannon_radii(symbol, charge)
    if not radii:
        return None
    return radii[min(radii, key=lambda cn: (abs(cn - coordination), cn))]


def _bond(cation: str, charge: int, cation_cn: int, anion: str, anion_cn: int) -> float:
    """Cation–anion distance: Shannon radii where both ions are tabulated, else Slater radii (P3-, Sb3-, C4-)."""
    anion_charge = min(_element(anion).oxidation_states)
    r_cation = _shannon_radius(cation, charge, cation_cn)
    r_anion = _shannon_radius(anion, anion_charge, anion_cn)
    if r_cation is None or r_anion is None:
        return _element(cation).slater_radius + _element(anion).slater_radius
    return r_cation + r_anion


def _metallic_cell(symbols: Sequence[str]) -> float:
    """Cube edge holding these atoms, each taking the volume it has in a close-packed metal (Zen's law)."""
    volume = sum(4 / 3 * math.pi * _element(s).metallic_radius ** 3 / CLOSE_PACKING for s in symbols)
    return volume ** (1 / 3)


class _Candidate(NamedTuple):
    prototype: str
    elements: tuple[str, ...]  # one per role of the prototype
    lengths: tuple[float, float, float]  # Å, before jitter


def _cubic(prototype: str, elements: Sequence[str], a: float) -> _Candidate:
    return _Candidate(prototype, tuple(elements), (a, a, a))


def _cations() -> dict[str, tuple[int, ...]]:
    """Each non-anion element of the pool with its positive common oxidation states."""
    cations = {}
    for symbol in ELEMENTS:
        states = tuple(q for q in _element(symbol).oxidation_states if q > 0)
        if symbol not in ANIONS and states:
            cations[symbol] = states
    return cations


def _ionic_candidates() -> Iterator[_Candidate]:
    """Charge-balanced binary and ternary ionic compounds with lattice constants from ionic radii."""
    cations = _cations()
    anions = {symbol: -min(_element(symbol).oxidation_states) for symbol in ANIONS}
    for (cation, states), (anion, p) in itertools.product(cations.items(), anions.items()):
        for q in states:
            if q == p:  # AB
                yield _cubic("rocksalt", (cation, anion), 2 * _bond(cation, q, 6, anion, 6))
                delta_x = abs(_element(anion).electronegativity - _element(cation).electronegativity)
                if delta_x < MAX_TETRAHEDRAL_DELTA_X:  # covalent enough for tetrahedra: covalent (Slater) radii
                    d = _element(cation).slater_radius + _element(anion).slater_radius
                    yield _cubic("zincblende", (cation, anion), 4 * d / math.sqrt(3))
                r_cation, r_anion = _shannon_radius(cation, q, 8), _shannon_radius(anion, -p, 8)
                if r_cation and r_anion and r_cation / r_anion >= CUBIC_RADIUS_RATIO:
                    yield _cubic("cscl", (cation, anion), 2 * (r_cation + r_anion) / math.sqrt(3))
            if q == 2 * p:  # AX2
                yield _cubic("fluorite", (cation, anion), 4 * _bond(cation, q, 8, anion, 4) / math.sqrt(3))
                a = _bond(cation, q, 6, anion, 3) / (math.sqrt(2) * RUTILE_X)  # apical bond = √2·x·a
                yield _Candidate("rutile", (cation, anion), (a, a, RUTILE_C_OVER_A * a))
            if 2 * q == p:  # A2X
                yield _cubic("antifluorite", (cation, anion), 4 * _bond(cation, q, 4, anion, 8) / math.sqrt(3))
    yield from _perovskite_candidates(cations)


def _perovskite_candidates(cations: dict[str, tuple[int, ...]]) -> Iterator[_Candidate]:
    """ABX3 with A an ion Shannon tabulates in 12-fold coordination and a Goldschmidt-plausible tolerance factor.

    The B–X bonds fix a = 2(r_B + r_X), the A–X contacts a = √2(r_A + r_X); their ratio is the tolerance factor t
    and the lattice constant is their mean (X radii at twofold coordination, as X bridges two B ions).
    """
    anions = {"O": 6, "F": 3, "Cl": 3, "Br": 3, "I": 3}  # total cation charge needed
    for (a_ion, a_states), (b_ion, b_states) in itertools.permutations(cations.items(), 2):
        for qa, qb, (x_ion, total) in itertools.product(a_states, b_states, anions.items()):
            if qa + qb != total or qa > qb:  # A is the larger, lower-valent ion
                continue
            r_a = _shannon_radii(a_ion, qa).get(12)
            r_b = _shannon_radius(b_ion, qb, 6)
            r_x = _shannon_radius(x_ion, -total // 3, 2)
            if r_a is None or r_b is None or r_x is None:
                continue
            octahedral, cuboctahedral = 2 * (r_b + r_x), math.sqrt(2) * (r_a + r_x)
            if TOLERANCE_WINDOW[0] <= cuboctahedral / octahedral <= TOLERANCE_WINDOW[1]:
                yield _cubic("perovskite", (a_ion, b_ion, x_ion), (octahedral + cuboctahedral) / 2)


def _metallic_candidates() -> Iterator[_Candidate]:
    """Elements, B2, L1_2, full- and half-Heusler intermetallics with lattice constants from metallic volumes."""
    for symbol in FCC_METALS:
        yield _cubic("fcc", (symbol,), _metallic_cell([symbol] * 4))
    for symbol in BCC_METALS:
        yield _cubic("bcc", (symbol,), _metallic_cell([symbol] * 2))
    for symbol in DIAMOND_ELEMENTS:  # covalent: the bond is the sum of Slater radii, a = 4d/√3
        yield _cubic("diamond", (symbol,), 8 * _element(symbol).slater_radius / math.sqrt(3))
    for late, partner in itertools.product(LATE_METALS, B2_PARTNERS):
        yield _cubic("cscl", (late, partner), _metallic_cell([late, partner]))
    for majority, minority in itertools.product(LATE_METALS, MAIN_GROUP + EARLY_METALS + ("La", "Mg", "Zn")):
        if minority in MAIN_GROUP or _later(majority, minority):
            yield _cubic("l12", (majority, minority), _metallic_cell([majority] * 3 + [minority]))
    for minority in TRIALUMINIDE_PARTNERS:
        yield _cubic("l12", ("Al", minority), _metallic_cell(["Al"] * 3 + [minority]))
    for x, y, z in itertools.product(LATE_METALS, EARLY_METALS, MAIN_GROUP):
        if _later(x, y):
            yield _cubic("heusler", (x, y, z), _metallic_cell([x] * 8 + [y] * 4 + [z] * 4))
    for x, y, z in itertools.product(LATE_METALS, EARLY_METALS, MAIN_GROUP + ("Bi",)):
        if _later(x, y) and sum(_valence_electrons(s) for s in (x, y, z)) == HALF_HEUSLER_ELECTRONS:
            yield _cubic("halfheusler", (x, y, z), _metallic_cell([x, y, z] * 4))


def _later(x: str, y: str) -> bool:
    """Whether x stands right of y in the d block: the electron-richer metal takes the X (or A3) sites."""
    return _element(x).group > _element(y).group


def _valence_electrons(symbol: str) -> int:
    """s + d electrons of a transition metal, s + p electrons of a main-group element."""
    group = _element(symbol).group
    return group - 10 if group > 12 else group


def _sites(prototype: str, elements: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """Fractional coordinates and element symbols of every atom of a generated prototype."""
    _, roles = PROTOTYPES[prototype]
    frac = np.concatenate(roles)
    symbols = [element for element, sites in zip(elements, roles) for _ in sites]
    return frac, symbols


def _formula(symbols: Sequence[str]) -> str:
    """Formula in order of first appearance, counts divided by their common divisor: Co2MnSi, SrTiO3."""
    counts = {symbol: symbols.count(symbol) for symbol in dict.fromkeys(symbols)}
    divisor = math.gcd(*counts.values())
    return "".join(f"{s}{n // divisor if n // divisor > 1 else ''}" for s, n in counts.items())


def _key(prototype: str, symbols: Sequence[str]) -> tuple[str, tuple[tuple[str, int], ...]]:
    """What makes two structures the same entry: prototype and composition (Heusler Y/Z sites are equivalent)."""
    counts = {s: symbols.count(s) for s in set(symbols)}
    divisor = math.gcd(*counts.values())
    return prototype, tuple(sorted((s, n // divisor) for s, n in counts.items()))


def _min_distance(frac: np.ndarray, lattice: np.ndarray) -> float:
    """Shortest interatomic distance (Å) including periodic images up to one cell away."""
    shifts = np.array(list(itertools.product((-1, 0, 1), repeat=3)))  # (27, 3)
    delta = (frac[:, None, None, :] - frac[None, :, None, :] + shifts) @ lattice  # (N, N, 27, 3)
    distance = np.linalg.norm(delta, axis=-1)
    distance[distance < 1e-8] = np.inf  # an atom and itself
    return float(distance.min())


def _realise(candidate: _Candidate, seed: int) -> Crystal | None:
    """The jittered crystal of a candidate, or None if its lattice or distances are implausible."""
    space_group, _ = PROTOTYPES[candidate.prototype]
    frac, symbols = _sites(candidate.prototype, candidate.elements)
    base = np.asarray(candidate.lengths)
    # Judge the unjittered cell against the widest jitter, so that the seed never changes which entries exist.
    low, high = 1 - 3 * JITTER, 1 + 3 * JITTER
    if base.min() * low < MIN_LENGTH or base.max() * high > MAX_LENGTH:
        return None
    if _min_distance(frac, lattice_matrix(base, _RIGHT_ANGLES)) * low < MIN_DISTANCE:
        return None
    id = f"builtin-{candidate.prototype}-{_formula(symbols)}"
    # Seed from the id, not the position in the list, so adding a prototype leaves other entries unchanged.
    rng = np.random.default_rng([seed, zlib.crc32(id.encode())])
    factors = 1 + np.clip(rng.normal(0.0, JITTER, size=3), low - 1, high - 1)
    lengths = base * np.where(np.isclose(base, base[0]), factors[0], factors[2])  # keep a = b (= c)
    return Crystal.create(
        lengths,
        _RIGHT_ANGLES,
        atomic_numbers=[_element(s).number for s in symbols],
        frac_coords=frac,
        id=id,
        properties={"space_group": float(space_group), "lattice_constant": float(lengths[0])},
    )


def _symbols(crystal: Crystal) -> list[str]:
    from pymatgen.core import Element

    return [Element.from_Z(int(z)).symbol for z in crystal.atomic_numbers]


def generate_builtin(seed: int = 0) -> dict[str, list[Crystal]]:
    """The built-in dataset: split name -> crystals, the same for the same seed (no network).

    The textbook compounds of :func:`known_compounds` lead the train split and replace any generated entry of the
    same prototype and composition; the generated structures are split 90/5/5 by a seeded permutation.
    """
    start = time.perf_counter()
    known = known_compounds()
    taken = {_key(k.prototype, _symbols(k.crystal)) for k in known}
    generated: dict[str, Crystal] = {}
    for candidate in itertools.chain(_ionic_candidates(), _metallic_candidates()):
        key = _key(candidate.prototype, _sites(candidate.prototype, candidate.elements)[1])
        if key in taken:
            continue
        crystal = _realise(candidate, seed)
        if crystal is not None:
            taken.add(key)
            generated[crystal.id] = crystal
    ids = sorted(generated)
    order = np.random.default_rng(seed).permutation(len(ids))
    n_val = round(SPLIT_FRACTIONS["val"] * len(ids))
    n_test = round(SPLIT_FRACTIONS["test"] * len(ids))
    parts = {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
    splits = {name: [generated[ids[i]] for i in sorted(parts[name])] for name in SPLIT_FRACTIONS}
    splits["train"] = [k.crystal for k in known] + splits["train"]
    logger.info(
        "generated the built-in dataset in %.2f s: %s",
        time.perf_counter() - start,
        ", ".join(f"{name} {len(crystals)}" for name, crystals in splits.items()),
    )
    return splits


def builtin_dataset() -> Dataset:
    """The built-in dataset on disk: generated and written once under :func:`data_dir`, opened thereafter.

    A damaged copy (it fails :meth:`Dataset.verify`) is generated again and replaced, with a warning.
    """
    path = data_dir() / f"builtin-v{GENERATOR_VERSION}"
    damaged = False
    if path.exists():
        try:
            return open_dataset(path).verify()
        except UserError as error:  # generated, so regenerating loses nothing
            logger.warning("the built-in dataset at %s is damaged (%s); generating it again", path, error)
            damaged = True
    splits = generate_builtin()
    provenance = {
        "source": "nesfgen.data.builtin (generated, no download)",
        "generator_version": GENERATOR_VERSION,
        "seed": 0,
        "description": "ICSG3D-like cubic prototypes (rock salt, CsCl, zinc blende, Heusler, perovskite) plus "
        "half-Heusler, fluorite, antifluorite, L1_2, rutile and elements; lattice constants from radii with 1% "
        "jitter; textbook compounds (known-*) lead the train split",
    }
    try:
        return write_dataset(path, splits, name=path.name, provenance=provenance, overwrite=damaged)
    except UserError:
        if (path / "manifest.json").is_file():  # another process wrote it first
            return open_dataset(path).verify()
        raise


@dataclass(frozen=True)
class KnownCompound:
    """A textbook compound with its experimental structure, to encode or compare against by formula."""

    name: str  # e.g. "BaTiO3-tetragonal"
    formula: str  # reduced formula (pymatgen)
    prototype: str  # structure type, as in PROTOTYPES where it is one of them
    crystal: Crystal  # conventional cell, id "known-<name>"
    note: str  # where the numbers come from


ROOM_TEMPERATURE = "textbook/experimental room-temperature value"

# formula, label, prototype, lattice lengths (Å), note; label and formula make the name
_KNOWN_TABLE: tuple[tuple[str, str, str, tuple[float, ...], str], ...] = (
    ("ZnS", "zincblende", "zincblende", (5.41,), ROOM_TEMPERATURE + " (sphalerite)"),
    ("CdS", "zincblende", "zincblende", (5.82,), ROOM_TEMPERATURE + " (cubic hawleyite polymorph)"),
    ("GaAs", "zincblende", "zincblende", (5.653,), ROOM_TEMPERATURE),
    ("Si", "diamond", "diamond", (5.431,), ROOM_TEMPERATURE),
    ("C", "diamond", "diamond", (3.567,), ROOM_TEMPERATURE),
    ("NaCl", "rocksalt", "rocksalt", (5.64,), ROOM_TEMPERATURE),
    ("KCl", "rocksalt", "rocksalt", (6.29,), ROOM_TEMPERATURE),
    ("LiF", "rocksalt", "rocksalt", (4.03,), ROOM_TEMPERATURE),
    ("MgO", "rocksalt", "rocksalt", (4.21,), ROOM_TEMPERATURE),
    ("CaO", "rocksalt", "rocksalt", (4.81,), ROOM_TEMPERATURE),
    ("PbS", "rocksalt", "rocksalt", (5.94,), ROOM_TEMPERATURE + " (galena)"),
    ("CsCl", "cscl", "cscl", (4.12,), ROOM_TEMPERATURE),
    ("NiAl", "cscl", "cscl", (2.887,), ROOM_TEMPERATURE + " (B2 intermetallic)"),
    ("CaF2", "fluorite", "fluorite", (5.463,), ROOM_TEMPERATURE),
    ("Li2O", "antifluorite", "antifluorite", (4.61,), ROOM_TEMPERATURE),
    ("SrTiO3", "perovskite", "perovskite", (3.905,), ROOM_TEMPERATURE),
    ("BaTiO3", "cubic", "perovskite", (4.00,), "textbook value of the paraelectric cubic phase (above ~120 °C)"),
    (
        "BaTiO3",
        "tetragonal",
        "perovskite-tetragonal",
        (3.992, 3.992, 4.036),
        ROOM_TEMPERATURE + " (ferroelectric P4mm phase; Ba at the origin, Ti z = 0.482, O z = 0.016 and 0.515, "
        "as in neutron refinements)",
    ),
    ("Cu", "fcc", "fcc", (3.615,), ROOM_TEMPERATURE),
    ("Al", "fcc", "fcc", (4.05,), ROOM_TEMPERATURE),
    ("Fe", "bcc", "bcc", (2.866,), ROOM_TEMPERATURE + " (alpha iron)"),
    ("W", "bcc", "bcc", (3.165,), ROOM_TEMPERATURE),
    ("Cu3Au", "l12", "l12", (3.749,), ROOM_TEMPERATURE + " (ordered phase)"),
    ("Ni3Al", "l12", "l12", (3.572,), ROOM_TEMPERATURE + " (gamma prime)"),
    ("Cu2MnAl", "heusler", "heusler", (5.95,), ROOM_TEMPERATURE),
    ("TiO2", "rutile", "rutile", (4.594, 4.594, 2.959), ROOM_TEMPERATURE + " (oxygen x = 0.305)"),
    ("ZnO", "wurtzite", "wurtzite", (3.25, 3.25, 5.207), ROOM_TEMPERATURE + " (u = 0.382)"),
)

#: space groups of the prototypes that are not generated
_EXTRA_SPACE_GROUPS = {"perovskite-tetragonal": 99, "wurtzite": 186}


def _known_sites(formula: str, prototype: str) -> tuple[np.ndarray, list[str], tuple[float, float, float]]:
    """Fractional coordinates, symbols and angles of a textbook compound."""
    from pymatgen.core import Composition

    if prototype == "perovskite-tetragonal":  # BaTiO3, P4mm: Ti and O shifted in opposite senses along c
        frac = np.array([[0, 0, 0], [0.5, 0.5, 0.482], [0.5, 0.5, 0.016], [0.5, 0, 0.515], [0, 0.5, 0.515]])
        return frac, ["Ba", "Ti", "O", "O", "O"], _RIGHT_ANGLES
    if prototype == "wurtzite":  # ZnO, P6_3mc
        u = 0.382
        frac = np.array([[1 / 3, 2 / 3, 0], [2 / 3, 1 / 3, 0.5], [1 / 3, 2 / 3, u], [2 / 3, 1 / 3, 0.5 + u]])
        return frac, ["Zn", "Zn", "O", "O"], (90.0, 90.0, 120.0)
    # The formula lists the elements in role order, as the generated prototypes do (Cu2MnAl, SrTiO3, TiO2).
    elements = [str(e) for e in Composition(formula)]
    frac, symbols = _sites(prototype, elements)
    return frac, symbols, _RIGHT_ANGLES


def known_compounds() -> list[KnownCompound]:
    """Textbook compounds with experimental conventional cells, in a fixed order (BaTiO3 cubic before tetragonal)."""
    return list(_known_compounds())


@functools.cache
def _known_compounds() -> tuple[KnownCompound, ...]:
    from pymatgen.core import Composition

    compounds = []
    for formula, label, prototype, lengths, note in _KNOWN_TABLE:
        frac, symbols, angles = _known_sites(formula, prototype)
        name = f"{formula}-{label}"
        space_group = _EXTRA_SPACE_GROUPS.get(prototype) or PROTOTYPES[prototype][0]
        full = lengths if len(lengths) == 3 else lengths * 3
        crystal = Crystal.create(
            full,
            angles,
            atomic_numbers=[_element(s).number for s in symbols],
            frac_coords=frac,
            id=f"known-{name}",
            properties={"space_group": float(space_group), "lattice_constant": float(full[0])},
        )
        compounds.append(KnownCompound(name, Composition(formula).reduced_formula, prototype, crystal, note))
    return tuple(compounds)


def find_known(formula: str) -> list[KnownCompound]:
    """Textbook compounds with this composition ("ZnS", "S Zn", "Zn2S2", "BaTiO3"); the first is the default.

    Raises:
        UserError: if ``formula`` is not a chemical formula of real elements.
    """
    from pymatgen.core import Composition

    if parse_formula(formula) is None:
        raise UserError(f"{formula!r} is not a chemical formula of known elements (e.g. 'NaCl', 'BaTiO3')")
    wanted = Composition(formula).fractional_composition
    return [k for k in known_compounds() if Composition(k.formula).fractional_composition.almost_equals(wanted)]
