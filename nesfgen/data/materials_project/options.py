"""``nesfgen data fetch NAME key=value ...`` parsed into a :class:`FetchPlan`, every value checked before a request."""

from __future__ import annotations

import csv
import itertools
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from nesfgen.config import parse_value
from nesfgen.data.materials_project.selections import (
    PAPER_FRACTIONS,
    FetchPlan,
    Selection,
    icsg3d_selection,
    lcs6_selection,
    server_filters,
    ybco_selection,
)
from nesfgen.errors import UserError

SELECTIONS = ("lcs6", "icsg3d", "ybco-like", "query")
CRYSTAL_SYSTEMS = ("Triclinic", "Monoclinic", "Orthorhombic", "Tetragonal", "Trigonal", "Hexagonal", "Cubic")
COMMON_KEYS = {"seed", "split", "folds", "limit", "page_size", "cache", "gnome"}
#: query key -> (mp-api summary search argument, kind)
QUERY_KEYS: dict[str, tuple[str, str]] = {
    "elements": ("elements", "elements"),
    "exclude_elements": ("exclude_elements", "elements"),
    "chemsys": ("chemsys", "words"),
    "formula": ("formula", "words"),
    "num_sites": ("num_sites", "int_range"),
    "num_elements": ("num_elements", "int_range"),
    "spacegroup": ("spacegroup_number", "spacegroups"),
    "crystal_system": ("crystal_system", "crystal_systems"),
    "energy_above_hull": ("energy_above_hull", "range"),
    "formation_energy": ("formation_energy", "range"),
    "band_gap": ("band_gap", "range"),
    "volume": ("volume", "range"),
    "density": ("density", "range"),
    "stable": ("is_stable", "bool"),
    "is_metal": ("is_metal", "bool"),
    "theoretical": ("theoretical", "bool"),
}
SELECTION_KEYS = {
    "lcs6": COMMON_KEYS | {"max_length"},
    "icsg3d": COMMON_KEYS,
    "ybco-like": COMMON_KEYS | {"candidates"},
    "query": COMMON_KEYS | {"max_length"} | set(QUERY_KEYS),
}


def selection_keys(name: str) -> set[str]:
    """The key=value options ``nesfgen data fetch NAME`` takes.

    Raises:
        UserError: for an unknown selection.
    """
    if name not in SELECTIONS:
        raise UserError(f"unknown selection {name!r}; choose one of: {', '.join(SELECTIONS)}")
    return SELECTION_KEYS[name]


def plan_fetch(name: str, options: Mapping[str, str]) -> FetchPlan:
    """Parse ``nesfgen data fetch NAME key=value ...`` into a plan.

    Raises:
        UserError: for an unknown selection, a key it does not take, or a value of the wrong form.
    """
    unknown = sorted(set(options) - selection_keys(name))
    if unknown:
        raise UserError(
            f"nesfgen data fetch {name} does not take {', '.join(unknown)}; valid keys: "
            f"{', '.join(sorted(SELECTION_KEYS[name]))}"
        )
    gnome = parse_value(options.get("gnome", "false"), bool, "gnome")
    limit = parse_value(options.get("limit", "100" if name == "ybco-like" else "0"), int, "limit")
    if limit < 0:
        raise UserError(f"limit must be 0 (all) or a positive number of structures, got {limit}")
    max_length = parse_value(options.get("max_length", "6" if name == "lcs6" else "none"), float | None, "max_length")
    if max_length is not None and not max_length > 0:
        raise UserError(f"max_length must be a positive length in Å, got {max_length}")
    if name == "lcs6":
        selection = lcs6_selection(max_length, gnome, limit)
    elif name == "icsg3d":
        selection = icsg3d_selection(gnome, limit)
    elif name == "ybco-like":
        candidates = read_candidates(options["candidates"]) if "candidates" in options else None
        selection = ybco_selection(candidates, limit, gnome)
    else:
        selection = replace(_query_selection(options, max_length, gnome), limit=limit)
    folds = parse_value(options.get("folds", "20" if name == "ybco-like" else "1"), int, "folds")
    if folds < 1:
        raise UserError(f"folds must be 1 (one seeded split) or the number of cross-validation folds, got {folds}")
    fractions = parse_value(options.get("split", ",".join(map(str, PAPER_FRACTIONS))), tuple[float, ...], "split")
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise UserError(f"split must be three non-negative fractions (train,val,test) summing to 1, got {fractions}")
    page_size = parse_value(options.get("page_size", "500"), int, "page_size")
    if not 1 <= page_size <= 1000:
        raise UserError(f"page_size must lie between 1 and 1000 documents, got {page_size}")
    cache = Path(options["cache"]).expanduser() if options.get("cache") else None
    return FetchPlan(
        selection=selection,
        seed=parse_value(options.get("seed", "0"), int, "seed"),
        fractions=fractions,
        folds=folds,
        page_size=page_size,
        cache=cache,
    )


def _query_selection(options: Mapping[str, str], max_length: float | None, gnome: bool) -> Selection:
    """A general query: server-side criteria (split into one query per space group and crystal system)."""
    criteria: dict[str, Any] = {}
    alternatives: list[list[tuple[str, Any]]] = []
    for key, text in options.items():
        if key not in QUERY_KEYS:
            continue
        argument, kind = QUERY_KEYS[key]
        value = _parse_criterion(key, text, kind)
        if kind in ("spacegroups", "crystal_systems"):  # mp-api batches list values itself, which breaks paging
            alternatives.append([(argument, v) for v in value])
        else:
            criteria[argument] = value
    if not criteria and not alternatives:
        raise UserError(
            "nesfgen data fetch query needs at least one criterion, e.g. elements=Si,O or num_sites=1:8 "
            f"(fetching the whole Materials Project is not supported); criteria: {', '.join(sorted(QUERY_KEYS))}"
        )
    criteria.update(server_filters(gnome))
    queries = tuple({**criteria, **dict(choice)} for choice in itertools.product(*alternatives))
    said = " ".join(f"{k}={v}" for k, v in options.items() if k in QUERY_KEYS)
    if max_length is not None:
        said += f"; conventional cells with a, b, c <= {max_length:g} Å"
    return Selection(name="query", description=said, queries=queries, max_length=max_length)


def _parse_criterion(key: str, text: str, kind: str) -> Any:
    words = [w for w in text.replace(" ", "").split(",") if w]
    if not words:
        raise UserError(f"{key} is empty")
    if kind == "elements":
        from pymatgen.core import Element

        bad = [w for w in words if not Element.is_valid_symbol(w)]
        if bad:
            raise UserError(f"{key}: {', '.join(bad)} is not an element symbol (expected e.g. {key}=Fe,O)")
        return words
    if kind == "words":
        return words
    if kind == "bool":
        return parse_value(text, bool, key)
    if kind == "spacegroups":
        numbers = [parse_value(w, int, key) for w in words]
        if any(not 1 <= n <= 230 for n in numbers):
            raise UserError(f"{key}: space group numbers lie between 1 and 230, got {text}")
        return numbers
    if kind == "crystal_systems":
        systems = {s.lower(): s for s in CRYSTAL_SYSTEMS}
        bad = [w for w in words if w.lower() not in systems]
        if bad:
            raise UserError(f"{key}: unknown crystal system {bad[0]!r}; choose from {', '.join(CRYSTAL_SYSTEMS)}")
        return [systems[w.lower()] for w in words]
    return _parse_range(key, text, int if kind == "int_range" else float)


def _parse_range(key: str, text: str, kind: type) -> list[Any]:
    """``MIN:MAX`` with either end optional, or one value meaning exactly that value."""
    low, colon, high = text.partition(":")
    try:
        values = [kind(part) if part.strip() else None for part in ((low, high) if colon else (low, low))]
    except ValueError:
        raise UserError(f"{key} expects MIN:MAX (either end may be left out) or one number, got {text!r}") from None
    if values == [None, None]:
        raise UserError(f"{key} expects MIN:MAX with at least one end, got {text!r}")
    if None not in values and values[0] > values[1]:
        raise UserError(f"{key}: the minimum {values[0]} is above the maximum {values[1]}")
    return values


def read_candidates(path: str | Path) -> list[str]:
    """Material ids in file order from a CSV with an ``mp_id`` or ``material_id`` column (or one id per line).

    Raises:
        UserError: if the file is missing, has no id column, or holds no id.
    """
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UserError(f"cannot read the candidate list {path}: {error.strerror or error}") from None
    rows = list(csv.reader(text.splitlines()))
    header = [h.strip() for h in rows[0]] if rows else []
    column = next((header.index(c) for c in ("mp_id", "material_id") if c in header), None)
    if column is not None:
        ids = [row[column].strip() for row in rows[1:] if len(row) > column and row[column].strip()]
    elif all(len(row) == 1 for row in rows):
        ids = [row[0].strip() for row in rows if row and row[0].strip()]
    else:
        raise UserError(f"{path}: no 'mp_id' or 'material_id' column; the columns are: {', '.join(header)}")
    bad = [i for i in ids if not re.fullmatch(r"[a-z]+-\d+", i)]
    if bad:
        raise UserError(f"{path}: {bad[0]!r} is not a Materials Project id such as mp-20674")
    if not ids:
        raise UserError(f"{path} holds no material ids")
    return list(dict.fromkeys(ids))
