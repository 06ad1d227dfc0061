"""Host (Python) time a training step spends outside the model, for a FLAN-T5 architecture: the parts that
don't depend on the device, timed on CPU with uninitialised weights. On a GPU whose step is
launch-bound these milliseconds are the GPU's idle time.

    python bench/host.py --arch ../shared/data/flan-t5-configs/flan-t5-large
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def per_call_ms(fn, repeat: int = 50) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat * 1e3


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", required=True, help="folder with a FLAN-T5 config.json")
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args(argv)

    from transformers import (
        AutoConfig,
        AutoModelForSeq2SeqLM,
        Seq2SeqTrainer,
        Seq2SeqTrainingArguments,
    )

    from flantune.training import FlantuneTrainer

    with torch.device("meta"):
        model = AutoModelForSeq2SeqLM.from_config(AutoConfig.from_pretrained(args.arch))
    model.to_empty(device="cpu")  # memory without initialising it: nothing here reads the weights
    targs = Seq2SeqTrainingArguments(output_dir=tempfile.mkdtemp(), use_cpu=True, report_to="none")
    trainer = FlantuneTrainer(model=model, args=targs, evaluator=None, sampler_factory=None)
    batch = {"input_ids": torch.ones(args.batch, 512, dtype=torch.long)}
    print(f"{args.arch.rstrip('/').split('/')[-1]}: {sum(1 for _ in model.parameters())} parameter tensors, "
          f"{sum(1 for _ in model.modules())} modules; host ms per step")
    print(f"  FLOP estimate, the trainer's   {per_call_ms(lambda: Seq2SeqTrainer.floating_point_ops(trainer, batch)):6.2f}")
    print(f"  FLOP estimate, flantune's      {per_call_ms(lambda: trainer.floating_point_ops(batch)):6.2f}")


if __name__ == "__main__":
    main()
