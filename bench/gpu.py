"""GPU training throughput, model FLOPs utilisation and peak memory of FLAN-T5 architectures (random
weights: speed and memory don't depend on them) on real IMDB reviews, for the transformers
example-script recipe and for flantune's training path, variant by variant.

    python bench/gpu.py --arch .device/flan-t5-configs/flan-t5-large --data .device/data/imdb/train.parquet \
        --batch 16 --steps 30 --variants recipe,grouped,fast_attention,bf16_weights --out gpu.json
    python bench/gpu.py --memory-table --configs .device/flan-t5-configs --out memory.json

Each variant in VARIANTS names the flantune features it switches on (the comments say what it adds to
the variant it is compared with); each builds the model afresh from the same seed and trains on the
same examples with Seq2SeqTrainer. FLOPs are counted from the useful
(non-pad) tokens of each batch (see `train_flops`), so padding is never credited as work.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

H100_BF16_PEAK = 989.4e12  # dense bf16 FLOP/s of an H100 SXM (NVIDIA's datasheet), the MFU denominator
CUDA = torch.cuda.is_available()  # on CPU the script only checks itself (tiny configs), it measures nothing


def _sync() -> None:
    if CUDA:
        torch.cuda.synchronize()

# name -> the flantune features it switches on; the comments say what it adds to the variant it builds on
VARIANTS = {
    "recipe": {},  # fp32 weights, bf16 autocast, random batches, dynamic padding (run_summarization.py)
    "grouped": {"grouped": True},  # + flantune's length-grouped (k-d) batches
    "fast_attention": {"grouped": True, "fast_attention": True},  # + shared-bias SDPA (memory-efficient kernel)
    "bf16_weights": {"grouped": True, "fast_attention": True, "bf16_weights": True},  # + bf16 model, fp32 master AdamW
    "compile": {"grouped": True, "fast_attention": True, "bf16_weights": True, "compile": True},  # + torch.compile
    # compile + CUDA graphs (compile mode reduce-overhead), lengths padded to multiples of 32 so few shapes recur
    "cudagraphs": {"grouped": True, "fast_attention": True, "bf16_weights": True, "compile": "reduce-overhead",
                   "buckets": (32, 32)},
    # bf16_weights + F.rms_norm and one-kernel tanh GELU for T5's elementwise chains (flantune's GPU default)
    "fused": {"grouped": True, "fast_attention": True, "bf16_weights": True, "fused_ops": True},
    "fused_compile": {"grouped": True, "fast_attention": True, "bf16_weights": True, "fused_ops": True,
                      "compile": True},
    # fused + the whole model as one compiled graph, lengths in buckets (inputs to a multiple of 64, labels of 8)
    "whole_compile": {"grouped": True, "fast_attention": True, "bf16_weights": True, "fused_ops": True,
                      "compile_model": "default", "buckets": (64, 8)},
    # the same, replayed as CUDA graphs (one recording per bucket shape)
    "whole_graphs": {"grouped": True, "fast_attention": True, "bf16_weights": True, "fused_ops": True,
                     "compile_model": "reduce-overhead", "buckets": (64, 8)},
    # fused + each batch shape's forward and backward recorded once as a CUDA graph and replayed, lengths
    # padded up flantune's bucket ladder (flantune/cuda_graphs.py; flantune's GPU default)
    "graphs": {"grouped": True, "fast_attention": True, "bf16_weights": True, "fused_ops": True, "graphs": True},
    "lora": {"grouped": True, "fast_attention": True, "bf16_weights": True, "lora": True},
    "lora_graphs": {"grouped": True, "fast_attention": True, "bf16_weights": True, "fused_ops": True, "lora": True,
                    "graphs": True},
    "lora_fused": {"grouped": True, "fast_attention": True, "bf16_weights": True, "fused_ops": True, "lora": True},
    "lora_compile": {"grouped": True, "fast_attention": True, "bf16_weights": True, "lora": True, "compile": True},
    "recipe_lora": {"lora": True},
    # fused, with several examples per row (train.sampling=packed): rows of one shape, about `--batch`
    # examples a batch; then the same replayed as one CUDA graph
    "packed": {"fast_attention": True, "bf16_weights": True, "fused_ops": True, "packed": True},
    "packed_graphs": {"fast_attention": True, "bf16_weights": True, "fused_ops": True, "packed": True, "graphs": True},
}


def examples(parquet: str, n: int, seed: int = 0) -> list[dict]:
    """n real examples rendered with flantune's evaluation template of the task the parquet's folder is
    named after (imdb, samsum, ...) and tokenised."""
    import pyarrow.parquet as pq

    from flantune.data import render_row
    from flantune.registry import discover
    from flantune.tokenizer import load_tokenizer

    task = discover().get(Path(parquet).parent.name)
    table = pq.read_table(parquet)
    rows = table.take(np.random.default_rng(seed).permutation(table.num_rows)[:n]).to_pylist()
    tok = load_tokenizer(None)
    rendered = [render_row(task, r, task.evaluation_template) for r in rows]
    inputs = tok([r["input"] for r in rendered], max_length=task.max_input_length, truncation=True).input_ids
    labels = tok(text_target=[r["target"] for r in rendered], max_length=task.max_target_length,
                 truncation=True).input_ids
    return [{"input_ids": i, "attention_mask": [1] * len(i), "labels": l} for i, l in zip(inputs, labels)]


def build_model(arch: str, seed: int, dropout: float | None = None):
    from transformers import AutoConfig

    from flantune.modeling import _untie_like_checkpoint

    torch.manual_seed(seed)
    config = AutoConfig.from_pretrained(arch)
    if dropout is not None:  # FLAN-T5 trains with 0.1 (all of T5's dropouts, attention's included)
        config.dropout_rate = dropout
    from transformers import AutoModelForSeq2SeqLM

    with torch.device("cuda" if CUDA else "cpu"):
        model = AutoModelForSeq2SeqLM.from_config(config)
    return _untie_like_checkpoint(model)


def train_flops(config, batch_lengths: list[tuple[int, int]]) -> float:
    """Training FLOPs (3 x forward) of T5 on examples of (input, target) useful lengths.

    Forward, per encoder token: 2 * layers * (4 d inner + 3 d d_ff) for the projections and gated FFN,
    plus 2 * 2 * L_in * inner for QK^T and AV, plus the decoder's cross-attention K and V projections,
    2 * dec_layers * 2 d inner. Per decoder token: 2 * dec_layers * (6 d inner + 3 d d_ff), plus
    attention over L_out (self) and L_in (cross), plus the LM head 2 d vocab.
    """
    d, inner, ff = config.d_model, config.num_heads * config.d_kv, config.d_ff
    gated = 3 if "gated" in config.feed_forward_proj else 2
    enc, dec, vocab = config.num_layers, config.num_decoder_layers, config.vocab_size
    total = 0.0
    for li, lo in batch_lengths:
        fwd = li * (2 * enc * (4 * d * inner + gated * d * ff) + 4 * enc * li * inner + 4 * dec * d * inner)
        fwd += lo * (2 * dec * (6 * d * inner + gated * d * ff) + 4 * dec * (lo + li) * inner + 2 * d * vocab)
        total += 3 * fwd
    return total


class Columns:
    """Examples (a list of dicts) indexed as a datasets.Dataset is: a list of indices gives columns."""

    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __getitem__(self, indices):
        picked = [self.rows[i] for i in indices]
        return {key: [r[key] for r in picked] for key in ("input_ids", "labels")}


def packed_rows(data: list[dict], batch: int, seed: int):
    """The examples in packed rows of flantune's default lengths (train.sampling=packed), as many rows a
    batch as hold about `batch` examples: (dataset, plan, rows per batch)."""
    from run import packed_plan  # bench/run.py

    from flantune import packing

    plan, rows_per_batch = packed_plan(np.array([[len(x["input_ids"]), len(x["labels"])] for x in data]), batch, seed)
    return packing.PackedRows(Columns(data), plan, pad_token_id=0, decoder_start_token_id=0), plan, rows_per_batch


def example_lengths(inputs: dict) -> torch.Tensor:
    """(examples, 2): each example's useful input and label tokens, packed rows split into their examples
    (there, rows x label length entries, all-zero ones for unused segment numbers: dropped once timing
    is over, as reading them here would wait for the device every step)."""
    if "input_segment_ids" not in inputs:
        return torch.stack([inputs["attention_mask"].sum(1), (inputs["labels"] != -100).sum(1)], 1)
    labels = inputs["label_segment_ids"]
    ids = torch.arange(1, labels.shape[1] + 1, device=labels.device)  # a row holds at most that many examples
    return torch.stack([(inputs[key][..., None] == ids).sum(1).flatten()
                        for key in ("input_segment_ids", "label_segment_ids")], 1)


def multiple_of(n: int):
    """Rounds a length up to a multiple of n (the compiled variants' buckets)."""
    return lambda length: -(-length // n) * n


def run_variant(name: str, arch: str, data: list[dict], *, batch: int, steps: int, warmup: int, seed: int,
                gradient_checkpointing: bool = False, profile: bool = False, dropout: float | None = None) -> dict:
    from transformers import (
        DataCollatorForSeq2Seq,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
        TrainerCallback,
    )

    from flantune import packing
    from flantune.batching import LengthGroupedSampler, StreamSampler
    from flantune.cuda_graphs import GraphedSteps, PadToBuckets
    from flantune.kernels import (
        MasterWeightAdamW,
        compile_blocks,
        disable_kv_cache,
        use_fast_attention,
        use_fused_ops,
    )
    from flantune.unwrap import base_model_of
    from flantune.tokenizer import load_tokenizer

    opts = VARIANTS[name]
    lengths = np.array([[len(x["input_ids"]), len(x["labels"])] for x in data])
    rows_per_batch = batch
    if opts.get("packed"):
        data, plan, rows_per_batch = packed_rows(data, batch, seed)
    if CUDA:
        torch.cuda.empty_cache()
    model = build_model(arch, seed, dropout)
    if opts.get("fast_attention"):  # flantune's attention path, and no key/value cache while training
        use_fast_attention(model)
        disable_kv_cache(model)
    if opts.get("fused_ops"):
        use_fused_ops(model)
    if opts.get("bf16_weights"):
        model.to(torch.bfloat16)
    if opts.get("lora"):
        from peft import LoraConfig, TaskType, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_2_SEQ_LM, r=16, lora_alpha=32,
                                                 lora_dropout=0.05, target_modules=["q", "v"]))
    if opts.get("compile"):
        compile_blocks(model, mode=opts["compile"] if isinstance(opts["compile"], str) else None)
    if opts.get("compile_model"):
        base_model_of(model).compile(dynamic=True, mode=opts["compile_model"])
    tok = load_tokenizer(None)
    window: dict[str, float] = {}
    counted: list[torch.Tensor] = []  # per step: (batch, 2) useful input / label lengths, kept on the device
    padded: list[int] = []  # per step: input and label tokens, padding included
    losses: list[torch.Tensor] = []
    graphed = None

    class Clock(TrainerCallback):
        """Times the steps after warm-up as one window: no per-step synchronisation, so the host queues
        work ahead of the device as it does in a real run."""
        prof = None

        def on_train_begin(self, args, state, control, **kw):
            window["train_start"] = time.perf_counter()

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step == warmup:
                _sync()
                window["start"] = time.perf_counter()
                if profile:
                    self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                                   torch.profiler.ProfilerActivity.CUDA])
                    self.prof.__enter__()

        def on_step_end(self, args, state, control, **kw):
            if self.prof is not None and state.global_step == warmup + 3:
                self.prof.__exit__(None, None, None)
                print(self.prof.key_averages().table(sort_by="cuda_time_total" if CUDA else "cpu_time_total",
                                                     row_limit=25, max_name_column_width=60), flush=True)
                self.prof = None
            if state.global_step == warmup + steps:
                _sync()
                window["end"] = time.perf_counter()

    class BenchTrainer(Seq2SeqTrainer):
        def _get_train_sampler(self, train_dataset=None):
            if opts.get("packed"):
                return StreamSampler(plan.row_indices)
            if opts.get("grouped"):
                return LengthGroupedSampler(lengths, batch, seed)
            return super()._get_train_sampler(train_dataset)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if not opts.get("packed"):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            outputs = packing.forward(model, inputs)
            return (outputs.loss, outputs) if return_outputs else outputs.loss

        def create_optimizer(self, model=None):
            if opts.get("bf16_weights") and self.optimizer is None:
                params = [p for p in self.model.parameters() if p.requires_grad]
                self.optimizer = MasterWeightAdamW(params, lr=self.args.learning_rate)
                return self.optimizer
            return super().create_optimizer(model)

        def training_step(self, model, inputs, num_items_in_batch=None):
            nonlocal graphed
            counted.append(example_lengths(inputs))
            padded.append(inputs["input_ids"].numel() + inputs["labels"].numel())
            loss = None
            if opts.get("graphs") and CUDA:  # the recipe's loss, a batch mean (no accumulation here)
                graphed = graphed or GraphedSteps(model, accumulate=False)
                model.train()
                loss = graphed.step(self._prepare_inputs(inputs), 1.0)
            if loss is None:
                loss = super().training_step(model, inputs, num_items_in_batch)
            if opts.get("packed") and not packing.is_packed(inputs):  # without segments, examples see each other
                raise RuntimeError("the trainer dropped the packed rows' segment ids")
            losses.append(loss.detach().clone())  # a CUDA graph's output is overwritten by its next replay
            return loss

    args = Seq2SeqTrainingArguments(
        output_dir=f"/tmp/bench-{name}", per_device_train_batch_size=rows_per_batch, max_steps=warmup + steps,
        learning_rate=1e-4, bf16=CUDA and not opts.get("bf16_weights"), logging_steps=10**6, save_strategy="no",
        eval_strategy="no", report_to="none", seed=seed, data_seed=seed, disable_tqdm=True,
        gradient_checkpointing=gradient_checkpointing, dataloader_num_workers=2 if CUDA else 0, use_cpu=not CUDA,
        remove_unused_columns=not opts.get("packed"),  # packed rows' segment ids aren't forward() arguments
    )
    collator = DataCollatorForSeq2Seq(tok, label_pad_token_id=-100)
    if opts.get("buckets"):
        inputs, labels = opts["buckets"]
        collator = PadToBuckets(collator, tok.pad_token_id, inputs=multiple_of(inputs), labels=multiple_of(labels))
    if opts.get("graphs") and not opts.get("packed"):
        collator = PadToBuckets(collator, tok.pad_token_id)
    if opts.get("packed"):  # rows of one shape already
        collator = packing.collate
    trainer = BenchTrainer(model=model, args=args, train_dataset=data, callbacks=[Clock()], data_collator=collator)
    if CUDA:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    peak = torch.cuda.max_memory_allocated() / 2**30 if CUDA else float("nan")
    reserved = torch.cuda.max_memory_reserved() / 2**30 if CUDA else float("nan")
    # What the run holds once the allocator's spare cache is returned: the live weights and optimizer
    # state, and the graphs' memory pool. A replay uses the pool without allocating, so for graphed
    # variants max_memory_allocated misses the activations of every step after the recordings.
    if CUDA:
        torch.cuda.empty_cache()
    held = torch.cuda.memory_reserved() / 2**30 if CUDA else float("nan")
    seconds = window["end"] - window["start"]
    timed = [x.tolist() for x in counted[warmup:warmup + steps]]
    lengths_seen = [tuple(x) for step in timed for x in step if x[1] > 0]
    useful = sum(li + lo for li, lo in lengths_seen)
    config = base_model_of(model).config
    flops = train_flops(config, lengths_seen)
    result = {
        "variant": name, "arch": Path(arch).name, "dropout": dropout, "batch": batch, "rows_per_batch": rows_per_batch,
        "steps": steps,
        "examples_per_s": len(lengths_seen) / seconds, "useful_tokens_per_s": useful / seconds,
        "s_per_step": seconds / steps, "mfu": flops / seconds / H100_BF16_PEAK,
        "peak_memory_gib": peak, "peak_reserved_gib": reserved, "held_after_gib": held, "losses": [float(x) for x in losses],
        "pad_fraction": 1 - useful / sum(padded[warmup:warmup + steps]),
        "warmup_s": window["start"] - window["train_start"],  # the untimed steps, recording graphs included
        "graphs": graphed.summary() if graphed else None,
        "window_loss": float(torch.stack(losses[warmup:warmup + steps]).float().mean()),
        "gradient_checkpointing": gradient_checkpointing,
    }
    del trainer, model
    if CUDA:
        torch.cuda.empty_cache()
    return result


def memory_table(configs: str, *, batch: int, input_len: int, target_len: int, seed: int,
                 out_path: str | None = None, cells: str = "") -> list[dict]:
    """Peak memory of 2 training steps at one fixed batch shape, full and LoRA, with and without
    gradient checkpointing, on flantune's GPU path; an out-of-memory error is recorded as such.
    `cells` keeps only some columns ("lora+checkpointing,full"); empty keeps all."""
    rows = []
    g = torch.Generator().manual_seed(seed)
    data = [{"input_ids": torch.randint(3, 32000, (input_len,), generator=g).tolist(),
             "attention_mask": [1] * input_len,
             "labels": torch.randint(3, 32000, (target_len,), generator=g).tolist()} for _ in range(batch * 3)]
    for size in ("flan-t5-small", "flan-t5-base", "flan-t5-large", "flan-t5-xl"):
        for method in ("full", "lora"):
            for checkpointing in (False, True):
                # flantune's path: CUDA graphs, except under gradient checkpointing, where they don't apply
                column = method + ("+checkpointing" if checkpointing else "")
                if cells and column not in cells.split(","):
                    continue
                variant = {("full", False): "graphs", ("full", True): "fused", ("lora", False): "lora_graphs",
                           ("lora", True): "lora_fused"}[method, checkpointing]
                entry = {"model": size, "method": method, "variant": variant,
                         "gradient_checkpointing": checkpointing,
                         "batch": batch, "input_len": input_len, "target_len": target_len}
                try:
                    r = run_variant(variant, str(Path(configs) / size), data, batch=batch, steps=1, warmup=1,
                                    seed=seed, gradient_checkpointing=checkpointing)
                    entry["peak_memory_gib"] = r["peak_memory_gib"]
                    entry["peak_reserved_gib"] = r["peak_reserved_gib"]
                    entry["held_after_gib"] = r["held_after_gib"]
                except torch.OutOfMemoryError:
                    entry["peak_memory_gib"] = None
                    entry["note"] = "out of memory (80 GB)"
                gc.collect()  # the trainer class made per variant keeps its model alive until a collection
                torch.cuda.empty_cache()
                print(json.dumps(entry), flush=True)
                rows.append(entry)
                if out_path:
                    Path(out_path).write_text(json.dumps(rows, indent=1))  # kept if a later size hangs
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", action="append", default=[], help="folder with a FLAN-T5 config.json (repeatable)")
    ap.add_argument("--data", help="IMDB parquet (text, label)")
    ap.add_argument("--examples", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dropout", type=float, help="override the architecture's dropout_rate (what dropout costs)")
    ap.add_argument("--variants", default="recipe,grouped,fast_attention,bf16_weights")
    ap.add_argument("--profile", default="", help="comma-separated variants to profile (3 steps after warmup)")
    ap.add_argument("--memory-table", action="store_true")
    ap.add_argument("--configs", help="folder of flan-t5-* config folders (memory table)")
    ap.add_argument("--memory-cells", default="", help="memory table columns to measure, e.g. lora+checkpointing")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    out: dict = {"device": torch.cuda.get_device_name() if CUDA else "cpu", "torch": torch.__version__,
                 "argv": sys.argv[1:]}
    import transformers

    out["transformers"] = transformers.__version__
    if args.memory_table:
        out["memory"] = memory_table(args.configs, batch=8, input_len=512, target_len=64, seed=args.seed,
                                     out_path=args.out + ".partial", cells=args.memory_cells)
    else:
        data = examples(args.data, args.examples, args.seed)
        out["results"] = []
        for arch in args.arch:
            for name in args.variants.split(","):
                try:
                    r = run_variant(name, arch, data, batch=args.batch, steps=args.steps, warmup=args.warmup,
                                    seed=args.seed, profile=name in args.profile.split(","), dropout=args.dropout)
                except Exception as exc:  # a variant that fails here is reported, the others still run
                    r = {"variant": name, "arch": Path(arch).name, "error": f"{type(exc).__name__}: {exc}"[:500]}
                out["results"].append(r)
                print(json.dumps({k: v for k, v in r.items() if k != "losses"}), flush=True)
                Path(args.out).write_text(json.dumps(out, indent=1))  # kept if a later variant hangs
        print(f"{'arch':15s} {'variant':15s} {'ex/s':>7s} {'tok/s':>9s} {'MFU':>6s} {'GiB':>6s} {'held':>6s} "
              f"{'s/step':>7s} {'loss':>7s} {'pad':>6s} {'warm s':>7s}")
        for r in out["results"]:
            if "error" in r:
                print(f"{r['arch']:15s} {r['variant']:15s} ERROR {r['error'][:80]}")
                continue
            print(f"{r['arch']:15s} {r['variant']:15s} {r['examples_per_s']:7.1f} {r['useful_tokens_per_s']:9.0f} "
                  f"{r['mfu']:6.1%} {r['peak_memory_gib']:6.1f} {r['held_after_gib']:6.1f} {r['s_per_step']:7.3f} "
                  f"{r['window_loss']:7.4f} "
                  f"{r['pad_fraction']:6.1%} {r['warmup_s']:7.1f}")
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
