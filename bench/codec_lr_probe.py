"""Probe: does the watermark codec's bit accuracy keep rising at a given width and lr?

Plain Adam on the codec objective (64 bits, 32×32 digits, batch 64, the L2 term held off), printing
the batch Bit-Acc and MSE every 200 steps — to choose the watermark bench's codec settings.

    python bench/codec_lr_probe.py WIDTH LR [STEPS] [DEC_WIDTH]     # e.g. 16 6e-4 600 32

Measured here (1 thread each, two at a time): encoder width 16 at lr 6e-4 reached batch Bit-Acc
0.888 after 1000 steps with a width-16 decoder and stalled there (even with an unbounded
residual at MSE 6); with the recipe's width-32 decoder it reached 0.992 after 600 steps. A width-16
decoder ends in 64 ReLU features for 64 bits, too few.
"""
import sys
import time

import torch

from trustdiff.data import load
from trustdiff.nets.codec import Codec
from trustdiff.watermark import CodecObjective


def main():
    width, lr = int(sys.argv[1]), float(sys.argv[2])
    steps = int(sys.argv[3]) if len(sys.argv) > 3 else 1200
    dec_width = int(sys.argv[4]) if len(sys.argv) > 4 else width
    torch.manual_seed(0)
    x, _ = load("digits", resolution=32, split="train").tensors()
    obj = CodecObjective(Codec(32, 1, 64, width=width, dec_width=dec_width), l2_await=10**9)
    opt = torch.optim.Adam(obj.parameters(), lr=lr)
    g, t = torch.Generator().manual_seed(0), time.time()
    for s in range(1, steps + 1):
        idx = torch.randint(0, len(x), (64,), generator=g)
        loss = obj(x[idx], g).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if s % 200 == 0:
            print(f"width {width}/{dec_width} lr {lr:g} step {s}: Bit-Acc {float(obj.last_bit_acc):.3f}, "
                  f"MSE {float(obj.last_mse):.4f}, {time.time() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
