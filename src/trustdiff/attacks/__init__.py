"""Adversarial attacks and evaluation that cannot fool itself: PGD (L∞/L2, EOT, restarts,
targeted, CE/CW/KL), BPDA, AutoAttack through the original code, and soundness checks."""
from .autoattack import autoattack, torchattacks_pgd
from .bpda import BPDA, BPDAClassifier
from .evaluate import Attack, autoattack_attack, bpda_attack, correct, evaluate, is_randomized, pgd_attack, to_markdown
from .pgd import attack_loss, fooled, input_gradient, margin, pgd, project, random_init
from .protocols import PROTOCOLS, FixedRandomness, evaluations, score

__all__ = ["autoattack", "torchattacks_pgd", "BPDA", "BPDAClassifier", "Attack", "autoattack_attack", "bpda_attack",
           "correct", "evaluate", "is_randomized", "pgd_attack", "to_markdown", "attack_loss", "input_gradient",
           "margin", "pgd", "project", "random_init", "fooled", "PROTOCOLS", "FixedRandomness", "evaluations", "score"]
