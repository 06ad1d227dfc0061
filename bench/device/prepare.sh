#!/usr/bin/env bash
# Run here, before a call on the `device` tool's GPU machine, which reaches neither ../shared nor a package
# registry. Builds the two git-ignored folders such a call carries:
#   .whl/     flantune's wheel, and Python 3.12 wheels of what the device image lacks or holds at other
#             versions, pinned to this environment's versions (the device image has torch)
#   .device/  the real FLAN-T5 configs and seeded slices of imdb and samsum (bench/gpu.py, flantune run)
# then prints the call to make. Usage: bash bench/device/prepare.sh [SHARED_DATA_DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
shared=${1:-../shared/data}
[ -d "$shared/imdb" ] || { echo "No data mirror at $shared: pass its path, e.g. bash $0 /path/to/shared/data" >&2; exit 2; }

# compiled or per-Python-version wheels, fetched for the device's Python 3.12; the rest are pure Python
binary="tokenizers hf-xet pydantic-core safetensors multiprocess"
pure="transformers huggingface-hub httpx2 httpcore2 peft accelerate datasets dill evaluate omegaconf rouge-score nltk
  pydantic annotated-types typing-inspection truststore defusedxml"
pins() { ${PYTHON:-python3} -c 'import importlib.metadata as md, sys; print(" ".join(f"{n}=={md.version(n)}" for n in sys.argv[1:]))' "$@"; }
rm -rf .whl build/lib && mkdir -p .whl  # build/lib: setuptools keeps deleted modules there, and the wheel with them
# --no-deps: the image has the rest (/work/.library/device/KINDS.md lists it); rouge-score has no wheel, so it is built
${PYTHON:-python3} -m pip wheel -q --no-deps --no-build-isolation -w .whl . $(pins $pure)
${PYTHON:-python3} -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl $(pins $binary)
echo "wheels: $(ls .whl | wc -l) files, $(du -sh .whl | cut -f1)"

${PYTHON:-python3} - "$shared" <<'PY'
import shutil, sys
from pathlib import Path
import pandas as pd
shared, out = Path(sys.argv[1]), Path(".device")
configs = out / "flan-t5-configs"
if not configs.exists():
    shutil.copytree(shared / "flan-t5-configs", configs)
rows = {"imdb": {"train": 6000, "test": 1000}, "samsum": {"train": 3000, "validation": 300, "test": 300}}
for task, splits in rows.items():
    for split, n in splits.items():
        path = out / "data" / task / f"{split}.parquet"
        if path.exists():
            continue  # keep the slice earlier figures were measured on
        path.parent.mkdir(parents=True, exist_ok=True)
        frame = pd.read_parquet(shared / task / f"{split}.parquet")
        frame.sample(n=min(n, len(frame)), random_state=0).to_parquet(path, index=False)
print(f"data: {sum(1 for _ in out.glob('data/*/*.parquet'))} splits in .device/data")
PY
echo 'next: run(command="bash bench/device/pending.sh PART", carry=[".whl", ".device"]), PART as pending.sh lists'
