"""Streamed sampling output: every finished chunk of samples is saved at once, so an interrupted run continues.

``OUT/progress/settings.json`` holds what the sampling was asked for; ``OUT/progress/chunk-NNNNNNNN.json``
holds the structures of one decoded chunk (exact floats, so a resumed run measures what an uninterrupted
one would) and each decoded structure's CIF lies beside it in OUT. Every file is written atomically, so
a run killed at any moment leaves whole chunks only; the same command continues after the last of them.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from nesfgen.crystal import Crystal
from nesfgen.errors import UserError
from nesfgen.files import atomic_write_text, output_folder

log = logging.getLogger(__name__)

SAMPLE_CIFS = "sample-[0-9]*.cif"
#: what a finished sampling writes beside its CIFs (sample_files.write_samples and relax=true): a new sampling with
#: other settings in the same folder removes them, so no summary describes samples that are not there
SAMPLING_RESULTS = ("summary.json", "samples.csv", "samples.extxyz", "distributions.png")
BASELINES_FOLDER = "baselines"  # the ceiling's and floor's CIFs, OUT/baselines/NAME
RELAXED_FOLDER = "relaxed"  # relax=true: each folder of CIFs relaxed into FOLDER/relaxed
SAMPLING_FOLDERS = (BASELINES_FOLDER, RELAXED_FOLDER)


class SampleStream:
    """The finished chunks of one sampling in ``out`` (none kept when ``out`` is None)."""

    def __init__(self, out: Path | None, settings: dict[str, Any]) -> None:
        self.out = output_folder(out, "sample folder") if out is not None else None
        self.settings = json.loads(json.dumps(settings, default=str))
        if self.out is None:
            return
        self.folder = self.out / "progress"
        recorded = self._recorded_settings()
        if recorded != self.settings:
            self._start_over(recorded)

    def _recorded_settings(self) -> dict[str, Any] | None:
        path = self.folder / "settings.json"
        try:
            return json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):
            return None

    def _start_over(self, recorded: dict[str, Any] | None) -> None:
        """Clear a previous sampling's output from ``out`` (one asked for with other settings)."""
        if recorded is not None:
            log.warning("%s held a sampling with other settings: its files are replaced by this one's", self.out)
        results = [self.out / name for name in SAMPLING_RESULTS if (self.out / name).is_file()]
        for stale in [*self.out.glob(SAMPLE_CIFS), *self.folder.glob("chunk-*.json"), *results]:
            stale.unlink()
        for folder in SAMPLING_FOLDERS:
            if (self.out / folder).is_dir():
                shutil.rmtree(self.out / folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.folder / "settings.json", json.dumps(self.settings, indent=1))

    def finished(self) -> tuple[list[Crystal | None], int]:
        """The structures of the chunks already saved, in order, and how many of them symmetrising left as decoded."""
        crystals: list[Crystal | None] = []
        failed = 0
        if self.out is None:
            return crystals, failed
        for path in sorted(self.folder.glob("chunk-*.json")):
            try:
                chunk = json.loads(path.read_text())
            except (OSError, ValueError) as error:
                raise UserError(
                    f"{path} is unreadable ({error}); delete it and run the same command again to decode it anew"
                ) from None
            if chunk["start"] != len(crystals):
                break  # a gap: continue from there
            crystals += [
                _crystal(entry, f"sample-{chunk['start'] + k:04d}") for k, entry in enumerate(chunk["samples"])
            ]
            failed += chunk["symmetrize_failed"]
        return crystals, failed

    def add(self, start: int, crystals: list[Crystal | None], symmetrize_failed: int) -> None:
        """Save one decoded chunk: its CIFs first, then the chunk record that marks it finished."""
        if self.out is None:
            return
        for crystal in crystals:
            if crystal is not None:
                atomic_write_text(self.out / f"{crystal.id}.cif", crystal.to_cif())
        record = {"start": start, "symmetrize_failed": symmetrize_failed, "samples": [_entry(c) for c in crystals]}
        atomic_write_text(self.folder / f"chunk-{start:08d}.json", json.dumps(record))


def _entry(crystal: Crystal | None) -> dict[str, Any] | None:
    if crystal is None:
        return None
    return {
        "lengths": crystal.lengths.tolist(),
        "angles": crystal.angles.tolist(),
        "atomic_numbers": crystal.atomic_numbers.tolist(),
        "frac_coords": crystal.frac_coords.tolist(),
    }


def _crystal(entry: dict[str, Any] | None, id: str) -> Crystal | None:
    if entry is None:
        return None
    return Crystal.create(
        entry["lengths"],
        entry["angles"],
        atomic_numbers=entry["atomic_numbers"],
        frac_coords=entry["frac_coords"],
        id=id,
    )
