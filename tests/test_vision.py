"""Halting inside the vision tower: exact at ratio 0, equal to a full-length masked reference above it."""
import pytest
import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.vision_utils import get_vision_position_ids

import dashvl
from tests.helpers import build, generate, make_inputs

ATOL = 2e-4


def _window_order(model, inputs):
    from dashvl.adapters.qwen2_vl import _window_order as order
    return order(model.model.visual)(inputs["image_grid_thw"])


def _image_features(model, inputs):
    with torch.no_grad():
        if "pixel_values_videos" in inputs:
            out = model.model.get_video_features(inputs["pixel_values_videos"], inputs["video_grid_thw"])
        else:
            keys = ("pixel_values", "image_grid_thw", "image_sizes")
            out = model.model.get_image_features(**{k: inputs[k] for k in keys if k in inputs})
    return torch.cat(list(out.pooler_output))


class VisionReference:
    """Full-length tower: blocks above ``layer`` see halted patches masked as keys, and halted patches'
    outputs are reset to their state after block ``layer``. Selection: per frame / image, the
    floor(ratio * n) lowest ||attention output||, ties to the earlier patch (CLS never halts)."""

    def __init__(self, model, layer, ratio, seed=None):
        """``seed``: rank by uniform random scores drawn as method="random" documents, not by ||U||."""
        self.model, self.layer, self.ratio, self.seed = model, layer, ratio, seed
        self.family = model.config.model_type

    def _segments(self, inputs):
        if self.family in ("qwen2_vl", "qwen2_5_vl"):
            thw = inputs["image_grid_thw"] if "image_grid_thw" in inputs else inputs["video_grid_thw"]
            return [h * w for t, h, w in thw.tolist() for _ in range(t)]
        return None

    @torch.no_grad()
    def features(self, inputs):
        if self.family in ("qwen2_vl", "qwen2_5_vl"):
            tower = self.model.model.visual
            blocks, attn_name = tower.blocks, "attn"
        else:
            tower = self.model.model.vision_tower
            encoder = tower.vision_model.encoder if hasattr(tower, "vision_model") else tower.encoder
            blocks, attn_name = encoder.layers, "self_attn"
        state, hooks = {}, []

        def select(module, args, kwargs, output):
            u = (output[0] if isinstance(output, tuple) else output).float().norm(dim=-1)
            if self.seed is not None:
                u = torch.rand(u.shape, generator=torch.Generator().manual_seed(self.seed))
            if self.family in ("qwen2_vl", "qwen2_5_vl"):  # frames stay contiguous in window order too
                halted = torch.zeros(u.shape[0], dtype=torch.bool)
                start = 0
                for n in self._segments(inputs):
                    k = int(self.ratio * n + 1e-9)
                    order = sorted(range(start, start + n), key=lambda i: (float(u[i]), i))[:k]
                    halted[order] = True
                    start += n
            else:
                halted = torch.zeros(u.shape, dtype=torch.bool)
                for b in range(u.shape[0]):
                    first = 0 if self.family in ("llava_onevision", "gemma3") else 1  # SigLIP: no CLS token
                    k = int(self.ratio * (u.shape[1] - first) + 1e-9)
                    order = sorted(range(first, u.shape[1]), key=lambda i: (float(u[b, i]), i))[:k]
                    halted[b, order] = True
            state["halted"] = halted

        def freeze(module, args, output):
            state["frozen"] = output[0] if isinstance(output, tuple) else output

        def reset(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            h = state["halted"]
            out = torch.where(h[..., None], state["frozen"], out)
            return (out,) + tuple(output[1:]) if isinstance(output, tuple) else out

        hooks.append(getattr(blocks[self.layer], attn_name).register_forward_hook(select, with_kwargs=True))
        hooks.append(blocks[self.layer].register_forward_hook(freeze))
        for block in blocks[self.layer + 1:]:
            hooks.append(block.register_forward_hook(reset, prepend=True))  # before the output recorders
            hooks.append(block.register_forward_pre_hook(self._masking(state), with_kwargs=True))
        try:
            return _image_features(self.model, inputs), state["halted"]
        finally:
            for h in hooks:
                h.remove()
            self._restore()

    def _masking(self, state):
        """Hide halted patches as keys in the next block's attention."""
        if self.family in ("qwen2_vl", "qwen2_5_vl"):
            # the packed tower runs one attention call per frame with no mask: wrap the backend for the call
            cfg = self.model.model.visual.config
            backend = cfg._attn_implementation
            inner = ALL_ATTENTION_FUNCTIONS[backend] if backend != "eager" else None
            self._saved = (cfg, backend)

            def masked(module, q, k, v, attention_mask=None, **kw):
                n = q.shape[2]
                keep = ~state["halted"][state["offset"]:state["offset"] + n]
                state["offset"] += n
                mask = torch.zeros(1, 1, n, n).masked_fill(~keep[None, None, None, :], torch.finfo(q.dtype).min)
                return ALL_ATTENTION_FUNCTIONS["sdpa"](module, q, k, v, mask, **{**kw, "is_causal": False})

            ALL_ATTENTION_FUNCTIONS["dashvl_masked"] = masked

            def pre(module, args, kwargs):
                state["offset"] = 0
                cfg._attn_implementation = "dashvl_masked"

            return pre

        def pre(module, args, kwargs):
            h = state["halted"]
            mask = torch.zeros(h.shape[0], 1, h.shape[1], h.shape[1])
            mask = mask.masked_fill(h[:, None, None, :], torch.finfo(torch.float32).min)
            return (args[0], mask) + tuple(args[2:]), kwargs

        return pre

    def _restore(self):
        if getattr(self, "_saved", None):
            cfg, backend = self._saved
            cfg._attn_implementation = backend
            del ALL_ATTENTION_FUNCTIONS["dashvl_masked"]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "llava-deep-vision", "llava_next-deep-vision",
                                    "llava_onevision", "gemma3"])
@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_vision_halting_matches_reference(family, ratio):
    model, _ = build(family)
    inputs = make_inputs(family, 3, 2)  # several images of different sizes
    want, halted = VisionReference(model, 0, ratio).features(inputs)
    with dashvl.compress(model, method="dash", ratio=0.0, vision_ratio=ratio, vision_layer=0) as h:
        got = _image_features(model, inputs)
        with torch.no_grad():
            model(**inputs)
        vision = h.trace.vision
    if family == "qwen2_5_vl":  # the reference sees the blocks' window order; the trace is in raster order
        order = _window_order(model, inputs)
        halted = torch.empty_like(halted).index_copy_(0, order, halted)
    assert torch.equal(~vision.active, halted)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    assert not torch.allclose(got, _image_features(model, inputs))  # halting changed the features


@pytest.mark.parametrize("family", ["qwen2_vl", "llava-deep-vision"])
def test_random_vision_halting_matches_reference(family):
    """method="random" ranks patches by seeded uniform scores in the tower too (the accuracy baseline)."""
    model, _ = build(family)
    inputs = make_inputs(family, 3, 2)
    want, halted = VisionReference(model, 0, 0.5, seed=3).features(inputs)
    _, by_delta = VisionReference(model, 0, 0.5).features(inputs)
    with dashvl.compress(model, ratio=0.0, method="random", seed=3, vision_ratio=0.5, vision_layer=0) as h:
        got = _image_features(model, inputs)
        vision = h.vision_trace
    assert torch.equal(~vision.active, halted)
    assert not torch.equal(halted, by_delta)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava", "llava_next", "llava_onevision"])
def test_vision_ratio_zero_and_nothing_halted_are_bitwise(family):
    model, _ = build(family)
    inputs = make_inputs(family, 3, 2)
    want = generate(model, inputs)
    # hooks installed, every patch active (floor(0.01 * n) = 0): the gather/scatter path must be exact
    with dashvl.compress(model, method="dash", ratio=0.0, vision_ratio=0.01, vision_layer=0) as h:
        got = generate(model, inputs)
        assert h.trace.vision is not None and h.trace.vision.active.all()
    assert torch.equal(got.sequences, want.sequences)
    assert torch.equal(torch.stack(got.logits), torch.stack(want.logits))
    with dashvl.compress(model, method="dash", ratio=0.0, vision_ratio=0.0) as h:
        assert torch.equal(generate(model, inputs).sequences, want.sequences)
        assert h.trace.vision is None


def test_vision_and_llm_halting_compose_in_generate():
    model, _ = build("qwen2_vl")
    inputs = make_inputs("qwen2_vl", 3, 2)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, vision_ratio=0.5, vision_layer=0) as h:
        out = generate(model, inputs)
        trace = h.trace
    assert out.sequences.shape[0] == 3
    assert trace.halted.any() and not trace.vision.active.all()


def test_vision_patch_masks_follow_the_merge_grouped_patch_order():
    model, _ = build("qwen2_vl")
    inputs = make_inputs("qwen2_vl", 1, 2)
    with dashvl.compress(model, method="dash", ratio=0.0, vision_ratio=0.5, vision_layer=0) as h, torch.no_grad():
        model(**inputs)
    vision = h.trace.vision
    thw = inputs["image_grid_thw"]
    pos = get_vision_position_ids(thw, model.config.vision_config.spatial_merge_size)
    assert len(vision.grids) == 2
    for i, (t, hh, w) in enumerate(thw.tolist()):
        # the packed patches' rotary (h, w) ids, laid onto the trace's grid, are its row / column indices
        rows = vision._grid_view(pos[:, 0], i)
        cols = vision._grid_view(pos[:, 1], i)
        assert torch.equal(rows, torch.arange(hh).view(1, hh, 1).expand(t, hh, w))
        assert torch.equal(cols, torch.arange(w).view(1, 1, w).expand(t, hh, w))
        mask = vision.patch_mask(i)
        assert mask.shape == (t, hh, w) and int(mask.sum()) == t * int(0.5 * hh * w)
    with pytest.raises(ValueError, match=r"saw 2 image\(s\); asked for image 2"):
        vision.patch_mask(2)


def test_vision_refusals():
    with pytest.raises(ValueError, match=r"vision_ratio must be a number in \[0, 1\)"):
        dashvl.DashConfig(vision_ratio=1.0)
    with pytest.raises(ValueError, match=r"vision_layer must be an int >= 0 or a float in \(0, 1\)"):
        dashvl.DashConfig(vision_layer=-2)
    model, _ = build("qwen2_vl")
    with pytest.raises(ValueError, match=r"vision_layer must be in \[0, 0\] for this model \(2 vision blocks\)"):
        dashvl.compress(model, method="dash", vision_ratio=0.5, vision_layer=1)
    text_model, _ = build("llama")
    with pytest.raises(ValueError, match=r"'llama' models have no vision tower: vision_ratio must be 0"):
        dashvl.compress(text_model, method="dash", vision_ratio=0.5)


def test_qwen2_5_vl_vision_trace_is_in_raster_order():
    """Qwen2.5-VL's blocks see patches grouped by window; the trace puts each score back on its (h, w) cell."""
    from transformers.vision_utils import get_vision_window_index
    model, _ = build("qwen2_5_vl")
    inputs = make_inputs("qwen2_5_vl", 1, 2)
    visual = model.model.visual
    thw = inputs["image_grid_thw"]
    scores = {}

    def keep(module, args, output):
        scores["u"] = output.float().norm(dim=-1)

    hook = visual.blocks[0].attn.register_forward_hook(keep)
    with dashvl.compress(model, method="dash", ratio=0.0, vision_ratio=0.5, vision_layer=0) as h, torch.no_grad():
        model(**inputs)
    hook.remove()
    # the (h, w) of each patch in the blocks' order, through transformers' own window permutation
    window_index, _ = get_vision_window_index(thw, visual.spatial_merge_size, visual.window_size, visual.patch_size)
    pos = get_vision_position_ids(thw, visual.spatial_merge_size).float()
    pos = visual.permute_input_for_window_attn(pos, window_index, seq_len=pos.shape[0]).long()
    vision = h.trace.vision
    start = 0
    for i, (t, hh, w) in enumerate(thw.tolist()):
        grid = vision.score_grid(i)
        for j in range(start, start + t * hh * w):  # one frame per image here
            assert grid[0, pos[j, 0], pos[j, 1]] == scores["u"][j]
        start += t * hh * w


def test_video_frames_halt_per_frame():
    """A video: each frame (after the temporal patching) is its own segment, in the tower and in the trace."""
    model, proc = build("qwen2_vl")
    video = torch.randint(0, 255, (4, 3, 56, 84), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    text = proc.apply_chat_template([{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "what?"}]}],
                                    add_generation_prompt=True)
    inputs = dict(proc(text=[text], videos=[video], return_tensors="pt"))
    want, halted = VisionReference(model, 0, 0.5).features(inputs)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, vision_ratio=0.5, vision_layer=0) as h:
        got = _image_features(model, inputs)
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=2)
    torch.testing.assert_close(got, want, atol=ATOL, rtol=0)
    t, hh, w = inputs["video_grid_thw"][0].tolist()
    mask = h.trace.vision.patch_mask(0)
    assert mask.shape == (t, hh, w) and mask.flatten(1).sum(1).tolist() == [hh * w // 2] * t
    assert torch.equal(~h.trace.vision.active, halted)
    (span,) = h.trace.spans
    assert span.kind == "video" and span.grid == (t, hh // 2, w // 2)
    assert h.trace.patch_mask(0, kind="video").shape == span.grid
