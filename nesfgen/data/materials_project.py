"""Datasets from the Materials Project: the paper's selections and general queries, fetched with mp-api.

The flow is: a :class:`Selection` (mp-api summary queries, then filters on the conventional cell) and a
:class:`FetchPlan` (splits, seed, cache) -> :func:`fetch_dataset` pages through each query with a
:class:`SummaryClient`, caching every page on disk, converts the documents to conventional cells, filters,
splits and writes the dataset folder atomically.

The client is a small protocol so that tests replay recorded responses; :class:`MPResterClient` adapts mp-api's
``MPRester``. The API key lives only in that object: it never reaches a log, a message, the cache or a manifest.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import logging
import math
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nesfgen.config import parse_value
from nesfgen.crystal import Crystal
from nesfgen.data.importers import seeded_split
from nesfgen.data.store import Dataset, data_dir, write_dataset
from nesfgen.errors import UserError
from nesfgen.files import atomic_write_text

log = logging.getLogger(__name__)

SELECTIONS = ("lcs6", "icsg3d", "ybco-like", "query")
#: the paper's random split: 90.25 % train, 4.75 % validation, 5 % test
PAPER_FRACTIONS = (0.9025, 0.0475, 0.05)
#: summary-document fields kept as numeric dataset properties (booleans become 0/1)
PROPERTY_FIELDS = (
    "formation_energy_per_atom",
    "energy_above_hull",
    "band_gap",
    "energy_per_atom",
    "total_magnetization",
    "density",
    "is_stable",
    "is_metal",
    "theoretical",
)
FIELDS = ("material_id", "formula_pretty", "structure", "symmetry", *PROPERTY_FIELDS)
#: YBa2Cu3O7's orthorhombic cell (a, b, c in Å, Jorgensen et al. 1990): the ybco-like selection ranks by distance to it
YBCO_LENGTHS = (3.8227, 3.8872, 11.6802)
CANDIDATE_BATCH = 100  # material ids per request: keeps the request URL short
MP_LICENSE = (
    "Materials Project data, CC BY 4.0 (materialsproject.org); cite A. Jain et al., APL Materials 1, 011002 (2013)"
)
NO_KEY_MESSAGE = (
    "no Materials Project API key: set the environment variable MP_API_KEY (or PMG_MAPI_KEY in "
    "~/.config/.pmgrc.yaml, mp-api's configuration). Get a free key from your dashboard at "
    "https://materialsproject.org/api"
)
CRYSTAL_SYSTEMS = ("Triclinic", "Monoclinic", "Orthorhombic", "Tetragonal", "Trigonal", "Hexagonal", "Cubic")


# --- what to fetch ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """mp-api summary queries, then filters on the conventional cell, an order and a size limit.

    ``queries`` are keyword arguments of ``MPRester().materials.summary.search`` as JSON values (ranges as
    ``[min, max]`` with ``null`` for an open end); each is fetched page by page.
    """

    name: str
    description: str
    queries: tuple[dict[str, Any], ...]
    max_length: float | None = None  # keep cells with a, b, c <= max_length (Å)
    max_ab: float | None = None  # keep cells with a, b <= max_ab (Å)
    min_c_ratio: float | None = None  # keep cells with c >= min_c_ratio * max(a, b)
    num_atoms: int | None = None  # keep cells with exactly this many atoms
    order: str = "fetched"  # "fetched" (the server's material_id order), "candidates" (the queries' order), "ybco"
    limit: int = 0  # keep at most this many structures after ordering (0 = all)

    def rejects(self, crystal: Crystal) -> str | None:
        """Why a conventional cell is left out, or None when it is kept."""
        a, b, c = crystal.lengths
        if self.num_atoms is not None and crystal.num_atoms != self.num_atoms:
            return f"not {self.num_atoms} atoms in the conventional cell"
        if self.max_length is not None and max(a, b, c) > self.max_length:
            return f"a, b or c above {self.max_length:g} Å"
        if self.max_ab is not None and max(a, b) > self.max_ab:
            return f"a or b above {self.max_ab:g} Å"
        if self.min_c_ratio is not None and c < self.min_c_ratio * max(a, b):
            return f"c below {self.min_c_ratio:g} × max(a, b)"
        return None


@dataclass(frozen=True)
class FetchPlan:
    """A selection and how to turn it into a dataset: seeded splits (or k folds) and where pages are cached."""

    selection: Selection
    seed: int = 0
    fractions: tuple[float, ...] = PAPER_FRACTIONS
    folds: int = 1  # > 1: write OUT-fold0 ... OUT-fold{k-1}, the test sets partitioning the structures
    page_size: int = 500
    cache: Path | None = None  # default: OUT's parent / .mp-cache


def _server_filters(gnome: bool) -> dict[str, Any]:
    """Filters every selection adds: no deprecated entries, and GNoME's 2023 additions only when asked for."""
    return {"deprecated": False, "include_gnome": gnome}


def lcs6_selection(max_length: float = 6.0, gnome: bool = False, limit: int = 0) -> Selection:
    """LCS6Å: every material whose conventional cell has a, b, c <= 6 Å.

    The server cannot filter on the conventional cell, so it is asked for cells of volume <= max_length³ (a
    primitive cell is never larger than the conventional one, whose volume is at most a·b·c); the lengths are
    checked here after conversion. A material stored as a magnetic supercell above that volume is missed.
    """
    return Selection(
        name="lcs6",
        description=f"conventional cells with a, b, c <= {max_length:g} Å (LCS6Å)",
        queries=({"volume": [None, round(max_length**3, 6)], **_server_filters(gnome)},),
        max_length=max_length,
        limit=limit,
    )


def icsg3d_selection(gnome: bool = False, limit: int = 0) -> Selection:
    """ICSG3D: cubic binary AB, full-Heusler ABX2 and cubic perovskite ABX3 (anonymous formulas AB, ABC2, ABC3)."""
    return Selection(
        name="icsg3d",
        description="cubic materials with anonymous formula AB, ABC2 (Heusler) or ABC3 (perovskite) (ICSG3D)",
        queries=tuple(
            {"crystal_system": "Cubic", "formula": formula, **_server_filters(gnome)}
            for formula in ("AB", "ABC2", "ABC3")
        ),
        limit=limit,
    )


def ybco_selection(
    candidates: Sequence[str] | None = None, limit: int = 100, gnome: bool = False, batch: int = CANDIDATE_BATCH
) -> Selection:
    """YBCO-like: 13-atom cells narrow in a and b and long along c, the ``limit`` nearest to YBa2Cu3O7.

    Every structure of the paper's set passes these filters (a, b <= 4.5 Å, c >= 2.4·max(a, b), 13 atoms). With
    ``candidates`` (material ids nearest to YBa2Cu3O7 first, as in the paper's retrieved-neighbours list) the
    first ``limit`` candidates that pass are kept; without, all 13-site materials are fetched and ranked by the
    distance of their (a, b, c) to YBa2Cu3O7's cell. ``limit=0`` keeps every structure that passes.
    """
    filters = {"max_ab": 4.5, "min_c_ratio": 2.4, "num_atoms": 13, "limit": limit}
    first = f"the first {limit}" if limit else "all"
    if candidates:
        queries = tuple(
            {"material_ids": list(candidates[start : start + batch]), "num_sites": [13, 13]}
            for start in range(0, len(candidates), batch)
        )
        return Selection(
            name="ybco-like",
            description=f"{first} of {len(candidates)} candidates with 13 atoms, a, b <= 4.5 Å and "
            "c >= 2.4·max(a, b) (YBCO-like)",
            queries=queries,
            order="candidates",
            **filters,
        )
    return Selection(
        name="ybco-like",
        description=f"{first} 13-atom cells with a, b <= 4.5 Å and c >= 2.4·max(a, b) nearest to YBa2Cu3O7's "
        f"a, b, c = {YBCO_LENGTHS} Å (YBCO-like)",
        queries=({"num_sites": [13, 13], **_server_filters(gnome)},),
        order="ybco",
        **filters,
    )


# --- parsing key=value options ---------------------------------------------------------------------------------------

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
    criteria.update(_server_filters(gnome))
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


# --- the client ------------------------------------------------------------------------------------------------------


class MaterialsProjectError(Exception):
    """A request that failed; the message never holds the API key."""


class TransientError(MaterialsProjectError):
    """Worth retrying: the network, a timeout, rate limiting, a server error."""


class KeyRejected(MaterialsProjectError):
    """The API key is malformed or refused."""


class QueryRejected(MaterialsProjectError):
    """The server (or mp-api) refuses the query itself; retrying will not help."""


class SummaryClient(Protocol):
    """One page of Materials Project summary documents, as plain JSON dicts."""

    def search(
        self, criteria: Mapping[str, Any], fields: Sequence[str], page: int, page_size: int
    ) -> list[dict[str, Any]]:
        """Page ``page`` (from 1) of ``page_size`` documents, sorted by material id.

        Raises:
            TransientError, KeyRejected, QueryRejected.
        """
        ...


#: summary-search arguments that are (min, max) ranges
RANGE_ARGUMENTS = {
    "volume",
    "num_sites",
    "num_elements",
    "energy_above_hull",
    "formation_energy",
    "band_gap",
    "density",
}


class MPResterClient:
    """:class:`SummaryClient` on mp-api's ``MPRester``, created on the first request (its start-up reaches the server).

    Args:
        api_key: the user's key; kept in this object only and redacted from every error message.
        rester_factory: builds the rester (``mp_api.client.MPRester`` by default; tests pass a recording).
    """

    def __init__(self, api_key: str, rester_factory: Callable[..., Any] | None = None):
        if rester_factory is None:
            _require_mp_api()
        self._api_key = api_key
        self._factory = rester_factory
        self._rester: Any = None

    def __repr__(self) -> str:
        return "MPResterClient(api_key=<hidden>)"

    @property
    def database_version(self) -> str | None:
        return getattr(self._rester, "db_version", None) or None

    def search(
        self, criteria: Mapping[str, Any], fields: Sequence[str], page: int, page_size: int
    ) -> list[dict[str, Any]]:
        arguments = search_arguments(criteria, fields, page, page_size)
        try:
            documents = self._connect().materials.summary.search(**arguments)
        except Exception as error:  # mp-api raises MPRestError, requests' errors, or others from its start-up
            raise classify_error(error, self._api_key) from None
        return [_plain(document) for document in documents]

    def entries_in_chemsys(self, elements: Sequence[str]) -> list[dict[str, Any]]:
        """The GGA/GGA+U entries of a chemical system and its subsystems, MP2020-corrected (mp-api's default).

        Returns:
            ``{"id", "composition", "energy_per_atom"}`` per entry, the energy corrected as on the MP website.
        """
        try:
            rester = self._connect()
            entries = rester.get_entries_in_chemsys(
                list(elements), compatible_only=True, additional_criteria={"thermo_types": ["GGA_GGA+U"]}
            )
        except Exception as error:  # as in search: mp-api, requests or start-up errors
            raise classify_error(error, self._api_key) from None
        return [
            {
                "id": str(entry.entry_id),
                "composition": {str(el): float(n) for el, n in entry.composition.items()},
                "energy_per_atom": float(entry.energy_per_atom),
            }
            for entry in entries
        ]

    def _connect(self) -> Any:
        if self._rester is None:
            factory = self._factory
            if factory is None:
                from mp_api.client import MPRester as factory
            self._rester = factory(api_key=self._api_key, use_document_model=False, mute_progress_bars=True)
        return self._rester


def search_arguments(criteria: Mapping[str, Any], fields: Sequence[str], page: int, page_size: int) -> dict[str, Any]:
    """Keyword arguments of mp-api's ``summary.search`` for one page, in a stable order (by material id)."""
    arguments = {k: tuple(v) if k in RANGE_ARGUMENTS else v for k, v in criteria.items()}
    paging = {"_page": page, "chunk_size": page_size, "num_chunks": 1, "_sort_fields": "material_id"}
    return {**arguments, "fields": list(fields), **paging}


MIN_MP_API = (0, 46, 1)  # the first mp-api whose summary search takes _page and _sort_fields


def _require_mp_api() -> None:
    """Refuse, with the fix, an mp-api too old to page through a query (or missing, as on Python 3.10)."""
    installed = _mp_api_version()
    numbers = tuple(int(n) for n in re.findall(r"\d+", installed)[:3])
    if not numbers or numbers < MIN_MP_API:
        raise UserError(
            f"nesfgen data fetch needs mp-api >= {'.'.join(map(str, MIN_MP_API))} (installed: {installed}), which "
            "needs Python >= 3.11: pip install -U 'mp-api>=0.46.1'"
        )


def classify_error(error: BaseException, api_key: str = "") -> MaterialsProjectError:
    """Sort an mp-api / requests failure into transient, key or query errors, with the key redacted."""
    message = redact(f"{type(error).__name__}: {error}".strip(), api_key)
    status = re.search(r"status code (\d{3})", message)
    code = int(status.group(1)) if status else None
    if code in (401, 403):
        return KeyRejected(message)
    if code in (408, 425, 429) or (code is not None and code >= 500):
        return TransientError(message)
    if code is not None:
        return QueryRejected(message)
    if re.search(r"api key", message, re.IGNORECASE):  # mp-api refusing a malformed key before any request
        return KeyRejected(message)
    try:
        import requests

        network = isinstance(error, (requests.RequestException, OSError))
    except ImportError:  # pragma: no cover - requests comes with mp-api
        network = isinstance(error, OSError)
    if network or re.search(r"timed? ?out|connection|max retries|temporar|unreachable", message, re.IGNORECASE):
        return TransientError(message)
    return QueryRejected(message)


def redact(text: str, api_key: str) -> str:
    return text.replace(api_key, "<api key>") if api_key else text


def _plain(document: Any) -> dict[str, Any]:
    """A summary document as JSON values (mp-api returns dicts without document models; be safe with objects)."""
    if hasattr(document, "model_dump"):
        document = document.model_dump()
    return json.loads(json.dumps(document, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if hasattr(value, "value"):  # enums
        return value.value
    return str(value)


def api_key() -> str:
    """The user's key: ``MP_API_KEY``, else mp-api's configuration (pymatgen's ``PMG_MAPI_KEY`` setting).

    Raises:
        UserError: when there is none (the message says how to set one and never shows a key).
    """
    key = os.environ.get("MP_API_KEY", "").strip()
    if not key:
        from pymatgen.core import SETTINGS

        key = str(SETTINGS.get("PMG_MAPI_KEY") or "").strip()
    if not key:
        raise UserError(NO_KEY_MESSAGE)
    return key


# --- the cache -------------------------------------------------------------------------------------------------------


def _query_folder(cache: Path, criteria: Mapping[str, Any], page_size: int) -> Path:
    """One folder per (criteria, fields, page size): a repeated or resumed fetch finds its pages there."""
    spec = {"criteria": criteria, "fields": list(FIELDS), "page_size": page_size, "sort": "material_id"}
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    folder = cache / f"query-{digest}"
    if not (folder / "query.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "query.json", json.dumps(spec, indent=1, sort_keys=True))
    return folder


def _read_json(path: Path) -> Any:
    """A cached file, or None when it is missing or unreadable (then it is fetched again)."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.warning("ignoring unreadable cache file %s (%s); fetching it again", path, error)
        return None


@dataclass
class _Counts:
    downloaded: int = 0  # pages
    cached: int = 0  # pages
    documents: int = 0


def _pages(
    client: SummaryClient,
    criteria: Mapping[str, Any],
    folder: Path,
    page_size: int,
    counts: _Counts,
    retry: Callable[[Callable[[], list[dict]], str], list[dict]],
) -> Iterator[list[dict[str, Any]]]:
    """Every page of one query, from the cache where present; a page shorter than ``page_size`` is the last."""
    complete = _read_json(folder / "complete.json")
    page = 1
    while True:
        path = folder / f"page-{page:05d}.json"
        cached = _read_json(path)
        if cached is not None:
            documents = cached["documents"]
            counts.cached += 1
        elif complete is not None and page > complete["pages"]:
            return
        else:
            documents = retry(lambda p=page: client.search(criteria, FIELDS, p, page_size), f"page {page}")
            atomic_write_text(path, json.dumps({"documents": documents}))
            counts.downloaded += 1
            log.info("fetched page %d of %s: %d documents", page, folder.name, len(documents))
        counts.documents += len(documents)
        yield documents
        if len(documents) < page_size:
            if complete is None:
                atomic_write_text(folder / "complete.json", json.dumps({"pages": page}))
            return
        page += 1


def _retrying(retries: int, backoff: float, sleep: Callable[[float], None], cache: Path):
    """Call with exponential back-off on transient errors; key and query errors become UserError at once."""

    def call(request: Callable[[], list[dict]], what: str) -> list[dict]:
        for attempt in range(retries + 1):
            try:
                return request()
            except KeyRejected as error:
                raise UserError(
                    f"the Materials Project rejected the API key ({error}); check MP_API_KEY (keys are 32 characters, "
                    "from https://materialsproject.org/api)"
                ) from None
            except QueryRejected as error:
                raise UserError(f"the Materials Project refused the query ({error})") from None
            except TransientError as error:
                if attempt == retries:
                    raise UserError(
                        f"the Materials Project did not answer ({what}) after {retries + 1} attempts: {error}. "
                        f"The pages fetched so far are cached in {cache}; run the same command again to continue"
                    ) from None
                delay = backoff * 2**attempt
                log.warning("%s failed (%s); retrying in %.1f s", what, error, delay)
                sleep(delay)
        raise AssertionError("unreachable")

    return call


# --- documents to crystals -------------------------------------------------------------------------------------------


def crystal_from_document(document: Mapping[str, Any]) -> Crystal:
    """The conventional standard cell of a summary document, its numeric properties kept.

    Raises:
        UserError: for a document without a structure or one nesfgen cannot represent (disorder, duplicates...).
    """
    from pymatgen.core import Structure

    material_id = str(document.get("material_id") or "")
    if not material_id:
        raise UserError("a document has no material_id")
    if not isinstance(document.get("structure"), Mapping):
        raise UserError(f"{material_id}: the document has no structure")
    try:
        structure = Structure.from_dict(document["structure"])
    except Exception as error:  # a malformed structure dict fails in pymatgen with many exception types
        raise UserError(f"{material_id}: unreadable structure ({type(error).__name__}: {error})") from None
    properties = {}
    for name in PROPERTY_FIELDS:
        value = document.get(name)
        if isinstance(value, bool):
            value = float(value)
        if isinstance(value, (int, float)) and math.isfinite(value):
            properties[name] = float(value)
    number = (document.get("symmetry") or {}).get("number")
    if isinstance(number, int):
        properties["spacegroup_number"] = float(number)
    return Crystal.from_structure(structure, id=material_id, properties=properties, conventional=True)


# --- fetching --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchReport:
    """What a fetch downloaded, kept and wrote, for the caller to show the user."""

    datasets: list[Dataset]
    documents: int  # documents read (downloaded or cached)
    pages_downloaded: int
    pages_cached: int
    kept: int
    filtered: dict[str, int]  # reason -> count of valid structures the selection leaves out
    skipped: list[tuple[str, str]]  # (material id, reason) of documents that are not valid structures
    cache: Path
    notes: list[str] = field(default_factory=list)


def default_out(name: str) -> Path:
    """Where ``nesfgen data fetch NAME`` writes without ``--out``: ``mp-NAME`` in the data directory."""
    if name == "query":
        raise UserError("nesfgen data fetch query needs --out DIR: the dataset folder to write")
    return data_dir() / f"mp-{name}"


def fold_names(out: Path, folds: int) -> list[Path]:
    """The folders a plan writes: OUT itself, or OUT-fold0 ... (then ``data.name=OUT data.fold=K`` trains on one)."""
    return [out] if folds == 1 else [out.with_name(f"{out.name}-fold{k}") for k in range(folds)]


def fetch_dataset(
    plan: FetchPlan,
    out: str | Path,
    client: SummaryClient,
    retries: int = 5,
    backoff: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    progress: Callable[[int, int | None], None] | None = None,
) -> FetchReport:
    """Fetch a selection, convert to conventional cells, filter, split with the plan's seed and write atomically.

    Every page is cached on disk as it arrives, so a fetch stopped half way (interrupt, network) continues from
    where it stopped when run again. Nothing is written to ``out`` unless the whole fetch succeeds.

    Args:
        plan: what to fetch and how to split it (:func:`plan_fetch`).
        out: the dataset folder (with ``plan.folds > 1``, the prefix of ``OUT-fold0`` ...).
        client: pages of summary documents (:class:`MPResterClient` or a recording).
        retries: attempts after the first for a page that fails transiently; back-off ``backoff·2^k`` seconds.
        sleep: waits between attempts (tests pass a recorder).
        progress: called with (documents read, None) after each page.

    Raises:
        UserError: if an output folder exists, the key or query is refused, the server stays unreachable, or
            nothing is left to write.
    """
    out = Path(out)
    targets = fold_names(out, plan.folds)
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise UserError(f"{', '.join(existing)} already exists; choose another --out or remove it first")
    cache = plan.cache or out.parent / ".mp-cache"
    selection = plan.selection
    retry = _retrying(retries, backoff, sleep, cache)
    counts = _Counts()
    kept: dict[str, tuple[float, Crystal]] = {}  # material id -> (sort key, crystal)
    candidates = {id: i for i, id in enumerate(id for q in selection.queries for id in q.get("material_ids", ()))}
    filtered: Counter[str] = Counter()
    skipped: list[tuple[str, str]] = []
    for criteria in selection.queries:
        folder = _query_folder(cache, criteria, plan.page_size)
        for documents in _pages(client, criteria, folder, plan.page_size, counts, retry):
            for document in documents:
                material_id = str(document.get("material_id", "?"))
                if material_id in kept:
                    continue
                try:
                    crystal = crystal_from_document(document)
                except UserError as error:
                    skipped.append((material_id, str(error)))
                    continue
                reason = selection.rejects(crystal)
                if reason:
                    filtered[reason] += 1
                else:
                    kept[material_id] = (_rank(selection, candidates, crystal, len(kept)), crystal)
            if progress:
                progress(counts.documents, None)
        if selection.order == "candidates" and selection.limit and len(kept) >= selection.limit:
            break  # the candidates come nearest first: later batches cannot displace these
    crystals = [crystal for _, crystal in sorted(kept.values(), key=lambda item: (item[0], item[1].id))]
    notes = []
    if selection.limit and len(crystals) > selection.limit:
        notes.append(
            f"kept the first {selection.limit} of the {len(crystals)} fetched structures that pass the filters"
        )
        crystals = crystals[: selection.limit]
    if not crystals:
        raise UserError(
            f"nothing to write: the Materials Project returned {counts.documents} documents for {selection.description}"
            f" and none passed ({sum(filtered.values())} filtered out, {len(skipped)} not valid structures)"
        )
    if selection.limit and len(crystals) < selection.limit and selection.order != "fetched":
        notes.append(f"only {len(crystals)} structures pass the filters, fewer than limit={selection.limit}")
    provenance = {
        "format": "materials-project",
        "importer": "nesfgen.data.materials_project.fetch_dataset",
        "source": f"Materials Project summary documents via mp-api {_mp_api_version()}",
        "database_version": getattr(client, "database_version", None),
        "selection": asdict(selection),
        "fields": list(FIELDS),
        "cell": "conventional standard cell (spglib, symprec 0.01)",
        "license": MP_LICENSE,
        "fetched_on": datetime.now(timezone.utc).date().isoformat(),
        "skipped": [list(item) for item in skipped],
    }
    datasets = _write_splits(targets, crystals, plan, provenance, notes)
    log.info("fetched %d documents, kept %d, wrote %s", counts.documents, len(crystals), [str(t) for t in targets])
    return FetchReport(
        datasets=datasets,
        documents=counts.documents,
        pages_downloaded=counts.downloaded,
        pages_cached=counts.cached,
        kept=len(crystals),
        filtered=dict(filtered),
        skipped=skipped,
        cache=cache,
        notes=notes,
    )


def _rank(selection: Selection, candidates: Mapping[str, int], crystal: Crystal, position: int) -> float:
    """Sort key: candidate-list position, distance to YBa2Cu3O7's cell, or the order fetched."""
    if selection.order == "candidates":
        return float(candidates.get(crystal.id, len(candidates) + position))  # an id the server renamed goes last
    if selection.order == "ybco":
        a, b, c = crystal.lengths
        return float(np.linalg.norm(np.array([min(a, b), max(a, b), c]) - np.array(YBCO_LENGTHS)))
    return float(position)


def _mp_api_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mp-api")
    except PackageNotFoundError:  # only on Python 3.10, where mp-api >= 0.46.1 cannot be installed
        return "none"


def _write_splits(
    targets: list[Path], crystals: list[Crystal], plan: FetchPlan, provenance: dict[str, Any], notes: list[str]
) -> list[Dataset]:
    """One seeded split, or k folds (each fold's test set a distinct share, 5 % of the rest as validation)."""
    if plan.folds == 1:
        splits, split_notes = seeded_split(crystals, plan.seed, plan.fractions)
        notes.extend(split_notes)
        layouts = [(splits, {"seed": plan.seed, "fractions": list(plan.fractions)})]
    else:
        if len(crystals) < plan.folds:
            raise UserError(f"{len(crystals)} structures cannot make {plan.folds} folds; lower folds=")
        layouts = [
            (splits, {"seed": plan.seed, "fold": k, "folds": plan.folds})
            for k, splits in enumerate(_fold_splits(crystals, plan.folds, plan.seed))
        ]
    written: list[Dataset] = []
    try:
        for target, (splits, split) in zip(targets, layouts):
            extra = {"split": split, "notes": list(notes)}
            written.append(write_dataset(target, splits, name=target.name, provenance={**provenance, **extra}))
    except BaseException:
        for dataset in written:
            shutil.rmtree(dataset.path, ignore_errors=True)
        raise
    return written


def _fold_splits(crystals: list[Crystal], folds: int, seed: int) -> list[dict[str, list[Crystal]]]:
    """The paper's k-fold layout: test sets partition the structures; validation is 5 % drawn from the rest."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(crystals))
    layouts = []
    for test in np.array_split(order, folds):
        rest = np.setdiff1d(order, test)
        val_count = max(1, round(0.05 * len(crystals))) if len(rest) > 1 else 0
        val = rng.choice(rest, size=val_count, replace=False) if val_count else np.array([], dtype=int)
        train = np.setdiff1d(rest, val)
        splits = {"train": train, "val": val, "test": test}
        layouts.append({name: [crystals[i] for i in sorted(index)] for name, index in splits.items() if len(index)})
    return layouts
