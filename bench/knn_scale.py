"""Bench: exact nearest neighbours at the scale issue 21 names — 100,000 "generations" × 60,000
training images (MNIST, 28×28 = 784 features), k = 50 (Carlini et al.'s n) — with bounded memory.

Queries: the 10,000 MNIST test images, ten times over, each copy with its own seeded Gaussian noise
(std 0.05), and 5,000 of the 100,000 replaced by exact copies of random training images (a known
answer: their nearest neighbour is that image, at distance 0 up to a duplicate in MNIST). Keys: the
60,000 MNIST training images.

Figures, measured in the same run (each configuration in a fresh child process, so its peak
memory is its own — Linux VmHWM after resetting it at the start of the search):

* ``trustdiff.audit.knn`` at its defaults (keys in chunks of 8,192, queries in blocks of 2,048):
  seconds, queries/s, GFLOP/s of its matmuls (2·N·M·D) against the machine's fp32 matmul peak
  measured on the same block shape, and the memory it adds to its inputs' — at N = 10,000 and at
  N = 100,000, to show that it does not grow with N;
* the naive baseline, ``brute_force_knn`` (``torch.cdist`` of all pairs, then ``topk``), on 2,000
  queries, scaled to queries/s, with the memory the full problem would need (N·M·8 bytes);
* agreement: on 1,000 queries the chunked search's indices and distances against the brute force.

    python bench/knn_scale.py                        # ≈ 3–5 min on 2 CPU cores
    python bench/knn_scale.py --queries 20000        # smaller
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_digits import matmul_peak_gflops  # noqa: E402  (one peak measurement for every bench)

HERE = Path(__file__).resolve().parent
MNIST_TRAIN = HERE.parent.parent / "shared" / "data" / "mnist-train.npz"
MNIST_TEST = HERE.parent.parent / "shared" / "data" / "mnist-test.npz"


def sets(args) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """(queries N×784, keys M×784, indices of the queries that are copies, the copied keys)."""
    keys = torch.from_numpy(np.load(args.train)["images"].reshape(60000, -1)[: args.keys].astype(np.float32) / 255.0)
    test = torch.from_numpy(np.load(args.test)["images"].reshape(10000, -1).astype(np.float32) / 255.0)
    g = torch.Generator().manual_seed(args.seed)
    reps = -(-args.queries // len(test))
    q = test.repeat(reps, 1)[: args.queries]
    q = q + 0.05 * torch.randn(q.shape, generator=g)
    rng = np.random.default_rng(args.seed)
    n_copies = min(args.queries // 20, len(keys))
    where = rng.choice(args.queries, n_copies, replace=False)
    which = rng.choice(len(keys), n_copies, replace=False)
    q[torch.from_numpy(where)] = keys[torch.from_numpy(which)]
    return q, keys, where, which


def _hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _reset_hwm() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(args, n: int, mode: str, out):
    torch.set_num_threads(args.threads)
    from trustdiff.audit import brute_force_knn, knn

    a = argparse.Namespace(**{**vars(args), "queries": n})
    q, keys, where, which = sets(a)
    base = _rss_mib()
    reset = _reset_hwm()
    t = time.perf_counter()
    if mode == "knn":
        d, i = knn(q, keys, k=args.k)
    else:
        d, i = brute_force_knn(q, keys, k=args.k)
    sec = time.perf_counter() - t
    rec = {"mode": mode, "queries": n, "keys": len(keys), "features": q.shape[1], "k": args.k, "seconds": sec,
           "queries_per_s": n / sec, "rss_before_mib": base, "peak_mib": _hwm_mib(), "hwm_reset": reset,
           "inputs_mib": (q.numel() + keys.numel()) * 4 / 2 ** 20}
    rec["added_mib"] = rec["peak_mib"] - base
    if mode == "knn":
        w = torch.from_numpy(where)
        hit = i[w, 0] == torch.from_numpy(which)
        rec["copies"] = int(len(where))
        rec["copies_found_at_rank_0"] = int(hit.sum())
        rec["copies_distance_max"] = float(d[w, 0].max())
    out.put(rec)


def run_child(args, n: int, mode: str) -> dict:
    ctx = mp.get_context("spawn")
    qu = ctx.Queue()
    p = ctx.Process(target=child, args=(args, n, mode, qu))
    p.start()
    rec = qu.get()
    p.join()
    return rec


def agreement(args) -> dict:
    torch.set_num_threads(args.threads)
    from trustdiff.audit import brute_force_knn, knn

    a = argparse.Namespace(**{**vars(args), "queries": args.check})
    q, keys, _, _ = sets(a)
    d, i = knn(q, keys, k=args.k)
    bd, bi = brute_force_knn(q, keys, k=args.k)
    return {"queries": args.check, "indices_equal_fraction": float((i == bi).float().mean()),
            "first_neighbour_equal": int((i[:, 0] == bi[:, 0]).sum()),
            "distance_max_abs_diff": float((d.double() - bd.double()).abs().max())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train", type=Path, default=MNIST_TRAIN)
    ap.add_argument("--test", type=Path, default=MNIST_TEST)
    ap.add_argument("--queries", type=int, default=100_000)
    ap.add_argument("--keys", type=int, default=60_000)
    ap.add_argument("--k", type=int, default=50)
    ap.add_argument("--naive-queries", type=int, default=2_000)
    ap.add_argument("--check", type=int, default=1_000)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=Path("bench/results/knn_scale.json"))
    args = ap.parse_args()
    t0 = time.time()
    torch.set_num_threads(args.threads)
    peak = matmul_peak_gflops(shape=(2048, 784, 8192))      # the knn's own block shape
    print(f"fp32 matmul peak on the knn block shape (2048×784 @ 784×8192): {peak:.1f} GFLOP/s", flush=True)
    small = run_child(args, min(10_000, args.queries), "knn")
    big = run_child(args, args.queries, "knn")
    naive = run_child(args, args.naive_queries, "brute")
    agree = agreement(args)
    for r in (small, big):
        r["gflops"] = 2 * r["queries"] * r["keys"] * r["features"] / r["seconds"] / 1e9
        r["fraction_of_matmul_peak"] = r["gflops"] / peak
    res = {"matmul_peak_gflops": peak, "threads": args.threads, "knn_small": small, "knn": big, "naive": naive,
           "naive_full_problem_distance_matrix_gib": args.queries * args.keys * 8 / 2 ** 30,
           "speedup_vs_naive_queries_per_s": big["queries_per_s"] / naive["queries_per_s"],
           "agreement": agree, "wall_seconds": time.time() - t0}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    from trustdiff.persist import atomic_write_json

    atomic_write_json(args.json, res)
    print(f"knn, {big['queries']:,} queries × {big['keys']:,} keys × {big['features']} features, k = {args.k}: "
          f"{big['seconds']:.1f} s ({big['queries_per_s']:.0f} queries/s), {big['gflops']:.1f} GFLOP/s = "
          f"{big['fraction_of_matmul_peak']:.0%} of the matmul peak; memory added {big['added_mib']:.0f} MiB "
          f"(inputs {big['inputs_mib']:.0f} MiB)")
    print(f"knn, {small['queries']:,} queries: memory added {small['added_mib']:.0f} MiB — the same bound")
    print(f"copies of training images found at rank 0: {big['copies_found_at_rank_0']}/{big['copies']} "
          f"(max distance {big['copies_distance_max']:.2e})")
    print(f"naive (cdist + topk), {naive['queries']:,} queries: {naive['queries_per_s']:.0f} queries/s → knn "
          f"{res['speedup_vs_naive_queries_per_s']:.2f}×; naive on the full problem would hold a "
          f"{res['naive_full_problem_distance_matrix_gib']:.0f} GiB distance matrix (added {naive['added_mib']:.0f} MiB "
          f"for {naive['queries']:,} queries)")
    print(f"agreement on {agree['queries']} queries: indices equal {agree['indices_equal_fraction']:.4f}, first "
          f"neighbour {agree['first_neighbour_equal']}/{agree['queries']}, max |Δd| {agree['distance_max_abs_diff']:.2e}")
    print(f"wall {res['wall_seconds']:.0f} s → {args.json}")


if __name__ == "__main__":
    main()
