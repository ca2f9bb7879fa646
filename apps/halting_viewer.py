"""The halting viewer: ask a question about one or more images and see, layer by layer, what DASH halted.

    python -m apps.halting_viewer [--model NAME_OR_PATH] [--host 127.0.0.1] [--port 7860]
    python -m apps.halting_viewer --model smollm2-135m-instruct     # a text LM: prompts only, tokens shown

With a text-only LM (``dashvl.load_model``'s pretrained names, or any Llama / Qwen2 / Mistral / Gemma 3 text
model) the viewer takes a prompt and no images, starts at ``dashvl.config.TEXT_DEFAULTS``, and shows the prompt's
tokens halted / active at the chosen layer.

Three layers, as everywhere in dashvl: ``handle.trace`` is the data, ``dashvl.viz`` renders it, and this
file only wires inputs to them. The model is read, never changed, outside a request; a session's results
live in its own ``gr.State``; requests run one at a time: the queue's concurrency is 1, and a lock inside
``Viewer.run`` also serialises the routes that bypass the queue (``/gradio_api/run/...``). Only ``/run`` and ``/overlays`` are
published as an API; the upload cache is cleaned hourly; ``share`` is off unless ``--share`` is given.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import threading
import time
from pathlib import Path

import gradio as gr
import torch
from PIL import Image, UnidentifiedImageError

import dashvl
from dashvl import viz
from dashvl.adapters import adapter_for
from dashvl.config import KV_MODES, SCOPES, TEXT_DEFAULTS, DashConfig
from dashvl.images import for_qwen, to_rgb
from dashvl.setting import Setting, method_names
from dashvl.models import chat_prompt

__all__ = ["build_demo", "launch", "main", "Viewer", "Request", "InputError", "ViewerResult", "EXAMPLES"]

log = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "assets" / "examples"
# (file under EXAMPLES_DIR, prompt): the example gallery, test samples of the bundled models' suite that both of
# them answer right unmodified (written by `python -m apps.make_examples`)
EXAMPLES = (
    ("colour-0.png", "What colour is the square?"),
    ("reading-3.png", "What word is written in the image?"),
    ("count-2.png", "How many shapes are in the image?"),
    ("existence-0.png", "Is there a red triangle in the image?"),
)
MAX_IMAGES = 4
MAX_PROMPT_CHARS = 2000
MAX_TEXT_PROMPT_CHARS = 60_000  # a text LM's prompt is the document itself (about 15k tokens)
MAX_NEW_TOKENS = 64
# Refused before decoding: a decoded 50 MP RGB picture alone takes 150 MB of memory.
MAX_INPUT_PIXELS = 50_000_000
MAX_UPLOAD = "25mb"
DISPLAY_SIDE = 768  # pictures kept for rendering are at most this big
RENDER_SIDE = 448   # long side of the rendered overlays and heatmaps


class InputError(ValueError):
    """Bad user input; its message is shown in the UI as it is."""


@dataclasses.dataclass(frozen=True)
class Request:
    """One request: the prompt, the setting of the right-hand run, validated (``parse``) before the model is
    touched. An "inputs" method (downsample) runs with a ratio-0 trace of its smaller prompt."""

    prompt: str
    setting: Setting
    max_new_tokens: int

    @classmethod
    def parse(cls, prompt, ratio, layer, kv, scope, max_new_tokens, num_layers: int, method: str = "dash",
              vision_ratio=0.0, vision_layer=0, vision_blocks: int | None = None,
              control_tokens: tuple[str, ...] = (), max_chars: int = MAX_PROMPT_CHARS,
              text_only: bool = False) -> "Request":
        """Raises InputError naming what is allowed. ``control_tokens``: the tokenizer's special-token strings,
        which a prompt may not contain (it is text, not chat structure). ``text_only``: the model reads no
        images (a text LM)."""
        if prompt is not None and not isinstance(prompt, str):
            raise InputError(f"the prompt must be text; got {type(prompt).__name__}")
        prompt = (prompt or "").strip()
        if not prompt:
            raise InputError("the prompt is empty: type a prompt" if text_only else
                             "the prompt is empty: type a question about the image(s)")
        found = sorted({t for t in control_tokens if t and t in prompt})
        if found:
            raise InputError(f"the prompt contains the model's control token(s) {', '.join(found)}: the prompt is "
                             "plain text (the viewer adds the images and the chat turns itself); remove them")
        if len(prompt) > max_chars:
            raise InputError(f"the prompt has {len(prompt)} characters; at most {max_chars} are allowed")
        layer = _whole(layer, "layer")
        new = _whole(max_new_tokens, "max new tokens")
        if not 1 <= new <= MAX_NEW_TOKENS:
            raise InputError(f"max new tokens must be in [1, {MAX_NEW_TOKENS}]; got {new}")
        try:
            ratio = float(ratio)
        except (TypeError, ValueError):
            raise InputError(f"ratio must be a number in [0, 1); got {ratio!r}") from None
        try:
            vision_ratio = float(vision_ratio or 0.0)
        except (TypeError, ValueError):
            raise InputError(f"vision ratio must be a number in [0, 1); got {vision_ratio!r}") from None
        if vision_ratio > 0 and vision_blocks is None:
            raise InputError("this model's vision tower cannot halt patches: set the vision ratio to 0")
        if vision_ratio > 0 and method in method_names("inputs"):
            raise InputError(f"{method} already shrinks the images: set the vision ratio to 0 with it")
        if text_only and method in method_names("inputs"):
            raise InputError(f"{method} shrinks images, and this model reads text only: pick one of "
                             f"{', '.join(method_names('llm'))}")
        try:
            setting = Setting(method=method, ratio=ratio, layer=layer, kv=kv, scope=scope, vision_ratio=vision_ratio,
                              vision_layer=_whole(vision_layer or 0, "vision layer"))
            setting.check(num_layers, vision_blocks)
        except (TypeError, ValueError) as err:
            raise InputError(str(err)) from err
        return cls(prompt, setting, new)


@dataclasses.dataclass(frozen=True)
class Run:
    """One generation: the answer, the LLM prefill time, and the tokens the decoder layers processed
    (summed over layers)."""

    answer: str
    prefill_s: float
    token_layers: int


@dataclasses.dataclass(frozen=True)
class ViewerResult:
    """A session's last request, kept in its ``gr.State`` so the layer slider can re-render it.

    Attributes:
        trace: the DASH prefill's HaltTrace (row 0).
        pictures: the images as uploaded (at most DISPLAY_SIDE px), in prompt order.
        crop: where the token grid lies on each picture (``viz.grid_box``).
        input_ids: long [1, T], the prompt's ids.
        plain, dash: the runs without and with DASH.
        notes: messages about the input (e.g. downscaled images).
    """

    trace: dashvl.HaltTrace
    pictures: tuple[Image.Image, ...]
    crop: float | None
    input_ids: torch.Tensor
    plain: Run
    dash: Run
    notes: tuple[str, ...]


class Viewer:
    """A loaded model and what the UI asks of it. Holds no per-session data and never changes after
    ``__init__``; the model is compressed only inside ``answer``, which the queue runs one at a time."""

    def __init__(self, model, processor, name: str):
        self.model, self.processor, self.name = model, processor, name
        self._lock = threading.Lock()  # every route that reaches the model goes through it, one at a time
        tokenizer = getattr(processor, "tokenizer", processor)
        added = [t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special]
        self.control_tokens = tuple(sorted(set(getattr(tokenizer, "all_special_tokens", [])) | set(added)))
        adapter = adapter_for(model)  # ValueError for a model type dashvl does not support
        self.adapter = adapter
        self.layers = adapter.decoder_layers(model)
        self.language_model = adapter.language_model(model)
        self.num_layers = len(self.layers)
        self.text_config = adapter.text_config(model)
        self.image_token = adapter.image_token_id(model)
        self.text_only = getattr(processor, "image_processor", None) is None  # a text LM and its tokenizer
        self.tokenizer = tokenizer
        # a text LM's tokenizer may have no pad token (Gemma's base model: its eos); a VLM's generation_config has one
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self._generate_kw = {"pad_token_id": pad} if self.text_only else {}
        self.crop = None if self.text_only else _grid_crop(processor.image_processor)
        try:  # blocks of the vision tower when patches can halt inside it, else None
            self.vision_blocks = len(adapter.vision_spec(model).blocks)
        except ValueError:
            self.vision_blocks = None
        if adapter.tiled_images:  # the tower halts per tile (the library serves it); the viewer draws one grid per picture
            self.vision_blocks = None

    def load_images(self, paths) -> tuple[list[Image.Image], list[Image.Image], list[str]]:
        """``(for the model, for display, notes)`` from uploaded file paths; raises InputError."""
        paths = [p for p in (paths or []) if p]
        if self.text_only:
            if paths:
                raise InputError(f"this model ({self.name}) reads text only: remove the image(s)")
            return [], [], []
        if not paths:
            raise InputError("no image: upload one (PNG, JPEG, WebP, ...) or click an example")
        if len(paths) > MAX_IMAGES:
            raise InputError(f"{len(paths)} images given; the viewer takes at most {MAX_IMAGES}")
        model_imgs, shown, notes = [], [], []
        for i, path in enumerate(paths, 1):
            img, transparent = _open_image(path, i)
            if transparent:
                notes.append(f"image {i} has transparent parts: they are shown to the model on white")
            if getattr(self.processor.image_processor, "merge_size", None):  # Qwen-VL: sized as Qwen's examples do
                ready = for_qwen(img, self.processor.image_processor)
                if ready.width * ready.height < img.width * img.height:
                    notes.append(f"image {i} ({img.width}x{img.height} px) was downscaled to {ready.width}x"
                                 f"{ready.height} px, the model's pixel budget (qwen_vl_utils)")
                model_imgs.append(ready)
                shown.append(img.copy())
                shown[-1].thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))
                continue
            target = _fit_budget(img.size, self.processor.image_processor)
            if target is not None:
                notes.append(f"image {i} ({img.width}x{img.height} px) was downscaled to {target[0]}x{target[1]} "
                             "px, the model's pixel budget")
                model_imgs.append(img.resize(target, Image.BICUBIC))
            else:
                model_imgs.append(img)
            shown.append(img.copy())
            shown[-1].thumbnail((DISPLAY_SIDE, DISPLAY_SIDE))  # in place: on the copy, not the model's picture
        return model_imgs, shown, notes

    @torch.inference_mode()
    def answer(self, request: Request, images: list[Image.Image]):
        """Generate without and with DASH (or downsampling): ``(plain Run, dash Run, trace, input_ids)``."""
        if self.text_only:
            inputs, encode = self._text_inputs(request.prompt), None
        else:
            text = chat_prompt(self.processor, request.prompt, images=len(images))

            def encode(process):
                try:
                    return process(text=[text], images=images, return_tensors="pt").to(self.model.device)
                except ValueError as err:  # e.g. Qwen2-VL refuses aspect ratios over 200
                    raise InputError(f"the model's processor refused the input: {err}") from None

            inputs = encode(self.processor)
        answer, seconds = self._generate(inputs, request.max_new_tokens)
        plain = Run(answer, seconds, inputs["input_ids"].shape[1] * self.num_layers)
        setting, notes = request.setting, []
        # trace=True: a trace of the right-hand run even where nothing halts inside the model (ratio 0, downsample)
        with dashvl.apply(self.model, self.processor, setting, trace=True) as applied:
            if setting.stage == "inputs":  # a VLM only (Request.parse refuses it for a text LM)
                visual = int(policy_visual(inputs["input_ids"], self.image_token))
                inputs = encode(applied.processor)
                if not setting.baseline:
                    notes.append(f"{setting.method} {setting.ratio:g}: the images gave "
                                 f"{int(policy_visual(inputs['input_ids'], self.image_token))} visual tokens "
                                 f"instead of {visual}; nothing halts inside the model (the right-hand run)")
            answer, seconds = self._generate(inputs, request.max_new_tokens)
            trace = applied.trace
        dash = Run(answer, seconds, int(trace.tokens_per_layer[0].sum()))
        return plain, dash, trace, inputs["input_ids"].cpu(), notes

    def _text_inputs(self, prompt: str):
        """A text LM's inputs: the prompt in its chat template when the tokenizer has one (SmolLM2-Instruct), else
        as it is (a base model such as Gemma-3-270M)."""
        tok = self.tokenizer
        chat = bool(getattr(tok, "chat_template", None))
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True) if chat else prompt
        return tok([text], add_special_tokens=not chat, return_tensors="pt").to(self.model.device)

    def _generate(self, inputs, max_new_tokens: int) -> tuple[str, float]:
        """A greedy answer to ``inputs`` and the seconds of its LLM prefill."""
        T = inputs["input_ids"].shape[1]
        with _PrefillClock(self.layers[0], self.language_model) as clock:
            out = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **self._generate_kw)
        return self.tokenizer.batch_decode(out[:, T:], skip_special_tokens=True)[0].strip(), clock.seconds

    def run(self, paths, prompt, ratio, layer, kv, scope, max_new_tokens, method="dash", vision_ratio=0.0,
            vision_layer=0) -> ViewerResult:
        """Validate, load, generate. Raises InputError for bad input."""
        request = Request.parse(prompt, ratio, layer, kv, scope, max_new_tokens, self.num_layers, method,
                                vision_ratio, vision_layer, self.vision_blocks, self.control_tokens,
                                MAX_TEXT_PROMPT_CHARS if self.text_only else MAX_PROMPT_CHARS, self.text_only)
        try:  # a family's own limit on l_s (Qwen3-VL: at or above its DeepStack layers)
            if request.setting.stage != "inputs":
                self.adapter.check_layer(self.model, request.setting.layer)
        except ValueError as err:
            raise InputError(str(err)) from None
        model_imgs, shown, notes = self.load_images(paths)
        with self._lock:  # the model and a compressed model's per-call state serve one request at a time
            plain, dash, trace, ids, more = self.answer(request, model_imgs)
        notes += more
        grids = len(trace.picture_spans())
        if grids != len(shown):  # e.g. a LLaVA that keeps CLS tokens: no grid to draw on
            raise RuntimeError(f"the trace has grids for {grids} image(s) but {len(shown)} were given")
        return ViewerResult(trace, tuple(shown), self.crop, ids, plain, dash, tuple(notes))


# ----------------------------------------------------------------- rendering a result for the UI


def overlays(result: ViewerResult | None, layer) -> list[tuple[Image.Image, str]]:
    """Gallery items: each picture with the tokens layer ``layer`` did not process."""
    if result is None:
        return []
    tr = result.trace
    layer = min(max(int(layer), 0), tr.num_layers - 1)
    items = []
    for i, pic in enumerate(result.pictures):
        mask = tr.picture_mask(picture=i, layer=layer)
        if layer <= tr.layer:
            caption = f"image {i + 1}, layer {layer}: all {mask.numel()} tokens processed (halting starts above layer {tr.layer})"
        else:
            caption = f"image {i + 1}, layer {layer}: {int(mask.sum())} of {mask.numel()} tokens halted (red)"
        items.append((viz.halted_overlay(tr, pic, i, layer, crop=result.crop, size=RENDER_SIDE), caption))
    return items


def vision_overlays(result: ViewerResult) -> list[tuple[Image.Image, str]]:
    """Gallery items: each picture with the patches the vision tower halted (empty when it halted none)."""
    vision = result.trace.vision
    if vision is None:
        return []
    items = []
    for i, pic in enumerate(result.pictures):
        mask = vision.patch_mask(i)
        caption = (f"image {i + 1}: {int(mask.sum())} of {mask.numel()} patches halted after vision block "
                   f"{vision.layer} of {vision.num_blocks}")
        items.append((viz.vision_overlay(vision, pic, i, crop=result.crop, size=RENDER_SIDE), caption))
    return items


def heatmaps(result: ViewerResult) -> list[tuple[Image.Image, str]]:
    tr = result.trace
    return [(viz.delta_heatmap(tr, pic, i, crop=result.crop, size=RENDER_SIDE),
             f"image {i + 1}: Δ at layer {tr.layer} (dark = small Δ, halted first)")
            for i, pic in enumerate(result.pictures)]


def run_stats(result: ViewerResult, num_layers: int) -> tuple[str, str]:
    """Markdown lines under the two answers: prefill time and tokens processed."""
    tr, plain, dash = result.trace, result.plain, result.dash
    T, A = int(tr.real[0].sum()), int(tr.active[0].sum())
    top = num_layers - 1
    plain_md = (f"**LLM prefill** {plain.prefill_s * 1e3:.1f} ms · **tokens processed** "
                f"{plain.token_layers // num_layers} in each of {num_layers} layers = {plain.token_layers}")
    dash_md = (f"**LLM prefill** {dash.prefill_s * 1e3:.1f} ms · **tokens processed** {T} in {_layers(0, tr.layer)}, "
               f"{A} in {_layers(tr.layer + 1, top)} = {dash.token_layers} "
               f"({dash.token_layers / plain.token_layers:.0%})")
    return plain_md, dash_md


def policy_visual(input_ids: torch.Tensor, image_token: int) -> torch.Tensor:
    """How many image tokens a prompt holds."""
    return (input_ids == image_token).sum()


def _layers(first: int, last: int) -> str:
    return f"layer {first}" if first == last else f"layers {first}–{last}"


def _answer_text(answer: str) -> str:
    # why: random-weight models emit control bytes, which a text box shows as nothing or garbles
    shown = "".join(c if c.isprintable() or c in "\n\t" else "\ufffd" for c in answer)
    return shown if shown else "(empty: the model ended its answer at once)"


# ----------------------------------------------------------------- the UI


def build_demo(model=None, processor=None, model_name: str | None = None) -> gr.Blocks:
    """The viewer's Blocks, queued (one request at a time). Loads ``model_name`` (default
    ``dashvl.models.DEFAULT_MODEL``) when no model is given."""
    if model is None:
        model_name = model_name or dashvl.models.DEFAULT_MODEL
        model, processor = dashvl.load_model(model_name)
    elif processor is None:
        raise ValueError("build_demo got a model without its processor; pass both, or neither with model_name")
    viewer = Viewer(model, processor, model_name or type(model).__name__)
    L = viewer.num_layers
    examples = [(str(EXAMPLES_DIR / f), p) for f, p in EXAMPLES if (EXAMPLES_DIR / f).exists()]
    if len(examples) < len(EXAMPLES):
        log.warning("example images missing from %s; the gallery shows %d of %d", EXAMPLES_DIR, len(examples),
                    len(EXAMPLES))

    def on_run(paths, prompt, ratio, layer, kv, scope, max_new_tokens, view_layer, method="dash", vision_ratio=0.0,
               vision_layer=0):
        try:
            result = viewer.run(paths, prompt, ratio, layer, kv, scope, max_new_tokens, method, vision_ratio,
                                vision_layer)
        except InputError as err:
            return _failed(str(err))
        except Exception as err:  # a model failure: logged with its traceback, reported, server stays up
            log.exception("request failed")
            return _failed(f"the model failed on this request ({type(err).__name__}: {err})")
        plain_md, dash_md = run_stats(result, L)
        summary = viz.flops_summary(viewer.text_config, result.trace)
        inputs = f"{result.input_ids.shape[1]} prompt tokens" if viewer.text_only else f"{len(result.pictures)} image(s)"
        status = "\n".join((f"done: {inputs}, {summary.text}",) + result.notes)
        return (status, _answer_text(result.plain.answer), plain_md, _answer_text(result.dash.answer), dash_md,
                overlays(result, view_layer), heatmaps(result),
                viz.tokens_per_layer_figure(result.trace, viewer.text_config), summary.text,
                viz.token_highlights(result.trace, result.input_ids, viewer.tokenizer), vision_overlays(result),
                result)

    def _failed(message: str):
        gr.Warning(message)
        return (f"error: {message}", "", "", "", "", [], [], None, "", [], [], None)

    def on_pick_example(evt: gr.SelectData):
        path, prompt = examples[evt.index]
        return [path], prompt

    pictures = not viewer.text_only
    # a text LM starts where the text table says (dashvl.config.TEXT_DEFAULTS), a VLM at the paper's setting
    start = dict(method="dash", ratio=0.5, layer=min(2, L // 4)) if pictures else \
        dict(method=TEXT_DEFAULTS["method"], ratio=TEXT_DEFAULTS["ratio"],
             layer=DashConfig(layer=TEXT_DEFAULTS["layer"]).resolve_layer(L))
    with gr.Blocks(title="dashvl halting viewer", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"## DASH halting viewer\nModel: `{viewer.name}` ({L} decoder layers). At layer l_s the "
                    "tokens whose self-attention changed them least stop; the layers above run on the rest."
                    + ("\n\n*A tiny random-weight model: its answers are noise, the halting is real.*"
                       if "tiny-random" in viewer.name else "")
                    + ("" if pictures else "\n\nA text LM: type a prompt (a document and a question about it); "
                       "the prompt tokens panel shows which tokens halted. It starts at the text defaults "
                       f"({start['method']}, ρ {start['ratio']}, layer {start['layer']})."))
        with gr.Row():
            with gr.Column(scale=1):
                files = gr.File(label=f"images (1 to {MAX_IMAGES})", file_count="multiple", file_types=["image"],
                                type="filepath", elem_id="images", visible=pictures)
                gallery = gr.Gallery(value=[(p, q) for p, q in examples], label="examples (the unmodified model answers each right; at the default setting DASH changes "
                                           "some answers, which the two answer boxes show): click one",
                                     columns=4, height=180, allow_preview=False, interactive=False,
                                     elem_id="examples", visible=pictures)
                prompt = gr.Textbox(label="prompt", lines=2 if pictures else 8, elem_id="prompt")
                with gr.Row():
                    ratio = _named(gr.Slider, "ratio", minimum=0, maximum=0.95, value=start["ratio"], step=0.05,
                                   label="ratio ρ (share of tokens that halt)")
                    layer = _named(gr.Slider, "layer", minimum=0, maximum=L - 2, value=start["layer"], step=1,
                                   label="activation layer l_s")
                with gr.Row():
                    kv = _named(gr.Radio, "kv", choices=list(KV_MODES), value="drop", label="kv (halted tokens as keys above l_s)")
                    scope = _named(gr.Radio, "scope", choices=list(SCOPES), value="all", label="scope (which tokens may halt)")
                method = _named(gr.Radio, "method", choices=list(method_names() if pictures else method_names("llm")),
                                value=start["method"], elem_id="method",
                                  label="method (dash: smallest Δ halts, the paper; dash-avg / dash-snap / dash-sinks / dash-q / dash-q-heads: "
                                        "dashvl's variants; random / fastv / snapkv / streamingllm / downsample: "
                                        "baselines at the same budget; downsample shrinks the images instead)")
                with gr.Row(visible=viewer.vision_blocks is not None):
                    vision_ratio = _named(gr.Slider, "vision_ratio", minimum=0, maximum=0.95, value=0.0, step=0.05, elem_id="vision_ratio",
                                             label="vision ratio (share of patches halted inside the vision tower)")
                    vb = viewer.vision_blocks or 2
                    vision_layer = _named(gr.Number, "vision_layer", value=min(vb // 4, vb - 2), precision=0, minimum=0, maximum=vb - 2,
                                             elem_id="vision_layer", label=f"vision block v_s (0 to {vb - 2})")
                max_new = _named(gr.Slider, "max_new_tokens", minimum=1, maximum=MAX_NEW_TOKENS, value=16, step=1, label="max new tokens")
                run = gr.Button("Run", variant="primary", elem_id="run")
            with gr.Column(scale=2):
                status = gr.Textbox(label="messages", interactive=False, lines=2, elem_id="status")
                with gr.Row():
                    with gr.Column():
                        plain_answer = gr.Textbox(label="answer without DASH", interactive=False, elem_id="plain")
                        plain_md = gr.Markdown()
                    with gr.Column():
                        dash_answer = gr.Textbox(label="answer with DASH", interactive=False, elem_id="dash")
                        dash_md = gr.Markdown()
                view_layer = _named(gr.Slider, "view_layer", minimum=0, maximum=L - 1, value=L - 1, step=1, label="show layer",
                                     elem_id="view_layer", visible=pictures)  # it re-renders the image overlays
                overlay = gr.Gallery(label="halted image tokens at that layer", elem_id="overlays", visible=pictures,
                                     **_RESULTS)
        with gr.Row():
            heat = gr.Gallery(label="Δ at the activation layer", elem_id="heatmaps", visible=pictures, **_RESULTS)
            with gr.Column():
                plot = gr.Plot(label="tokens processed per layer", show_label=False, format="png", elem_id="plot")
                flops_md = gr.Markdown()
        tokens = gr.HighlightedText(label="prompt tokens (red: halted, green: active)", color_map=viz.LABEL_COLOURS,
                                    combine_adjacent=False, show_legend=True, elem_id="tokens")
        vision_gallery = gr.Gallery(label="patches halted inside the vision tower (vision ratio > 0)",
                                    elem_id="vision_overlays", visible=pictures, **_RESULTS)
        state = gr.State(None, time_to_live=3600)

        gallery.select(on_pick_example, None, [files, prompt], api_name=False)  # UI only
        run.click(on_run, [files, prompt, ratio, layer, kv, scope, max_new, view_layer, method, vision_ratio, vision_layer],
                  [status, plain_answer, plain_md, dash_answer, dash_md, overlay, heat, plot, flops_md, tokens,
                   vision_gallery, state],
                  api_name="run")
        # published: an API client re-renders its own session's last result at another layer
        view_layer.change(overlays, [state, view_layer], overlay, api_name="overlays")
    return demo.queue(default_concurrency_limit=1, max_size=32)


def _named(kind, setting: str, **kwargs):
    """A stock Gradio input whose API errors name the setting and its allowed values (Gradio's own say only
    "Value 99 is greater than maximum value 2", or nothing at all for a non-number). The check wraps the
    instance's ``preprocess``: a subclass would make Gradio write a ``.pyi`` copy of this module at import."""
    component = kind(**kwargs)
    stock = component.preprocess

    def preprocess(payload):
        if isinstance(component, gr.Radio):
            allowed = [c[1] if isinstance(c, tuple) else c for c in component.choices]
            if payload not in allowed:
                raise gr.Error(f"{setting} must be one of {', '.join(map(str, allowed))}; got {payload!r}")
            return stock(payload)
        try:
            value = float(payload)
        except (TypeError, ValueError):
            value = None
        lo, hi = component.minimum, component.maximum
        if value is None or value != value or not lo <= value <= hi:
            raise gr.Error(f"{setting} must be a number in [{lo:g}, {hi:g}]; got {payload!r}")
        return stock(value)

    component.preprocess = preprocess
    return component


# Result galleries: every picture whole and side by side (the default preview crops to fill its box).
_RESULTS = dict(columns=2, height="auto", object_fit="contain", preview=False, allow_preview=True, format="png")


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, share: bool = False, **kwargs):
    """``demo.launch`` with the viewer's limits; extra keyword arguments go to it. ``share`` is passed
    explicitly, so ``GRADIO_SHARE`` in the environment cannot open a public link by itself."""
    return demo.launch(server_name=host, server_port=port, max_file_size=MAX_UPLOAD, share=bool(share),
                       allowed_paths=[str(EXAMPLES_DIR)], **kwargs)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=dashvl.models.DEFAULT_MODEL,
                   help=f"bundled name ({', '.join(dashvl.models.BUNDLED)}), {' / '.join(dashvl.models.TINY_RANDOM)}, "
                        f"a pretrained text LM ({', '.join(dashvl.pretrained.PRETRAINED)}: prompts only), "
                        "a local model folder or a hub id (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: %(default)s)")
    p.add_argument("--port", type=int, default=7860, help="port (default: %(default)s)")
    p.add_argument("--share", action="store_true", help="open a public gradio.live link (off unless given)")
    args = p.parse_args(argv)
    if not 0 < args.port < 65536:
        p.error(f"--port must be in [1, 65535]; got {args.port}")
    logging.basicConfig(level=logging.INFO)
    try:
        model, processor = dashvl.load_model(args.model)
        demo = build_demo(model, processor, model_name=args.model)
    except (OSError, ValueError) as err:
        raise SystemExit(f"cannot serve --model {args.model!r}: {err}")
    launch(demo, args.host, args.port, share=args.share)


# ----------------------------------------------------------------- helpers


class _PrefillClock:
    """Times the first pass through the decoder layers inside its block: the LLM prefill of a generate().

    It ends with the language model's call, not the last layer's: with DASH's CUDA graph the layers above l_s
    are replayed, not called, so their hooks do not fire."""

    def __init__(self, first_layer, language_model):
        self.first, self.language_model = first_layer, language_model
        self.start, self.seconds, self.hooks = None, None, []

    def __enter__(self):
        self.hooks = [self.first.register_forward_pre_hook(self._begin),
                      self.language_model.register_forward_hook(self._end)]
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()
        self.hooks = []

    def _begin(self, module, args):
        if self.start is None:
            _sync(module)
            self.start = time.perf_counter()

    def _end(self, module, args, output):
        if self.seconds is None and self.start is not None:
            _sync(module)  # why: GPU kernels are asynchronous; time the work, not its queueing
            self.seconds = time.perf_counter() - self.start


def _sync(module) -> None:
    device = next(module.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _whole(value, name: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a whole number; got {value!r}") from None
    if not number.is_integer():
        raise InputError(f"{name} must be a whole number; got {value!r}")
    return int(number)


def _open_image(path, i: int) -> tuple[Image.Image, bool]:
    """Decode an upload as a person sees it (``dashvl.images.to_rgb``: EXIF orientation, 16-bit scaled, alpha on
    white) and whether it had transparent parts; InputError for what is not a readable image or is too big to decode. Messages name the file by its
    own name, never by the server's path to it."""
    path = str(path)
    name = f"image {i} ({Path(path).name})"

    def clean(err) -> str:
        return str(err).replace(path, Path(path).name).replace(str(Path(path).parent) + "/", "")

    try:
        with Image.open(path) as img:
            img.draft("RGB", (4096, 4096))  # JPEG only: decode big photos at 1/2 .. 1/8 scale
            if img.width * img.height > MAX_INPUT_PIXELS:  # known from the header, before decoding
                raise InputError(f"{name} is {img.width}x{img.height} px; the viewer decodes at most "
                                 f"{MAX_INPUT_PIXELS // 1_000_000} megapixels: downscale it first")
            img.load()
            transparent = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info
            return to_rgb(img), transparent
    except InputError:
        raise
    except Image.DecompressionBombError as err:  # PIL's own limit, from the header: the same advice
        raise InputError(f"{name} is too large to decode ({clean(err)}); downscale it first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise InputError(f"{name} is not a readable image (PNG, JPEG, WebP, ... expected): {clean(err)}") from None


def _size_field(size, key):
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def _fit_budget(size: tuple[int, int], image_processor) -> tuple[int, int] | None:
    """The size to downscale a picture to so the processor gets no more than it uses; None if it fits.

    Qwen2-VL-style processors (a ``merge_size``) cap the pixel count (``max_pixels``, stored as
    ``size["longest_edge"]``); CLIP-style ones resize the short side to ``size["shortest_edge"]``.
    """
    W, H = size
    ip_size = getattr(image_processor, "size", None) or {}
    if getattr(image_processor, "merge_size", None):
        budget = getattr(image_processor, "max_pixels", None) or _size_field(ip_size, "max_pixels") \
            or _size_field(ip_size, "longest_edge")
        scale = math.sqrt(budget / (W * H)) if budget else 1.0
    else:
        short = _size_field(ip_size, "shortest_edge")
        scale = short / min(W, H) if short else 1.0
    if scale >= 1:
        return None
    return max(1, math.floor(W * scale)), max(1, math.floor(H * scale))


def _grid_crop(image_processor) -> float | None:
    """Which part of a picture the token grid covers, for ``viz.grid_box``: None (all of it) or the centred
    square that a centre-cropping processor keeps, as a share of the short side."""
    if not getattr(image_processor, "do_center_crop", False):
        return None
    crop, size = getattr(image_processor, "crop_size", None), getattr(image_processor, "size", None)
    crop_side, short = _size_field(crop or {}, "height"), _size_field(size or {}, "shortest_edge")
    if not crop_side or not short:
        return 1.0
    return min(crop_side / short, 1.0)


if __name__ == "__main__":
    main()
