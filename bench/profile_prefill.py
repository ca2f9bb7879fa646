"""Where a short prefill's time goes, per decoder layer: host time to issue it and GPU time to run it.

Compares the unmodified model, DASH with the layers above l_s run one by one (cuda_graph=False) and DASH
replaying them as a CUDA graph (the default), on the LLM prefill of one prompt (issue 8). Per layer: host
ms (Python + launches, from the layer's pre-hook to its post-hook) and GPU ms (CUDA events at the same
points; a layer's GPU time can end after its host time when the GPU runs behind). With the graph, layers
above l_s are one row. Then torch.profiler totals per variant: host time in torch ops, GPU kernel time
and the number of kernel launches.

    python -m bench.profile_prefill --model qwen2-vl-7b --tokens 1088 --ratio 0.75 --layer 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import dashvl
from bench.common import build_model, visual_inputs


class LayerClock:
    """Pre/post hooks that time each given module on the host and, with CUDA events, on the GPU."""

    def __init__(self, blocks, cuda: bool):
        self.blocks, self.cuda = blocks, cuda
        self.samples = {name: [] for name, _ in blocks}
        self._open, self._hooks = {}, []
        for name, module in blocks:
            self._hooks.append(module.register_forward_pre_hook(lambda m, a, n=name: self._start(n)))
            self._hooks.append(module.register_forward_hook(lambda m, a, o, n=name: self._stop(n)))

    def _start(self, name):
        ev = torch.cuda.Event(enable_timing=True) if self.cuda else None
        if ev is not None:
            ev.record()
        self._open[name] = (time.perf_counter(), ev)

    def _stop(self, name):
        t0, ev0 = self._open.pop(name)
        host = (time.perf_counter() - t0) * 1000
        ev1 = None
        if ev0 is not None:
            ev1 = torch.cuda.Event(enable_timing=True)
            ev1.record()
        self.samples[name].append((host, ev0, ev1))

    def medians(self, skip: int):
        if self.cuda:
            torch.cuda.synchronize()
        rows = []
        for name, _ in self.blocks:
            got = self.samples[name][skip:]
            host = statistics.median(h for h, _, _ in got)
            gpu = statistics.median(a.elapsed_time(b) for _, a, b in got) if self.cuda else host
            rows.append(dict(block=name, host_ms=host, gpu_ms=gpu))
        return rows

    def remove(self):
        for h in self._hooks:
            h.remove()


def profile_totals(call, cuda: bool) -> dict:
    from torch.profiler import ProfilerActivity, profile
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        call()
        if cuda:
            torch.cuda.synchronize()
    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC",
                                                          "cudaGraphLaunch"))
    graphs = sum(e.count for e in events if e.key == "cudaGraphLaunch")
    return dict(host_ops_ms=sum(e.self_cpu_time_total for e in events) / 1000,
                gpu_kernels_ms=sum(getattr(e, "self_device_time_total", 0) for e in events) / 1000,
                launches=launches, graph_launches=graphs,
                top=prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="qwen2-vl-7b")
    p.add_argument("--device", default="cuda")
    p.add_argument("--tokens", type=int, default=1088)
    p.add_argument("--mode", default="llm", choices=["llm", "e2e"], help="text tokens only, or an image")
    p.add_argument("--ratio", type=float, default=0.75)
    p.add_argument("--layer", type=int, default=2)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp"))
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    torch.manual_seed(0)
    model = build_model(args.model, args.device, torch.bfloat16 if cuda else torch.float32,
                        vision=args.mode == "e2e")
    if args.mode == "llm":
        vocab = model.config.get_text_config().vocab_size
        inputs = dict(input_ids=torch.randint(0, min(vocab, 150000), (1, args.tokens), device=args.device))
    else:
        inputs = visual_inputs(model, args.tokens, args.device)
    from dashvl.adapters import adapter_for
    decoder = adapter_for(model).decoder_layers(model)
    call = lambda: model(**inputs, use_cache=True, logits_to_keep=1)  # noqa: E731
    report = dict(model=args.model, tokens=inputs["input_ids"].shape[1], ratio=args.ratio, layer=args.layer,
                  device=torch.cuda.get_device_name() if cuda else "cpu", torch=torch.__version__,
                  transformers=__import__("transformers").__version__, variants={})
    lines = [f"# {args.model}, {report['tokens']} tokens ({args.mode}), ratio {args.ratio}, layer {args.layer}, "
             f"{report['device']}", ""]
    for name, settings in [("unmodified", None), ("dash, layers one by one", dict(cuda_graph=False)),
                           ("dash, cuda graph", dict(cuda_graph=None))]:
        handle = dashvl.compress(model, method="dash", ratio=args.ratio, layer=args.layer, **settings) if settings else None
        with torch.no_grad():
            for _ in range(3):
                call()  # warm-up (and the graph's capture)
            blocks = [(f"layer {i}", layer) for i, layer in enumerate(decoder)]
            if handle is not None and handle._graphs is not None and cuda:
                runner = handle._short_layers[-1]
                blocks = blocks[:handle.layer + 1] + [(f"layers {handle.layer + 1}-{len(decoder) - 1} (graph)",
                                                       runner)]
            clock = LayerClock(blocks, cuda)
            walls = []
            for _ in range(args.reps):
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                call()
                if cuda:
                    torch.cuda.synchronize()
                walls.append((time.perf_counter() - t0) * 1000)
            rows = clock.medians(skip=0)
            clock.remove()
            totals = profile_totals(call, cuda)
        if handle is not None:
            handle.remove()
        wall = statistics.median(walls)
        report["variants"][name] = dict(wall_ms=wall, layers=rows, **{k: v for k, v in totals.items() if k != "top"})
        lines += [f"## {name}: {wall:.2f} ms wall (synchronised), host in torch ops {totals['host_ops_ms']:.1f} ms, "
                  f"GPU kernels {totals['gpu_kernels_ms']:.1f} ms, {totals['launches']} launches "
                  f"({totals['graph_launches']} graph launches)", "",
                  "| block | host ms | GPU ms |", "|---|---|---|"]
        lines += [f"| {r['block']} | {r['host_ms']:.3f} | {r['gpu_ms']:.3f} |" for r in rows]
        lines += ["", "```", totals["top"], "```", ""]
    text = "\n".join(lines)
    print(text, flush=True)
    stem = os.path.join(args.out, f"profile_{args.model}_{args.mode}_{report['tokens']}")
    with open(stem + ".md", "w") as f:
        f.write(text)
    with open(stem + ".json", "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
