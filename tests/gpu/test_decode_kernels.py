"""Which attention kernels a decode step runs on the GPU, with and without dashvl.

On the H200 (torch 2.11, bf16) SDPA picks its cuDNN kernel for a one-token query against the halted layers'
shorter kv="drop" caches, and that kernel's host time made a 7B decode step 3x slower (bench/decode_pairs.py).
dashvl runs the halted layers' decode steps without cuDNN; this checks, on a real GPU, that in a compressed model's decode step only the
layers up to l_s (the stock ones) may call cuDNN attention, in both kv modes.

    python -m pytest tests/gpu/test_decode_kernels.py       # on the device
"""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import dashvl


def _cudnn_calls(model, ids, cache, token) -> int:
    mask = torch.ones(1, ids.shape[1] + 1, dtype=torch.long, device=ids.device)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model(input_ids=token, attention_mask=mask, cache=cache, use_cache=True)
    return sum(e.count for e in prof.key_averages() if e.key == "aten::_cudnn_attention_forward")


@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_decode_step_of_the_halted_layers_runs_no_cudnn_attention(cuda, record, kv):
    from bench.common import build_model
    torch.manual_seed(0)
    model = build_model("qwen2-vl-check", "cuda", torch.bfloat16, attn="sdpa", vision=False)
    ids = torch.randint(10, 8000, (1, 1000), device="cuda")
    counts, layer = {}, 2
    for name, setting in (("unmodified", None), (kv, dict(ratio=0.75, layer=layer, kv=kv))):
        handle = dashvl.compress(model, **setting) if setting else None
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1:].argmax(-1)
        counts[name] = _cudnn_calls(model, ids, out.past_key_values, token)
        if handle is not None:
            handle.remove()
    record(dict(cudnn_attention_calls_per_step=counts, cudnn_enabled=torch.backends.cuda.cudnn_sdp_enabled()))
    assert counts[kv] <= min(counts["unmodified"], layer + 1), counts
