"""LLaVA-NeXT on the real classes and processor (a tiny one from config): anyres images (a base tile, then the
stitched and unpadded high-resolution grid closed row by row by an image-newline token) map onto two trace grids
per image. Parity, the slow reference, the method matrix, the static cache, vision-tower halting, beams and
second turns include llava_next in their own files."""
import math

import torch

import dashvl
from tests.helpers import build, make_inputs


def test_trace_grids_follow_the_models_own_packing():
    model, proc = build("llava_next")
    inputs = make_inputs("llava_next", 2, images=2)
    adapter = dashvl.adapters.adapter_for(model)
    layouts = adapter.image_layouts(model, inputs["image_sizes"])
    with torch.no_grad():
        packed = model.model.get_image_features(pixel_values=inputs["pixel_values"],
                                                image_sizes=inputs["image_sizes"]).pooler_output
    newline = model.model.image_newline
    for (base, tiles), features in zip(layouts, packed):
        # the layout is the model's: as many features, and the last column of the stitched grid is the newline
        assert math.prod(base) + math.prod(tiles) == features.shape[0]
        _, h, w1 = tiles
        stitched = features[math.prod(base):].view(h, w1, -1)
        assert torch.equal(stitched[:, -1], newline.expand(h, -1).to(stitched.dtype))
        assert not torch.equal(stitched[:, 0], newline.expand(h, -1).to(stitched.dtype))
    assert len({tiles for _, tiles in layouts}) > 1  # images of different aspect ratios: different grids
    # generate() hands the model the packed features, not the sizes: the grids read back from them agree
    assert adapter.layouts_from_features(model, packed) == layouts

    with dashvl.compress(model, ratio=0.9, layer=1) as handle, torch.no_grad():
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
        trace = handle.trace
    for row in range(2):
        image_tokens = inputs["input_ids"][row] == model.config.image_token_id
        grids = [layouts[2 * row + i][j] for i in range(2) for j in range(2)]
        masks = [trace.patch_mask(image=g, row=row) for g in range(4)]
        assert [tuple(m.shape) for m in masks] == grids  # base, stitched, base, stitched
        halted = int(trace.halted[row][image_tokens].sum())
        assert halted > 0 and sum(int(m.sum()) for m in masks) == halted


def test_tiny_random_llava_next_loads_by_name():
    model, proc = dashvl.load_model("tiny-random-llava-next", device="cpu")
    assert type(model).__name__ == "LlavaNextForConditionalGeneration"
    assert type(proc).__name__ == "LlavaNextProcessor"
