"""Adversarial training on diffusion-generated data (Wang et al. 2023, *Better Diffusion Models
Further Improve Adversarial Training*): a class-conditional diffusion model samples a labelled set
(:mod:`.generated`), batches mix it with the real data (:mod:`.mix`), TRADES or PGD-AT trains a
classifier through the one training loop (:mod:`.losses`, :mod:`.training`), and the EMA network
is selected by PGD-40 on a held-out slice of the training set."""
from .generated import filter_top_k, generate_set, load_generated, pseudo_labels, write_filtered, write_pseudo_labelled
from .losses import adversarial_loss_fn, madry_loss, smooth_ce, trades_kl, trades_loss
from .mix import MixedStream, iterations_per_epoch, mixed_stream, real_count
from .training import AdvTrainJob, select_score, split_holdout, train_adv

__all__ = ["filter_top_k", "generate_set", "load_generated", "write_filtered", "pseudo_labels", "write_pseudo_labelled", "adversarial_loss_fn", "madry_loss",
           "smooth_ce", "trades_kl", "trades_loss", "MixedStream", "iterations_per_epoch", "mixed_stream",
           "real_count", "AdvTrainJob", "select_score", "split_holdout", "train_adv"]
