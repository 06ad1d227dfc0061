#!/usr/bin/env bash
# On the `device` tool's GPU machine: the GPU figures still to take (bench/RESULTS.md, "Still to take on a GPU").
# Each part fits one call (10 minutes). Prepare here first with bench/device/prepare.sh, then:
#   run(command="bash bench/device/pending.sh micro-bench", carry=[".whl", ".device"])
# Parts:
#   micro-bench   what micro-batches of 4 cost a graphed step: bench/gpu.py at 4 and 16 examples a batch
#   micro-run     flantune run of a two-task mixture, train.micro_batches=auto against 1
#   mixed-graphs  precision=bf16-mixed with CUDA graphs against eager: the loss curves, dropout off
# Files land in $OUT; each part prints its figures.
set -uo pipefail
part=${1:?"name a part: micro-bench, micro-run or mixed-graphs"}
R=$PWD; OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
# the installed wheel, not the checkout: -m flantune from the checkout's root misses the built-in tasks
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
C=$R/.device/flan-t5-configs; DATA=$R/.device/data
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
# from /tmp: in the checkout's root `import flantune` would find the checkout, not the wheel just installed
(cd /tmp && python3 -c "import torch, transformers, flantune; print('torch', torch.__version__, 'transformers', transformers.__version__, 'flantune', flantune.__file__)")
# the carried wheels come before the image's packages: say if one of theirs is too old for them
(cd /tmp && python3 -m pip check 2>&1 | grep -v "^No broken" | head -5)
quiet() { grep -v "Warning\|it/s\]\|s/it\]"; }

case $part in
micro-bench)
  # the same examples, one epoch of warm-up so every shape is recorded before the timed window
  python3 bench/gpu.py --arch $C/flan-t5-large --data $DATA/imdb/train.parquet --batch 16 --steps 30 --warmup 130 \
    --variants graphs --out $OUT/micro-bench-16.json 2>&1 | quiet | tail -3
  python3 bench/gpu.py --arch $C/flan-t5-large --data $DATA/imdb/train.parquet --batch 4 --steps 120 --warmup 520 \
    --variants graphs --out $OUT/micro-bench-4.json 2>&1 | quiet | tail -3
  ;;
micro-run)
  cd /tmp
  S="task=[imdb,samsum] model=flan-t5-large model.path=$C/flan-t5-large model.random_init=true data_dir=$DATA
    precision=bf16 train.batch_size=16 train.max_steps=100 train.eval_steps=100 data.max_eval_examples=50"
  for m in auto 1; do
    timeout 280 python3 -m flantune run $S train.micro_batches=$m output_dir=/tmp/run-micro-$m overwrite=true 2>&1 | quiet \
      | grep "trained\|a step held\|Error\|error" | tee $OUT/micro-run-$m.log
    cp /tmp/run-micro-$m/metrics.json $OUT/micro-run-$m-metrics.json
  done
  ;;
mixed-graphs)
  cd /tmp
  S="task=imdb model=flan-t5-base model.path=$C/flan-t5-base model.random_init=true model.architecture.dropout_rate=0
    data_dir=$DATA precision=bf16-mixed train.sampling=packed train.batch_size=16 train.max_steps=200
    train.eval_steps=200 train.logging_steps=10 data.max_eval_examples=50"
  for g in false true; do
    timeout 280 python3 -m flantune run $S train.cuda_graphs=$g output_dir=/tmp/run-mixed-$g overwrite=true 2>&1 | quiet \
      | grep "trained\|packed rows\|Error\|error" | tee $OUT/mixed-graphs-$g.log
    cp /tmp/run-mixed-$g/log_history.json $OUT/mixed-graphs-$g-log.json
    cp /tmp/run-mixed-$g/metrics.json $OUT/mixed-graphs-$g-metrics.json
  done
  python3 - $OUT/mixed-graphs-{false,true}-log.json <<'PY'
import json, sys
eager, graphed = ([row["loss"] for row in json.load(open(path)) if "loss" in row] for path in sys.argv[1:])
gaps = [abs(a - b) for a, b in zip(eager, graphed)]
print("logged losses, eager:  ", " ".join(f"{x:.4f}" for x in eager))
print("logged losses, graphed:", " ".join(f"{x:.4f}" for x in graphed))
print(f"largest gap {max(gaps):.4f}, mean gap {sum(gaps) / len(gaps):.4f} over {len(gaps)} logged windows")
PY
  ;;
*) echo "Unknown part '$part': name micro-bench, micro-run or mixed-graphs." >&2; exit 2 ;;
esac
