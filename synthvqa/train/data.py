"""The training stream: multi-turn chats about train images, with labels, M-RoPE indices and a collate function."""
from __future__ import annotations

import torch

from .. import suite as synth
from .labels import cell_labels
from .questions import ROUND, absent_pair, answer_ids, existence_question, extra_questions, prompt_for

__all__ = ["TrainStream", "mrope_position_ids", "collate", "collate_with", "worker_init"]

class TrainStream(torch.utils.data.Dataset):
    """Item ``i``: a train image (its family from ``round_``, by default ``ROUND``) with ``turns`` questions about it
    as a multi-turn chat (its own question first, then others the scene settles), questions sometimes followed by
    an eval suffix; ``input_ids`` / ``labels`` (-100 except on the answers and end-of-turn tokens), the image
    tensors, and ``cell_labels`` for the auxiliary losses on the visual tokens. With ``positions`` (Qwen2-VL only)
    also ``position_ids``: the M-RoPE indices ``get_rope_index`` would compute for it, here in the data worker."""

    def __init__(self, processor, length: int, turns: int = 4, seed_offset: int = 0, round_=ROUND,
                 positions: bool = False, hard_no: float = 0.0, text_items=None, text_every: int = 0):
        self.processor, self.length, self.offset, self.turns = processor, length, seed_offset, turns
        # text-only chats (prompt ids, answer ids) mixed in every ``text_every``-th item: the composed models keep
        # answering plain text as their pretrained LM does (its own answers, see synthvqa.train.smol.text_bank)
        self.text_items, self.text_every = text_items or [], text_every if text_items else 0
        self.mm_types = type(processor).__name__.startswith("Qwen")  # its processor marks tokens by modality
        self.hard_no = hard_no
        self.round = tuple(round_)
        self.per_round = {f: self.round.count(f) for f in synth.FAMILIES}
        self.qwen = processor.tokenizer.bos_token != "<s>"
        self.positions = positions and self.qwen
        self._ids: dict[str, list[int]] = {}  # token ids of answers and follow-up turns (a few hundred strings)

    def _tokens(self, text: str, answer: bool = False) -> list[int]:
        key = ("a" if answer else "c") + text
        if key not in self._ids:
            self._ids[key] = (answer_ids(self.processor, text) if answer
                              else self.processor.tokenizer(text, add_special_tokens=False).input_ids)
        return self._ids[key]

    def __len__(self):
        return self.length

    def _suffixed(self, q: str, rng) -> str:
        if q.startswith("Is there") and rng.random() < 0.35:
            q += synth.MME_SUFFIX
        if rng.random() < 0.35:
            q += synth.LMMS_POST_PROMPT
        return q

    def _text_item(self, i):
        prompt, answer = self.text_items[i % len(self.text_items)]
        ids = torch.tensor(prompt + answer)
        labels = torch.tensor([-100] * len(prompt) + answer)
        item = {"input_ids": ids, "labels": labels, "cell_labels": torch.zeros(0, 4, dtype=torch.long)}
        if self.mm_types:
            item["mm_token_type_ids"] = torch.zeros(len(ids), dtype=torch.long)
        if self.positions:
            item["position_ids"] = torch.arange(len(ids))[None].expand(3, -1).clone()
        return item

    def __getitem__(self, i):
        import random
        if self.text_every and i % self.text_every == self.text_every - 1:
            return self._text_item(i // self.text_every)
        i += self.offset
        r, j = divmod(i, len(self.round))
        family = self.round[j]
        k = r * self.per_round[family] + self.round[:j].count(family)
        scene, q0, a0 = synth._build("train", family, k)
        rng = random.Random(f"turns/{i}")
        if family == "existence" and a0 == "No" and self.hard_no:  # redraw the No question (see absent_pair)
            objs = [(c, s) for c, s, _ in scene.objects]
            absent = absent_pair(objs, *rng.choice(objs), rng, self.hard_no)
            q0 = existence_question(*absent) if absent else q0
        extra = [qa for qa in extra_questions(scene, rng, self.hard_no) if qa[0] != q0]
        rng.shuffle(extra)
        qas = [(q0, a0)] + extra[:self.turns - 1]
        enc = self.processor(text=[prompt_for(self.processor, self._suffixed(q0, rng))], images=[scene.img],
                             return_tensors="pt")
        ids, labels = [enc["input_ids"][0]], [torch.full_like(enc["input_ids"][0], -100)]
        for t, (q, a) in enumerate(qas):
            ans = torch.tensor(self._tokens(a, answer=True))
            ids.append(ans)
            labels.append(ans)
            if t + 1 < len(qas):
                nq = self._suffixed(qas[t + 1][0], rng)
                cont = (f"\n<|im_start|>user\n{nq}<|im_end|>\n<|im_start|>assistant\n" if self.qwen
                        else f"USER: {nq} ASSISTANT:")
                c = torch.tensor(self._tokens(cont))
                ids.append(c)
                labels.append(torch.full_like(c, -100))
        item = {"input_ids": torch.cat(ids), "labels": torch.cat(labels), "pixel_values": enc["pixel_values"]}
        if "mm_token_type_ids" in enc:
            mm = enc["mm_token_type_ids"][0]
            item["mm_token_type_ids"] = torch.cat([mm, torch.zeros(len(item["input_ids"]) - len(mm), dtype=mm.dtype)])
        if "image_grid_thw" in enc:
            item["image_grid_thw"] = enc["image_grid_thw"]
            _, gh, gw = enc["image_grid_thw"][0].tolist()
            item["cell_labels"] = cell_labels(scene, gh // 2, gw // 2)
            if self.positions:
                item["position_ids"] = mrope_position_ids(item["input_ids"], item["mm_token_type_ids"],
                                                          enc["image_grid_thw"], self.processor.image_processor.merge_size)
        else:
            side = enc["pixel_values"].shape[-1] // 14
            item["cell_labels"] = cell_labels(scene, side, side)
        return item


def mrope_position_ids(input_ids, mm_token_type_ids, grid_thw, merge_size: int) -> torch.Tensor:
    """``[3, len]``: Qwen2-VL's M-RoPE indices of one unpadded sequence, by transformers' own ``get_rope_index``
    (run here, on the CPU of a data worker, instead of per row on the GPU in the training step)."""
    import types
    from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLModel

    shim = types.SimpleNamespace(config=types.SimpleNamespace(vision_config=types.SimpleNamespace(
        spatial_merge_size=merge_size)))
    shim.get_vision_position_ids = lambda *a, **k: Qwen2VLModel.get_vision_position_ids(shim, *a, **k)
    pos, _ = Qwen2VLModel.get_rope_index(shim, input_ids[None], mm_token_type_ids[None], image_grid_thw=grid_thw)
    return pos[:, 0]


def collate(items, pad_id: int, merge_size: int = 2):
    """Right-padded batch; Qwen2-VL's patches are concatenated, LLaVA's images stacked. ``cell_image``: the image
    (row) of each visual token. With items' ``position_ids`` (Qwen2-VL): ``position_ids`` ``[3, batch, len]`` (0 on
    padding, as ``get_rope_index`` leaves it) and the vision tower's own inputs, precomputed by transformers'
    helpers: ``vision_position_ids``, ``cu_seqlens``, ``max_seqlen``."""
    n = max(len(it["input_ids"]) for it in items)
    out = {"input_ids": torch.full((len(items), n), pad_id), "attention_mask": torch.zeros(len(items), n, dtype=torch.long),
           "labels": torch.full((len(items), n), -100)}
    visual = [it for it in items if "pixel_values" in it]  # text-only items carry no image
    if "mm_token_type_ids" in items[0]:
        out["mm_token_type_ids"] = torch.zeros(len(items), n, dtype=torch.long)
    if "position_ids" in items[0]:
        out["position_ids"] = torch.zeros(3, len(items), n, dtype=items[0]["position_ids"].dtype)
    for b, it in enumerate(items):
        m = len(it["input_ids"])
        out["input_ids"][b, :m] = it["input_ids"]
        out["attention_mask"][b, :m] = 1
        out["labels"][b, :m] = it["labels"]
        if "mm_token_type_ids" in it:
            out["mm_token_type_ids"][b, :m] = it["mm_token_type_ids"]
        if "position_ids" in it:
            out["position_ids"][:, b, :m] = it["position_ids"]
    out["pixel_values"] = torch.cat([it["pixel_values"] for it in visual])
    out["cell_labels"] = torch.cat([it["cell_labels"] for it in items])
    out["cell_image"] = torch.cat([torch.full((len(it["cell_labels"]),), b) for b, it in enumerate(items)])
    if "image_grid_thw" in visual[0]:
        out["image_grid_thw"] = torch.cat([it["image_grid_thw"] for it in visual])
    if "position_ids" in items[0] and "image_grid_thw" in out:
        from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids
        grid = out["image_grid_thw"]
        out["vision_position_ids"] = get_vision_position_ids(grid, merge_size)
        out["cu_seqlens"] = get_vision_cu_seqlens(grid)
        out["max_seqlen"] = torch.tensor(int((grid[:, 1] * grid[:, 2]).max()))
    return out


def collate_with(pad_id, merge_size: int = 2):
    import functools
    return functools.partial(collate, pad_id=pad_id, merge_size=merge_size)


def worker_init(_):
    torch.set_num_threads(1)
