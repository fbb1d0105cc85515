"""Data watermarking (Zhao et al. 2023, *A Recipe for Watermarking Diffusion Models*,
unconditional / class-conditional half): a StegaStamp-style codec hides an n-bit key in every
training image; a diffusion model trained on them reproduces it; the decoder reads it back and an
exact binomial test decides.

    from trustdiff.watermark import load_codec, watermark, detect, key_from_seed
    codec = load_codec("runs/codec")
    key = key_from_seed(7, codec.n_bits)                 # or parse_key("0x…", codec.n_bits)
    wm = watermark(codec, x, key)                        # wm["images"], wm["psnr"], wm["ssim"]
    det = detect(codec, generated, key, fpr=1e-6, clean=x_clean)
    det.summary()                                        # Bit-Acc, TPR [CI], threshold (analytic|calibrated)

Statistics (the public contract): :func:`p_value` and :func:`match_threshold`; a detector that
reads each image under a declared set of inverse transforms (``detect(..., search="geometry")``,
:mod:`.search`) decides on the best count with the union bound K·P(X ≥ m) (:func:`search_threshold`).
Removal attacks: :mod:`.attacks` (image-level, regeneration) and :mod:`.model_attacks` (pruning,
int8, fine-tuning), reported together by :mod:`.attack_report` (``trustdiff watermark attack``).
Math (codec, stats, distortions, keys, search, detection, attacks) never imports the training loop
or the CLI; the orchestration (:mod:`.training`, :mod:`.recipe`, :mod:`.sweeps`, :mod:`.attack_report`,
and :func:`.model_attacks.finetune`) does, and is imported lazily.
"""
from .codec import CodecObjective, decode_bits, decode_logits, encode, l2_weight, load_codec, save_codec
from .detect import Detection, detect, detect_bits
from .distortions import DISTORTIONS, GRID
from .embed import watermark, write_watermarked
from .keys import check_key, key_from_seed, key_to_bits, key_to_hex, parse_key, random_keys
from .null import null_calibration, shifted_copies, synthetic_strokes
from .search import SEARCHES
from .stats import (NullCheck, Threshold, bit_accuracy, decide_threshold, empirical_threshold, exact_fpr,
                    match_threshold, matches, null_check, p_value, search_p_value, search_threshold)

__all__ = [
    "p_value", "match_threshold", "exact_fpr", "bit_accuracy", "matches", "null_check", "decide_threshold",
    "empirical_threshold", "NullCheck", "Threshold",
    "parse_key", "key_from_seed", "random_keys", "check_key", "key_to_bits", "key_to_hex",
    "CodecObjective", "l2_weight", "save_codec", "load_codec", "encode", "decode_logits", "decode_bits",
    "watermark", "write_watermarked", "detect", "detect_bits", "Detection",
    "DISTORTIONS", "GRID", "null_calibration", "shifted_copies", "synthetic_strokes",
    "SEARCHES", "search_p_value", "search_threshold",
]
