"""Latent-space tools: endpoints by file, id or formula, interpolation between two crystals, 2-D maps of a split.

These are the paper's two analyses of the latent space: decode points on the straight line between the
latents of two crystals (its Figs. 5 and 6), and project a dataset's latents to 2-D with t-SNE (Fig. 7).

``endpoints`` turns what the user typed into a crystal, ``interpolation`` decodes the line between two of
them, ``embedding`` encodes a split and saves its latents, ``maps`` projects saved latents and draws them.
"""

from nesfgen.latent.embedding import Embedding, EmbedOptions, embed, embed_to_file, load_embedding, save_embedding
from nesfgen.latent.endpoints import (
    Candidate,
    Endpoint,
    local_datasets,
    resolve_endpoint,
)
from nesfgen.latent.interpolation import (
    InterpolateOptions,
    Interpolation,
    composition_shares,
    decode_line,
    interpolate,
    interpolate_into_folder,
    interpolation_folder,
    step_rows,
    write_interpolation,
)
from nesfgen.latent.maps import MapOptions, map_latents, project, write_map

__all__ = [
    "Candidate",
    "EmbedOptions",
    "Embedding",
    "MapOptions",
    "Endpoint",
    "Interpolation",
    "composition_shares",
    "decode_line",
    "embed",
    "embed_to_file",
    "map_latents",
    "InterpolateOptions",
    "interpolate",
    "interpolate_into_folder",
    "interpolation_folder",
    "load_embedding",
    "local_datasets",
    "project",
    "resolve_endpoint",
    "save_embedding",
    "step_rows",
    "write_interpolation",
    "write_map",
]
