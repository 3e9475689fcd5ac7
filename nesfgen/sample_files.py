"""What a sampling leaves in its folder: one CIF per structure, samples.extxyz, samples.csv, summary.json and a
figure of the samples' distributions against the training split's.

Kept apart from ``nesfgen.generate``, which draws and decodes the samples: the files are the same whichever
prior or checkpoint produced them.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nesfgen.crystal import Crystal
from nesfgen.files import atomic_write_text, output_folder, safe_file_stems
from nesfgen.generative_metrics import Reference
from nesfgen.stream import BASELINES_FOLDER, SAMPLE_CIFS


@dataclass
class Generation:
    """What one sampling produced."""

    summary: dict[str, Any]
    rows: list[dict[str, Any]]
    crystals: list[Crystal | None]  # None where the decode is not a valid crystal
    reference: Reference | None = None  # what they were measured against, for the distributions figure
    baselines: dict[str, list[Crystal | None]] = field(default_factory=dict)  # ceiling and floor crystals


def write_samples(generation: Generation, out: Path) -> list[Path]:
    """One CIF per decoded structure (unless streamed there already), samples.extxyz, samples.csv and summary.json.

    With baselines, the ceiling's and the floor's crystals go to ``baselines/NAME/*.cif``. Earlier CIFs
    that are not this sampling's are removed.
    """
    out = output_folder(out, "sample folder")
    present = [crystal for crystal in generation.crystals if crystal is not None]
    ids = {crystal.id for crystal in present}
    for stale in out.glob(SAMPLE_CIFS):  # a previous sampling's
        if stale.stem not in ids:
            stale.unlink()
    written = []
    for crystal in present:
        path = out / f"{crystal.id}.cif"
        written.append(path if path.is_file() else atomic_write_text(path, crystal.to_cif()))
    written.append(atomic_write_text(out / "samples.extxyz", extxyz_text(present)))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(generation.rows[0]))
    writer.writeheader()
    writer.writerows(generation.rows)
    written.append(atomic_write_text(out / "samples.csv", buffer.getvalue()))
    written.append(atomic_write_text(out / "summary.json", json.dumps(generation.summary, indent=1, default=str)))
    if generation.reference is not None:
        written.append(plot_distributions(generation.rows, generation.reference, out / "distributions.png"))
    for name, members in generation.baselines.items():  # the ceiling and floor as CIFs, to relax like samples
        present = [crystal for crystal in members if crystal is not None]
        folder = output_folder(out / BASELINES_FOLDER / name, "baseline folder")
        stems = safe_file_stems([c.id for c in present])
        for stale in folder.glob("*.cif"):  # a previous sampling's
            if stale.stem not in stems:
                stale.unlink()
        for stem, crystal in zip(stems, present):
            written.append(atomic_write_text(folder / f"{stem}.cif", crystal.to_cif()))
    return written


def plot_distributions(rows: list[dict[str, Any]], reference: Reference, path: Path) -> Path:
    """Samples against the training split: density, atoms per cell, number of elements, crystal systems."""
    from nesfgen.files import new_figure, save_figure
    from nesfgen.prior import CRYSTAL_SYSTEMS, crystal_system_index

    present = [row for row in rows if row["decoded"]]
    figure, axes = new_figure(4, 16, 3.4)
    for ax, name, label in zip(
        axes, ("density", "num_atoms", "num_elements"), ("density (g/cm³)", "atoms per cell", "elements")
    ):
        train = reference.statistics[name]
        ours = np.array([row[name] for row in present])
        bins = np.histogram_bin_edges(np.concatenate([train, ours]) if len(ours) else train, bins=30)
        if name != "density":
            bins = np.arange(train.min() - 0.5, max(train.max(), ours.max() if len(ours) else 0) + 1.5)
        ax.hist(train, bins=bins, density=True, alpha=0.5, label=f"training ({len(train)})")
        if len(ours):  # a histogram of nothing divides by zero
            ax.hist(ours, bins=bins, density=True, alpha=0.5, label=f"samples ({len(ours)})")
        ax.set_xlabel(label)
    axes[0].legend()

    def shares(numbers: list[int]) -> np.ndarray:
        counts = np.zeros(len(CRYSTAL_SYSTEMS) + 1)
        for number in numbers:
            counts[crystal_system_index(number) if number else len(CRYSTAL_SYSTEMS)] += 1
        return counts / max(1, len(numbers))

    positions = np.arange(len(CRYSTAL_SYSTEMS) + 1)
    axes[3].bar(positions - 0.2, shares(reference.train_space_groups), 0.4, label="training")
    axes[3].bar(positions + 0.2, shares([row["space_group_number"] for row in present]), 0.4, label="samples")
    axes[3].set_xticks(positions, [*(s[:5] for s in CRYSTAL_SYSTEMS), "none"], rotation=45)
    axes[3].set_xlabel("crystal system (spglib, 0.1 Å)")
    return save_figure(figure, path)


def extxyz_text(crystals: list[Crystal]) -> str:
    """All structures as one extended-XYZ text (ASE), each frame tagged with its id."""
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    buffer = io.StringIO()
    for crystal in crystals:
        atoms = AseAtomsAdaptor.get_atoms(crystal.to_structure())
        atoms.info["id"] = crystal.id
        write(buffer, atoms, format="extxyz", append=True)
    return buffer.getvalue()
