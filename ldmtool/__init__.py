"""ldmtool: synthetic medical data augmentation with slice-by-slice latent diffusion models."""

__version__ = "0.1.0"
