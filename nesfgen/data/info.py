"""Summaries of a dataset: counts, atoms-per-cell histograms, species, cell sizes; CIF export."""

from __future__ import annotations

import csv
import io
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from nesfgen.data.store import Dataset
from nesfgen.errors import UserError
from nesfgen.files import output_folder, safe_file_stems, staged_folder


def dataset_info(dataset: Dataset) -> dict[str, Any]:
    """Counts per split, the atoms-per-cell histogram (as the paper's Tables 2-4), species and cell ranges.

    The training split's space groups are :func:`nesfgen.symmetry.space_group_histogram`'s.
    """
    splits = {}
    all_numbers = []
    for split in dataset.split_names:
        crystals = dataset.load(split)
        histogram = Counter(int(n) for n in crystals.num_atoms)
        splits[split] = {
            "structures": len(crystals),
            "atoms": int(crystals.offsets[-1]),
            "atoms_per_cell": {str(k): histogram[k] for k in sorted(histogram)},
            "lengths_min": crystals.lengths.min(axis=0).round(3).tolist(),
            "lengths_max": crystals.lengths.max(axis=0).round(3).tolist(),
            "angles_min": crystals.angles.min(axis=0).round(2).tolist(),
            "angles_max": crystals.angles.max(axis=0).round(2).tolist(),
        }
        all_numbers.append(crystals.atomic_numbers)
    numbers = np.concatenate(all_numbers)
    from pymatgen.core import Element

    present = Counter(int(z) for z in numbers)
    return {
        "name": dataset.name,
        "path": str(dataset.path),
        "content_hash": dataset.content_hash,
        "species_count": len(dataset.species_table),
        "species": {Element.from_Z(z).symbol: present[z] for z in dataset.species_table},
        "splits": splits,
        "provenance": dict(dataset.manifest.get("provenance", {})),
    }


def export_cif(dataset: Dataset, out: Path, splits: list[str] | None = None, format: str = "cif") -> int:
    """Write every structure as ``out/<split>/<file>.cif`` plus ``out/index.csv``; returns the number written.

    File names come from the ids through :func:`safe_file_stems`: an id such as ``../x`` or ``/abs/path`` stays
    inside ``out`` and ``a/b`` never overwrites ``a_b``; ``index.csv`` maps each file back to its split and id.
    Everything is written into a staging folder beside ``out`` and renamed into place, so a failure leaves
    nothing behind. An existing ``out`` must be an empty folder: an export never replaces a user's files.

    Raises:
        UserError: if ``out`` holds anything, a split does not exist, or ``out`` cannot be written.
    """
    if format != "cif":
        raise UserError(f"unknown --format {format!r}; export supports: cif")
    out = Path(out)
    output_folder(out, "export folder", create=False)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"{out} exists and is not an empty folder; choose a new --out (an export never replaces files)")
    sets = {split: dataset.load(split) for split in splits or dataset.split_names}  # unknown splits fail here
    output_folder(out.parent, "export folder's parent")
    index = io.StringIO()
    rows = csv.writer(index)
    rows.writerow(["split", "id", "file"])
    with staged_folder(out, "export folder", replace=False) as staging:
        for split, crystals in sets.items():
            (staging / split).mkdir()
            stems = safe_file_stems([crystal.id or f"{split}-{i}" for i, crystal in enumerate(crystals)])
            for crystal, stem in zip(crystals, stems):
                (staging / split / f"{stem}.cif").write_text(crystal.to_cif())
                rows.writerow([split, crystal.id, f"{split}/{stem}.cif"])
        (staging / "index.csv").write_text(index.getvalue())
    return sum(len(crystals) for crystals in sets.values())
