"""LLaVA-1.5 style models: a CLIP tower, a projector, and a Llama / Mistral / Qwen2 text backbone."""
from __future__ import annotations

import math

import torch
from torch import nn

from .base import Adapter, ImageGrid, encoder_tower_spec

TEXT_BACKBONES = ("llama", "mistral", "qwen2")


class LlavaAdapter(Adapter):
    model_types = ("llava",)
    family = "LLaVA"  # the name in the text-backbone refusal

    def language_model(self, model: nn.Module) -> nn.Module:
        return model.model.language_model

    def check(self, model):
        text_type = model.config.text_config.model_type
        if text_type not in TEXT_BACKBONES:
            raise ValueError(f"{self.family} with a {text_type!r} text model is not supported; "
                             f"supported text backbones: {', '.join(TEXT_BACKBONES)}")

    def vision_tower(self, model):
        return model.model.vision_tower

    def vision_spec(self, model):
        return encoder_tower_spec(self.vision_tower(model), 1, "LLaVA", "clip_vision_model")

    def image_token_id(self, model):
        return model.config.image_token_id

    def visual_grids(self, model, inputs, runs) -> list[list[ImageGrid]]:
        # A fixed square grid per image: (image_size / patch_size)^2 tokens, CLS dropped ("default").
        vision = model.config.vision_config
        side = vision.image_size // vision.patch_size
        if model.config.vision_feature_select_strategy != "default":
            return [[] for _ in runs]  # CLS kept in the sequence: no square grid to draw
        out = []
        for row_runs in runs:
            items = []
            for _, _, n in row_runs:
                if n % (side * side) == 0:  # one or more adjacent full grids
                    items += [("image", 1, side, side)] * (n // (side * side))
                elif math.isqrt(n) ** 2 == n:  # one pooled grid (dashvl.baselines.downsample)
                    items.append(("image", 1, math.isqrt(n), math.isqrt(n)))
            out.append(items)
        return out


class LlavaNextAdapter(LlavaAdapter):
    """LLaVA-NeXT (``LlavaNextForConditionalGeneration``): LLaVA-1.5's layout plus "anyres" images. Each image is
    a base tile (the whole picture at the tower's resolution) and a grid of high-resolution tiles, which the model
    stitches, crops back to the picture's aspect ratio ("unpadding") and closes row by row with an image-newline
    embedding. In the language model all of them are image-token positions: base, then the stitched grid row by
    row, each row ending in its newline token. The trace shows each image as two grids, in that order: the base
    tile [1, s, s] and the high-resolution grid [1, h, w + 1], whose last column is the newline tokens."""

    model_types = ("llava_next",)
    tiled_images = True

    def trace_inputs(self, call_kwargs: dict) -> dict:
        # a direct forward passes the images' sizes; generate() encodes the images first and passes the packed
        # features instead (``mm_encoder_outputs``), whose newline tokens give each image's grid back
        sizes = call_kwargs.get("image_sizes")
        if sizes is not None:
            return {"image_sizes": sizes}
        encoded = (call_kwargs.get("mm_encoder_outputs") or {}).get("image")
        return {"image_features": encoded.pooler_output} if encoded is not None else {}

    def layouts_from_features(self, model, features) -> list[tuple[tuple, tuple] | None]:
        """Per packed image feature [n, d] (base tile, then the stitched grid with a newline closing each row):
        its two grids, read from where the newline embedding sits; None where the features do not have that
        layout."""
        vision = model.config.vision_config
        side = vision.image_size // vision.patch_size
        newline = model.model.image_newline
        out = []
        for f in features:
            rest = f[side * side:]
            is_newline = (rest == newline.to(rest)).all(-1).cpu()
            h = int(is_newline.sum())
            if h == 0 or len(rest) % h:
                out.append(None)
                continue
            width = len(rest) // h
            ends = (torch.arange(len(rest)) % width) == width - 1
            out.append(((1, side, side), (1, h, width)) if torch.equal(is_newline, ends) else None)
        return out

    def image_layouts(self, model, image_sizes) -> list[tuple[tuple, tuple]]:
        """Per image (``image_sizes`` [N, 2], height and width): the base tile's grid (1, s, s) and the stitched
        grid (1, h, w + 1), in LM tokens."""
        from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

        vision = model.config.vision_config
        side = vision.image_size // vision.patch_size
        out = []
        for size in image_sizes.tolist():
            rows, cols = get_anyres_image_grid_shape(size, model.config.image_grid_pinpoints, vision.image_size)
            # transformers' own cropping, on an empty stand-in of the stitched grid, gives its unpadded shape
            h, w = unpad_image(torch.empty(0, rows * side, cols * side), torch.tensor(size)).shape[1:]
            out.append(((1, side, side), (1, h, w + 1)))
        return out

    feature_strategy = "default"  # the vision_feature_select_strategy whose tokens are all patches

    def _layouts(self, model, inputs):
        """Per image, its (base, tiles) grids, or None when they cannot be known."""
        if model.config.vision_feature_select_strategy != self.feature_strategy:
            return None  # CLS tokens stay in the sequence
        if "image_sizes" in inputs:
            return self.image_layouts(model, inputs["image_sizes"])
        if "image_features" in inputs:
            return self.layouts_from_features(model, inputs["image_features"])
        return None

    def run_items(self, model, kind: str, n: int, layouts, image: int):
        """The grids of one run of ``n`` visual tokens (adjacent images share a run) from ``layouts[image:]``, and
        the next image's index; None when the layouts do not account for exactly ``n`` tokens."""
        if kind != "image" or layouts is None or None in layouts:
            return None
        items = []
        while n > 0 and image < len(layouts):
            base, tiles = layouts[image]
            count = math.prod(base) + math.prod(tiles)
            if count > n:
                break
            items += [("image",) + base + ("base",), ("image",) + tiles + ("tiles",)]
            n -= count
            image += 1
        return (items, image) if n == 0 else None

    def visual_grids(self, model, inputs, runs) -> list[list[ImageGrid]]:
        layouts = self._layouts(model, inputs) if any(k == "image" for row in runs for k, _, _ in row) else []
        out, image = [], 0
        for row_runs in runs:
            items = []
            for kind, _, n in row_runs:
                got = self.run_items(model, kind, n, layouts, image)
                if got is None:  # tokens the layouts do not account for: no grid rather than a wrong one
                    items = []
                    break
                run, image = got
                items += run
            out.append(items)
        return out


class LlavaOnevisionAdapter(LlavaNextAdapter):
    """LLaVA-OneVision (``LlavaOnevisionForConditionalGeneration``): LLaVA-NeXT's image layout (base tile, then the
    stitched, unpadded tiles row by row with a newline closing each row) with "anyres_max" downsampling of a large
    stitched grid, a SigLIP tower (all its patch tokens: no CLS) and a Qwen2 text model; and videos: each frame's
    patch grid pooled 2x2, the frames back to back, one newline after the last. The trace shows a video as a grid
    [frames, h, w] (its closing newline token belongs to no grid)."""

    model_types = ("llava_onevision",)
    feature_strategy = "full"

    def video_token_id(self, model):
        return model.config.video_token_id

    def vision_spec(self, model):
        return encoder_tower_spec(self.vision_tower(model), 0, "LLaVA-OneVision", "siglip_vision_model")

    def image_layouts(self, model, image_sizes) -> list[tuple[tuple, tuple]]:
        """Per image: the base grid and the stitched grid with its newline column, as transformers packs them
        (its own ``pack_image_features`` on zero features, whose newline tokens give each grid)."""
        vision = model.config.vision_config
        side = vision.image_size // vision.patch_size
        width = model.model.image_newline.shape[-1]
        out = []
        for size in image_sizes.tolist():
            from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape
            rows, cols = get_anyres_image_grid_shape(size, model.config.image_grid_pinpoints, vision.image_size)
            zeros = torch.zeros(1 + rows * cols, side * side, width, dtype=model.model.image_newline.dtype,
                                device=model.model.image_newline.device)
            packed, _ = model.model.pack_image_features([zeros], torch.tensor([size]),
                                                        image_newline=model.model.image_newline,
                                                        vision_aspect_ratio=model.config.vision_aspect_ratio)
            packed = packed if torch.is_tensor(packed) else torch.cat(list(packed))
            out.append(self.layouts_from_features(model, [packed])[0])
        return out

    def run_items(self, model, kind, n, layouts, image):
        if kind != "video":
            return super().run_items(model, kind, n, layouts, image)
        vision = model.config.vision_config
        pooled = math.ceil(vision.image_size // vision.patch_size / 2)  # transformers' 2x2 bilinear pooling
        if n < 2 or (n - 1) % (pooled * pooled):
            return None
        # the frames' pooled grids, then the closing newline, which no grid shows
        return [("video", (n - 1) // (pooled * pooled), pooled, pooled), (None, 1, 1, 1)], image
