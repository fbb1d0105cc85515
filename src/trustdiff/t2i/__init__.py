"""Text-to-image models: diffusers pipeline folders (Stable-Diffusion style, or the built-in
CPU-sized model) as one Denoiser over text embeddings, sampling with classifier-free guidance,
and fine-tuning through the one training loop.

    from trustdiff.t2i import load_pipeline, generate
    pipe = load_pipeline("runs/t2i/pipeline")
    x, prompts, seeds = generate(pipe, ["a handwritten seven"], n_per_prompt=8)   # N×C×H×W in [0, 1]

The text-to-image watermark (a trigger prompt) is :mod:`trustdiff.watermark.trigger`.
"""
from .finetune import Preservation, PromptTable, Trainable, finetune, t2i_loss_fn
from .pipeline import T2IPipeline, derive_pipeline, generate, load_pipeline, read_index, sample, save_pipeline

__all__ = ["T2IPipeline", "load_pipeline", "save_pipeline", "derive_pipeline", "read_index", "sample", "generate",
           "Preservation", "PromptTable", "Trainable", "finetune", "t2i_loss_fn"]
