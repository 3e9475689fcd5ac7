"""Drawings of crystal cells: projected panels of cell edges and atoms coloured by element.

Shared by the interpolation strips and the end-of-training report, so both look alike.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nesfgen.crystal import Crystal
from nesfgen.files import new_figure, save_figure

#: viewing direction of the cell drawings: azimuth and elevation (degrees) of the eye, c axis up
VIEW_AZIMUTH, VIEW_ELEVATION = 30.0, 20.0
#: atoms within this fractional distance of a cell face are drawn on the opposite face too
FACE_TOLERANCE = 0.02
#: drawn atom radius as a fraction of the element's atomic radius
ATOM_SCALE = 0.35


def _view_axes() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Screen right, screen up and the direction towards the eye, as Cartesian unit vectors."""
    azimuth, elevation = np.radians(VIEW_AZIMUTH), np.radians(VIEW_ELEVATION)
    toward = np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)])
    right = np.array([-np.sin(azimuth), np.cos(azimuth), 0.0])
    return right, np.cross(toward, right), toward


@functools.cache
def _element_colours() -> dict[str, tuple[float, float, float]]:
    """Jmol colours of the elements, from the table pymatgen ships (empty if this pymatgen has none)."""
    from monty.serialization import loadfn

    for module in ("pymatgen.core", "pymatgen.vis"):
        try:
            folder = Path(__import__(module, fromlist=["__file__"]).__file__).parent
        except ImportError:
            continue
        if (folder / "ElementColorSchemes.yaml").is_file():
            table = loadfn(folder / "ElementColorSchemes.yaml")["Jmol"]
            return {symbol: tuple(v / 255 for v in rgb) for symbol, rgb in table.items()}
    return {}


def _element_style(number: int) -> tuple[str, tuple[float, ...], float]:
    """Symbol, colour and drawn radius (Å) of an element."""
    import matplotlib
    from pymatgen.core import Element

    element = Element.from_Z(int(number))
    colour = _element_colours().get(element.symbol) or matplotlib.colormaps["tab20"](number % 20)[:3]
    return element.symbol, colour, ATOM_SCALE * float(element.atomic_radius or 1.5)


def _cell_drawing(crystal: Crystal) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell edges (12, 2, 3), atom positions with their face images (M, 3) and their atomic numbers (M,)."""
    corners = np.array(list(itertools.product((0, 1), repeat=3)), dtype=float)  # (8, 3) fractional
    edges = [(i, j) for i, j in itertools.combinations(range(8), 2) if np.abs(corners[i] - corners[j]).sum() == 1]
    lattice = crystal.lattice
    frac, numbers = [], []
    for position, number in zip(crystal.frac_coords, crystal.atomic_numbers):
        options = [(0.0, 1.0) if x < FACE_TOLERANCE else (0.0,) for x in position]
        for shift in itertools.product(*options):
            frac.append(position + np.array(shift))
            numbers.append(number)
    return (corners @ lattice)[np.array(edges)], np.array(frac) @ lattice, np.array(numbers)


def draw_cells(crystals: Sequence[Crystal | None], titles: Sequence[str], path: Path, rows: int = 1) -> Path:
    """Panels in ``rows`` rows (filled row by row), each a projected drawing of a cell: edges, and atoms coloured
    by element; None draws as "nothing decoded".

    All panels share one length scale, so changes of the cell along a path, or between an input and its
    decoded cell, can be compared by eye.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Circle

    right, up, toward = _view_axes()
    screen = np.stack([right, up], axis=1)  # (3, 2)
    drawings = [_cell_drawing(c) if c is not None else None for c in crystals]
    reach = max(
        (np.abs((d[0].reshape(-1, 3) - d[0].reshape(-1, 3).mean(0)) @ screen).max() for d in drawings if d), default=1.0
    )
    half = reach + 1.0  # Å of margin for the atoms on the corners
    columns = -(-len(crystals) // rows)
    figure, axes = new_figure(columns, 2.3 * columns, 3.3 * rows, rows=rows)
    axes = np.atleast_1d(axes).ravel()
    for axis in axes[len(crystals) :]:
        axis.set_axis_off()
    for axis, drawing, title in zip(axes, drawings, titles):
        axis.set_axis_off()
        axis.set_aspect("equal")
        axis.set_title(title, fontsize=8)
        if drawing is None:
            axis.text(0.5, 0.5, "nothing decoded", ha="center", va="center", transform=axis.transAxes)
            continue
        edges, atoms, numbers = drawing
        centre = edges.reshape(-1, 3).mean(0) @ screen  # (2,)
        for edge in edges:
            xy = edge @ screen
            axis.plot(xy[:, 0], xy[:, 1], color="0.35", linewidth=0.8, zorder=1)
        depth = atoms @ toward
        legend = {}
        for rank, index in enumerate(np.argsort(depth)):  # far atoms first, near ones drawn over them
            symbol, colour, radius = _element_style(numbers[index])
            x, y = atoms[index] @ screen
            axis.add_patch(Circle((x, y), radius, facecolor=colour, edgecolor="black", linewidth=0.4, zorder=2 + rank))
            legend[symbol] = colour
        axis.set_xlim(centre[0] - half, centre[0] + half)
        axis.set_ylim(centre[1] - 1.35 * half, centre[1] + half)  # room below the cell for the legend
        handles = [
            Line2D([], [], marker="o", linestyle="", markerfacecolor=c, markeredgecolor="black", label=s)
            for s, c in sorted(legend.items())
        ]
        axis.legend(
            handles=handles, loc="lower center", ncol=len(handles), fontsize=7, frameon=False, handletextpad=0.1
        )
    return save_figure(figure, path)
