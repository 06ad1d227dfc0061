"""How few batch shapes can pad how little: the search behind bench/RESULTS.md's "no set of 64 shapes" for
CUDA graphs, on the real train splits at 16 per batch (about 2 minutes on 2 cores).

    python bench/shapes.py --data-dir ../shared/data

1. fitted ladders: per side (input, label), the boundaries that minimise the padding of the length-grouped
   batches' longest input and label (exact 1-D dynamic programming), for every split of at most 64
   combinations between the sides; fitted on epoch 0, counted over epochs 0 and 1.
2. cells: a greedy split of (up to 8,000) examples into 64 or 128 cells of similar input and label length,
   each padded to its longest; batching within cells would pad at least this much.
"""

from __future__ import annotations

import argparse

import numpy as np
from run import BatchTops, _features, _lengths, ladder_padding  # bench/run.py


def fit_boundaries(values: np.ndarray, weights: np.ndarray, k: int, align: int) -> np.ndarray:
    """At most k boundaries minimising sum(weight * (boundary - value)), the top one the largest value."""
    cand = np.unique(-(-values // align) * align)
    slot = np.searchsorted(cand, -(-values // align) * align)
    cw = np.concatenate([[0], np.cumsum(np.bincount(slot, weights=weights, minlength=len(cand)))])
    cs = np.concatenate([[0], np.cumsum(np.bincount(slot, weights=weights * values, minlength=len(cand)))])
    cost = lambda j, i: cand[i] * (cw[i + 1] - cw[j]) - (cs[i + 1] - cs[j])
    n = len(cand)
    best = np.array([cost(0, i) for i in range(n)])  # one boundary
    back = [np.full(n, -1)]
    for _ in range(1, k):
        new, arg = best.copy(), np.full(n, -1)
        for i in range(1, n):
            j = np.arange(i)
            c = best[j] + cand[i] * (cw[i + 1] - cw[j + 1]) - (cs[i + 1] - cs[j + 1])
            m = int(np.argmin(c))
            if c[m] < new[i]:
                new[i], arg[i] = c[m], m
        best = new
        back.append(arg)
    bounds, i = [], n - 1
    for arg in reversed(back):
        if i < 0:
            break
        if arg[i] >= 0 or arg is back[0]:
            bounds.append(cand[i])
            i = arg[i]
    return np.array(sorted(bounds))


def fitted_ladders(lengths: np.ndarray, batch: int, seed: int, align: int, max_shapes: int = 64) -> dict:
    t = BatchTops.of(lengths, batch, seed)
    first = t.epoch == 0
    best = None
    for k_in in range(1, max_shapes + 1):
        k_lab = max_shapes // k_in
        sides = [fit_boundaries(t.tops[first, d], t.rows[first].astype(float), k, align)
                 for d, k in ((0, k_in), (1, k_lab))]
        for d, side in enumerate(sides):  # every batch of any epoch fits under the top boundary
            side[-1] = max(side[-1], -(-lengths[:, d].max() // align) * align)
        r = ladder_padding(t, *(lambda v, side=side: side[np.searchsorted(side, v)] for side in sides))
        if best is None or r["graphs_ladder"] < best["pad"]:
            best = {"pad": r["graphs_ladder"], "boundaries": (len(sides[0]), len(sides[1])), "shapes": r["graph_shapes"]}
    return best


def greedy_cells(lengths: np.ndarray, cells: int) -> float:
    """Split the cell whose best cut (either side, any length) saves most padding, until `cells` cells."""
    def waste(rows):
        x = lengths[rows]
        return int((x.max(0) - x).sum())

    def best_cut(rows):
        best = (0, None)
        for d in (0, 1):
            order = rows[np.argsort(lengths[rows, d], kind="stable")]
            v = lengths[order, d]
            for cut in np.unique(v)[:-1]:
                k = np.searchsorted(v, cut, side="right")
                gain = waste(rows) - waste(order[:k]) - waste(order[k:])
                if gain > best[0]:
                    best = (gain, (order[:k], order[k:]))
        return best

    parts = [(np.arange(len(lengths)), None)]
    while len(parts) < cells:
        parts = [(rows, cut if cut is not None else best_cut(rows)) for rows, cut in parts]
        i = max(range(len(parts)), key=lambda i: parts[i][1][0])
        gain, halves = parts[i][1]
        if not gain:
            break
        parts[i:i + 1] = [(halves[0], None), (halves[1], None)]
    padded = sum(int(lengths[rows].max(0).sum()) * len(rows) for rows, _ in parts)
    return 1 - lengths.sum() / padded


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    sets = {name: _lengths(_features(name, args.data_dir, None, "train", args.seed, 0)[2])
            for name in ("imdb", "samsum", "emotion")}
    sets["mixture imdb+samsum+emotion"] = np.concatenate(list(sets.values()))
    for name, lengths in sets.items():
        line = [f"{name:28s}"]
        for align in (8, 1):
            f = fitted_ladders(lengths, args.batch, args.seed, align)
            line.append(f"fitted, multiples of {align}: {f['pad']:5.1%} ({f['boundaries'][0]}x{f['boundaries'][1]} "
                        f"boundaries, {f['shapes']} shapes)")
        sample = lengths[np.random.default_rng(args.seed).choice(len(lengths), min(len(lengths), 8000), replace=False)]
        line.append("cells " + ", ".join(f"{c}: {greedy_cells(sample, c):5.1%}" for c in (64, 128)))
        print("  ".join(line), flush=True)


if __name__ == "__main__":
    main()
