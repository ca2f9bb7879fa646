"""The training loop: language-model loss on the answers plus auxiliary losses on the visual tokens."""
from __future__ import annotations

import math
import time

import torch

from .. import suite as synth
from .architectures import BUILDERS
from .data import TrainStream, collate_with, worker_init
from .fast_qwen import qwen_fast_forward, use_packed_vision_attention
from .labels import AUX_CLASSES, N_LETTERS
from .questions import parse_mix
from .smol import COMPOSED_NAMES, build_composed, text_bank, text_questions

__all__ = ["train"]

def _aux_ce(logits, target, fg_weight: float):
    """Cross-entropy over the visual tokens, the cells under an object or word weighted ``fg_weight`` times a
    background cell's: most cells are background, and an unweighted mean is mostly about them."""
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    w = 1.0 + (fg_weight - 1.0) * (target > 0).float()
    return (ce * w).sum() / w.sum()


def _masked_mean_ce(logits, target, mask):
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    return (ce * mask).sum() / mask.sum().clamp(min=1)


def train(name: str, args, log=print) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = True
    if name in COMPOSED_NAMES:  # SmolLM2 + a toy's vision tower, LoRA on the LM (synthvqa.train.smol)
        model, processor = build_composed(name, args.vision_init, rank=args.lora_rank, seed=args.seed,
                                          lora=args.lora_rank > 0)
    elif args.init:
        from transformers import AutoModelForImageTextToText, AutoProcessor
        model = AutoModelForImageTextToText.from_pretrained(args.init, dtype=torch.float32)
        processor = AutoProcessor.from_pretrained(args.init)
    else:
        model, processor = BUILDERS[name](tiny=args.tiny, seed=args.seed)
    model.config._attn_implementation = "sdpa"
    qwen = hasattr(model.model, "visual")
    fast = qwen and args.fast
    if fast:
        use_packed_vision_attention(model)
    model.to(device).train()
    n_params = sum(p.numel() for p in model.parameters())
    n_trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    round_ = parse_mix(args.mix)
    log(f"{name}: {n_params / 1e6:.2f} M parameters ({n_trained / 1e6:.2f} M trained), vocab "
        f"{len(processor.tokenizer)}, device {device}; mix per round "
        + ", ".join(f"{f} {round_.count(f)}" for f in synth.FAMILIES) + ("; packed vision attention" if fast else "")
        + (f"; hard No questions {args.hard_no}" if args.hard_no else "")
        + (f"; shape auxiliary weight {args.aux_shape}" if args.aux_shape != 1 else ""))
    max_steps = args.steps or 10 ** 7
    bank = None
    if name in COMPOSED_NAMES and args.text_every:  # the LM's own answers to text prompts, before it is trained
        bank = text_bank(model, processor, device, text_questions(args.text_questions))
        log(f"text bank: {len(bank)} of the LM's own answers, one training item in {args.text_every}")
    ds = TrainStream(processor, length=max_steps * args.batch, turns=args.turns, round_=round_, positions=fast,
                     hard_no=args.hard_no, text_items=bank, text_every=args.text_every)
    # Auxiliary losses (training only, not saved): a linear probe on the visual tokens the LLM receives predicts
    # the colour, shape and word under each token's cell, so that the vision tower learns from the first steps;
    # with --aux-word also the letter under each word cell, and the word from the mean of its cells' tokens.
    hidden = model.config.text_config.hidden_size
    n_out = sum(AUX_CLASSES) + N_LETTERS
    aux_head = torch.nn.Sequential(torch.nn.LayerNorm(hidden), torch.nn.Linear(hidden, n_out)).to(device)
    word_head = torch.nn.Sequential(torch.nn.LayerNorm(hidden), torch.nn.Linear(hidden, len(synth.WORDS))).to(device)
    feats = {}
    visual_out = model.model.visual.merger if qwen else model.model.multi_modal_projector
    hook = visual_out.register_forward_hook(lambda mod, inp, out: feats.__setitem__("v", out))
    merge = getattr(processor.image_processor, "merge_size", 2)
    loader = torch.utils.data.DataLoader(ds, batch_size=args.batch, num_workers=args.workers,
                                         collate_fn=collate_with(processor.tokenizer.pad_token_id, merge),
                                         worker_init_fn=worker_init, pin_memory=device == "cuda",
                                         prefetch_factor=6 if args.workers else None,
                                         persistent_workers=False)
    named = [(n, p) for n, p in (list(model.named_parameters()) + list(aux_head.named_parameters(prefix="aux"))
                                 + list(word_head.named_parameters(prefix="aux_word"))) if p.requires_grad]
    decay = [p for n, p in named if p.ndim >= 2 and "embed" not in n]
    no_decay = [p for n, p in named if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-8, fused=device == "cuda")
    budget = args.minutes * 60 if not args.steps else None
    # accuracy of the probes on the word cells (each batch is new data: measured before the step learns from it):
    # per-cell word, letter, word from the pooled word tokens (correct, total)
    stats = torch.zeros(10, device=device)  # + colour and shape on object cells
    t0 = time.time()
    step, ema, waited, t_wait = 0, None, 0.0, time.time()
    for batch in loader:
        waited += time.time() - t_wait
        frac = step / args.steps if args.steps else (time.time() - t0) / budget
        if frac >= 1:
            break
        warm = min(1.0, (step + 1) / args.warmup)
        lr = args.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * frac)))
        for g in opt.param_groups:
            g["lr"] = lr
        grid_cpu = batch["image_grid_thw"] if fast else None
        if fast:
            batch["max_seqlen"] = int(batch["max_seqlen"])
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        cells, cell_image = batch.pop("cell_labels"), batch.pop("cell_image")
        n_img = batch["input_ids"].shape[0]
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            lm_loss = (qwen_fast_forward(model, batch, grid_cpu) if fast else model(**batch)).loss
            v = feats.pop("v").reshape(-1, hidden)
            logits = aux_head(v).float()
            word_cell = cells[:, 2] > 0
            wf = word_cell.float()
            count = torch.zeros(n_img, device=device).index_add(0, cell_image, wf)
            pooled = torch.zeros(n_img, hidden, device=device, dtype=v.dtype).index_add(0, cell_image, v * wf[:, None].to(v.dtype))
            pooled_logits = word_head(pooled / count.clamp(min=1)[:, None].to(v.dtype)).float()
        parts = logits.split(AUX_CLASSES + (N_LETTERS,), dim=-1)
        aux_w = (1.0, args.aux_shape, 1.0)  # colour, shape, word
        aux = sum(aux_w[j] * _aux_ce(parts[j], cells[:, j], args.aux_fg) for j in range(len(AUX_CLASSES)))
        has_word = count > 0
        word_of = torch.zeros(n_img, dtype=torch.long, device=device).scatter_reduce(0, cell_image, cells[:, 2], "amax")
        word_target = (word_of - 1).clamp(min=0)
        letter_loss = _masked_mean_ce(parts[3], cells[:, 3], wf)
        pooled_loss = _masked_mean_ce(pooled_logits, word_target, has_word.float())
        loss = lm_loss + args.aux * aux
        if args.aux_word:
            loss = loss + args.aux_word * (letter_loss + pooled_loss)
        with torch.no_grad():
            lm = cells[:, 3] > 0
            stats += torch.stack([((parts[2].argmax(-1) == cells[:, 2]) & word_cell).sum(), word_cell.sum(),
                                  ((parts[3].argmax(-1) == cells[:, 3]) & lm).sum(), lm.sum(),
                                  ((pooled_logits.argmax(-1) == word_target) & has_word).sum(), has_word.sum(),
                                  *(x for j in (0, 1) for x in (((parts[j].argmax(-1) == cells[:, j])
                                                                 & (cells[:, j] > 0)).sum(), (cells[:, j] > 0).sum()))
                                  ]).float()
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in named], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step % 50 == 0 or step <= 3 or args.steps and (step % args.log_every == 0 or step == args.steps):
            v = lm_loss.item()
            ema = v if ema is None else 0.9 * ema + 0.1 * v
            c = stats.tolist()
            acc = " ".join(f"{k} {c[2 * i] / max(1, c[2 * i + 1]):.3f}/{int(c[2 * i + 1])}"
                           for i, k in enumerate(("word-cell", "letter", "word-pooled", "colour-cell", "shape-cell")))
            log(f"step {step} loss {v:.4f} ema {ema:.4f} aux {aux.item():.3f} letter {letter_loss.item():.3f} "
                f"pooled {pooled_loss.item():.3f} lr {lr:.2e} t {time.time() - t0:.0f}s (waiting for data {waited:.0f}s)"
                f" | probe acc since last log: {acc}")
            stats.zero_()
        t_wait = time.time()
    train_s = time.time() - t0
    hook.remove()
    model.config._attn_implementation = "sdpa"  # the packed vision attention is for training only
    peak = f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if device == "cuda" else ""
    log(f"trained {step} steps × {args.batch} in {train_s:.0f} s ({step / max(train_s, 1e-9):.2f} steps/s{peak})")
    return {"model": model, "processor": processor, "steps": step, "train_s": train_s, "n_params": n_params,
            "device": device, "round": round_}
