"""Qwen3-VL on the real classes and processor (a tiny one from config): DeepStack's additions after decoder
layers 0 and 1 stay at or below l_s, the trace maps tokens onto each image's merged 16-px patch grid. Parity, the
slow reference, the method matrix, the static cache, beams and second turns include qwen3_vl in their own files."""
import pytest
import torch

import dashvl
from tests.helpers import build, make_inputs


def test_halting_below_deepstack_is_refused():
    model, _ = build("qwen3_vl")
    with pytest.raises(ValueError, match=r"layer 0 is below Qwen3-VL's DeepStack layers: .* after decoder layers "
                                         r"0\.\.1, .* use layer >= 1"):
        dashvl.compress(model, ratio=0.5, layer=0)
    with pytest.raises(ValueError, match=r"vision-tower halting \(vision_ratio > 0\) is not available for qwen3_vl"):
        dashvl.compress(model, ratio=0.5, layer=1, vision_ratio=0.5)
    assert dashvl.get_handle(model) is None


def test_trace_grids_are_the_merged_patch_grids():
    model, proc = build("qwen3_vl")
    inputs = make_inputs("qwen3_vl", 2, images=2)
    merge = model.config.vision_config.spatial_merge_size
    with dashvl.compress(model, ratio=0.9, layer=1) as handle, torch.no_grad():
        model.generate(**inputs, max_new_tokens=2, do_sample=False)
        trace = handle.trace
    thw = inputs["image_grid_thw"].tolist()
    for i in range(2):  # row 0's two images
        t, h, w = thw[i]
        assert tuple(trace.patch_mask(image=i, row=0).shape[-2:]) == (h // merge, w // merge)
    image_tokens = inputs["input_ids"][0] == model.config.image_token_id
    halted_images = int(trace.halted[0][image_tokens].sum())
    assert halted_images > 0  # the test would be vacuous otherwise
    assert sum(int(trace.patch_mask(image=i, row=0).sum()) for i in range(2)) == halted_images
