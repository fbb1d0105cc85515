"""Adversarial purification with diffusion models: DiffPure (Nie et al. 2022)."""
from .diffpure import (SOLVERS, Checkpointed, PurifiedClassifier, diffuse, nfe, purification_sigmas, purify, vote,
                       sigma_star)

__all__ = ["SOLVERS", "Checkpointed", "PurifiedClassifier", "diffuse", "nfe", "purification_sigmas", "purify",
           "sigma_star", "vote"]
