"""Examples per second of `flantune predict` (Predictor.predict) beside `flantune eval`'s on the same rows (the
evaluation's own figure, metrics.json eval.examples_per_s) and a plain transformers loop: model.generate on
batches of eval.batch_size in the rows' order, padded to the longest, as a notebook would write it. Each figure
is the scoring time only (the model loaded before), on the same weights; the predictions that agree are counted.

    python bench/predict_speed.py model=tiny task=samsum data_dir=../shared/data n=64 tasks.samsum.max_new_tokens=16
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str]) -> dict:
    import torch

    from flantune import rundir
    from flantune.commands import _pop
    from flantune.compare import evaluate
    from flantune.data import ID, load_rows
    from flantune.evaluation import read_predictions
    from flantune.predict import Predictor, resolve

    model, options = _pop(argv, "model")
    task, options = _pop(options, "task")
    data_dir, options = _pop(options, "data_dir")
    n, options = _pop(options, "n")
    n = int(n or 64)
    resolved = resolve(model, task, options=[f"data.max_eval_examples={n}", "eval.split=test", *options])
    cfg = resolved.cfg
    with tempfile.TemporaryDirectory() as tmp:  # flantune eval on the rows
        cfg_eval = cfg.copy()
        cfg_eval.data_dir = data_dir
        out = evaluate(cfg_eval, Path(tmp) / "eval")
        evaluated = rundir.read_json(out / rundir.METRICS)["eval"]["examples_per_s"]
        saved = read_predictions(out / rundir.PREDICTIONS / f"{resolved.task.name}.jsonl")
    rows = load_rows(resolved.task, "test", Path(data_dir) if data_dir else None, max_examples=n,
                     seed=cfg.data.eval_seed).remove_columns([ID]).to_list()

    predictor = Predictor.from_resolved(resolved)
    started = time.perf_counter()
    predicted = predictor.predict(rows)
    predict_s = time.perf_counter() - started

    tokenizer, net, task_ = predictor.tokenizer, predictor.model, predictor.task  # a plain loop, the same model
    inputs = [r["input"] for r in predicted]
    plain = []
    started = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(inputs), int(cfg.eval.batch_size)):
            batch = tokenizer(inputs[i:i + int(cfg.eval.batch_size)], padding=True, truncation=True,
                              max_length=task_.max_input_length, return_tensors="pt").to(predictor.device)
            out = net.generate(**batch, max_new_tokens=task_.max_new_tokens, num_beams=int(cfg.eval.num_beams),
                               do_sample=False)
            plain += [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
    plain_s = time.perf_counter() - started

    ours = [r["prediction"] for r in predicted]
    result = {
        "model": model, "task": resolved.task.name, "rows": len(rows), "device": str(predictor.device),
        "classify": cfg.eval.classify if resolved.task.is_classification else "generation",
        "batch_size": int(cfg.eval.batch_size),
        "examples_per_s": {"flantune predict": len(rows) / predict_s, "flantune eval": evaluated,
                           "model.generate loop": len(rows) / plain_s},
        "same_as_eval": sum(a == b["prediction"] for a, b in zip(ours, saved)) / len(rows),
        "same_as_generate_loop": sum(a == b for a, b in zip(ours, plain)) / len(rows),
    }
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
