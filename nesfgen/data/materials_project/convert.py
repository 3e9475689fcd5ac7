"""Summary documents to crystals: the fields asked for, and the conventional cell with its numeric properties."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from nesfgen.crystal import Crystal
from nesfgen.errors import UserError

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
