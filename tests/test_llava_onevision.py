"""LLaVA-OneVision on the real classes and processor (a tiny one from config: SigLIP tower, Qwen2 text model):
images in LLaVA-NeXT's layout with "anyres_max" downsampling, and videos (frames pooled 2x2, one newline after the
last). Parity, the slow reference, the method matrix, the static cache, vision-tower halting (SigLIP, no CLS),
beams and second turns include llava_onevision in their own files."""
import math

import numpy as np
import pytest
import torch

import dashvl
from dashvl.tiny import sample_image
from tests.helpers import assert_same_generation, build, dash_reference, make_inputs


def test_trace_grids_follow_the_models_own_packing():
    model, proc = build("llava_onevision")
    inputs = make_inputs("llava_onevision", 2, images=2)
    adapter = dashvl.adapters.adapter_for(model)
    layouts = adapter.image_layouts(model, inputs["image_sizes"])
    with torch.no_grad():
        packed = model.model.get_image_features(pixel_values=inputs["pixel_values"],
                                                image_sizes=inputs["image_sizes"],
                                                batch_num_images=inputs["batch_num_images"]).pooler_output
    for (base, tiles), features in zip(layouts, packed):
        assert math.prod(base) + math.prod(tiles) == features.shape[0]
        _, h, w1 = tiles
        stitched = features[math.prod(base):].view(h, w1, -1)
        assert torch.equal(stitched[:, -1], model.model.image_newline.expand(h, -1).to(stitched.dtype))
    assert len({tiles for _, tiles in layouts}) > 1
    assert adapter.layouts_from_features(model, packed) == layouts  # what generate() hands over reads the same

    with dashvl.compress(model, ratio=0.9, layer=1) as handle, torch.no_grad():
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
        trace = handle.trace
    for row in range(2):
        image_tokens = inputs["input_ids"][row] == model.config.image_token_id
        grids = [layouts[2 * row + i][j] for i in range(2) for j in range(2)]
        masks = [trace.patch_mask(image=g, row=row) for g in range(4)]
        assert [tuple(m.shape) for m in masks] == grids
        assert sum(int(m.sum()) for m in masks) == int(trace.halted[row][image_tokens].sum()) > 0


def test_anyres_max_downsamples_a_large_grid_and_the_trace_follows():
    """With max 1 tile's worth of features ("anyres_max_1") the stitched grid of a 2x2-tile image is interpolated
    down: the layout must be the downsampled one, not unpad_image's."""
    model, proc = build("llava_onevision")
    adapter = dashvl.adapters.adapter_for(model)
    sizes = torch.tensor([[112, 112]])
    full = adapter.image_layouts(model, sizes)[0][1]
    old = model.config.vision_aspect_ratio
    try:
        model.config.vision_aspect_ratio = "anyres_max_1"
        small = adapter.image_layouts(model, sizes)[0][1]
    finally:
        model.config.vision_aspect_ratio = old
    assert full == (1, 8, 9) and small[1] < 8 and small[2] == small[1] + 1


def _video_inputs(proc, batch=2):
    texts, videos = [], []
    for b in range(batch):
        # one frame count: a batch stacks the videos
        frames = np.stack([np.asarray(sample_image(56, 56, seed=10 * b + f)) for f in range(4)])
        videos.append(frames)
        texts.append(f"USER: <image>\nand <video>\n{'what happens next? ' * (b + 1)}ASSISTANT:")
    images = [sample_image(84, 56, seed=5), sample_image(56, 84, seed=6)][:batch]
    return dict(proc(text=texts, images=images, videos=videos, return_tensors="pt", padding=True))


@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_an_image_and_a_video_equal_the_slow_reference(kv):
    model, proc = build("llava_onevision")
    inputs = _video_inputs(proc)
    halted, tokens, logits = dash_reference(model, inputs, layer=1, kv=kv, ratio=0.5, steps=3)
    video = inputs["input_ids"] == model.config.video_token_id
    assert halted[video].any() and halted[~video].any()
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv=kv) as handle, torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        trace = handle.trace
    assert torch.equal(trace.halted, halted)
    assert_same_generation(out, inputs, tokens, logits)
    # the trace: per row the image's two grids, then the video's frames [t, h, w] (its newline in no grid)
    for row in range(2):
        spans = [s for s in trace.spans if s.row == row]
        assert [s.kind for s in spans] == ["image", "image", "video"]
        t, h, w = spans[2].grid
        assert (t, h, w) == (4, 2, 2)
        assert int(video[row].sum()) == t * h * w + 1


def test_tiny_random_llava_onevision_loads_by_name():
    model, proc = dashvl.load_model("tiny-random-llava-onevision", device="cpu")
    assert type(model).__name__ == "LlavaOnevisionForConditionalGeneration"
    assert type(proc).__name__ == "LlavaOnevisionProcessor"
