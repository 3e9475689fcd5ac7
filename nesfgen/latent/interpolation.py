"""Interpolation between two crystals: decode the straight line between their latents (the paper's Figs. 5 and 6).

Each step is reported with its formula, cell and space group and how much of it is A's or B's composition;
the folder holds the end and step CIFs, a JSON summary and a strip of the decoded cells.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from nesfgen.crystal import Crystal
from nesfgen.data.store import CrystalSet
from nesfgen.decoder import Decoder, Decoding
from nesfgen.drawing import draw_cells
from nesfgen.errors import UserError
from nesfgen.files import atomic_write_text, output_folder
from nesfgen.latent.endpoints import Endpoint, check_species, resolve_endpoint
from nesfgen.options import DecodeOptions, required
from nesfgen.progress import Progress
from nesfgen.symmetry import STATED_SYMPREC, space_group

log = logging.getLogger(__name__)


@dataclass
class Interpolation:
    """The decoded structures along the line between two endpoints' latents, and their table rows."""

    endpoints: tuple[Endpoint, Endpoint]
    checkpoint: str
    t: np.ndarray  # (T,) position on the line, 0 at A and 1 at B
    decoded: list[Crystal | None]
    rows: list[dict[str, Any]]
    symprec: float = STATED_SYMPREC  # spglib tolerance (Å) of the space groups and of symmetrize
    symmetrized: bool = False
    files: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        a, b = self.endpoints
        first, last = self.rows[0], self.rows[-1]
        return {
            "checkpoint": self.checkpoint,
            "steps": len(self.rows),
            "symprec": self.symprec,
            "symmetrized": self.symmetrized,
            "a": a.summary(),
            "b": b.summary(),
            "a_recovered": first["reduced_formula"] == a.crystal.reduced_formula
            and first["num_atoms"] == a.crystal.num_atoms,
            "b_recovered": last["reduced_formula"] == b.crystal.reduced_formula
            and last["num_atoms"] == b.crystal.num_atoms,
            "intermediate_only_end_elements_pct": self.intermediate_only_end_elements_pct(),
            "rows": self.rows,
            "files": self.files,
        }

    def intermediate_only_end_elements_pct(self) -> float | None:
        """Share of the steps between the ends whose decoded cell holds only elements of A or B (an empty
        decode does not); None with no step between the ends. Measures how chemically coherent the line is."""
        inner = self.rows[1:-1]
        if not inner:
            return None
        return 100.0 * sum(row.get("share_other") == 0.0 for row in inner) / len(inner)


@dataclass(frozen=True, kw_only=True)
class InterpolateOptions(DecodeOptions):
    """The two ends and how to decode the line between them.

    ``a``, ``b``: each a CIF/POSCAR path, a material id or a formula (see :func:`resolve_endpoint`).
    ``steps``: points on the line, both ends included. ``symprec``: spglib tolerance (Å) of the reported
    space groups and of ``symmetrize``. ``out``: the folder to write (None: runs/interpolate-A-B).
    """

    SYMPREC_ALONE = True

    a: str = required("give the two ends: nesfgen interpolate A B")
    b: str = required("give the two ends: nesfgen interpolate A B")
    steps: int = 7
    out: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.steps < 2:
            raise UserError(f"steps must be at least 2 (the two endpoints), got {self.steps}")
        for end in (self.a, self.b):
            if "=" in end:
                raise UserError(f"{end!r} came where an endpoint belongs: give the endpoints A B first, then key=value")


def interpolate(options: InterpolateOptions, progress: Progress | None = None) -> Interpolation:
    """Encode two crystals, decode ``options.steps`` evenly spaced points on the line between their latents.

    Raises:
        UserError: for an endpoint that cannot be resolved or holds elements the model does not know.
    """
    decoder = Decoder.load(options)
    trained = decoder.trained
    endpoints = tuple(resolve_endpoint(query, trained.dataset_hash) for query in (options.a, options.b))
    for label, endpoint in zip("AB", endpoints):
        check_species(endpoint, trained, label)
    z = decoder.encode(CrystalSet.from_crystals([e.crystal for e in endpoints]))  # (2, D)
    t, decoding = decode_line(decoder, z[0], z[1], options.steps, progress)
    if decoding.symmetrize_failed:
        log.warning(
            "%d of %d decoded structures could not be symmetrised and are kept as decoded",
            decoding.symmetrize_failed,
            options.steps,
        )
    rows = step_rows(t, decoding.crystals, endpoints[0].crystal, endpoints[1].crystal, options.tolerance)
    return Interpolation(endpoints, trained.path, t, decoding.crystals, rows, options.tolerance, options.symmetrize)


def interpolate_into_folder(options: InterpolateOptions, progress: Progress | None = None) -> dict[str, Any]:
    """Interpolate and write the folder (``options.out``, else runs/interpolate-A-B); returns the summary."""
    result = interpolate(options, progress)
    write_interpolation(result, Path(options.out or interpolation_folder(options.a, options.b)))
    return result.summary()


def interpolation_folder(a: str, b: str) -> Path:
    """The default output folder of an interpolation: ``runs/interpolate-A-B`` with file-safe names."""
    names = (Path(q).name.removesuffix(".cif").removesuffix(".vasp") for q in (a, b))
    safe = ("".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name) for name in names)
    return Path("runs") / "interpolate-{}-{}".format(*safe)


def decode_line(
    decoder: Decoder, z_a: Tensor, z_b: Tensor, steps: int, progress: Progress | None = None
) -> tuple[np.ndarray, Decoding]:
    """Decode ``steps`` evenly spaced points from z_a to z_b (both (D,)), ends included and exact.

    Returns:
        t (T,) and the decoding, whose crystals are None where nothing valid was decoded.
    """
    t = torch.linspace(0.0, 1.0, steps, dtype=z_a.dtype, device=z_a.device)[:, None]  # (T, 1)
    z = (1 - t) * z_a[None, :] + t * z_b[None, :]  # (T, D); exactly z_a and z_b at the ends
    decoding = decoder.decode(z, [f"step-{k:02d}" for k in range(steps)], progress)
    return t[:, 0].cpu().numpy(), decoding


def composition_shares(numbers: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float | None, float | None, float]:
    """How much of a decoded cell is A's composition, B's, and neither's (fractions of its atoms).

    Atoms of an element only A has count for A, only B has for B, neither has for "other"; atoms of an
    element both have are split in the ratio of the A-only to B-only atoms. Without any A-only or
    B-only atom (say between two BaTiO3 polymorphs) the A and B shares are undefined (None).
    """
    numbers = np.asarray(numbers)
    if numbers.size == 0:
        return None, None, 0.0
    in_a, in_b = np.isin(numbers, a), np.isin(numbers, b)
    only_a, only_b = int(np.sum(in_a & ~in_b)), int(np.sum(in_b & ~in_a))
    other = int(np.sum(~in_a & ~in_b))
    shared = numbers.size - only_a - only_b - other
    if only_a + only_b == 0:
        return None, None, other / numbers.size
    share_a = (only_a + shared * only_a / (only_a + only_b)) / numbers.size
    share_b = (only_b + shared * only_b / (only_a + only_b)) / numbers.size
    return share_a, share_b, other / numbers.size


def step_rows(
    t: np.ndarray, decoded: Sequence[Crystal | None], a: Crystal, b: Crystal, symprec: float = STATED_SYMPREC
) -> list[dict[str, Any]]:
    """One table row per step: formulas, atoms, lattice parameters, space group and composition shares."""
    rows = []
    for step, (position, crystal) in enumerate(zip(t, decoded)):
        row: dict[str, Any] = {"step": step, "t": round(float(position), 6)}
        if crystal is None:
            rows.append(row | {"formula": None, "reduced_formula": None, "num_atoms": 0, "space_group": None})
            continue
        group = space_group(crystal, symprec)
        share_a, share_b, other = composition_shares(crystal.atomic_numbers, a.atomic_numbers, b.atomic_numbers)
        row |= {
            "formula": crystal.formula,
            "reduced_formula": crystal.reduced_formula,
            "num_atoms": crystal.num_atoms,
            **{k: round(float(v), 4) for k, v in zip(("a", "b", "c"), crystal.lengths)},
            **{k: round(float(v), 3) for k, v in zip(("alpha", "beta", "gamma"), crystal.angles)},
            "volume": round(crystal.volume, 3),
            "space_group": group.number if group else None,
            "space_group_symbol": group.symbol if group else None,
            "share_a": share_a,
            "share_b": share_b,
            "share_other": other,
        }
        rows.append(row)
    return rows


def write_interpolation(result: Interpolation, out: Path) -> list[Path]:
    """``a.input.cif``, ``b.input.cif``, ``step-NN.cif`` per decoded step, ``interpolation.json`` and ``.png``.

    Step CIFs of an earlier, longer run in the same folder are removed so the folder shows one path.
    """
    out = output_folder(out, "interpolation folder")
    for stale in out.glob("step-*.cif"):
        stale.unlink()
    written = [
        atomic_write_text(out / f"{label}.input.cif", endpoint.crystal.to_cif())
        for label, endpoint in zip("ab", result.endpoints)
    ]
    for step, crystal in enumerate(result.decoded):
        if crystal is not None:
            written.append(atomic_write_text(out / f"step-{step:02d}.cif", crystal.to_cif()))
        else:
            log.info("step %d decoded to no valid crystal; no CIF written", step)
    titles = [_panel_title(row) for row in result.rows]
    titles[0], titles[-1] = f"A: {titles[0]}", f"B: {titles[-1]}"
    written.append(draw_cells(result.decoded, titles, out / "interpolation.png"))
    result.files = [str(p) for p in written] + [str(out / "interpolation.json")]
    written.append(atomic_write_text(out / "interpolation.json", json.dumps(result.summary(), indent=1)))
    return written


def _panel_title(row: dict[str, Any]) -> str:
    if row["formula"] is None:
        return f"t = {row['t']:.2f}\nnothing decoded"
    group = f"{row['space_group_symbol']} ({row['space_group']})" if row["space_group"] else "no space group"
    return f"t = {row['t']:.2f}\n{row['formula']}\n{group}"
