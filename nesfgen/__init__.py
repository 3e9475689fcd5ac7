"""nesfgen: neural structure fields for crystal autoencoding and generative design."""

__version__ = "0.1.0"
