"""Tiny text-to-image pipelines for the tests, built from small configs with random weights and
locally written tokenizers (nothing is downloaded):

* :func:`tiny_builtin` — the built-in layout (pixel space, EDM scheduler) with a 2-layer BERT on a
  word-level vocabulary of the digit captions;
* :func:`tiny_sd` — a Stable-Diffusion layout: AutoencoderKL, CLIP text model and byte-level BPE
  tokenizer (no merges), UNet2DConditionModel in latent space, a PNDM scheduler config, and
  model_index.json with SD's null safety-checker entries.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from trustdiff.t2i import save_pipeline
from trustdiff.t2i.builtin import NUMBER_WORDS, TEMPLATES, BuiltinJob, new_builtin

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def bert_parts(max_length: int = 12, hidden: int = 32):
    from transformers import BertConfig, BertModel, BertTokenizer

    words = sorted({w for t in TEMPLATES for w in t.replace("{}", "").split()} | set(NUMBER_WORDS)
                   | {"[", "]", "v", "sks", "digit", "dog"})
    vocab = {t: i for i, t in enumerate(SPECIAL + words)}
    tok = BertTokenizer(vocab=vocab, model_max_length=max_length)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=32)
    te = BertModel(cfg).eval().requires_grad_(False)
    te.config.use_attention_mask = True
    return tok, te


def tiny_builtin(folder: Path, *, seed: int = 0) -> Path:
    tok, te = bert_parts()
    pipe = new_builtin(BuiltinJob(size="tiny", resolution=8, guidance=1.0), tokenizer=tok, text_encoder=te, seed=seed)
    return save_pipeline(pipe, folder)


def _clip_vocab() -> dict:
    """Byte-level BPE with no merges: one token per character (lower-case letters, digits and a
    little punctuation), with and without the end-of-word mark. Anything else is unknown."""
    chars = list("abcdefghijklmnopqrstuvwxyz0123456789[]().,!'")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab[c] = len(vocab)
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    return vocab


def tiny_sd(folder: Path, *, seed: int = 0) -> Path:
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = Path(folder)
    torch.manual_seed(seed)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), latent_channels=4,
                        norm_num_groups=8, layers_per_block=1, sample_size=16)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                layers_per_block=1, norm_num_groups=8, attention_head_dim=2, cross_attention_dim=32,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"))
    vocab = _clip_vocab()
    tok = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=32)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, max_position_embeddings=32, bos_token_id=0,
                                      eos_token_id=1, pad_token_id=1))
    sched = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True)
    for name, m in (("vae", vae), ("unet", unet), ("text_encoder", te)):
        m.save_pretrained(folder / name, safe_serialization=True)
    tok.save_pretrained(folder / "tokenizer")
    sched.save_pretrained(folder / "scheduler")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
             "feature_extractor": [None, None], "safety_checker": [None, None], "requires_safety_checker": False,
             "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"]}
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    return folder


def folder_digest(folder: Path) -> dict:
    """relative path → (size, bytes) of every file, for byte-identity checks."""
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
