"""Summaries of a dataset: counts, atoms-per-cell histograms, species, cell sizes; CIF export."""

from __future__ import annotations

import csv
import io
import os
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from nesfgen.data.store import CrystalSet, Dataset
from nesfgen.errors import UserError
from nesfgen.files import (
    os_error_reason,
    output_folder,
    remove_stale_staging,
    safe_file_stems,
    staging_folder,
    unmark_staging,
)
from nesfgen.symmetry import STATED_SYMPREC, space_group


def dataset_info(dataset: Dataset, space_groups: bool = True) -> dict[str, Any]:
    """Counts per split, the atoms-per-cell histogram (as the paper's Tables 2-4), species and cell ranges.

    With ``space_groups``, also the space-group histogram of the training split (the first split when
    there is no ``train``), which takes spglib a few milliseconds per structure.
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
    } | ({"space_groups": space_group_histogram(dataset)} if space_groups else {})


def space_group_histogram(dataset: Dataset, symprec: float = STATED_SYMPREC) -> dict[str, Any]:
    """How many training structures spglib puts in each space group, most common first."""
    split = "train" if "train" in dataset.split_names else dataset.split_names[0]
    crystals: CrystalSet = dataset.load(split)
    groups: Counter[tuple[int, str]] = Counter()
    unassigned = 0
    for crystal in crystals:
        found = space_group(crystal, symprec)
        if found is None:
            unassigned += 1
        else:
            groups[(found.number, found.symbol)] += 1
    ranked = sorted(groups.items(), key=lambda item: (-item[1], item[0][0]))
    return {
        "split": split,
        "symprec": symprec,
        "structures": len(crystals),
        "groups": [{"number": number, "symbol": symbol, "count": count} for (number, symbol), count in ranked],
        "unassigned": unassigned,
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
    remove_stale_staging(out)
    staging = staging_folder(out)
    index = io.StringIO()
    rows = csv.writer(index)
    rows.writerow(["split", "id", "file"])
    try:
        for split, crystals in sets.items():
            (staging / split).mkdir()
            stems = safe_file_stems([crystal.id or f"{split}-{i}" for i, crystal in enumerate(crystals)])
            for crystal, stem in zip(crystals, stems):
                (staging / split / f"{stem}.cif").write_text(crystal.to_cif())
                rows.writerow([split, crystal.id, f"{split}/{stem}.cif"])
        (staging / "index.csv").write_text(index.getvalue())
        unmark_staging(staging)
        os.replace(staging, out)  # replaces an empty folder, refuses a non-empty one
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise UserError(f"cannot write the export folder {out}: {os_error_reason(error)}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return sum(len(crystals) for crystals in sets.values())
