"""lmms-eval model classes that run a model under a dashvl setting (the lmms-eval plugin).

Registered through the ``lmms_eval.models`` entry point (pyproject), so after ``pip install -e ".[eval]"``:

    lmms-eval eval --model dashvl_qwen2_vl --model_args pretrained=Qwen/Qwen2-VL-7B-Instruct,ratio=0.5 --tasks mme
    lmms-eval eval --model dashvl_llava --model_args pretrained=tiny-random-llava,device=cpu,method=fastv,ratio=0.75 \\
        --tasks synth_mme --include_path synthvqa/tasks

- ``dashvl_qwen2_vl`` (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) subclasses lmms-eval's ``qwen2_vl`` wrapper and keeps its prompt
  building and generation; ``dashvl_llava`` (LLaVA-1.5) subclasses ``llava_hf`` for loading conventions and
  log-likelihood, with its own ``generate_until`` (upstream's turns generation errors into empty answers and
  takes batch size 1 only).
- ``--model_args``: lmms-eval's usual ones (pretrained, device, batch_size, attn_implementation, dtype,
  max_pixels, min_pixels, system_prompt, ...) plus every field of ``dashvl.Setting`` (``Setting.fields()``:
  method, ratio, layer, kv, ...; ratio 0 = the unmodified model), put in force by ``dashvl.apply``.
  ``pretrained`` also takes dashvl's bundled names and ``tiny-random-qwen2-vl`` / ``tiny-random-llava``.
  The model goes to one device per process (``device_map`` may name it; ``"auto"`` is refused); under
  ``accelerate launch`` each process takes its GPU and its shard of the requests, as lmms-eval's own wrappers do.
- Every prefill is timed, from the vision tower's start (transformers 5.24's ``generate`` encodes the images
  before the model's first call) to the end of that first call over the prompt; for each sample
  ``sample_stats`` gets ``{task, prefill_ms, prompt_tokens, visual_tokens, halted, batch}``; with a batch of
  several samples each gets its batch's time. Means go to lmms-eval's ``results["throughput"]`` as
  ``avg_prefill_ms``, ``avg_tokens_halted``, ``avg_prompt_tokens``.

Importing this module does not import lmms-eval: the classes are built on first access.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import PIL.Image
import torch

from .images import to_rgb
from .setting import Setting, apply

__all__ = ["EvalSetting", "MODEL_IDS", "manifests", "model_id_for", "DashQwen2VL", "DashLlava", "DashChat"]

# lmms-eval model id -> class name in this module
MODEL_IDS = {"dashvl_qwen2_vl": "DashQwen2VL", "dashvl_llava": "DashLlava", "dashvl_chat": "DashChat"}
_FAMILY_MODEL_ID = {"qwen2_vl": "dashvl_qwen2_vl", "qwen2_5_vl": "dashvl_qwen2_vl", "qwen3_vl": "dashvl_qwen2_vl",
                    "llava": "dashvl_llava", "llava_next": "dashvl_llava", "llava_onevision": "dashvl_llava",
                    # prompted through the processor's own chat template (no lmms-eval wrapper of theirs fits)
                    "internvl": "dashvl_chat", "gemma3": "dashvl_chat"}


EvalSetting = Setting  # its name here before dashvl.setting existed


# --------------------------------------------------------------------------------------------- registration

def manifests():
    """The ``lmms_eval.models`` entry-point payload: one ``ModelManifest`` per class."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=model_id, simple_class_path=f"{__name__}.{cls}")
            for model_id, cls in MODEL_IDS.items()]


def model_id_for(pretrained: str) -> str:
    """``dashvl_qwen2_vl``, ``dashvl_llava`` or ``dashvl_chat`` for a bundled name, tiny-random name, local folder
    or hub id."""
    from .composed import COMPOSED
    from .models import BUNDLED, TINY_RANDOM

    name = str(pretrained)
    if name in TINY_RANDOM:  # tiny-random-<model type, dashes for underscores>
        model_type = name[len("tiny-random-"):].replace("-", "_")
    elif name in COMPOSED:
        model_type = COMPOSED[name].family
    elif name in BUNDLED:
        config = BUNDLED[name] / "config.json"
        if not config.exists():
            raise FileNotFoundError(f"bundled model {name!r} is missing at {config.parent}; use one of {TINY_RANDOM}")
        model_type = json.loads(config.read_text())["model_type"]
    elif os.path.isdir(os.path.expanduser(name)):
        model_type = json.loads((Path(name).expanduser() / "config.json").read_text())["model_type"]
    elif name.startswith((".", "/", "~")):
        raise FileNotFoundError(f"no model folder at {name!r}")
    else:
        from transformers import AutoConfig
        model_type = AutoConfig.from_pretrained(name).model_type
    if model_type not in _FAMILY_MODEL_ID:
        raise ValueError(f"{name!r} is a {model_type!r} model; the lmms-eval bridge serves "
                         f"{', '.join(sorted(_FAMILY_MODEL_ID))}")
    return _FAMILY_MODEL_ID[model_type]


def __getattr__(name):
    """Build ``DashQwen2VL`` / ``DashLlava`` / ``DashChat`` on first access. They subclass lmms-eval's wrappers; lmms-eval imports
    this module for every command while it builds its model registry, and importing the wrappers' modules then
    would cost every command their imports (and ``llava_hf``'s module silences all warnings when imported)."""
    if name not in MODEL_IDS.values():
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name == "DashQwen2VL":
        from lmms_eval.models.simple.qwen2_vl import Qwen2_VL as base
        cls = type(name, (_QwenMixin, base), {"__module__": __name__, "__doc__": _QwenMixin.__doc__})
    else:
        from lmms_eval.models.simple.llava_hf import LlavaHf as base
        mixin = _ChatMixin if name == "DashChat" else _LlavaMixin
        cls = type(name, (mixin, base), {"__module__": __name__, "__doc__": mixin.__doc__})
    globals()[name] = cls
    return cls


# --------------------------------------------------------------------------------------------- the model side

def _split_dash_args(kwargs: dict) -> Setting:
    """Pop every ``Setting`` field out of ``kwargs`` (model_args, as lmms-eval typed them) into a Setting."""
    return Setting.from_args({k: kwargs.pop(k) for k in Setting.fields() if k in kwargs})


class _DashMixin:
    """dashvl on top of an lmms-eval wrapper: loading by dashvl name, one setting at a time, prefill stats.

    A subclass's ``__init__`` calls ``_load`` and then ``_start``.
    """

    def _load(self, pretrained, device, dtype, attn_implementation, batch_size, unknown: dict):
        from accelerate import Accelerator

        from .models import load_model

        if unknown:
            raise TypeError(f"{type(self).__name__} got unknown model_args {sorted(unknown)}; dashvl's are "
                            f"{', '.join(Setting.fields())}")
        if device == "auto":
            raise ValueError("device_map='auto' (one model over several GPUs) is not supported: the model goes to "
                             "one device per process; for several GPUs use `accelerate launch` (data parallel)")
        from lmms_eval.api.model import lmms
        lmms.__init__(self)
        accelerator = Accelerator()
        if accelerator.num_processes > 1:  # data parallel: one process per GPU (or CPU processes for a test)
            device = f"cuda:{accelerator.local_process_index}" if torch.cuda.is_available() else "cpu"
            self._rank, self._world_size = accelerator.process_index, accelerator.num_processes
        else:
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.accelerator = accelerator
        self._device = torch.device(device)
        self.device_map = str(device)
        if isinstance(dtype, str) and dtype != "auto":
            dtype = getattr(torch, dtype)
        model, processor = load_model(pretrained, device=str(device), dtype=dtype,
                                      attn_implementation=attn_implementation or "sdpa")
        self.pretrained = str(pretrained)
        self._model = model
        self._config = model.config
        self.batch_size_per_gpu = int(batch_size)
        if self.batch_size_per_gpu < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size!r}")
        return model, processor

    def _start(self, processor, setting: Setting) -> None:
        from .adapters import adapter_for

        self._raw_processor = processor
        self._applied = None
        self.setting = Setting()
        self.sample_stats: list[dict] = []
        self._task = None
        self._prefill = None
        self._rows_generated = 0
        adapter = adapter_for(self._model)
        self._image_token = adapter.image_token_id(self._model)
        self._vision_start = None
        vision = adapter.vision_tower(self._model)  # its start opens a sample's prefill time
        self._timing_hooks = [
            vision.register_forward_pre_hook(self._on_vision),
            self._model.register_forward_pre_hook(self._on_forward, with_kwargs=True),
            self._model.register_forward_hook(self._on_forward_end, always_call=True),
        ]
        self.configure(setting)

    # ------------------------------------------------------------------ settings

    def configure(self, setting: Setting | None = None, **settings) -> Setting:
        """Switch to ``setting`` (or ``Setting(**settings)``) without reloading the model.

        Raises ValueError for a setting this model cannot take (e.g. a layer beyond its depth); the model is
        then left unmodified.
        """
        setting = setting if setting is not None else Setting(**settings)
        if self._applied is not None:
            self._applied.remove()
        self._applied, self.setting = None, Setting()
        self._applied = apply(self._model, self._raw_processor, setting)
        self.setting = setting
        return setting

    def process(self, *args, **kwargs):
        """The processor's call, through the downsampling baseline when it is the setting; PIL images as a
        person sees them first (``dashvl.images.to_rgb``: EXIF orientation, 16-bit scaled, alpha on white)."""
        images = kwargs.get("images")
        if isinstance(images, PIL.Image.Image):
            kwargs["images"] = to_rgb(images)
        elif isinstance(images, (list, tuple)):
            kwargs["images"] = [to_rgb(i) if isinstance(i, PIL.Image.Image) else i for i in images]
        return self._applied.processor(*args, **kwargs)

    # ------------------------------------------------------------------ prefill stats

    def _on_vision(self, module, args):
        if self._vision_start is None:  # generate() encodes the images before the prefill call
            self._sync()
            self._vision_start = time.perf_counter()

    def _on_forward(self, module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))  # transformers 5.24 passes `cache`
        ids = kwargs.get("input_ids", args[0] if args else None)
        self._rows_generated += ids.shape[0] if ids is not None else 0
        if ids is None or (cache is not None and cache.get_seq_length() > 0):
            return None  # a decode step
        mask = kwargs.get("attention_mask")
        if mask is not None and mask.dim() == 2:
            real = mask[:, -ids.shape[1]:].bool()
        else:
            real = torch.ones_like(ids, dtype=torch.bool)
        visual = (ids == self._image_token) & real if self._image_token is not None else torch.zeros_like(real)
        if self._vision_start is None:
            self._sync()
        start = self._vision_start if self._vision_start is not None else time.perf_counter()
        self._prefill = (start, real.sum(1).tolist(), visual.sum(1).tolist())
        return None

    def _on_forward_end(self, module, args, output):
        if self._prefill is None:
            return None
        self._sync()
        start, prompt, visual = self._prefill
        ms = (time.perf_counter() - start) * 1e3
        self._prefill = self._vision_start = None
        trace = self._applied.trace if self._applied is not None else None
        halted = trace.num_halted().tolist() if trace is not None else [0] * len(prompt)
        for p, v, h in zip(prompt, visual, halted):
            self.sample_stats.append({"task": self._task, "prefill_ms": ms, "prompt_tokens": p,
                                      "visual_tokens": v, "halted": h, "batch": len(prompt)})
        return None

    def _sync(self):
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)

    def pop_stats(self) -> list[dict]:
        """The per-sample stats recorded since the last call, and forget them."""
        stats, self.sample_stats = self.sample_stats, []
        return stats

    # ------------------------------------------------------------------ lmms contract

    def generate_until(self, requests):
        """Upstream's generation, one task at a time so that each sample's stats name its task."""
        from lmms_eval.models.model_utils.gen_metrics import log_metrics

        by_task: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            by_task.setdefault(req.task_name, []).append(i)
        out = [None] * len(requests)
        first, rows, start = len(self.sample_stats), self._rows_generated, time.perf_counter()
        try:
            for task, idx in by_task.items():
                self._task = task
                for i, res in zip(idx, self._generate([requests[i] for i in idx])):
                    out[i] = res
        finally:
            self._task = None
        new = self.sample_stats[first:]
        if new:
            n = len(new)
            elapsed = time.perf_counter() - start
            tokens = self._rows_generated - rows  # a token per row per step (rows that ended early included)
            log_metrics(total_elapsed_time=elapsed, total_gen_tokens=tokens, avg_speed=tokens / max(elapsed, 1e-9),
                        additional_metrics={"prefill_ms": sum(s["prefill_ms"] for s in new) / n,
                                            "tokens_halted": sum(s["halted"] for s in new) / n,
                                            "prompt_tokens": sum(s["prompt_tokens"] for s in new) / n})
        return out

    def clean(self):
        """lmms-eval calls this after every evaluation and would drop the model; keep it, so that one loaded
        model serves a whole sweep, and free cached GPU memory only."""
        import gc

        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class _Processor:
    """Stands in for the processor in upstream code: its call goes through ``owner.process`` (downsampling),
    everything else to the processor itself."""

    def __init__(self, owner: _DashMixin, processor):
        self._owner, self._processor = owner, processor

    def __call__(self, *args, **kwargs):
        return self._owner.process(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._processor, name)


class _QwenMixin(_DashMixin):
    """lmms-eval's ``qwen2_vl`` wrapper (its prompts, qwen_vl_utils image handling and generation) running a
    Qwen2-VL / Qwen2.5-VL loaded by ``dashvl.load_model`` under a dashvl setting."""

    def __init__(self, pretrained: str = "Qwen/Qwen2-VL-7B-Instruct", device: str | None = None,
                 device_map: str | None = None, batch_size: int | str = 1, use_cache: bool = True,
                 use_flash_attention_2: bool = False, attn_implementation: str | None = None,
                 dtype: str | None = None, max_length: int | None = 2048, max_pixels: int = 602112,
                 min_pixels: int = 3136, max_num_frames: int = 32,
                 system_prompt: str | None = "You are a helpful assistant.", interleave_visuals: bool = False,
                 reasoning_prompt: str | None = None, **kwargs) -> None:
        setting = _split_dash_args(kwargs)
        kwargs.pop("max_batch_size", None)
        if use_flash_attention_2:
            attn_implementation = "flash_attention_2"
        _, processor = self._load(pretrained, device_map or device, dtype, attn_implementation, batch_size, kwargs)
        # what upstream's AutoProcessor.from_pretrained(..., max_pixels=, min_pixels=) does
        ip = processor.image_processor
        processor.image_processor = type(ip).from_dict(ip.to_dict(), size={"shortest_edge": min_pixels,
                                                                           "longest_edge": max_pixels})
        self.processor = _Processor(self, processor)
        self._tokenizer = processor.tokenizer
        self.max_pixels, self.min_pixels, self.max_num_frames = max_pixels, min_pixels, max_num_frames
        self.reasoning_prompt = reasoning_prompt.replace("\\n", "\n") if reasoning_prompt else None
        self.system_prompt = system_prompt
        self.interleave_visuals = interleave_visuals
        self._max_length = max_length
        self.use_cache = use_cache
        self._start(processor, setting)

    def _generate(self, requests):
        return super(_DashMixin, self).generate_until(requests)  # upstream's, past _DashMixin's


class _LlavaMixin(_DashMixin):
    """A LLaVA-1.5 loaded by ``dashvl.load_model`` under a dashvl setting, prompted as lmms-eval's ``llava_hf``
    does (``<image>`` tokens before the question, the tokenizer's chat template), any batch size."""

    def __init__(self, pretrained: str = "llava-hf/llava-1.5-7b-hf", device: str | None = None,
                 dtype: str | None = None, batch_size: int | str = 1, attn_implementation: str | None = None,
                 device_map: str = "", chat_template: str | None = None, use_cache: bool = True,
                 max_frames_num: int = 32, **kwargs) -> None:
        setting = _split_dash_args(kwargs)
        kwargs.pop("max_batch_size", None)
        _, processor = self._load(pretrained, device_map or device, dtype, attn_implementation, batch_size, kwargs)
        processor.tokenizer.padding_side = "left"
        self._image_processor = _Processor(self, processor)
        self._tokenizer = processor.tokenizer
        self.chat_template = chat_template
        self.use_cache = use_cache
        self.max_frames_num = max_frames_num
        self._max_length = None
        self._start(processor, setting)

    model_id = "dashvl_llava"

    @staticmethod
    def _images(rows):
        """The processor's ``images``: one flat list (LLaVA's processors), None without any."""
        return [i for row in rows for i in row] or None

    def _prompt(self, context: str, n_images: int) -> str:
        from lmms_eval.models.simple.llava_hf import DEFAULT_IMAGE_TOKEN, VICUNA_CHAT_TEMPLATE

        if DEFAULT_IMAGE_TOKEN not in context and n_images:
            context = " ".join([DEFAULT_IMAGE_TOKEN] * n_images) + "\n" + context
        if self.chat_template is not None:
            self.tokenizer.chat_template = self.chat_template
        elif self.tokenizer.chat_template is None:
            self.tokenizer.chat_template = VICUNA_CHAT_TEMPLATE
        return self.tokenizer.apply_chat_template([{"role": "user", "content": context}], tokenize=False,
                                                  add_generation_prompt=True)

    def _generate(self, requests):
        import PIL.Image
        from lmms_eval import utils
        from tqdm import tqdm

        def _collate(x):
            return -len(self.tok_encode(x[0])), x[0]

        res = []
        re_ords = utils.Collator([req.args for req in requests], _collate, grouping=True)
        pbar = tqdm(total=len(requests), disable=self.rank != 0, desc="Model Responding")
        for chunk in re_ords.get_batched(n=self.batch_size, batch_fn=None):
            contexts, all_gen_kwargs, doc_to_visual, doc_id, task, split = zip(*chunk)
            visuals = [self.flatten([doc_to_visual[0](self.task_dict[task[0]][split[0]][i])]) for i in doc_id]
            if any(not isinstance(v, PIL.Image.Image) for row in visuals for v in row):
                raise NotImplementedError(f"{self.model_id} evaluates image tasks; {task[0]!r} gives videos or "
                                          "other media (use lmms-eval's own wrapper for those)")
            texts = [self._prompt(c, len(v)) for c, v in zip(contexts, visuals)]
            inputs = self._image_processor(images=self._images([[to_rgb(i) for i in row] for row in visuals]),
                                           text=texts, return_tensors="pt", padding=True)
            inputs = inputs.to(self._device, self.model.dtype)
            gen = dict(all_gen_kwargs[0])
            until = gen.pop("until", None) or [self.tok_decode(self.eot_token_id)]
            until = [until] if isinstance(until, str) else list(until)
            do_sample = gen.get("temperature", 0) > 0
            pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.eot_token_id
            with torch.inference_mode():
                cont = self.model.generate(
                    **inputs, do_sample=do_sample, temperature=gen.get("temperature") if do_sample else None,
                    top_p=gen.get("top_p") if do_sample else None, num_beams=gen.get("num_beams", 1),
                    max_new_tokens=gen.get("max_new_tokens", 1024), use_cache=self.use_cache,
                    pad_token_id=pad,
                    eos_token_id=self.eot_token_id)
            answers = self.tokenizer.batch_decode(cont[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
            for context, answer in zip(contexts, answers):
                for term in until:
                    if term:
                        answer = answer.split(term)[0]
                res.append(answer)
                self.cache_hook.add_partial("generate_until", (context, all_gen_kwargs[0]), answer)
                pbar.update(1)
        pbar.close()
        return re_ords.get_original(res)


class _ChatMixin(_LlavaMixin):
    """Any image-text model ``dashvl.load_model`` serves whose processor has a chat template (InternVL, Gemma 3),
    prompted through that template: the request's images as image entries before its text, the images given to
    the processor per prompt (Gemma 3's processor counts them per sample), any batch size."""

    model_id = "dashvl_chat"

    def __init__(self, pretrained: str, **kwargs) -> None:
        super().__init__(pretrained, **kwargs)
        if not getattr(self._raw_processor, "chat_template", None) and self.chat_template is None:
            raise ValueError(f"{pretrained!r}: its processor has no chat template; pass model_args chat_template=...")

    @staticmethod
    def _images(rows):
        return [list(row) for row in rows] if any(rows) else None

    def _prompt(self, context: str, n_images: int) -> str:
        from lmms_eval.models.simple.llava_hf import DEFAULT_IMAGE_TOKEN

        text = context.replace(DEFAULT_IMAGE_TOKEN, "").strip()  # the images go in as entries of their own
        content = [{"type": "image"}] * n_images + [{"type": "text", "text": text}]
        return self._raw_processor.apply_chat_template([{"role": "user", "content": content}],
                                                       chat_template=self.chat_template, add_generation_prompt=True)
