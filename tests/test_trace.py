"""The trace maps image tokens onto the right grid cells, for Qwen2-VL's dynamic grid and LLaVA's fixed one."""
import pytest
import torch

import dashvl
from dashvl.tiny import sample_image
from tests.helpers import build


def _qwen_inputs(sizes):
    _, proc = build("qwen2_vl")
    content = []
    for i, _ in enumerate(sizes):
        content += [{"type": "text", "text": f"picture {i}"}, {"type": "image"}]
    content.append({"type": "text", "text": "what colour is the square?"})
    text = proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    images = [sample_image(w, h, seed=i) for i, (w, h) in enumerate(sizes)]
    return dict(proc(text=[text], images=images, return_tensors="pt"))


SIZES = [(168, 56), (56, 112), (112, 112)]  # wide, tall, square: grids 2x6, 4x2, 4x4 after the 2x2 merge


@pytest.mark.parametrize("via", ["forward", "generate"])
def test_qwen2_vl_dynamic_grids_map_to_mrope_positions(via):
    model, _ = build("qwen2_vl")
    inputs = _qwen_inputs(SIZES)
    merge = model.config.vision_config.spatial_merge_size
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1) as h, torch.no_grad():
        if via == "forward":
            model(**inputs)
        else:
            model.generate(**inputs, max_new_tokens=2)
        trace = h.trace
    thw = inputs["image_grid_thw"]
    assert [s.grid for s in trace.spans] == [(int(t), int(hh) // merge, int(w) // merge) for t, hh, w in thw]
    assert [s.index for s in trace.spans] == [0, 1, 2]
    rope, _ = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"], thw,
                                         attention_mask=inputs["attention_mask"])
    seen = set()
    for span in trace.spans:
        t, gh, gw = span.grid
        assert (trace.kinds[0, span.positions] == 1).all()
        # raster order: the M-RoPE height / width index of each cell is its row / column
        hpos = rope[1, 0, span.positions].view(span.grid)
        wpos = rope[2, 0, span.positions].view(span.grid)
        assert torch.equal(hpos - hpos.min(), torch.arange(gh).view(1, gh, 1).expand(t, gh, gw))
        assert torch.equal(wpos - wpos.min(), torch.arange(gw).view(1, 1, gw).expand(t, gh, gw))
        seen |= set(span.positions.tolist())
    assert len(seen) == sum(s.positions.numel() for s in trace.spans)  # images told apart


def test_patch_mask_follows_the_active_tokens():
    model, _ = build("qwen2_vl")
    inputs = _qwen_inputs(SIZES[:2])
    with dashvl.compress(model, method="dash", ratio=0.6, layer=1) as h, torch.no_grad():
        model(**inputs)
    trace = h.trace
    for i, span in enumerate(trace.spans):
        for layer in range(trace.num_layers):
            got = trace.patch_mask(image=i, layer=layer)
            if layer <= trace.layer:
                assert not got.any()
            else:
                assert torch.equal(got, ~trace.active[0, span.positions].view(span.grid))
        assert torch.equal(trace.score_grid(image=i).flatten(), trace.scores[0, span.positions])
    assert trace.patch_mask(image=0).any() and not trace.patch_mask(image=0).all()
    with pytest.raises(ValueError, match=r"row 0 has 2 image\(s\); asked for image 2"):
        trace.patch_mask(image=2)


def test_llava_fixed_grid_and_several_images_per_row():
    model, proc = build("llava")
    content = [{"type": "image"}, {"type": "text", "text": "and"}, {"type": "image"}, {"type": "text", "text": "same?"}]
    texts = [proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True),
             proc.apply_chat_template([{"role": "user", "content": content[2:]}], add_generation_prompt=True)]
    images = [sample_image(seed=1), sample_image(seed=2), sample_image(seed=3)]
    inputs = dict(proc(text=texts, images=images, return_tensors="pt", padding=True))
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, scope="vision") as h, torch.no_grad():
        model(**inputs)
    trace = h.trace
    side = model.config.vision_config.image_size // model.config.vision_config.patch_size
    assert [(s.row, s.index, s.grid) for s in trace.spans] == [
        (0, 0, (1, side, side)), (0, 1, (1, side, side)), (1, 0, (1, side, side))]
    ids = inputs["input_ids"]
    for span in trace.spans:
        assert (ids[span.row, span.positions] == model.config.image_token_id).all()
        assert torch.equal(span.positions, torch.arange(span.positions[0], span.positions[0] + side * side))
    assert not set(trace.spans[0].positions.tolist()) & set(trace.spans[1].positions.tolist())
    # scope="vision": only image tokens halt, half of each row's image tokens
    assert (trace.kinds[trace.halted] == 1).all()
    assert trace.num_halted("image").tolist() == [side * side, side * side // 2]
    assert torch.equal(trace.patch_mask(image=1, row=0),
                       ~trace.active[0, trace.spans[1].positions].view(1, side, side))


def test_trace_fields_and_padding():
    model, _ = build("qwen2_vl")
    from tests.helpers import make_inputs
    inputs = make_inputs("qwen2_vl", 3)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=2) as h, torch.no_grad():
        assert h.trace is None
        model.generate(**inputs, max_new_tokens=3)
    tr = h.trace
    real = inputs["attention_mask"].bool()
    B, T = real.shape
    assert tr.layer == 2 and tr.num_layers == 4 and tr.scores.dtype == torch.float32
    assert tr.scores.shape == tr.active.shape == tr.kinds.shape == (B, T)
    assert torch.isnan(tr.scores[~real]).all() and not torch.isnan(tr.scores[real]).any()
    assert not tr.active[~real].any()
    n_real = real.sum(1)
    n_halt = ((n_real - 1).double() * 0.5).floor().long()
    assert tr.tokens_per_layer.tolist() == [[r, r, r, r - k] for r, k in zip(n_real.tolist(), n_halt.tolist())]
    assert tr.halted.sum(1).tolist() == n_halt.tolist()
    assert torch.equal(tr.active_at(2), real) and torch.equal(tr.active_at(3), tr.active)
