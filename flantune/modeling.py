"""The model and tokenizer of a run: a hub id, a local folder, or an architecture with random weights;
full fine-tuning or a peft adapter (flantune.methods) through the same code path; the precision it trains in."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from flantune.errors import FlantuneError, first_line
from flantune.hub import hub_unreachable, is_local_path
from flantune.methods import method_of, peft_config, quantization_config
from flantune.rundir import BASE_MODEL, MODEL
from flantune.unwrap import base_model_of

T5_FAMILY = ("t5", "mt5", "umt5", "longt5", "switch_transformers")
ADAPTER = "adapter_config.json"
OFFLINE_HINT = (
    "To run offline, pass a local folder (model=/path/to/flan-t5-base, a save_pretrained output) and read data "
    "from a mirror with data_dir=DIR; model=tiny needs neither the hub nor a GPU."
)


@dataclass
class ModelInfo:
    label: str  # what summaries and reports call the model
    random_init: bool
    model_type: str
    trainable_parameters: int
    total_parameters: int


def model_label(cfg: DictConfig) -> str:
    m = cfg.model
    return f"{m.name} (random init)" if m.random_init else str(m.name)


def _offline_why() -> str:
    why = hub_unreachable()
    return f" The Hugging Face hub {why}: only models in the local cache load." if why else ""


def _load_target(path: str) -> str:
    """What from_pretrained is given: a local folder with ~ expanded, else the hub id as is (the hub asked once
    whether it answers)."""
    if is_local_path(path):
        return str(Path(path).expanduser())
    hub_unreachable()
    return path


def adapter_base(path: str) -> str | None:
    """The base model of a saved adapter folder (any peft method), or None if the folder holds a full model. A hub
    id is returned as it is, a path relative to the adapter ("../base_model") resolved against the adapter folder.
    A run names its saved base_model/ by an absolute path (`run_adapter_base`): if the run has moved since, the
    copy beside the adapter is the one."""
    import json

    folder = Path(path).expanduser()
    if not (is_local_path(path) and (folder / ADAPTER).is_file()):
        return None
    base = json.loads((folder / ADAPTER).read_text())["base_model_name_or_path"]
    if base and base.startswith(("./", "../")) and (folder / base).is_dir():
        return str((folder / base).resolve())
    beside = folder.parent / BASE_MODEL
    if base and Path(base).is_absolute() and not Path(base).exists() and (beside / "config.json").is_file():
        return str(beside)
    return base


def run_adapter_base(cfg: DictConfig, out: Path) -> tuple[str, Path | None]:
    """What the adapter_config.json of a LoRA run in `out` names as its base, and the folder to copy into the run's
    base_model/ first (None: nothing to copy).

    A hub base is named by its hub id, which loads anywhere. A base that can't be downloaded again (random init,
    or another run's base_model/ that this run's adapter trains on from) is saved in the run's base_model/ and
    named by its absolute path: peft reads a relative base path from the current directory, so no path would let
    AutoPeftModelForSeq2SeqLM load a moved run, and this one does so where the run was made. flantune's loader
    (`adapter_base`) finds base_model/ beside the adapter wherever the run has moved. Another local folder is
    named by its absolute path too: it is not in the run, and must be on the machine the run is moved to."""
    here = str((out / BASE_MODEL).resolve())
    m = cfg.model
    if m.random_init:
        return here, None  # the engine saves the random weights there
    base = adapter_base(str(m.path)) or str(m.path)
    if not is_local_path(base):
        return base, None
    folder = Path(base).expanduser().resolve()
    if folder.name == BASE_MODEL and (folder.parent / MODEL / ADAPTER).is_file():
        return here, folder
    return str(folder), None


def check_model_source(cfg: DictConfig) -> None:
    """Before any heavy work: a local model folder must exist and hold a model; random init needs an
    architecture; a local tokenizer folder must exist."""
    m = cfg.model
    if m.tokenizer and is_local_path(str(m.tokenizer)) and not Path(str(m.tokenizer)).expanduser().is_dir():
        raise FlantuneError(f"Tokenizer folder '{m.tokenizer}' (model.tokenizer) does not exist. Give a folder with "
                            "tokenizer files, a hub id, or leave it out for the model's own tokenizer.")
    if m.path is None:
        if not (m.random_init and m.architecture):
            raise FlantuneError("model.path is unset: give model=NAME, a local folder or a hub id.")
        return
    if not is_local_path(str(m.path)):
        return
    folder = Path(str(m.path)).expanduser()
    if not folder.is_dir():
        raise FlantuneError(f"Model folder '{m.path}' does not exist. Give model= a save_pretrained output folder, "
                            "a flantune run directory, or a hub id.")
    adapter = (folder / ADAPTER).is_file()
    if not (folder / "config.json").is_file() and not adapter:
        raise FlantuneError(
            f"Model folder '{m.path}' has no config.json (nor a LoRA {ADAPTER}). Give model= a save_pretrained "
            "output folder, a flantune run directory, or a hub id."
        )
    stems = ("adapter_model",) if adapter else ("model", "pytorch_model")
    if not m.random_init and not any(list(folder.glob(f"{stem}*.{ext}")) for stem in stems
                                     for ext in ("safetensors", "bin", "safetensors.index.json", "bin.index.json")):
        raise FlantuneError(
            f"Model folder '{m.path}' holds no weights (no {stems[0]}*.safetensors or *.bin). Give model= a complete "
            "save_pretrained output, or add model.random_init=true to train its architecture from random weights."
        )


def tokenizer_name(cfg: DictConfig) -> str | None:
    """The run's tokenizer: model.tokenizer, else the model's own (None: a random-init model, which takes the
    FLAN-T5 tokenizer shipped with flantune)."""
    m = cfg.model
    return m.tokenizer or (None if m.random_init or m.path is None else m.path)


def load_tokenizer(cfg: DictConfig):
    from flantune.tokenizer import load_tokenizer as load

    name = tokenizer_name(cfg)
    try:
        return load(name)
    except FlantuneError as exc:
        if name is not None and is_local_path(str(name)):
            raise  # a local folder's problem: the hub has nothing to do with it
        raise FlantuneError(f"{exc} {OFFLINE_HINT}") from exc


def _from_config(cfg: DictConfig, seed: int):
    import torch
    from transformers import AutoModelForSeq2SeqLM

    config = model_config(cfg)
    torch.manual_seed(seed)
    return _untie_like_checkpoint(AutoModelForSeq2SeqLM.from_config(config))


def model_config(cfg: DictConfig):
    """The model's config without its weights: the config.json at model.path (a LoRA adapter's base's), or T5's
    for an architecture alone, with model.architecture's fields on top."""
    from transformers import AutoConfig, T5Config

    m = cfg.model
    arch = OmegaConf.to_container(m.architecture, resolve=True) if m.architecture else {}
    if m.path is None:
        return T5Config(**arch)
    try:
        return AutoConfig.from_pretrained(_load_target(adapter_base(str(m.path)) or str(m.path)), **arch)
    except OSError as exc:
        raise FlantuneError(
            f"Could not load the config of model '{m.path}' ({first_line(exc)}).{_offline_why()} {OFFLINE_HINT}"
        ) from exc


def _untie_like_checkpoint(model):
    """transformers 5 ties lm_head to the embedding when building from a config; FLAN-T5 checkpoints keep a
    separate head (their config says so: scale_decoder_outputs=False). Untie it for the real shapes."""
    import torch

    if getattr(model.config, "scale_decoder_outputs", True) is False and hasattr(model, "lm_head"):
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
    return keep_separate_head(model)


def keep_separate_head(model):
    """A model whose lm_head is its own weight (FLAN-T5, T5 v1.1) keeps it so through later tie_weights() calls.

    transformers 5's T5Config always says tie_word_embeddings=True, so tie_weights() (which accelerate's FSDP2
    calls after moving the model to the meta device) would tie the head to the embedding again: FSDP2 then
    stops with "FSDP2 mapping failed (missing: ['lm_head.weight'])". The embeddings stay tied as before."""
    base = base_model_of(model)
    head, shared = getattr(base, "lm_head", None), getattr(base, "shared", None)
    if head is None or shared is None or head.weight is shared.weight:
        return model
    base._tied_weights_keys = {k: v for k, v in (type(base)._tied_weights_keys or {}).items() if k != "lm_head.weight"}
    getattr(base, "all_tied_weights_keys", {}).pop("lm_head.weight", None)
    return model


def load_model(cfg: DictConfig, seed: int, *, train: bool = False):
    """The model to evaluate, or with train=True to fine-tune: an adapter given as the model then goes on
    training as the same adapter (an adapter method) or is merged into its base for full fine-tuning. With
    train=True, method=qlora loads the base quantised (a random-init base: `load_quantized`, once saved)."""
    from transformers import AutoModelForSeq2SeqLM

    m = cfg.model
    method = method_of(cfg)
    quantize = {"quantization_config": quantization_config(cfg)} if train and method.quantized else {}
    try:
        if m.random_init:
            model = _from_config(cfg, seed)
        elif base_name := adapter_base(str(m.path)):  # a run's model/ with an adapter: the base model plus it
            from peft import PeftModel

            base = AutoModelForSeq2SeqLM.from_pretrained(_load_target(base_name), **quantize)
            with _quiet_peft_wrap():
                model = PeftModel.from_pretrained(base, str(Path(str(m.path)).expanduser()),
                                                  is_trainable=train and method.adapter)
            if train and not method.adapter:
                model = model.merge_and_unload().requires_grad_(True)  # peft froze the base's weights
        else:
            model = AutoModelForSeq2SeqLM.from_pretrained(_load_target(str(m.path)), **quantize)
    except OSError as exc:
        raise FlantuneError(f"Could not load model '{m.path}' ({first_line(exc)}).{_offline_why()} {OFFLINE_HINT}") \
            from exc
    except ValueError as exc:
        raise FlantuneError(
            f"'{m.path}' is not a sequence-to-sequence model that AutoModelForSeq2SeqLM can load ({exc}). "
            "flantune fine-tunes T5-family models (FLAN-T5, T5, mT5, umT5)."
        ) from exc
    return keep_separate_head(model)


def load_quantized(cfg: DictConfig, folder: Path):
    """method=qlora on a random-init base: bitsandbytes quantises weights as they load, so the base saved in the run
    directory (base_model/) is loaded again, quantised."""
    from transformers import AutoModelForSeq2SeqLM

    return keep_separate_head(AutoModelForSeq2SeqLM.from_pretrained(str(folder),
                                                                    quantization_config=quantization_config(cfg)))


class Precision(str, Enum):
    """The precision a run trains and evaluates in, decided once (`resolve_precision`) and read everywhere: the
    model's cast, the trainer's autocast flags, the optimizer, CUDA graphs, evaluation's autocast. A str, so it
    compares to and is written as its name ("bf16")."""

    FP32 = "fp32"
    BF16 = "bf16"  # bf16 weights, no autocast; the optimizer keeps fp32 master weights (kernels.MasterWeightAdamW)
    BF16_MIXED = "bf16-mixed"  # fp32 weights under bf16 autocast (the trainer's bf16=True)
    FP16 = "fp16"  # fp32 weights under fp16 autocast with loss scaling (the trainer's fp16=True)

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @property
    def weights(self) -> str:
        """The torch dtype (by name) the model's weights are held in."""
        return "bfloat16" if self is Precision.BF16 else "float32"

    @property
    def master_weights(self) -> bool:
        """Whether the optimizer updates fp32 copies of the (bf16) weights."""
        return self is Precision.BF16

    @property
    def autocast(self) -> dict[str, bool]:
        """The trainer's autocast flags."""
        return {"bf16": self is Precision.BF16_MIXED, "fp16": self is Precision.FP16}


def resolve_precision(cfg: DictConfig, model_type: str | None = None, *, sharded: bool = False) -> Precision:
    """The run's precision, checked: fp16 overflows in T5 and needs a GPU; bf16 needs a GPU that has it, and its
    fp32-master AdamW can't shard (`sharded`: FSDP or DeepSpeed, where auto means bf16-mixed) and is AdamW."""
    import torch

    cuda = torch.cuda.is_available()
    if cfg.precision == "auto":
        precision = Precision.BF16 if cuda and torch.cuda.is_bf16_supported() else Precision.FP32
        if precision is Precision.BF16 and sharded:
            precision = Precision.BF16_MIXED
    else:
        precision = Precision(cfg.precision)
    if precision is Precision.FP16:
        if model_type in T5_FAMILY and not cfg.force_fp16:
            raise FlantuneError(
                "precision=fp16 is refused for T5-family models: their activations overflow fp16's range and the "
                "loss turns to NaN (a known T5 issue). Use precision=bf16 on GPUs that support it (A100, H100, "
                "RTX 30xx and newer) or precision=fp32; force_fp16=true runs fp16 anyway."
            )
        if not cuda:
            raise FlantuneError("precision=fp16 needs a CUDA GPU; on CPU use precision=fp32 (or auto).")
    if precision.startswith("bf16") and cuda and not torch.cuda.is_bf16_supported():
        raise FlantuneError(f"precision={precision}: this GPU does not support bfloat16. Use precision=fp32.")
    if precision.master_weights and sharded:
        raise FlantuneError(
            "precision=bf16 (bf16 weights with flantune's fp32-master AdamW) can't shard its master weights "
            "under FSDP or DeepSpeed: use precision=bf16-mixed, which they support."
        )
    if precision.master_weights and cfg.train.optim not in ("adamw_torch", "adamw_torch_fused"):
        raise FlantuneError(
            f"precision=bf16 trains bf16 weights with flantune's fp32-master AdamW, so train.optim={cfg.train.optim} "
            "can't apply. Use precision=bf16-mixed for the trainer's optimizers, or train.optim=adamw_torch."
        )
    return precision


def prepare_for_training(model, precision: Precision, compile_blocks_: bool):
    """The speed-ups of flantune's training path (flantune/kernels.py): T5's position bias on SDPA's fused
    kernel, fused RMSNorm and GELU kernels, no key/value cache while training, the weights in the precision's
    dtype (a checkpoint saved in bf16 loads as bf16), optional regional compile."""
    import torch

    from flantune import kernels

    kernels.use_fast_attention(model)
    kernels.use_fused_ops(model)
    kernels.disable_kv_cache(model)
    if not getattr(base_model_of(model), "is_quantized", False):  # bitsandbytes' layers keep their own dtypes
        model.to(getattr(torch, Precision(precision).weights))
    if compile_blocks_:
        kernels.compile_blocks(model)
    return model


def check_lora_targets(cfg: DictConfig) -> None:
    """Before any heavy work: every name in the method's target_modules (lora.* for lora, qlora and adalora, ia3.*
    for ia3) names modules of this model (peft takes a module whose name is the entry or ends with '.entry'), so a
    typo is an error rather than layers left untrained."""
    key = method_of(cfg).targets
    if key is None or not OmegaConf.is_list(cfg[key].target_modules):
        return  # no target modules, or a string: peft's regular expression or 'all-linear'
    targets = list(cfg[key].target_modules) + list(cfg.ia3.feedforward_modules or []) * (key == "ia3")
    m = cfg.model
    if m.path is not None and adapter_base(str(m.path)):
        return  # a saved adapter trains on with its own targets
    import torch
    from transformers import AutoModelForSeq2SeqLM

    config = model_config(cfg)
    with torch.device("meta"):  # module names without allocating weights
        model = AutoModelForSeq2SeqLM.from_config(config)
    names = [name for name, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith(f".{t}") for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, mod in model.named_modules() if isinstance(mod, torch.nn.Linear)})
        raise FlantuneError(
            f"{key}.target_modules names {', '.join(missing)}, which this {config.model_type} model has no modules "
            f"called. Its linear layers are: {', '.join(linear)} (e.g. \"{key}.target_modules=[q,v]\")."
        )


def check_model_files(cfg: DictConfig) -> None:
    """Before any data is read: every safetensors file of a local model folder opens (its header is read, not its
    weights), and the tokenizer loads and fits the model's vocabulary (an id past vocab_size fails in the
    embedding, mid-training)."""
    m = cfg.model
    if m.path is not None and not m.random_init and is_local_path(str(m.path)):
        from safetensors import safe_open

        for path in sorted(Path(str(m.path)).expanduser().glob("*.safetensors")):
            try:
                with safe_open(str(path), framework="pt"):
                    pass
            except Exception as exc:  # noqa: BLE001 - safetensors' SafetensorError, OSError
                raise FlantuneError(
                    f"Model folder '{m.path}': {path.name} can't be read as safetensors ({first_line(exc)}): the file "
                    "is cut short or corrupt. Copy or save the model again (save_pretrained), or give another model=."
                ) from exc
    tokenizer = load_tokenizer(cfg)
    vocab = model_config(cfg).vocab_size
    if len(tokenizer) > vocab:
        shipped = "the FLAN-T5 tokenizer shipped with flantune"
        name = m.tokenizer or (m.path if m.path and not m.random_init else shipped)
        raise FlantuneError(
            f"The model's vocab_size is {vocab}, but its tokenizer ({name}) has {len(tokenizer):,} tokens: ids from "
            f"{vocab} on have no embedding. Set model.architecture.vocab_size to at least {len(tokenizer)} (FLAN-T5 "
            "uses 32128), or give model.tokenizer a tokenizer of the model's vocabulary."
        )


def config_model_type(cfg: DictConfig) -> str:
    """The model_type without loading weights (config.json only), for checks made before heavy work."""
    m = cfg.model
    if m.random_init and m.path is None:
        return "t5"  # without importing transformers
    return model_config(cfg).model_type


@contextlib.contextmanager
def _quiet_peft_wrap() -> Iterator[None]:
    """peft's PeftModel reads the model's is_gradient_checkpointing, which transformers 5.2x deprecates: a
    FutureWarning about peft's own call, which flantune has no other call to avoid. Only that warning is silenced."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def apply_method(model, cfg: DictConfig):
    """Full fine-tuning returns the model as is; an adapter method wraps it in a peft model (qlora first readies
    the quantised base for training: peft's prepare_model_for_kbit_training)."""
    method = method_of(cfg)
    if not method.adapter or hasattr(model, "peft_config"):  # a saved adapter trains on as it is
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if method.quantized:  # norms and head in fp32, inputs that carry gradients; checkpointing is flantune's choice
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=bool(cfg.gradient_checkpointing))
    from flantune.tokenizer import tokenizer_target

    try:
        with _quiet_peft_wrap():
            return get_peft_model(model, peft_config(cfg, tokenizer=tokenizer_target(tokenizer_name(cfg))))
    except ValueError as exc:
        raise FlantuneError(f"method={method.name} could not wrap the model: {exc}. Check the method's "
                            "target_modules.") from exc


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
