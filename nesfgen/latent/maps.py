"""2-D maps of latents (the paper's Fig. 7): a t-SNE or PCA projection, drawn coloured by volume, atoms and space group."""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nesfgen.errors import UserError, require
from nesfgen.files import atomic_write_text, new_figure, output_folder, save_figure
from nesfgen.latent.embedding import Embedding, attribute_columns, load_embedding
from nesfgen.options import required
from nesfgen.symmetry import CRYSTAL_SYSTEMS

log = logging.getLogger(__name__)

MAP_METHODS = ("tsne", "pca")
#: t-SNE's perplexity unless perplexity= is given (scikit-learn's default)
TSNE_PERPLEXITY = 30.0
#: first space-group number of each crystal system after triclinic (1-2), for the colour bar of the map
CRYSTAL_SYSTEM_STARTS = {name: first for first, name in reversed(CRYSTAL_SYSTEMS) if first > 1}


def project(
    latents: np.ndarray, method: str = "tsne", seed: int = 0, perplexity: float = TSNE_PERPLEXITY
) -> tuple[np.ndarray, dict]:
    """Latents (S, D) -> 2-D coordinates (S, 2), with what the method reports.

    ``tsne``: scikit-learn's Barnes-Hut t-SNE (PCA initialisation, seeded), the perplexity capped at
    (S - 1) / 3 for small sets. ``pca``: the first two principal components, signs fixed so the largest
    loading of each is positive.
    """
    if method not in MAP_METHODS:
        raise UserError(f"method must be one of {', '.join(MAP_METHODS)}, got {method!r}")
    latents = np.asarray(latents, dtype=np.float64)
    count = latents.shape[0]
    if latents.ndim != 2 or latents.shape[1] < 2:
        raise UserError(f"expected latents of at least 2 dimensions, got shape {latents.shape}")
    if method == "pca":
        if count < 2:
            raise UserError(f"PCA needs at least 2 structures, got {count}")
        centred = latents - latents.mean(0)
        _, singular, components = np.linalg.svd(centred, full_matrices=False)  # components (K, D)
        leading = np.argmax(np.abs(components[:2]), axis=1)  # (2,) largest loading of each component
        components = components[:2] * np.sign(components[[0, 1], leading])[:, None]  # (2, D)
        variance = singular**2 / max(float((singular**2).sum()), 1e-300)
        return centred @ components.T, {"explained_variance_ratio": [float(v) for v in variance[:2]]}
    if count < 4:
        raise UserError(f"t-SNE needs at least 4 structures, got {count}; use method=pca")
    from sklearn.manifold import TSNE

    used = min(perplexity, (count - 1) / 3)
    if used < perplexity:
        log.warning(
            "perplexity lowered from %s to %.2f: t-SNE allows (n - 1) / 3 for %d structures", perplexity, used, count
        )
    tsne = TSNE(n_components=2, perplexity=used, init="pca", learning_rate="auto", random_state=seed)
    coords = tsne.fit_transform(latents)
    return coords, {"perplexity": used, "seed": seed, "kl_divergence": float(tsne.kl_divergence_)}


def write_map(embedding: Embedding, coords: np.ndarray, method: str, out: Path, info: dict | None = None) -> list[Path]:
    """``map.csv`` (2-D coordinates with the attributes), ``map.json`` and the paper's Fig. 7 as three PNGs."""
    out = output_folder(out, "map folder")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    columns = attribute_columns(embedding)
    writer.writerow([*columns, "x", "y"])
    for index in range(len(embedding)):
        writer.writerow(
            [*(columns[name][index] for name in columns), f"{coords[index, 0]:.5g}", f"{coords[index, 1]:.5g}"]
        )
    label = {"tsne": "t-SNE", "pca": "PCA"}[method]
    where = " ".join(str(embedding.meta[k]) for k in ("dataset", "split") if k in embedding.meta)
    heading = f"{label} of {len(embedding)} latents" + (f" ({where})" if where else "")
    written = [
        atomic_write_text(out / "map.csv", buffer.getvalue()),
        _map_png(coords, embedding.volume, "cell volume [Å³]", heading, out / "map-volume.png"),
        _map_png(coords, embedding.num_atoms, "atoms per cell", heading, out / "map-atoms.png"),
        _map_png(coords, embedding.space_group, "space group", heading, out / "map-space-group.png", space_group=True),
    ]
    summary = {"method": method, "structures": len(embedding), **(info or {}), "embedding": embedding.meta}
    summary["files"] = [str(p) for p in written] + [str(out / "map.json")]
    written.append(atomic_write_text(out / "map.json", json.dumps(summary, indent=1)))
    return written


def _map_png(
    coords: np.ndarray, values: np.ndarray, label: str, heading: str, path: Path, space_group: bool = False
) -> Path:
    figure, axis = new_figure(1, 6.2, 5.2)
    values = np.asarray(values, dtype=float)
    size = float(np.clip(4000 / max(len(values), 1), 2, 30))
    shown = values > 0 if space_group else np.ones(len(values), dtype=bool)
    if not shown.all():  # no space group found: grey, beneath the rest
        axis.scatter(coords[~shown, 0], coords[~shown, 1], s=size, color="0.75", linewidths=0, label="none found")
        axis.legend(loc="best", fontsize=7)
    options = {"cmap": "turbo", "vmin": 1, "vmax": 230} if space_group else {"cmap": "viridis"}
    points = axis.scatter(coords[shown, 0], coords[shown, 1], c=values[shown], s=size, linewidths=0, **options)
    bar = figure.colorbar(points, ax=axis, label=label)
    if space_group:
        bar.set_ticks(list(CRYSTAL_SYSTEM_STARTS.values()) + [230])
        bar.set_ticklabels([f"{n} {name}" for name, n in CRYSTAL_SYSTEM_STARTS.items()] + ["230"], fontsize=8)
    elif label == "atoms per cell":
        bar.ax.yaxis.get_major_locator().set_params(integer=True)
    axis.set_title(f"{heading}\ncoloured by {label}", fontsize=9)
    axis.set_xticks([])
    axis.set_yticks([])
    return save_figure(figure, path)


@dataclass(frozen=True, kw_only=True)
class MapOptions:
    """A latents file and how to project it; ``out`` None: beside it, named LATENTS-METHOD."""

    source: str = required("give the latents file written by nesfgen embed: nesfgen map LATENTS")
    method: str = "tsne"
    out: str | None = None
    perplexity: float | None = None  # t-SNE's neighbourhood size; None: TSNE_PERPLEXITY
    seed: int = 0

    def __post_init__(self) -> None:
        if self.perplexity is not None:
            require(self.method == "tsne", "perplexity", self.perplexity, "no value with method=pca (a t-SNE setting)")
            require(
                self.perplexity > 0, "perplexity", self.perplexity, "a positive number (t-SNE's neighbourhood size)"
            )
        require(self.seed >= 0, "seed", self.seed, "0 or more")


def map_latents(options: MapOptions) -> dict[str, Any]:
    """Project a latents file to 2-D and write map.csv, map.json and the three coloured PNGs."""
    source = Path(options.source)
    embedding = load_embedding(source)
    perplexity = TSNE_PERPLEXITY if options.perplexity is None else options.perplexity
    coords, info = project(embedding.latents, options.method, options.seed, perplexity)
    out = Path(options.out or source.with_name(f"{source.stem}-{options.method}"))
    files = write_map(embedding, coords, options.method, out, info)
    return {"method": options.method, "structures": len(embedding), **info, "files": [str(f) for f in files]}
