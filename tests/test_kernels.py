"""The GPU speed-ups compute the same function: the shared-bias SDPA attention against T5's eager
attention, the fused RMSNorm and GELU against T5's own, and the fp32-master AdamW against plain AdamW."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration

from flantune import kernels
from flantune.kernels import MasterWeightAdamW, use_fast_attention, use_fused_ops

from tolerances import assert_close, reordered


def _tiny(seed=0):
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=300, d_model=64, d_ff=128, d_kv=16, num_heads=4, num_layers=3, num_decoder_layers=3,
                   feed_forward_proj="gated-gelu", dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
                   eos_token_id=1, attn_implementation="eager")
    return T5ForConditionalGeneration(cfg)


def _batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 300, (4, 23), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0  # padded rows
    mask[3, 5:] = 0
    labels = torch.randint(2, 300, (4, 7), generator=g)
    labels[2, 4:] = -100
    return ids, mask, labels


@pytest.mark.parametrize("scores_per_slice", [None, 4 * 23 * 23])
def test_fast_attention_matches_eager_forward_and_backward(scores_per_slice, monkeypatch):
    """On a CPU the attention runs a slice of the batch at a time (kernels.CPU_SCORES_PER_CHUNK score elements):
    4 * 23 * 23 puts each encoder row in a slice of its own, the cross attention's rows 3 to a slice."""
    if scores_per_slice:
        monkeypatch.setattr(kernels, "CPU_SCORES_PER_CHUNK", scores_per_slice)
    eager = _tiny()
    fast = copy.deepcopy(eager)
    assert use_fast_attention(fast)
    ids, mask, labels = _batch()
    losses = []
    for model in (eager, fast):
        out = model(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        losses.append(out.loss.item())
    # SDPA against eager attention: the 3+3 layers' sums (up to d_ff=128 terms), forward and backward, reordered
    assert losses[0] == pytest.approx(losses[1], rel=reordered(128, depth=12))
    for (name, a), (_, b) in zip(eager.named_parameters(), fast.named_parameters()):
        assert_close(b.grad, a.grad, reordered(128, depth=12), name)
    # the position-bias tables get their gradient through the shared bias
    bias = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    assert dict(fast.named_parameters())[bias].grad.abs().sum() > 0


def test_fast_attention_drops_out_while_training_only(monkeypatch):
    monkeypatch.setattr(kernels, "CPU_SCORES_PER_CHUNK", 4 * 23 * 23)
    model = _tiny()
    model.config.dropout_rate = 0.0
    for module in model.modules():
        if hasattr(module, "dropout") and isinstance(module.dropout, float):
            module.dropout = 0.5  # the attention probabilities' dropout alone
    assert use_fast_attention(model)
    ids, mask, labels = _batch()
    model.train()
    first, second = (model(input_ids=ids, attention_mask=mask, labels=labels).loss.item() for _ in range(2))
    assert first != second
    model.eval()
    first, second = (model(input_ids=ids, attention_mask=mask, labels=labels).loss.item() for _ in range(2))
    assert first == second


@pytest.mark.parametrize("early_stop", [True, False])
def test_fast_attention_under_gradient_checkpointing_gives_the_same_gradients(early_stop):
    """Recomputing a block must save what its first forward saved. The bias-plus-mask tensor shared across a
    stack's blocks broke that: `gradient_checkpointing=true` failed on padded batches with "Recomputed values
    ... have different metadata" (or, without torch's early stop, as under FSDP and DeepSpeed on the H100,
    "A different number of tensors was saved")."""
    from torch.utils.checkpoint import set_checkpoint_early_stop

    plain = _tiny()
    assert use_fast_attention(plain)
    checkpointed = copy.deepcopy(plain)
    # transformers 5.2x renamed gradient_checkpointing_enable; both set each module's gradient_checkpointing
    getattr(checkpointed, "activation_checkpointing_enable", checkpointed.gradient_checkpointing_enable)()
    ids, mask, labels = _batch()
    for model in (plain, checkpointed):
        model.train()
        with set_checkpoint_early_stop(early_stop):
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters()):
        assert_close(b.grad, a.grad, reordered(128, depth=12), name)  # the recomputation may add in another order


def test_fast_attention_generates_the_same_text():
    eager = _tiny(seed=3)
    fast = copy.deepcopy(eager)
    use_fast_attention(fast)
    ids, mask, _ = _batch(seed=4)
    a = eager.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    b = fast.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False)
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_ops_match_t5_layer_norm_and_gelu_forward_and_backward(dtype):
    reference = _tiny(seed=6).to(dtype)
    fused = copy.deepcopy(reference)
    # 17 layer norms (2 per encoder block, 3 per decoder block, one after each stack) and 6 GELUs
    assert use_fused_ops(fused) == 3 * 2 + 3 * 3 + 2 + 6
    assert not any(type(m).__name__ == "NewGELUActivation" for m in fused.modules())
    ids, mask, labels = _batch(seed=7)
    for model in (reference, fused):
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    # fp32: the same function to rounding (a norm's mean over d_model=64 and the 3+3 layers' sums, reordered);
    # bf16: T5 rounds after every op, the fused kernels once: a few of bf16's relative steps of 2^-8 = 4e-3
    rel, atol = (reordered(128, depth=12), 1e-6) if dtype == torch.float32 else (2e-2, 2e-2)
    out = [m(input_ids=ids, attention_mask=mask, labels=labels).loss.item() for m in (reference, fused)]
    assert out[1] == pytest.approx(out[0], rel=rel)
    for (name, a), (_, b) in zip(reference.named_parameters(), fused.named_parameters()):
        scale = a.grad.float().abs().max().item()
        assert (a.grad.float() - b.grad.float()).abs().max().item() <= rel * 10 * scale + atol, name


def test_fused_ops_leave_autocast_to_t5s_own_layer_norm():
    model = _tiny(seed=8)
    use_fused_ops(model)
    norm = model.encoder.final_layer_norm
    x = torch.randn(2, 5, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(norm(x), type(norm).forward(norm, x))
    assert_close(norm(x), type(norm).forward(norm, x), reordered(64))  # one mean of d_model=64 squares
    # bf16 states into fp32 weights (no autocast): T5's rule, an fp32 result, not F.rms_norm's error
    half = x.to(torch.bfloat16)
    assert torch.equal(norm(half), type(norm).forward(norm, half)) and norm(half).dtype == torch.float32


@pytest.mark.parametrize("chunk", [1 << 26, 100])  # one chunk, or a chunk per parameter or two
def test_master_weight_adamw_is_fp32_adamw_on_the_masters_and_resumes_exactly(chunk):
    torch.manual_seed(5)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 4)).to(torch.bfloat16)
    opt = MasterWeightAdamW(model.parameters(), lr=1e-3, weight_decay=0.01, chunk_numel=chunk)
    ref = [m.clone() for m in opt.masters[0]]  # fp32 AdamW, fed the same (bf16) gradients
    opt_ref = torch.optim.AdamW(ref, lr=1e-3, weight_decay=0.01)
    x = torch.randn(64, 16).to(torch.bfloat16)
    y = torch.randn(64, 4).to(torch.bfloat16)

    def step(m, o):
        o.zero_grad()
        loss = ((m(x) - y).float() ** 2).mean()
        loss.backward()
        grads = [p.grad.float() for p in m.parameters()]
        o.step()
        return loss.item(), grads

    losses = []
    for _ in range(30):
        loss, grads = step(model, opt)
        losses.append(loss)
        for r, g in zip(ref, grads):
            r.grad = g
        opt_ref.step()
    assert losses[-1] < losses[0]
    for master, r, p in zip(opt.masters[0], ref, model.parameters()):
        assert torch.equal(master, r)  # exactly AdamW on the fp32 masters
        assert torch.equal(p.data, master.to(torch.bfloat16))  # and the model holds them in bf16
    # Steps far below bf16's resolution still accumulate in the masters.
    before = [m.clone() for m in opt.masters[0]]
    for g in opt.param_groups:
        g["lr"] = 1e-7
    step(model, opt)
    assert any(not torch.equal(a, b) for a, b in zip(before, opt.masters[0]))

    state = copy.deepcopy(opt.state_dict())
    twin = copy.deepcopy(model)
    opt_twin = MasterWeightAdamW(twin.parameters(), lr=1e-7, weight_decay=0.01, chunk_numel=chunk)
    opt_twin.load_state_dict(state)
    for _ in range(3):
        step(model, opt)
        step(twin, opt_twin)
    for a, b in zip(opt.masters[0], opt_twin.masters[0]):
        assert torch.equal(a, b)
