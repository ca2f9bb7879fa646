"""The halting engine: hooks on a model's decoder layers that gather, run and scatter the active tokens.

Glossary (one word per concept, in code and docstrings):

- **activation layer** ``l_s`` (``DashHandle.layer``, ``DashConfig.layer``; ``ls`` in local code): the decoder
  layer whose attention output U scores every prompt token. Layers ``0 .. l_s`` run on every token.
- **halted** tokens: the lowest-scored eligible tokens at ``l_s``; no query, no MLP above it.
  **active** tokens: the others (always including the last prompt token). **frozen** state: the hidden state
  a halted token keeps, the output of ``l_s`` (``frozen``, [B, T, d]).
- **halted region**: decoder layers ``l_s + 1 .. L - 1`` (``first_halted = l_s + 1``), run on the active
  tokens gathered into ``width`` slots per row (``A``); rows with fewer active tokens get *filler* slots,
  masked as keys (``valid`` is False there).
- **runner** (``region.HaltedRunner``): the module that takes layer ``l_s + 1``'s place in the decoder stack's
  layer list for one call (``short_layers``) and runs the halted region, calling each halted layer (so users'
  hooks on them fire). No decoder layer carries a hook of dashvl's.
- **decoder layer** (``decoder_layer``, a module of the decoder stack's ``layers``) vs **layer index**
  (``layer_index``) vs **cache layer** (``cache.layers[j]``, one decoder layer's keys and values) vs
  **vision block** (a block of the vision tower, ``dashvl.vision``; its halting block is ``v_s``).
- **kv mode** (``kv_mode``; the public setting is ``DashConfig.kv``): ``"drop"`` (halted tokens are not keys
  above l_s) or ``"keep"`` (they still are: ``FrozenKeys`` computes their **keys/values** from the frozen
  state). ``keys`` / ``values`` always mean tensors.
- **plan** (``CallPlan``): the state of one model call — a prefill, a later turn's prompt or a decode step.
- **cache layout** (``CacheLayout``): which sequence position each key slot of the halted region's (shorter)
  cache layers holds, per cache object. Decode steps only count their keys (``append``); the positions are
  materialised (``key_pos``) when a mask or a later turn needs them.
- **decode step**: a call with one new token per row (T = 1). It halts nothing and, against all-valid keys,
  does no tensor work of dashvl's (``tests/test_decode_cost.py`` counts its aten ops).
- **static cache** (``static_cache``): ``cache_implementation="static"``. kv="keep": a halted prompt's
  keys/values go into its layers at their sequence positions, so decode steps (and transformers' compiled
  decode step) are stock. kv="drop": the halted layers are *compact* (the active slots, then the decode steps'),
  and ``HoleMasks`` gives them their mask over those slots (the *holes*: a padded row's filler slots).
- **layer kinds** (``windows.RegionKinds``): halted layers that differ (a sliding window, a rotary embedding of
  their own: Mistral, Gemma 3). Each kind gets its own mask (the window by original position) and cos/sin;
  the halted sliding layers keep their whole cache (``windows.keep_whole``). None for every other family.
- **graph path** (``graphs``): on CUDA, the halted region replayed as one captured CUDA graph.
- **method** (``dashvl.methods``): the rule that scores tokens at ``l_s``; lower halts first.

Modules: ``handle`` (installs / removes the hooks, shows the trace), ``flow`` (the hooks: each step of a call),
``plan`` (one call's plan), ``region`` (gather, masks, scatter, cache layout, the runner), ``frozen_keys`` (kv="keep"), ``keep_attention``
(kv="keep" without a mask: chunked varlen calls),
``graphs`` (the CUDA-graph path), ``static_cache`` (StaticCache and the compiled decode step), ``windows`` (layers of several kinds), ``checks`` (refusals), ``record`` (the trace of a prefill), ``handles`` (which
model carries which handle).
Knows no model family: everything family-specific comes from ``dashvl.adapters``.
"""
from .handle import DashHandle

__all__ = ["DashHandle"]
