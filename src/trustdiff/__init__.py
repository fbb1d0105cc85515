"""trustdiff: trustworthy diffusion models, and diffusion models for trustworthy ML."""
__version__ = "0.1.0"
