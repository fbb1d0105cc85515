"""How much a diffusion model leaks about its training data.

* :mod:`~trustdiff.audit.neighbours`: exact ℓ2 k-nearest neighbours at scale (chunked batched
  matmuls on the inputs' device, bounded memory).
* :mod:`~trustdiff.audit.extract`: generate-and-filter extraction with Carlini et al.'s (2023)
  criterion for small images, against the held-out real images' baseline.
* :mod:`~trustdiff.audit.membership`: membership inference through the Denoiser contract — the
  loss attack (Matsumoto et al. 2023) and PIA (Kong et al. 2024) — with AUC and TPR at low FPR.
* :mod:`~trustdiff.audit.ownership`: the owner's whole set at once — membership scores through a
  Mann–Whitney test beside the data watermark's detection-count test.
"""
from .extract import (ALPHA, DELTA, N_NEIGHBOURS, RMS_THRESHOLD, NeighbourScores, TrainingSet, count_extracted,
                      extraction_report, flagged, normalized_distance, pair_grid, plot_distances,
                      prepare_training_set, score_images)
from .membership import (ATTACKS, FPRS, attack_metrics, attack_scores, auc, auc_interval, loss_at_sigmas,
                         member_split, membership_report, pia_at_sigmas, plot_roc, random_guess, roc_curve,
                         split_halves, tpr_at_fpr)
from .ownership import binomial_log_tail, detection_count_test, mann_whitney_test, membership_dataset_tests
from .neighbours import brute_force_knn, knn

__all__ = ["knn", "brute_force_knn", "ALPHA", "DELTA", "N_NEIGHBOURS", "RMS_THRESHOLD", "TrainingSet",
           "prepare_training_set", "NeighbourScores", "normalized_distance", "score_images", "flagged",
           "count_extracted", "extraction_report", "pair_grid", "plot_distances", "ATTACKS", "FPRS",
           "loss_at_sigmas", "pia_at_sigmas", "attack_scores", "auc", "auc_interval", "roc_curve", "tpr_at_fpr",
           "attack_metrics", "random_guess", "split_halves", "membership_report", "plot_roc", "member_split",
           "mann_whitney_test", "binomial_log_tail", "detection_count_test", "membership_dataset_tests"]
