"""Build the IMDB sample that ships with flantune (flantune/assets/sample/imdb/) from a full mirror.

    python tools/make_quickstart_sample.py ../shared/data/imdb flantune/assets/sample/imdb

Class-balanced, seeded, rows kept byte-for-byte with the hub's columns and schema metadata.
"""

import sys
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq

SIZES = {"train": 2500, "test": 1000}  # rows per split, half of each class
SEED = 20240


def sample(table, n, seed):
    rng = np.random.default_rng(seed)
    labels = table.column("label").to_numpy()
    picked = []
    for label in (0, 1):
        rows = np.flatnonzero(labels == label)
        picked.append(np.sort(rng.choice(rows, size=n // 2, replace=False)))
    return table.take(np.concatenate(picked))


def main(src: str, dst: str) -> None:
    Path(dst).mkdir(parents=True, exist_ok=True)
    for split, n in SIZES.items():
        table = pq.read_table(Path(src) / f"{split}.parquet")
        out = sample(table, n, SEED)
        assert pc.sum(out.column("label")).as_py() == n // 2
        pq.write_table(out, Path(dst) / f"{split}.parquet", compression="zstd", compression_level=19)
        print(split, out.num_rows, (Path(dst) / f"{split}.parquet").stat().st_size, "bytes")


if __name__ == "__main__":
    main(*sys.argv[1:3])
