"""EDM's networks (trustdiff.nets.edm) and the restricted reader of EDM's pickles (trustdiff.pretrained.edm).

No reference code is needed: the state_dict layouts pinned below were taken from NVlabs/edm's
``training/networks.py`` (tiny configurations, key order included), the parameter counts of the
published configurations were counted with that code, and EDM-style pickles are made here with a
stand-in ``torch_utils.persistence`` written into a temporary folder: its objects pickle as
``_reconstruct_persistent_obj(meta)`` with EDM's meta layout (type, version, module_src,
class_name, state). The output-for-output comparison against the reference code itself is
``bench/_verify_edm.py``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from trustdiff.errors import CheckpointError, InputError, UnsafeFileError

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from edm_pickle import _meta, _snapshot, as_edm, fake_persistence  # noqa: E402
from trustdiff.nets import edm as nets
from trustdiff.pretrained import edm

torch.set_num_threads(1)

_BASE = dict(img_resolution=8, in_channels=3, out_channels=3, model_channels=8, channel_mult=[1, 2], num_blocks=1,
             attn_resolutions=[4])
#: tiny configurations: DDPM++ (conditional, augmentation map), NCSN++ (residual encoder), NCSN++
#: with score_sde's skip encoder and decoder, ADM (conditional; 64 channels: one attention head)
TINY = {
    "ddpmpp": ("SongUNet", dict(_BASE, label_dim=2, augment_dim=3)),
    "ncsnpp": ("SongUNet", dict(_BASE, embedding_type="fourier", channel_mult_noise=2, encoder_type="residual",
                                resample_filter=[1, 3, 3, 1])),
    "ncsnpp-skip": ("SongUNet", dict(_BASE, embedding_type="fourier", channel_mult_noise=2, encoder_type="skip",
                                     decoder_type="skip", resample_filter=[1, 3, 3, 1])),
    "adm": ("DhariwalUNet", dict(_BASE, model_channels=64, label_dim=2, augment_dim=3)),
}

#: the reference's state_dict of each TINY network, in order: "name:shape" (NVlabs/edm, training/networks.py)
LAYOUT = {
    "ddpmpp": """
        map_label.weight:8x2 map_label.bias:8 map_augment.weight:8x3 map_layer0.weight:32x8 map_layer0.bias:32
        map_layer1.weight:32x32 map_layer1.bias:32 enc.8x8_conv.weight:8x3x3x3 enc.8x8_conv.bias:8
        enc.8x8_block0.norm0.weight:8 enc.8x8_block0.norm0.bias:8 enc.8x8_block0.conv0.weight:8x8x3x3
        enc.8x8_block0.conv0.bias:8 enc.8x8_block0.affine.weight:8x32 enc.8x8_block0.affine.bias:8
        enc.8x8_block0.norm1.weight:8 enc.8x8_block0.norm1.bias:8 enc.8x8_block0.conv1.weight:8x8x3x3
        enc.8x8_block0.conv1.bias:8 enc.4x4_down.norm0.weight:8 enc.4x4_down.norm0.bias:8
        enc.4x4_down.conv0.weight:8x8x3x3 enc.4x4_down.conv0.bias:8 enc.4x4_down.conv0.resample_filter:1x1x2x2
        enc.4x4_down.affine.weight:8x32 enc.4x4_down.affine.bias:8 enc.4x4_down.norm1.weight:8
        enc.4x4_down.norm1.bias:8 enc.4x4_down.conv1.weight:8x8x3x3 enc.4x4_down.conv1.bias:8
        enc.4x4_down.skip.weight:8x8x1x1 enc.4x4_down.skip.bias:8 enc.4x4_down.skip.resample_filter:1x1x2x2
        enc.4x4_block0.norm0.weight:8 enc.4x4_block0.norm0.bias:8 enc.4x4_block0.conv0.weight:16x8x3x3
        enc.4x4_block0.conv0.bias:16 enc.4x4_block0.affine.weight:16x32 enc.4x4_block0.affine.bias:16
        enc.4x4_block0.norm1.weight:16 enc.4x4_block0.norm1.bias:16 enc.4x4_block0.conv1.weight:16x16x3x3
        enc.4x4_block0.conv1.bias:16 enc.4x4_block0.skip.weight:16x8x1x1 enc.4x4_block0.skip.bias:16
        enc.4x4_block0.norm2.weight:16 enc.4x4_block0.norm2.bias:16 enc.4x4_block0.qkv.weight:48x16x1x1
        enc.4x4_block0.qkv.bias:48 enc.4x4_block0.proj.weight:16x16x1x1 enc.4x4_block0.proj.bias:16
        dec.4x4_in0.norm0.weight:16 dec.4x4_in0.norm0.bias:16 dec.4x4_in0.conv0.weight:16x16x3x3
        dec.4x4_in0.conv0.bias:16 dec.4x4_in0.affine.weight:16x32 dec.4x4_in0.affine.bias:16
        dec.4x4_in0.norm1.weight:16 dec.4x4_in0.norm1.bias:16 dec.4x4_in0.conv1.weight:16x16x3x3
        dec.4x4_in0.conv1.bias:16 dec.4x4_in0.norm2.weight:16 dec.4x4_in0.norm2.bias:16
        dec.4x4_in0.qkv.weight:48x16x1x1 dec.4x4_in0.qkv.bias:48 dec.4x4_in0.proj.weight:16x16x1x1
        dec.4x4_in0.proj.bias:16 dec.4x4_in1.norm0.weight:16 dec.4x4_in1.norm0.bias:16
        dec.4x4_in1.conv0.weight:16x16x3x3 dec.4x4_in1.conv0.bias:16 dec.4x4_in1.affine.weight:16x32
        dec.4x4_in1.affine.bias:16 dec.4x4_in1.norm1.weight:16 dec.4x4_in1.norm1.bias:16
        dec.4x4_in1.conv1.weight:16x16x3x3 dec.4x4_in1.conv1.bias:16 dec.4x4_block0.norm0.weight:32
        dec.4x4_block0.norm0.bias:32 dec.4x4_block0.conv0.weight:16x32x3x3 dec.4x4_block0.conv0.bias:16
        dec.4x4_block0.affine.weight:16x32 dec.4x4_block0.affine.bias:16 dec.4x4_block0.norm1.weight:16
        dec.4x4_block0.norm1.bias:16 dec.4x4_block0.conv1.weight:16x16x3x3 dec.4x4_block0.conv1.bias:16
        dec.4x4_block0.skip.weight:16x32x1x1 dec.4x4_block0.skip.bias:16 dec.4x4_block1.norm0.weight:24
        dec.4x4_block1.norm0.bias:24 dec.4x4_block1.conv0.weight:16x24x3x3 dec.4x4_block1.conv0.bias:16
        dec.4x4_block1.affine.weight:16x32 dec.4x4_block1.affine.bias:16 dec.4x4_block1.norm1.weight:16
        dec.4x4_block1.norm1.bias:16 dec.4x4_block1.conv1.weight:16x16x3x3 dec.4x4_block1.conv1.bias:16
        dec.4x4_block1.skip.weight:16x24x1x1 dec.4x4_block1.skip.bias:16 dec.4x4_block1.norm2.weight:16
        dec.4x4_block1.norm2.bias:16 dec.4x4_block1.qkv.weight:48x16x1x1 dec.4x4_block1.qkv.bias:48
        dec.4x4_block1.proj.weight:16x16x1x1 dec.4x4_block1.proj.bias:16 dec.8x8_up.norm0.weight:16
        dec.8x8_up.norm0.bias:16 dec.8x8_up.conv0.weight:16x16x3x3 dec.8x8_up.conv0.bias:16
        dec.8x8_up.conv0.resample_filter:1x1x2x2 dec.8x8_up.affine.weight:16x32 dec.8x8_up.affine.bias:16
        dec.8x8_up.norm1.weight:16 dec.8x8_up.norm1.bias:16 dec.8x8_up.conv1.weight:16x16x3x3 dec.8x8_up.conv1.bias:16
        dec.8x8_up.skip.weight:16x16x1x1 dec.8x8_up.skip.bias:16 dec.8x8_up.skip.resample_filter:1x1x2x2
        dec.8x8_block0.norm0.weight:24 dec.8x8_block0.norm0.bias:24 dec.8x8_block0.conv0.weight:8x24x3x3
        dec.8x8_block0.conv0.bias:8 dec.8x8_block0.affine.weight:8x32 dec.8x8_block0.affine.bias:8
        dec.8x8_block0.norm1.weight:8 dec.8x8_block0.norm1.bias:8 dec.8x8_block0.conv1.weight:8x8x3x3
        dec.8x8_block0.conv1.bias:8 dec.8x8_block0.skip.weight:8x24x1x1 dec.8x8_block0.skip.bias:8
        dec.8x8_block1.norm0.weight:16 dec.8x8_block1.norm0.bias:16 dec.8x8_block1.conv0.weight:8x16x3x3
        dec.8x8_block1.conv0.bias:8 dec.8x8_block1.affine.weight:8x32 dec.8x8_block1.affine.bias:8
        dec.8x8_block1.norm1.weight:8 dec.8x8_block1.norm1.bias:8 dec.8x8_block1.conv1.weight:8x8x3x3
        dec.8x8_block1.conv1.bias:8 dec.8x8_block1.skip.weight:8x16x1x1 dec.8x8_block1.skip.bias:8
        dec.8x8_aux_norm.weight:8 dec.8x8_aux_norm.bias:8 dec.8x8_aux_conv.weight:3x8x3x3 dec.8x8_aux_conv.bias:3
    """,
    "ncsnpp": """
        map_noise.freqs:8 map_layer0.weight:32x16 map_layer0.bias:32 map_layer1.weight:32x32 map_layer1.bias:32
        enc.8x8_conv.weight:8x3x3x3 enc.8x8_conv.bias:8 enc.8x8_block0.norm0.weight:8 enc.8x8_block0.norm0.bias:8
        enc.8x8_block0.conv0.weight:8x8x3x3 enc.8x8_block0.conv0.bias:8 enc.8x8_block0.affine.weight:8x32
        enc.8x8_block0.affine.bias:8 enc.8x8_block0.norm1.weight:8 enc.8x8_block0.norm1.bias:8
        enc.8x8_block0.conv1.weight:8x8x3x3 enc.8x8_block0.conv1.bias:8 enc.4x4_down.norm0.weight:8
        enc.4x4_down.norm0.bias:8 enc.4x4_down.conv0.weight:8x8x3x3 enc.4x4_down.conv0.bias:8
        enc.4x4_down.conv0.resample_filter:1x1x4x4 enc.4x4_down.affine.weight:8x32 enc.4x4_down.affine.bias:8
        enc.4x4_down.norm1.weight:8 enc.4x4_down.norm1.bias:8 enc.4x4_down.conv1.weight:8x8x3x3
        enc.4x4_down.conv1.bias:8 enc.4x4_down.skip.weight:8x8x1x1 enc.4x4_down.skip.bias:8
        enc.4x4_down.skip.resample_filter:1x1x4x4 enc.4x4_aux_residual.weight:8x3x3x3 enc.4x4_aux_residual.bias:8
        enc.4x4_aux_residual.resample_filter:1x1x4x4 enc.4x4_block0.norm0.weight:8 enc.4x4_block0.norm0.bias:8
        enc.4x4_block0.conv0.weight:16x8x3x3 enc.4x4_block0.conv0.bias:16 enc.4x4_block0.affine.weight:16x32
        enc.4x4_block0.affine.bias:16 enc.4x4_block0.norm1.weight:16 enc.4x4_block0.norm1.bias:16
        enc.4x4_block0.conv1.weight:16x16x3x3 enc.4x4_block0.conv1.bias:16 enc.4x4_block0.skip.weight:16x8x1x1
        enc.4x4_block0.skip.bias:16 enc.4x4_block0.norm2.weight:16 enc.4x4_block0.norm2.bias:16
        enc.4x4_block0.qkv.weight:48x16x1x1 enc.4x4_block0.qkv.bias:48 enc.4x4_block0.proj.weight:16x16x1x1
        enc.4x4_block0.proj.bias:16 dec.4x4_in0.norm0.weight:16 dec.4x4_in0.norm0.bias:16
        dec.4x4_in0.conv0.weight:16x16x3x3 dec.4x4_in0.conv0.bias:16 dec.4x4_in0.affine.weight:16x32
        dec.4x4_in0.affine.bias:16 dec.4x4_in0.norm1.weight:16 dec.4x4_in0.norm1.bias:16
        dec.4x4_in0.conv1.weight:16x16x3x3 dec.4x4_in0.conv1.bias:16 dec.4x4_in0.norm2.weight:16
        dec.4x4_in0.norm2.bias:16 dec.4x4_in0.qkv.weight:48x16x1x1 dec.4x4_in0.qkv.bias:48
        dec.4x4_in0.proj.weight:16x16x1x1 dec.4x4_in0.proj.bias:16 dec.4x4_in1.norm0.weight:16
        dec.4x4_in1.norm0.bias:16 dec.4x4_in1.conv0.weight:16x16x3x3 dec.4x4_in1.conv0.bias:16
        dec.4x4_in1.affine.weight:16x32 dec.4x4_in1.affine.bias:16 dec.4x4_in1.norm1.weight:16
        dec.4x4_in1.norm1.bias:16 dec.4x4_in1.conv1.weight:16x16x3x3 dec.4x4_in1.conv1.bias:16
        dec.4x4_block0.norm0.weight:32 dec.4x4_block0.norm0.bias:32 dec.4x4_block0.conv0.weight:16x32x3x3
        dec.4x4_block0.conv0.bias:16 dec.4x4_block0.affine.weight:16x32 dec.4x4_block0.affine.bias:16
        dec.4x4_block0.norm1.weight:16 dec.4x4_block0.norm1.bias:16 dec.4x4_block0.conv1.weight:16x16x3x3
        dec.4x4_block0.conv1.bias:16 dec.4x4_block0.skip.weight:16x32x1x1 dec.4x4_block0.skip.bias:16
        dec.4x4_block1.norm0.weight:24 dec.4x4_block1.norm0.bias:24 dec.4x4_block1.conv0.weight:16x24x3x3
        dec.4x4_block1.conv0.bias:16 dec.4x4_block1.affine.weight:16x32 dec.4x4_block1.affine.bias:16
        dec.4x4_block1.norm1.weight:16 dec.4x4_block1.norm1.bias:16 dec.4x4_block1.conv1.weight:16x16x3x3
        dec.4x4_block1.conv1.bias:16 dec.4x4_block1.skip.weight:16x24x1x1 dec.4x4_block1.skip.bias:16
        dec.4x4_block1.norm2.weight:16 dec.4x4_block1.norm2.bias:16 dec.4x4_block1.qkv.weight:48x16x1x1
        dec.4x4_block1.qkv.bias:48 dec.4x4_block1.proj.weight:16x16x1x1 dec.4x4_block1.proj.bias:16
        dec.8x8_up.norm0.weight:16 dec.8x8_up.norm0.bias:16 dec.8x8_up.conv0.weight:16x16x3x3 dec.8x8_up.conv0.bias:16
        dec.8x8_up.conv0.resample_filter:1x1x4x4 dec.8x8_up.affine.weight:16x32 dec.8x8_up.affine.bias:16
        dec.8x8_up.norm1.weight:16 dec.8x8_up.norm1.bias:16 dec.8x8_up.conv1.weight:16x16x3x3 dec.8x8_up.conv1.bias:16
        dec.8x8_up.skip.weight:16x16x1x1 dec.8x8_up.skip.bias:16 dec.8x8_up.skip.resample_filter:1x1x4x4
        dec.8x8_block0.norm0.weight:24 dec.8x8_block0.norm0.bias:24 dec.8x8_block0.conv0.weight:8x24x3x3
        dec.8x8_block0.conv0.bias:8 dec.8x8_block0.affine.weight:8x32 dec.8x8_block0.affine.bias:8
        dec.8x8_block0.norm1.weight:8 dec.8x8_block0.norm1.bias:8 dec.8x8_block0.conv1.weight:8x8x3x3
        dec.8x8_block0.conv1.bias:8 dec.8x8_block0.skip.weight:8x24x1x1 dec.8x8_block0.skip.bias:8
        dec.8x8_block1.norm0.weight:16 dec.8x8_block1.norm0.bias:16 dec.8x8_block1.conv0.weight:8x16x3x3
        dec.8x8_block1.conv0.bias:8 dec.8x8_block1.affine.weight:8x32 dec.8x8_block1.affine.bias:8
        dec.8x8_block1.norm1.weight:8 dec.8x8_block1.norm1.bias:8 dec.8x8_block1.conv1.weight:8x8x3x3
        dec.8x8_block1.conv1.bias:8 dec.8x8_block1.skip.weight:8x16x1x1 dec.8x8_block1.skip.bias:8
        dec.8x8_aux_norm.weight:8 dec.8x8_aux_norm.bias:8 dec.8x8_aux_conv.weight:3x8x3x3 dec.8x8_aux_conv.bias:3
    """,
    "ncsnpp-skip": """
        map_noise.freqs:8 map_layer0.weight:32x16 map_layer0.bias:32 map_layer1.weight:32x32 map_layer1.bias:32
        enc.8x8_conv.weight:8x3x3x3 enc.8x8_conv.bias:8 enc.8x8_block0.norm0.weight:8 enc.8x8_block0.norm0.bias:8
        enc.8x8_block0.conv0.weight:8x8x3x3 enc.8x8_block0.conv0.bias:8 enc.8x8_block0.affine.weight:8x32
        enc.8x8_block0.affine.bias:8 enc.8x8_block0.norm1.weight:8 enc.8x8_block0.norm1.bias:8
        enc.8x8_block0.conv1.weight:8x8x3x3 enc.8x8_block0.conv1.bias:8 enc.4x4_down.norm0.weight:8
        enc.4x4_down.norm0.bias:8 enc.4x4_down.conv0.weight:8x8x3x3 enc.4x4_down.conv0.bias:8
        enc.4x4_down.conv0.resample_filter:1x1x4x4 enc.4x4_down.affine.weight:8x32 enc.4x4_down.affine.bias:8
        enc.4x4_down.norm1.weight:8 enc.4x4_down.norm1.bias:8 enc.4x4_down.conv1.weight:8x8x3x3
        enc.4x4_down.conv1.bias:8 enc.4x4_down.skip.weight:8x8x1x1 enc.4x4_down.skip.bias:8
        enc.4x4_down.skip.resample_filter:1x1x4x4 enc.4x4_aux_down.resample_filter:1x1x4x4
        enc.4x4_aux_skip.weight:8x3x1x1 enc.4x4_aux_skip.bias:8 enc.4x4_block0.norm0.weight:8
        enc.4x4_block0.norm0.bias:8 enc.4x4_block0.conv0.weight:16x8x3x3 enc.4x4_block0.conv0.bias:16
        enc.4x4_block0.affine.weight:16x32 enc.4x4_block0.affine.bias:16 enc.4x4_block0.norm1.weight:16
        enc.4x4_block0.norm1.bias:16 enc.4x4_block0.conv1.weight:16x16x3x3 enc.4x4_block0.conv1.bias:16
        enc.4x4_block0.skip.weight:16x8x1x1 enc.4x4_block0.skip.bias:16 enc.4x4_block0.norm2.weight:16
        enc.4x4_block0.norm2.bias:16 enc.4x4_block0.qkv.weight:48x16x1x1 enc.4x4_block0.qkv.bias:48
        enc.4x4_block0.proj.weight:16x16x1x1 enc.4x4_block0.proj.bias:16 dec.4x4_in0.norm0.weight:16
        dec.4x4_in0.norm0.bias:16 dec.4x4_in0.conv0.weight:16x16x3x3 dec.4x4_in0.conv0.bias:16
        dec.4x4_in0.affine.weight:16x32 dec.4x4_in0.affine.bias:16 dec.4x4_in0.norm1.weight:16
        dec.4x4_in0.norm1.bias:16 dec.4x4_in0.conv1.weight:16x16x3x3 dec.4x4_in0.conv1.bias:16
        dec.4x4_in0.norm2.weight:16 dec.4x4_in0.norm2.bias:16 dec.4x4_in0.qkv.weight:48x16x1x1 dec.4x4_in0.qkv.bias:48
        dec.4x4_in0.proj.weight:16x16x1x1 dec.4x4_in0.proj.bias:16 dec.4x4_in1.norm0.weight:16
        dec.4x4_in1.norm0.bias:16 dec.4x4_in1.conv0.weight:16x16x3x3 dec.4x4_in1.conv0.bias:16
        dec.4x4_in1.affine.weight:16x32 dec.4x4_in1.affine.bias:16 dec.4x4_in1.norm1.weight:16
        dec.4x4_in1.norm1.bias:16 dec.4x4_in1.conv1.weight:16x16x3x3 dec.4x4_in1.conv1.bias:16
        dec.4x4_block0.norm0.weight:32 dec.4x4_block0.norm0.bias:32 dec.4x4_block0.conv0.weight:16x32x3x3
        dec.4x4_block0.conv0.bias:16 dec.4x4_block0.affine.weight:16x32 dec.4x4_block0.affine.bias:16
        dec.4x4_block0.norm1.weight:16 dec.4x4_block0.norm1.bias:16 dec.4x4_block0.conv1.weight:16x16x3x3
        dec.4x4_block0.conv1.bias:16 dec.4x4_block0.skip.weight:16x32x1x1 dec.4x4_block0.skip.bias:16
        dec.4x4_block1.norm0.weight:24 dec.4x4_block1.norm0.bias:24 dec.4x4_block1.conv0.weight:16x24x3x3
        dec.4x4_block1.conv0.bias:16 dec.4x4_block1.affine.weight:16x32 dec.4x4_block1.affine.bias:16
        dec.4x4_block1.norm1.weight:16 dec.4x4_block1.norm1.bias:16 dec.4x4_block1.conv1.weight:16x16x3x3
        dec.4x4_block1.conv1.bias:16 dec.4x4_block1.skip.weight:16x24x1x1 dec.4x4_block1.skip.bias:16
        dec.4x4_block1.norm2.weight:16 dec.4x4_block1.norm2.bias:16 dec.4x4_block1.qkv.weight:48x16x1x1
        dec.4x4_block1.qkv.bias:48 dec.4x4_block1.proj.weight:16x16x1x1 dec.4x4_block1.proj.bias:16
        dec.4x4_aux_norm.weight:16 dec.4x4_aux_norm.bias:16 dec.4x4_aux_conv.weight:3x16x3x3 dec.4x4_aux_conv.bias:3
        dec.8x8_up.norm0.weight:16 dec.8x8_up.norm0.bias:16 dec.8x8_up.conv0.weight:16x16x3x3 dec.8x8_up.conv0.bias:16
        dec.8x8_up.conv0.resample_filter:1x1x4x4 dec.8x8_up.affine.weight:16x32 dec.8x8_up.affine.bias:16
        dec.8x8_up.norm1.weight:16 dec.8x8_up.norm1.bias:16 dec.8x8_up.conv1.weight:16x16x3x3 dec.8x8_up.conv1.bias:16
        dec.8x8_up.skip.weight:16x16x1x1 dec.8x8_up.skip.bias:16 dec.8x8_up.skip.resample_filter:1x1x4x4
        dec.8x8_block0.norm0.weight:24 dec.8x8_block0.norm0.bias:24 dec.8x8_block0.conv0.weight:8x24x3x3
        dec.8x8_block0.conv0.bias:8 dec.8x8_block0.affine.weight:8x32 dec.8x8_block0.affine.bias:8
        dec.8x8_block0.norm1.weight:8 dec.8x8_block0.norm1.bias:8 dec.8x8_block0.conv1.weight:8x8x3x3
        dec.8x8_block0.conv1.bias:8 dec.8x8_block0.skip.weight:8x24x1x1 dec.8x8_block0.skip.bias:8
        dec.8x8_block1.norm0.weight:16 dec.8x8_block1.norm0.bias:16 dec.8x8_block1.conv0.weight:8x16x3x3
        dec.8x8_block1.conv0.bias:8 dec.8x8_block1.affine.weight:8x32 dec.8x8_block1.affine.bias:8
        dec.8x8_block1.norm1.weight:8 dec.8x8_block1.norm1.bias:8 dec.8x8_block1.conv1.weight:8x8x3x3
        dec.8x8_block1.conv1.bias:8 dec.8x8_block1.skip.weight:8x16x1x1 dec.8x8_block1.skip.bias:8
        dec.8x8_aux_up.resample_filter:1x1x4x4 dec.8x8_aux_norm.weight:8 dec.8x8_aux_norm.bias:8
        dec.8x8_aux_conv.weight:3x8x3x3 dec.8x8_aux_conv.bias:3
    """,
    "adm": """
        map_augment.weight:64x3 map_layer0.weight:256x64 map_layer0.bias:256 map_layer1.weight:256x256
        map_layer1.bias:256 map_label.weight:256x2 enc.8x8_conv.weight:64x3x3x3 enc.8x8_conv.bias:64
        enc.8x8_block0.norm0.weight:64 enc.8x8_block0.norm0.bias:64 enc.8x8_block0.conv0.weight:64x64x3x3
        enc.8x8_block0.conv0.bias:64 enc.8x8_block0.affine.weight:128x256 enc.8x8_block0.affine.bias:128
        enc.8x8_block0.norm1.weight:64 enc.8x8_block0.norm1.bias:64 enc.8x8_block0.conv1.weight:64x64x3x3
        enc.8x8_block0.conv1.bias:64 enc.4x4_down.norm0.weight:64 enc.4x4_down.norm0.bias:64
        enc.4x4_down.conv0.weight:64x64x3x3 enc.4x4_down.conv0.bias:64 enc.4x4_down.conv0.resample_filter:1x1x2x2
        enc.4x4_down.affine.weight:128x256 enc.4x4_down.affine.bias:128 enc.4x4_down.norm1.weight:64
        enc.4x4_down.norm1.bias:64 enc.4x4_down.conv1.weight:64x64x3x3 enc.4x4_down.conv1.bias:64
        enc.4x4_down.skip.resample_filter:1x1x2x2 enc.4x4_block0.norm0.weight:64 enc.4x4_block0.norm0.bias:64
        enc.4x4_block0.conv0.weight:128x64x3x3 enc.4x4_block0.conv0.bias:128 enc.4x4_block0.affine.weight:256x256
        enc.4x4_block0.affine.bias:256 enc.4x4_block0.norm1.weight:128 enc.4x4_block0.norm1.bias:128
        enc.4x4_block0.conv1.weight:128x128x3x3 enc.4x4_block0.conv1.bias:128 enc.4x4_block0.skip.weight:128x64x1x1
        enc.4x4_block0.skip.bias:128 enc.4x4_block0.norm2.weight:128 enc.4x4_block0.norm2.bias:128
        enc.4x4_block0.qkv.weight:384x128x1x1 enc.4x4_block0.qkv.bias:384 enc.4x4_block0.proj.weight:128x128x1x1
        enc.4x4_block0.proj.bias:128 dec.4x4_in0.norm0.weight:128 dec.4x4_in0.norm0.bias:128
        dec.4x4_in0.conv0.weight:128x128x3x3 dec.4x4_in0.conv0.bias:128 dec.4x4_in0.affine.weight:256x256
        dec.4x4_in0.affine.bias:256 dec.4x4_in0.norm1.weight:128 dec.4x4_in0.norm1.bias:128
        dec.4x4_in0.conv1.weight:128x128x3x3 dec.4x4_in0.conv1.bias:128 dec.4x4_in0.norm2.weight:128
        dec.4x4_in0.norm2.bias:128 dec.4x4_in0.qkv.weight:384x128x1x1 dec.4x4_in0.qkv.bias:384
        dec.4x4_in0.proj.weight:128x128x1x1 dec.4x4_in0.proj.bias:128 dec.4x4_in1.norm0.weight:128
        dec.4x4_in1.norm0.bias:128 dec.4x4_in1.conv0.weight:128x128x3x3 dec.4x4_in1.conv0.bias:128
        dec.4x4_in1.affine.weight:256x256 dec.4x4_in1.affine.bias:256 dec.4x4_in1.norm1.weight:128
        dec.4x4_in1.norm1.bias:128 dec.4x4_in1.conv1.weight:128x128x3x3 dec.4x4_in1.conv1.bias:128
        dec.4x4_block0.norm0.weight:256 dec.4x4_block0.norm0.bias:256 dec.4x4_block0.conv0.weight:128x256x3x3
        dec.4x4_block0.conv0.bias:128 dec.4x4_block0.affine.weight:256x256 dec.4x4_block0.affine.bias:256
        dec.4x4_block0.norm1.weight:128 dec.4x4_block0.norm1.bias:128 dec.4x4_block0.conv1.weight:128x128x3x3
        dec.4x4_block0.conv1.bias:128 dec.4x4_block0.skip.weight:128x256x1x1 dec.4x4_block0.skip.bias:128
        dec.4x4_block0.norm2.weight:128 dec.4x4_block0.norm2.bias:128 dec.4x4_block0.qkv.weight:384x128x1x1
        dec.4x4_block0.qkv.bias:384 dec.4x4_block0.proj.weight:128x128x1x1 dec.4x4_block0.proj.bias:128
        dec.4x4_block1.norm0.weight:192 dec.4x4_block1.norm0.bias:192 dec.4x4_block1.conv0.weight:128x192x3x3
        dec.4x4_block1.conv0.bias:128 dec.4x4_block1.affine.weight:256x256 dec.4x4_block1.affine.bias:256
        dec.4x4_block1.norm1.weight:128 dec.4x4_block1.norm1.bias:128 dec.4x4_block1.conv1.weight:128x128x3x3
        dec.4x4_block1.conv1.bias:128 dec.4x4_block1.skip.weight:128x192x1x1 dec.4x4_block1.skip.bias:128
        dec.4x4_block1.norm2.weight:128 dec.4x4_block1.norm2.bias:128 dec.4x4_block1.qkv.weight:384x128x1x1
        dec.4x4_block1.qkv.bias:384 dec.4x4_block1.proj.weight:128x128x1x1 dec.4x4_block1.proj.bias:128
        dec.8x8_up.norm0.weight:128 dec.8x8_up.norm0.bias:128 dec.8x8_up.conv0.weight:128x128x3x3
        dec.8x8_up.conv0.bias:128 dec.8x8_up.conv0.resample_filter:1x1x2x2 dec.8x8_up.affine.weight:256x256
        dec.8x8_up.affine.bias:256 dec.8x8_up.norm1.weight:128 dec.8x8_up.norm1.bias:128
        dec.8x8_up.conv1.weight:128x128x3x3 dec.8x8_up.conv1.bias:128 dec.8x8_up.skip.resample_filter:1x1x2x2
        dec.8x8_block0.norm0.weight:192 dec.8x8_block0.norm0.bias:192 dec.8x8_block0.conv0.weight:64x192x3x3
        dec.8x8_block0.conv0.bias:64 dec.8x8_block0.affine.weight:128x256 dec.8x8_block0.affine.bias:128
        dec.8x8_block0.norm1.weight:64 dec.8x8_block0.norm1.bias:64 dec.8x8_block0.conv1.weight:64x64x3x3
        dec.8x8_block0.conv1.bias:64 dec.8x8_block0.skip.weight:64x192x1x1 dec.8x8_block0.skip.bias:64
        dec.8x8_block1.norm0.weight:128 dec.8x8_block1.norm0.bias:128 dec.8x8_block1.conv0.weight:64x128x3x3
        dec.8x8_block1.conv0.bias:64 dec.8x8_block1.affine.weight:128x256 dec.8x8_block1.affine.bias:128
        dec.8x8_block1.norm1.weight:64 dec.8x8_block1.norm1.bias:64 dec.8x8_block1.conv1.weight:64x64x3x3
        dec.8x8_block1.conv1.bias:64 dec.8x8_block1.skip.weight:64x128x1x1 dec.8x8_block1.skip.bias:64
        out_norm.weight:64 out_norm.bias:64 out_conv.weight:3x64x3x3 out_conv.bias:3
    """,
}


def _layout(net: nn.Module) -> list[str]:
    return [f"{k}:{'x'.join(map(str, v.shape))}" for k, v in net.state_dict().items()]


def _tiny(name: str) -> nn.Module:
    cls, kw = TINY[name]
    return nets.MODELS[cls](**kw)


def _randomise(net: nn.Module, seed: int = 0) -> nn.Module:
    """Every parameter random (EDM zero-initialises some output layers)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel() if p.ndim > 1 else 10))
    return net


def _precond(kind: str, tiny: str, **extra) -> nn.Module:
    """A preconditioner around a TINY network, every parameter random, in eval mode."""
    cls, kw = TINY[tiny]
    kw = {k: v for k, v in kw.items() if k not in ("img_resolution", "in_channels", "out_channels")}
    return _randomise(nets.PRECONDS[kind](img_resolution=8, img_channels=3, model_type=cls, **kw, **extra)).eval()


def _one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg, msg
    return msg


# --- the networks ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TINY))
def test_state_dict_layout_is_the_references(name):
    assert _layout(_tiny(name)) == LAYOUT[name].split()


@pytest.mark.parametrize("name", list(TINY))
def test_forward_shapes(name):
    net = _randomise(_tiny(name)).eval()
    kw = TINY[name][1]
    x = torch.randn(2, 3, 8, 8)
    y = torch.eye(2) if kw.get("label_dim") else None
    out = net(x, torch.tensor([0.3, -1.2]), y)
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()
    if kw.get("augment_dim"):                             # the augmentation map changes the output
        assert not torch.equal(net(x, torch.tensor([0.3, -1.2]), y, augment_labels=torch.ones(2, 3)), out)


def test_precond_state_dict_is_model_plus_iddpm_table():
    p = _precond("iDDPMPrecond", "adm", M=50)
    assert p.model(torch.randn(1, 3, 8, 8), torch.zeros(1), torch.zeros(1, 2)).shape == (1, 6, 8, 8)   # ε and variance
    assert list(p.state_dict()) == ["u"] + ["model." + k.split(":")[0] for k in LAYOUT["adm"].split()]
    assert p.state_dict()["model.out_conv.weight"].shape == (6, 64, 3, 3)


def test_parameter_names_do_not_depend_on_the_device():
    with torch.device("meta"):
        net = _tiny("ncsnpp-skip")
    assert _layout(net) == LAYOUT["ncsnpp-skip"].split()


# --- preconditioning: D against EDM Table 1's closed forms ------------------------------------------


class _StubF(nn.Module):
    """F(x_in; c_noise) = x_in + c_noise (per sample), then extra channels of junk for iDDPM."""

    def __init__(self, extra: int = 0):
        super().__init__()
        self.extra, self.seen = extra, {}

    def forward(self, x, noise_labels, class_labels=None, **kw):
        self.seen = dict(class_labels=class_labels, **kw)
        out = x + noise_labels.reshape(-1, 1, 1, 1)
        return torch.cat([out, torch.full_like(x, 1e6)], 1)[:, : x.shape[1] * (1 + self.extra)]


class _ZeroF(nn.Module):
    def forward(self, x, noise_labels, class_labels=None, **kw):
        return torch.zeros(x.shape[0], 2 * x.shape[1], *x.shape[2:], dtype=x.dtype)


def _iddpm_u(M=1000, C_1=0.001, C_2=0.008):
    """EDM Table 1 (iDDPM): u_{j−1} = √((u_j²+1)/max(ᾱ_{j−1}/ᾱ_j, C_1) − 1), ᾱ_j = sin²(πj/(2M(1+C_2)))."""
    a = [math.sin(math.pi * j / (2 * M * (1 + C_2))) ** 2 for j in range(M + 1)]
    u = [0.0] * (M + 1)
    for j in range(M, 0, -1):
        u[j - 1] = math.sqrt((u[j] ** 2 + 1) / max(a[j - 1] / a[j], C_1) - 1)
    return u


def _closed_form(kind, s, u=None):
    """(c_skip, c_out, c_in, c_noise) at σ = s (EDM Table 1), float64."""
    if kind == "EDMPrecond":
        d = 0.5
        return d**2 / (s**2 + d**2), s * d / math.sqrt(s**2 + d**2), 1 / math.sqrt(s**2 + d**2), math.log(s) / 4
    if kind == "VPPrecond":                        # β_d = 19.9, β_min = 0.1, M = 1000
        t = (math.sqrt(0.1**2 + 2 * 19.9 * math.log(1 + s**2)) - 0.1) / 19.9
        return 1, -s, 1 / math.sqrt(s**2 + 1), 999 * t
    if kind == "VEPrecond":
        return 1, s, 1, math.log(s / 2)
    j = min(range(len(u)), key=lambda i: abs(u[i] - s))
    return 1, -s, 1 / math.sqrt(s**2 + 1), len(u) - 2 - j


@pytest.mark.parametrize("kind", ["EDMPrecond", "VPPrecond", "VEPrecond", "iDDPMPrecond"])
def test_precond_matches_the_closed_form(kind):
    p = _precond(kind, "ddpmpp")
    p.model = _StubF(extra=1 if kind == "iDDPMPrecond" else 0)
    u = _iddpm_u() if kind == "iDDPMPrecond" else None
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    for s in (0.002, 0.05, 0.7, 3.0, 80.0):
        c_skip, c_out, c_in, c_noise = _closed_form(kind, s, u)
        want = c_skip * x + c_out * (c_in * x + c_noise)
        got = p(x, s)
        assert got.dtype == torch.float64
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-9 * max(1, s)), (kind, s, (got - want).abs().max())
        stub, p.model = p.model, _ZeroF()
        sigma = torch.full((3,), s, dtype=torch.float64)
        assert torch.allclose(p(x, sigma), c_skip * x, rtol=1e-12)                  # F ≡ 0 → D = c_skip·x
        p.model = stub


def test_iddpm_table_and_rounding():
    u = nets.iddpm_sigmas()
    ref = torch.tensor(_iddpm_u(), dtype=torch.float64)
    assert u.shape == (1001,) and u[-1] == 0 and torch.allclose(u.double(), ref, rtol=1e-6)
    p = nets.iDDPMPrecond(img_resolution=8, img_channels=3, model_channels=64, channel_mult=[1], num_blocks=1,
                          attn_resolutions=[])
    assert p.sigma_max == pytest.approx(ref[0].item(), rel=1e-6) and p.sigma_min == pytest.approx(ref[999].item(), rel=1e-6)
    s = torch.tensor([u[10].item() * 1.0001, u[500].item() * 0.9999, 1e9, 0.0])
    assert p.round_sigma(s, return_index=True).tolist() == [10, 500, 0, 1000]
    assert torch.equal(p.round_sigma(s), u[[10, 500, 0, 1000]])


def test_vp_sigma_range():
    p = nets.VPPrecond(img_resolution=8, img_channels=3, model_channels=8, channel_mult=[1], num_blocks=1,
                       attn_resolutions=[])
    assert p.sigma_min == pytest.approx(math.sqrt(math.expm1(0.5 * 19.9 * 1e-10 + 0.1 * 1e-5)), rel=1e-9)
    assert p.sigma_max == pytest.approx(math.sqrt(math.expm1(0.5 * 19.9 + 0.1)), rel=1e-9)
    assert float(p.sigma_inv(torch.tensor(p.sigma_max, dtype=torch.float64))) == pytest.approx(1.0, rel=1e-9)


def test_labels_cond_one_hot_and_null():
    p = _precond("EDMPrecond", "ddpmpp")
    x, s = torch.randn(2, 3, 8, 8), torch.tensor([0.5, 2.0])
    labels = torch.tensor([1, 0])
    d = p(x, s, labels)
    assert torch.equal(d, p(x, s, class_labels=torch.eye(2)[labels]))
    assert torch.equal(p(x, s), p(x, s, class_labels=torch.zeros(2, 2)))      # None: EDM's all-zero labels
    assert not torch.equal(d, p(x, s))
    assert torch.equal(p(x, s, torch.tensor([2, 2])), p(x, s))                 # the null label K: all-zero too
    assert torch.equal(p(x, s, torch.tensor(1)), p(x, s, torch.tensor([1, 1])))
    with pytest.raises(InputError) as e:
        p(x, s, torch.tensor([0, 3]))
    assert "0..1" in _one_line(e)
    with pytest.raises(InputError) as e:
        p(x, s, class_labels=torch.ones(2, 5))
    assert "[N, 2]" in _one_line(e)
    unc = _precond("EDMPrecond", "ncsnpp")
    assert unc.num_classes is None and unc(x, s, labels).shape == x.shape     # an unconditional net ignores labels
    assert p.num_classes == 2


# --- EDM-style pickles, made without the reference code ---------------------------------------------

@pytest.fixture
def persistence(tmp_path):
    with fake_persistence(tmp_path) as mod:
        yield mod


@pytest.mark.parametrize("kind,tiny", [("EDMPrecond", "ddpmpp"), ("VEPrecond", "ncsnpp-skip"), ("VPPrecond", "ncsnpp"),
                                       ("iDDPMPrecond", "adm")])
def test_handcrafted_pickle_loads_and_matches(persistence, tmp_path, kind, tiny):
    src = _precond(kind, tiny)
    path = _snapshot(persistence, src, tmp_path / "net.pkl")
    got = edm.load_edm_pickle(path)
    assert type(got) is type(src) and not got.training
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in got.parameters())
    assert got.state_dict().keys() == src.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(got.state_dict().values(), src.state_dict().values()))
    x, s = torch.randn(2, 3, 8, 8), torch.tensor([0.05, 5.0])
    y = torch.tensor([1, 0]) if src.label_dim else None
    with torch.no_grad():
        assert torch.equal(got(x, s, y), src(x, s, y))
    assert type(got.init_kwargs["dropout"]) is float and got.init_kwargs["dropout"] == 0.1    # numpy scalar → number
    assert edm.edm_model_info(got)["num_classes"] == src.num_classes
    # a pickle holding the network itself, and one with 'net' in place of 'ema'
    for obj in (as_edm(persistence, src, dict(src.init_kwargs)), {"net": as_edm(persistence, src, dict(src.init_kwargs))}):
        path.write_bytes(pickle.dumps(obj, protocol=2))
        with torch.no_grad():
            assert torch.equal(edm.load_edm_pickle(path)(x, s, y), src(x, s, y))


def test_source_in_the_pickle_is_never_run(persistence, tmp_path):
    marker = tmp_path / "ran"
    payload = f"open({str(marker)!r}, 'w').write('the embedded source ran')\nraise SystemExit\n"
    path = _snapshot(persistence, _precond("EDMPrecond", "ddpmpp"), tmp_path / "net.pkl", module_src=payload)
    got = edm.load_edm_pickle(path)
    assert not marker.exists()
    assert isinstance(got, nets.EDMPrecond)
    assert got.source_sha256 == [hashlib.sha256(payload.encode()).hexdigest()]


class _Reduce:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return (self.fn, self.args)


def _payloads(marker):
    """(object whose unpickling would run code, the global it names first)."""
    code = f"open({str(marker)!r}, 'w').write('x')"
    return [
        (_Reduce(os.system, f"touch {marker}"), "system"),
        (_Reduce(exec, code), "builtins.exec"),
        (_Reduce(eval, code), "builtins.eval"),
        (_Reduce(getattr, _Reduce(__import__, "os"), "system"), "builtins.getattr"),
        (_Reduce(__import__, "os"), "builtins.__import__"),
    ]


@pytest.mark.parametrize("i", range(5))
def test_payload_globals_are_refused(tmp_path, i):
    marker = tmp_path / "ran"
    obj, named = _payloads(marker)[i]
    path = tmp_path / "evil.pkl"
    for proto in (2, pickle.HIGHEST_PROTOCOL):
        path.write_bytes(pickle.dumps({"ema": obj}, protocol=proto))
        with pytest.raises(UnsafeFileError) as e:
            edm.load_edm_pickle(path)
        msg = _one_line(e)
        assert named in msg and str(path) in msg
    assert not marker.exists()


def test_payload_beside_a_valid_network_is_refused(persistence, tmp_path):
    marker = tmp_path / "ran"
    path = _snapshot(persistence, _precond("EDMPrecond", "ddpmpp"), tmp_path / "net.pkl")
    data = {"ema": as_edm(persistence, _precond("EDMPrecond", "ddpmpp"), {}),
            "augment_pipe": _Reduce(os.system, f"touch {marker}")}
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(UnsafeFileError) as e:
        edm.load_edm_pickle(path)
    assert "system" in _one_line(e) and not marker.exists()


def test_unknown_global_is_refused(tmp_path):
    import collections

    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps({"ema": collections.Counter("ab")}))
    with pytest.raises(UnsafeFileError) as e:
        edm.load_edm_pickle(path)
    assert "collections.Counter" in _one_line(e)


def test_unknown_persistent_class_is_refused(persistence, tmp_path):
    path = tmp_path / "x.pkl"
    path.write_bytes(pickle.dumps({"ema": persistence.Persistent(_meta("StyleGAN2Generator", {"_modules": {}}))}))
    with pytest.raises(CheckpointError) as e:
        edm.load_edm_pickle(path)
    msg = _one_line(e)
    assert "StyleGAN2Generator" in msg and "EDMPrecond" in msg and "SongUNet" in msg


def test_unknown_inner_model_or_layer_is_refused(persistence, tmp_path):
    src = _precond("EDMPrecond", "ddpmpp")
    path = tmp_path / "x.pkl"
    net = as_edm(persistence, src, dict(src.init_kwargs))
    net.meta["state"]["_modules"]["model"].meta["class_name"] = "MyUNet"
    path.write_bytes(pickle.dumps({"ema": net}))
    with pytest.raises(CheckpointError) as e:
        edm.load_edm_pickle(path)
    assert "MyUNet" in _one_line(e) and "DhariwalUNet" in str(e.value)

    net = as_edm(persistence, src, dict(src.init_kwargs))
    net.meta["state"]["_modules"]["model"].meta["state"]["_modules"]["map_layer0"].meta["class_name"] = "Backdoor"
    path.write_bytes(pickle.dumps({"ema": net}))
    with pytest.raises(CheckpointError) as e:
        edm.load_edm_pickle(path)
    assert "Backdoor" in _one_line(e) and "map_layer0" in str(e.value)


def test_tensor_mismatch_is_one_line(persistence, tmp_path):
    src = _precond("EDMPrecond", "ddpmpp")
    path = tmp_path / "x.pkl"
    net = as_edm(persistence, src, dict(src.init_kwargs, model_channels=16))       # arguments of another size
    path.write_bytes(pickle.dumps({"ema": net}))
    with pytest.raises(CheckpointError) as e:
        edm.load_edm_pickle(path)
    assert "shape mismatch" in _one_line(e)
    net = as_edm(persistence, src, dict(src.init_kwargs))
    del net.meta["state"]["_modules"]["model"].meta["state"]["_modules"]["map_layer1"].meta["state"]["_parameters"]["bias"]
    path.write_bytes(pickle.dumps({"ema": net}))
    with pytest.raises(CheckpointError) as e:
        edm.load_edm_pickle(path)
    assert "missing keys [" in _one_line(e) and "model.map_layer1.bias" in str(e.value)


def test_not_a_pickle_and_absent_file(tmp_path):
    path = tmp_path / "x.pkl"
    torch.save({"a": torch.ones(2)}, path)            # a zip file, not an EDM pickle
    with pytest.raises(CheckpointError) as e:
        edm.load_edm_pickle(path)
    assert "not a readable EDM network pickle" in _one_line(e)
    path.write_bytes(pickle.dumps({"loss_fn": 1}))
    with pytest.raises(CheckpointError) as e:
        edm.load_edm_pickle(path)
    assert "'ema'" in _one_line(e)
    with pytest.raises(CheckpointError) as e:
        edm.load_edm_pickle(tmp_path / "absent.pkl")
    assert "does not exist" in _one_line(e)


# --- configurations ----------------------------------------------------------------------------------

#: parameter counts of the published networks, counted with NVlabs/edm's training/networks.py (the
#: reference) for the README's training flags. Paper/README figures: DDPM++ CIFAR-10 ≈ 55.73M,
#: ADM ImageNet-64 ≈ 295.9M. The VE (NCSN++) nets' Fourier frequencies are a buffer, not counted.
PUBLISHED_PARAMS = {
    "edm-cifar10-32x32-cond-vp": 55_735_299,
    "edm-cifar10-32x32-uncond-vp": 55_733_891,
    "edm-cifar10-32x32-cond-ve": 56_400_643,
    "edm-cifar10-32x32-uncond-ve": 56_397_827,
    "edm-ffhq-64x64-uncond-vp": 61_805_571,
    "edm-ffhq-64x64-uncond-ve": 62_761_091,
    "edm-afhqv2-64x64-uncond-vp": 61_805_571,
    "edm-afhqv2-64x64-uncond-ve": 62_761_091,
    "edm-imagenet-64x64-cond-adm": 295_899_267,
}


@pytest.mark.parametrize("name", list(PUBLISHED_PARAMS))
def test_published_parameter_counts(name):
    with torch.device("meta"):
        net = edm.build_edm(name)
    assert sum(p.numel() for p in net.parameters()) == PUBLISHED_PARAMS[name]
    info = edm.edm_model_info(net)
    assert info["resolution"] == (32 if "cifar10" in name else 64) and info["channels"] == 3
    assert info["num_classes"] == {"cifar10-32x32-cond": 10, "imagenet": 1000}.get(
        next((k for k in ("cifar10-32x32-cond", "imagenet") if k in name), None))
    assert (info["sigma_min"], info["sigma_max"], info["sigma_data"]) == (0, math.inf, 0.5)


def test_presets_follow_train_py():
    p = edm.EDM_PRESETS
    assert set(p) == set(PUBLISHED_PARAMS)
    assert all(c["class"] == "EDMPrecond" for c in p.values())                   # all trained with --precond=edm
    cifar = p["edm-cifar10-32x32-cond-vp"]["init_kwargs"]
    assert [cifar[k] for k in ("model_channels", "channel_mult", "dropout", "augment_dim")] == [128, [2, 2, 2], 0.13, 9]
    ve = p["edm-cifar10-32x32-uncond-ve"]["init_kwargs"]
    assert [ve[k] for k in ("embedding_type", "encoder_type", "channel_mult_noise", "resample_filter")] == [
        "fourier", "residual", 2, [1, 3, 3, 1]]
    assert p["edm-ffhq-64x64-uncond-vp"]["init_kwargs"]["channel_mult"] == [1, 2, 2, 2]
    assert p["edm-ffhq-64x64-uncond-ve"]["init_kwargs"]["dropout"] == 0.05
    assert p["edm-afhqv2-64x64-uncond-vp"]["init_kwargs"]["dropout"] == 0.25
    adm = p["edm-imagenet-64x64-cond-adm"]["init_kwargs"]
    assert "augment_dim" not in adm and adm["use_fp16"] and adm["model_type"] == "DhariwalUNet" and adm["label_dim"] == 1000


@pytest.mark.parametrize("kind,tiny", [("EDMPrecond", "ddpmpp"), ("iDDPMPrecond", "adm"), ("VPPrecond", "ncsnpp")])
def test_config_round_trip_through_json(kind, tiny):
    src = _precond(kind, tiny)
    cfg = json.loads(json.dumps(edm.edm_config(src), allow_nan=False))
    net = edm.build_edm(cfg)
    assert type(net) is type(src) and _layout(net) == _layout(src)
    net.load_state_dict(src.state_dict(), strict=True)
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(net.eval()(x, 1.0), src(x, 1.0))
    assert net.sigma_max == src.sigma_max
    with pytest.raises(CheckpointError) as e:
        edm.build_edm({"class": kind, "init_kwargs": {**cfg["init_kwargs"], "no_such_option": 1}})
    assert "no_such_option" in _one_line(e)
    with pytest.raises(CheckpointError) as e:
        edm.build_edm({"class": "os.system", "init_kwargs": {}})
    assert "EDMPrecond" in _one_line(e)
