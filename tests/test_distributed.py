"""Data parallel on CPU: two processes (gloo) under torchrun or accelerate launch end where one process with
the same global batch ends. Batches are formed at the global size and split between the processes, so
both runs see the same examples in the same steps; what differs is the order of floating-point sums in
the gradient all-reduce, so losses agree to about 1e-7 and the predictions exactly."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tolerances import assert_close, reordered

REPO = Path(__file__).resolve().parents[1]
OPTIONS = ["task=imdb", "model=tiny", "train.max_steps=10", "train.eval_steps=5", "train.logging_steps=2",
           "data.max_train_examples=160", "data.max_eval_examples=16", "tasks.imdb.max_input_length=64", "seed=3"]
TINY_D_FF = 256  # configs/model/tiny.yaml: its longest float32 reduction (d_model is 128)
# On losses near 0.7 nats per token, about 120 ulps: 20 Adam steps, each on gradients whose all-reduce summed
# them in another order (a few ulps), move the weights and so the loss by a growing few ulps a step.
# Classification metrics must be identical.
TOLERANCE = 1e-5


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name) if (Path(sys.executable).parent / name).exists() else \
        shutil.which(name)


def _run(launcher: list[str], out: Path, batch: int, shared_data: Path, *more: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*launcher, "-m", "flantune", "run", *OPTIONS, *more, f"train.batch_size={batch}",
                           f"data_dir={shared_data}", f"output_dir={out}"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {**json.loads((out / "metrics.json").read_text()),
            "log_history": json.loads((out / "log_history.json").read_text())}


@pytest.fixture(scope="module")
def single(tmp_path_factory, shared_data):
    return _run([sys.executable], tmp_path_factory.mktemp("one") / "run", 16, shared_data)


def _assert_same(one: dict, many: dict, examples: int | None = 160) -> None:
    assert many["step"]["processes"] == 2 and many["train"]["parallelism"] == "ddp"
    assert many["train"]["examples"] == one["train"]["examples"]
    assert examples is None or one["train"]["examples"] == examples  # 10 steps x global batch 16
    assert one["tasks"].keys() == many["tasks"].keys()
    for task in one["tasks"]:
        a, b = one["tasks"][task], many["tasks"][task]
        assert a.keys() == b.keys()
        for key in a:
            tol = TOLERANCE if key == "loss" else 0.0
            assert b[key] == pytest.approx(a[key], abs=tol), (task, key)
    # the logged training loss and gradient norm too: Adam and gradient clipping hide a constant scale on the
    # gradients from the metrics above, not from the norm before clipping (packed rows trained on half the
    # gradient on two processes, and logged half the loss)
    logged = [[(e["step"], e["loss"], e["grad_norm"]) for e in run["log_history"] if "loss" in e]
              for run in (one, many)]
    assert len(logged[0]) >= 2 and [s for s, *_ in logged[0]] == [s for s, *_ in logged[1]]
    for (_, *x), (_, *y) in zip(*logged):
        assert y == pytest.approx(x, rel=1e-4)  # as TOLERANCE: up to 20 steps of a few ulps each, and clipping


@pytest.mark.slow
def test_torchrun_two_processes_match_one(tmp_path, shared_data, single):
    many = _run([_bin("torchrun"), "--nproc_per_node=2", "--master_port=29533"], tmp_path / "run", 8, shared_data)
    _assert_same(single, many)


@pytest.mark.slow
def test_two_torchrun_nodes_match_one_process(tmp_path, shared_data, single):
    """The README's multi-node command, as two "nodes" on 127.0.0.1 of one process each (gloo): node 0 and
    node 1 started side by side end where one process with the same global batch ends."""
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    nodes = [subprocess.Popen([_bin("torchrun"), "--nnodes=2", f"--node_rank={rank}", "--nproc_per_node=1",
                               "--master_addr=127.0.0.1", "--master_port=29541", "-m", "flantune", "run", *OPTIONS,
                               "train.batch_size=8", f"data_dir={shared_data}", f"output_dir={out}"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
             for rank in (0, 1)]
    for rank, node in enumerate(nodes):
        output, _ = node.communicate(timeout=600)
        assert node.returncode == 0, f"node {rank}:\n{output[-3000:]}"
    many = {**json.loads((out / "metrics.json").read_text()),
            "log_history": json.loads((out / "log_history.json").read_text())}
    _assert_same(single, many)


@pytest.mark.slow
def test_accelerate_launch_two_processes_match_one(tmp_path, shared_data, single):
    config = REPO / "configs" / "accelerate" / "cpu_2proc.yaml"
    many = _run([_bin("accelerate"), "launch", "--config_file", str(config), "--main_process_port=29534"],
                tmp_path / "run", 8, shared_data)
    _assert_same(single, many)


def test_sharding_configs_load_and_fit_every_t5_family_model():
    """FSDP and DeepSpeed need GPUs (accelerate runs neither on CPU), so what can be checked here is that
    accelerate reads the shipped files as intended and that FSDP's wrap policy finds a block class in T5,
    mT5 and umT5 models alike."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DistributedType
    from accelerate.utils.dataclasses import get_module_class_from_name
    from transformers import MT5Config, MT5ForConditionalGeneration, T5Config, T5ForConditionalGeneration, \
        UMT5Config, UMT5ForConditionalGeneration

    fsdp = load_config_from_file(str(REPO / "configs" / "accelerate" / "fsdp.yaml"))
    assert fsdp.distributed_type == DistributedType.FSDP and fsdp.fsdp_config["fsdp_version"] == 2
    assert fsdp.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    names = fsdp.fsdp_config.get("fsdp_transformer_layer_cls_to_wrap")
    small = dict(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    for config, model_class in ((T5Config, T5ForConditionalGeneration), (MT5Config, MT5ForConditionalGeneration),
                                (UMT5Config, UMT5ForConditionalGeneration)):
        model = model_class(config(**small))
        for name in (names.split(",") if names else model._no_split_modules):
            assert get_module_class_from_name(model, name) is not None, (model_class.__name__, name)

    zero3 = load_config_from_file(str(REPO / "configs" / "accelerate" / "deepspeed_zero3.yaml"))
    assert zero3.distributed_type == DistributedType.DEEPSPEED and zero3.deepspeed_config["zero_stage"] == 3
    # a fixed value here would make the trainer refuse any train.grad_accum or max_grad_norm that differs
    assert not {"gradient_accumulation_steps", "gradient_clipping"} & zero3.deepspeed_config.keys()


@pytest.mark.slow
def test_packed_rows_split_between_two_processes_match_one(tmp_path, shared_data):
    """train.sampling=packed: the encoder runs in a forward pre-hook (flantune.packing.forward); its gradients
    must still be all-reduced. Rows hold different numbers of label tokens, so the loss is only the one-process
    loss if each process's share of the step's tokens is weighed in."""
    packed = ["train.sampling=packed", "train.packed_input_length=256"]
    one = _run([sys.executable], tmp_path / "one", 4, shared_data, *packed, "train.packed_rows_per_batch=4")
    many = _run([_bin("torchrun"), "--nproc_per_node=2", "--master_port=29535"], tmp_path / "many", 2, shared_data,
                *packed, "train.packed_rows_per_batch=2")
    assert one["train"]["examples"] > 10 * 4 * 2  # several examples a row
    _assert_same(one, many, examples=None)


@pytest.mark.slow
def test_a_mixtures_micro_batches_split_between_two_processes_match_one(tmp_path, shared_data):
    """train.micro_batches=auto is decided on each process's batch: two processes of 8 examples run a mixture's
    step as 2 micro-batches of 4 each, the micro-batches of 8 that one process of 16 runs with
    train.micro_batches=2 (the accumulated token counts must add up across both)."""
    mixture = ["task=[imdb,emotion]", "tasks.emotion.max_input_length=64"]
    one = _run([sys.executable], tmp_path / "one", 16, shared_data, *mixture, "train.micro_batches=2")
    many = _run([_bin("torchrun"), "--nproc_per_node=2", "--master_port=29538"], tmp_path / "many", 8, shared_data,
                *mixture)
    assert (many["step"]["micro_batches"], many["step"]["micro_batch"]) == (2, 4)
    _assert_same(one, many)


def test_fsdp2_preparation_keeps_a_separate_head(tmp_path):
    """accelerate's FSDP2 preparation moves the model to the meta device and calls tie_weights(), then maps
    every old parameter name to a new one. transformers 5's T5Config always asks for a tied head, so a
    FLAN-T5 model (own lm_head) lost it there: "FSDP2 mapping failed (missing: ['lm_head.weight'])" on the
    H100 (bench/RESULTS.md). The same steps on CPU, for a random-init model and one reloaded from disk."""
    import torch

    from flantune.config import load_config
    from flantune.modeling import load_model

    flan_like = ["model=tiny", "model.architecture.tie_word_embeddings=false"]  # FLAN-T5's config says so
    built = load_model(load_config(flan_like), 0)
    with torch.no_grad():  # a head that differs from the embedding, as in the checkpoints (equal ones load tied)
        built.lm_head.weight.mul_(0.5)
    built.save_pretrained(tmp_path / "saved")
    reloaded = load_model(load_config(["model=tiny", f"model.path={tmp_path / 'saved'}", "model.random_init=false"]), 0)
    for model in (built, reloaded):
        assert model.lm_head.weight is not model.shared.weight
        before = {name for name, _ in model.named_parameters()}
        model.to("meta")
        model.tie_weights()  # what accelerate's fsdp2_prepare_model does with cpu_ram_efficient_loading
        assert {name for name, _ in model.named_parameters()} == before
        assert model.lm_head.weight is not model.shared.weight
        assert model.encoder.embed_tokens.weight is model.shared.weight  # the embeddings stay tied
        assert model.decoder.embed_tokens.weight is model.shared.weight


# A tiny FLAN-T5 (own head) and its FSDP2 twin, sharded as accelerate's TRANSFORMER_BASED_WRAP does, on one
# gloo process: what the scripts below compare.
FSDP2_SETUP = r"""
import copy, json, os, sys
import torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from flantune.config import load_config
from flantune.modeling import load_model

os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1")
dist.init_process_group("gloo")
plain = load_model(load_config(["model=tiny", "model.architecture.tie_word_embeddings=false"]), 0).eval()


def shard(model):
    for block in [*model.encoder.block, *model.decoder.block]:
        fully_shard(block, mesh=init_device_mesh("cpu", (1,)))
    return fully_shard(model, mesh=init_device_mesh("cpu", (1,)))
"""

def _run_fsdp2_script(code: str, tmp_path: Path, port: int) -> tuple[dict, dict]:
    """Run a script above in its own process: its plain and sharded results."""
    script = tmp_path / "fsdp2.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script), str(port)], capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    return result["plain"], result["sharded"]


FSDP2_EVAL = FSDP2_SETUP + r"""
from flantune import scoring
from flantune.distributed import whole_parameters
from flantune.tokenizer import load_tokenizer

sharded = shard(copy.deepcopy(plain))

tok = load_tokenizer(None)
inputs = tok(["a fine film", "dull and far too long, a waste of an evening"]).input_ids
choices = tok(text_target=["negative", "positive"]).input_ids
out = {}
for name, model in (("plain", plain), ("sharded", sharded)):
    # A training step first, as in a run: FSDP2 sets itself up in the root's first forward and frees the
    # root's gathered weights after the backward.
    model(input_ids=torch.tensor(inputs[:1]), labels=torch.tensor(choices[:1])).loss.backward()
    with whole_parameters(model):  # batches of one: the root forward of one batch comes before the next encoder call
        ranked = scoring.rank_choices(model, inputs, choices, batch_size=1, pad_id=0, device="cpu")
        made = scoring.generate(model, tok, inputs, choices, batch_size=1, max_new_tokens=5, num_beams=1, device="cpu")
    out[name] = {"scores": ranked.scores.tolist(), "texts": made.texts}
print("RESULT", json.dumps(out))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_fsdp2_model_evaluates_like_the_unsharded_one(tmp_path):
    """Evaluation calls the encoder on its own, outside the root module's forward, where FSDP2 gathers the
    shared embedding: on the H100 a run under configs/accelerate/fsdp.yaml trained its 40 steps and then
    failed in rank scoring ("aten.embedding.default got mixed torch.Tensor and DTensor"). FSDP2 on CPU
    (gloo, one process): rank scores and generated text match the unsharded model's."""
    plain, sharded = _run_fsdp2_script(FSDP2_EVAL, tmp_path, port=29536)
    assert plain["texts"] == sharded["texts"]
    for a, b in zip(plain["scores"], sharded["scores"]):
        # log-probabilities near -125 from the 2+2 layers' forward pass (4 reductions), summed in another order
        assert a == pytest.approx(b, rel=reordered(TINY_D_FF, depth=4))


FSDP2_PACKED = FSDP2_SETUP + r"""
from flantune import packing

sharded = copy.deepcopy(plain)
packing.accept_rows(sharded)  # before sharding, as the trainer does
sharded = shard(sharded)

g = torch.Generator().manual_seed(0)
def segments(length, *rows):  # each row: its examples' lengths; 0 pads the rest
    return torch.tensor([[k for k, n in enumerate(row, 1) for _ in range(n)] + [0] * (length - sum(row)) for row in rows])
batch = {"input_segment_ids": segments(32, [10, 14], [20, 12]), "label_segment_ids": segments(12, [4, 6], [7, 5]),
         "input_ids": torch.randint(2, 300, (2, 32), generator=g), "labels": torch.randint(2, 300, (2, 12), generator=g),
         "decoder_input_ids": torch.randint(2, 300, (2, 12), generator=g)}
batch["labels"][batch["label_segment_ids"] == 0] = -100
batch["attention_mask"] = (batch["input_segment_ids"] > 0).long()
out = {}
for name, model in (("plain", plain), ("sharded", sharded)):
    losses = []
    for step in range(2):  # the second step after FSDP2 has set itself up and freed the root's weights
        model.zero_grad()
        loss = packing.forward(model, batch).loss
        loss.backward()
        losses.append(loss.item())
    grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad) for n, p in model.named_parameters()}
    out[name] = {"losses": losses, "grads": {n: g.flatten()[:64].tolist() for n, g in grads.items()},
                 "scales": {n: g.abs().max().item() for n, g in grads.items()}}
print("RESULT", json.dumps(out))
dist.destroy_process_group()
"""


@pytest.mark.slow
def test_fsdp2_trains_on_packed_rows_as_unsharded(tmp_path):
    """Packed rows need the encoder run on its own, with its own mask: run outside the root module's call,
    it met the shared embedding still sharded under FSDP2 ("got mixed torch.Tensor and DTensor"), so packed
    rows were refused under FSDP. FSDP2 on CPU (gloo, one process): loss and gradients match the unsharded
    model's."""
    plain, sharded = _run_fsdp2_script(FSDP2_PACKED, tmp_path, port=29537)
    # the tiny model's 2+2 layers, forward and backward: 8 chained reductions of up to d_ff=256 terms
    assert sharded["losses"] == pytest.approx(plain["losses"], rel=reordered(TINY_D_FF, depth=8))
    assert plain["grads"].keys() == sharded["grads"].keys()
    for name, grad in plain["grads"].items():
        assert_close(sharded["grads"][name], grad, reordered(TINY_D_FF, depth=8), name, scale=plain["scales"][name])
