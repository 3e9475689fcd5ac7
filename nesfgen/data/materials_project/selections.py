"""What to fetch: the paper's selections of Materials Project structures and the plan that turns one into a dataset."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nesfgen.crystal import Crystal

#: the paper's random split: 90.25 % train, 4.75 % validation, 5 % test
PAPER_FRACTIONS = (0.9025, 0.0475, 0.05)
#: YBa2Cu3O7's orthorhombic cell (a, b, c in Å, Jorgensen et al. 1990): the ybco-like selection ranks by distance to it
YBCO_LENGTHS = (3.8227, 3.8872, 11.6802)
CANDIDATE_BATCH = 100  # material ids per request: keeps the request URL short


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


def server_filters(gnome: bool) -> dict[str, Any]:
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
        queries=({"volume": [None, round(max_length**3, 6)], **server_filters(gnome)},),
        max_length=max_length,
        limit=limit,
    )


def icsg3d_selection(gnome: bool = False, limit: int = 0) -> Selection:
    """ICSG3D: cubic binary AB, full-Heusler ABX2 and cubic perovskite ABX3 (anonymous formulas AB, ABC2, ABC3)."""
    return Selection(
        name="icsg3d",
        description="cubic materials with anonymous formula AB, ABC2 (Heusler) or ABC3 (perovskite) (ICSG3D)",
        queries=tuple(
            {"crystal_system": "Cubic", "formula": formula, **server_filters(gnome)}
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
        queries=({"num_sites": [13, 13], **server_filters(gnome)},),
        order="ybco",
        **filters,
    )
