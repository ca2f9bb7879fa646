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


def _video_inputs(proc, batch=2):
    import numpy as np
    from dashvl.tiny import sample_image

    texts, videos, images = [], [], []
    for b in range(batch):
        videos.append(np.stack([np.asarray(sample_image(64, 64, seed=10 * b + f)) for f in range(4)]))
        images.append(sample_image(64 + 32 * b, 64, seed=b))
        content = [{"type": "image"}, {"type": "video"}, {"type": "text", "text": "what happens? " * (b + 1)}]
        texts.append(proc.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True))
    meta = [{"fps": 2.0, "total_num_frames": 4, "frames_indices": [0, 1, 2, 3]}] * batch
    return dict(proc(text=texts, images=images, videos=videos, video_metadata=meta, return_tensors="pt",
                     padding=True))


@pytest.mark.parametrize("kv", ["drop", "keep"])
def test_a_video_with_timestamps_equals_the_slow_reference(kv):
    """Qwen3-VL writes each temporal patch of a video as its own <|vision_start|> ... block after a text timestamp
    ("<0.2 seconds>"): the timestamps are text tokens between the video's runs, halting is exact across them, and the
    trace shows the video as one grid per temporal patch, [1, h, w] each, in order (the model's own split)."""
    from tests.helpers import assert_same_generation, dash_reference

    model, proc = build("qwen3_vl")
    inputs = _video_inputs(proc)
    video = inputs["input_ids"] == model.config.video_token_id
    halted, tokens, logits = dash_reference(model, inputs, layer=1, kv=kv, ratio=0.5, steps=3)
    assert halted[video].any() and halted[~video].any()
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv=kv) as handle, torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, min_new_tokens=3, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        trace = handle.trace
    assert torch.equal(trace.halted, halted)
    assert_same_generation(out, inputs, tokens, logits)
    merge = model.config.vision_config.spatial_merge_size
    t, h, w = inputs["video_grid_thw"][0].tolist()
    for row in range(2):
        spans = [s for s in trace.spans if s.row == row and s.kind == "video"]
        assert [s.grid for s in spans] == [(1, h // merge, w // merge)] * t
        assert torch.equal(torch.cat([s.positions for s in spans]), video[row].nonzero().flatten())
        assert spans[1].positions[0] - spans[0].positions[-1] > 1  # a timestamp between the temporal patches
    # a direct forward passes video_grid_thw as the processor made it: one [t, h, w] grid per video, across its
    # runs, in its own row (not the next row's video)
    with dashvl.compress(model, method="dash", ratio=0.5, layer=1, kv=kv) as handle, torch.no_grad():
        model(**inputs)
        spans = [(s.row, s.grid) for s in handle.trace.spans if s.kind == "video"]
    assert spans == [(0, (t, h // merge, w // merge)), (1, (t, h // merge, w // merge))]
