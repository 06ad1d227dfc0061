"""The fine-tuning methods, in one table: what each trains (every weight, or a peft adapter), whether its adapter
can be merged into the base model, whether it quantises the base, and the peft config it is built from.

Every "is this an adapter?" question of flantune is answered here (`method_of`), never by comparing
cfg.method to a name elsewhere."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from flantune.errors import FlantuneError


@dataclass(frozen=True)
class Method:
    name: str
    adapter: bool  # trains a peft adapter over a frozen base (model/ holds the adapter, not the weights)
    mergeable: bool  # merge=true can fold the adapter into the base (merged/)
    quantized: bool = False  # the frozen base is loaded in 4 or 8 bits (bitsandbytes)
    prompt: bool = False  # virtual tokens before the input (peft's prompt learning), no layer changed
    targets: str | None = None  # the config section whose target_modules it adapts (lora.*, ia3.*)
    label: str = ""  # as its paper writes it (model cards, reports)


METHODS = {m.name: m for m in (
    # every weight trains
    Method("full", adapter=False, mergeable=False, label="full fine-tuning"),
    # low-rank adapters
    Method("lora", adapter=True, mergeable=True, targets="lora", label="LoRA"),
    # LoRA over a 4- or 8-bit base
    Method("qlora", adapter=True, mergeable=True, quantized=True, targets="lora", label="QLoRA"),
    # LoRA whose ranks move while training
    Method("adalora", adapter=True, mergeable=True, targets="lora", label="AdaLoRA"),
    # learned scales of activations
    Method("ia3", adapter=True, mergeable=True, targets="ia3", label="IA3"),
    # trained embeddings before the input
    Method("prompt_tuning", adapter=True, mergeable=False, prompt=True, label="prompt tuning"),
)}


def method_of(cfg: DictConfig) -> Method:
    """The run's method (cfg.method was checked against configs/method/ with the config)."""
    return METHODS[str(cfg.method)]


def check_method(cfg: DictConfig) -> None:
    """With the config, before any model or data: the method's settings and what it can't do."""
    m = method_of(cfg)
    if cfg.merge and not m.mergeable:
        can = ", ".join(n for n, x in METHODS.items() if x.mergeable)
        if not m.adapter:
            raise FlantuneError(
                f"merge=true writes a LoRA adapter merged into its base model (merged/), but method={m.name} has no "
                f"adapter: its model/ already holds every weight. Drop merge=true, or train with an adapter that "
                f"merges ({can})."
            )
        raise FlantuneError(
            f"merge=true writes the adapter merged into its base model (merged/), but method={m.name} can't be "
            "merged: its virtual tokens are an input, not a change of weights that could be folded in. Drop "
            f"merge=true (model/ holds the adapter, which PeftModel.from_pretrained loads), or use one of: {can}."
        )
    if m.prompt and cfg.train.sampling == "packed":
        raise FlantuneError(
            "method=prompt_tuning puts its virtual tokens before each input, which packed rows (several examples "
            "a row) can't hold. Use train.sampling=input_length_grouped (the default)."
        )
    if m.name == "prompt_tuning" and cfg.prompt_tuning.num_virtual_tokens < 1:
        raise FlantuneError(f"Config key 'prompt_tuning.num_virtual_tokens' is "
                            f"{cfg.prompt_tuning.num_virtual_tokens}; it must be at least 1.")
    if m.name == "qlora" and cfg.qlora.bits not in (4, 8):
        raise FlantuneError(f"Config key 'qlora.bits' is {cfg.qlora.bits}; choose 4 (NF4) or 8.")
    if m.name == "adalora":
        a = cfg.adalora
        if not 1 <= a.target_r <= a.init_r:
            raise FlantuneError(f"adalora.target_r={a.target_r} and adalora.init_r={a.init_r}: the ranks start at "
                                "init_r and are cut to target_r on average, so 1 <= target_r <= init_r.")
        if a.tinit < 0 or a.tfinal < 0 or a.delta_t < 1:
            raise FlantuneError("adalora.tinit and adalora.tfinal must be >= 0 and adalora.delta_t >= 1.")
    if m.quantized:
        check_bitsandbytes()


def check_bitsandbytes() -> None:
    """method=qlora needs bitsandbytes (an optional extra): installed, asked without importing it (and torch) yet."""
    import importlib.util

    try:
        found = importlib.util.find_spec("bitsandbytes") is not None
    except ValueError:  # sys.modules holds None for it: its import is blocked
        found = False
    if not found:
        raise FlantuneError(
            "method=qlora loads the base model in 4 or 8 bits with bitsandbytes, which is not installed: "
            "pip install 'flantune[qlora]' (or pip install bitsandbytes). bitsandbytes runs on CUDA GPUs and "
            "(0.50 and later) on x86-64 CPUs, slowly; elsewhere use method=lora."
        )


def _targets(value: Any) -> Any:
    """A list of module names, or a string (peft's regular expression, or 'all-linear')."""
    return OmegaConf.to_container(value) if OmegaConf.is_list(value) else value


def quantization_config(cfg: DictConfig):
    """The BitsAndBytesConfig the base model of method=qlora loads with: NF4 with double quantisation, computing
    in the run's weight dtype (QLoRA's recipe), or LLM.int8()."""
    import torch
    from transformers import BitsAndBytesConfig

    if cfg.qlora.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    compute = torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def peft_config(cfg: DictConfig, *, tokenizer: str | None = None, total_step: int = 1):
    """The peft config of an adapter method. `tokenizer` (a folder or hub id) turns prompt_tuning.init_text into
    tokens. AdaLoRA's budget schedule needs the run's steps, which the trainer knows only once it starts:
    `total_step` is a stand-in that AdaLoraSchedule (flantune.training) replaces."""
    from peft import AdaLoraConfig, IA3Config, LoraConfig, PromptTuningConfig, PromptTuningInit, TaskType

    m = method_of(cfg)
    task = TaskType.SEQ_2_SEQ_LM
    if m.name in ("lora", "qlora"):
        return LoraConfig(task_type=task, r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                          target_modules=_targets(cfg.lora.target_modules))
    if m.name == "adalora":
        a = cfg.adalora
        return AdaLoraConfig(task_type=task, init_r=a.init_r, target_r=a.target_r, tinit=a.tinit, tfinal=a.tfinal,
                             deltaT=a.delta_t, orth_reg_weight=a.orth_reg_weight, lora_alpha=cfg.lora.alpha,
                             lora_dropout=cfg.lora.dropout, target_modules=_targets(cfg.lora.target_modules),
                             total_step=max(total_step, a.tinit + a.tfinal + 1))
    if m.name == "ia3":
        # peft's T5 defaults (keys, values, the feed-forward output) unless ia3.target_modules names others
        targets = _targets(cfg.ia3.target_modules)
        return IA3Config(task_type=task, target_modules=targets,
                         feedforward_modules=_targets(cfg.ia3.feedforward_modules) if targets else None)
    if m.name == "prompt_tuning":
        p = cfg.prompt_tuning
        text = p.init_text
        return PromptTuningConfig(
            # one set of virtual tokens, the encoder's: peft's seq2seq default (2) makes a second that only its
            # prompt *tuning* forward never reads
            task_type=task, num_virtual_tokens=p.num_virtual_tokens, num_transformer_submodules=1,
            prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=text or None, tokenizer_name_or_path=tokenizer if text else None,
        )
    raise ValueError(f"method {m.name} has no adapter")


# ---- prompt tuning at evaluation ----------------------------------------------------------------------------


def is_prompt_model(model) -> bool:
    """A peft model whose adapter is virtual input tokens (prompt tuning): its encoder must be given them."""
    config = getattr(model, "active_peft_config", None)
    return bool(config is not None and config.is_prompt_learning)


def encoder_inputs(model, ids, mask):
    """What the encoder of `model` is called with for a batch, and the attention mask over its states: for a
    prompt-tuned model its virtual tokens' embeddings come before the input's (as peft's own forward does),
    and the mask covers them."""
    if not is_prompt_model(model):
        return {"input_ids": ids, "attention_mask": mask}, mask
    import torch

    n = model.active_peft_config.num_virtual_tokens
    embeds = model.word_embeddings(ids)
    prompts = model.get_prompt(batch_size=len(ids))[:, :n].to(embeds.dtype)
    mask = torch.cat((mask.new_ones(len(ids), n), mask), dim=1)
    return {"inputs_embeds": torch.cat((prompts, embeds), dim=1), "attention_mask": mask}, mask


def decoder_model(model):
    """The model the decoder is run through once the encoder's states are known: a prompt-tuned model's base
    (peft's forward would prepend the virtual tokens again, to inputs it no longer has), else the model."""
    return model.get_base_model() if is_prompt_model(model) else model
