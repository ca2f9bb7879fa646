"""What `import dashvl` gives and what it leaves alone."""
import subprocess
import sys


def test_import_is_light_and_exposes_the_public_names():
    code = ("import sys, dashvl\n"
            "assert callable(dashvl.compress) and callable(dashvl.restore) and callable(dashvl.load_model)\n"
            "assert callable(dashvl.baselines.downsample) and callable(dashvl.flops.prefill_flops)\n"
            "heavy = [m for m in ('gradio', 'matplotlib', 'lmms_eval') if m in sys.modules]\n"
            "assert not heavy, heavy\n"
            "from torch.nn.modules import module as m\n"
            "assert not m._global_forward_pre_hooks and not m._global_forward_hooks  # no global patching\n"
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_no_module_edits_sys_path_and_the_library_imports_no_front_end():
    """Scripts import installed packages; the library (dashvl/) knows nothing of the synthetic world, the
    front ends, the benchmarks or the tests."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    sources = [p for folder in ("dashvl", "synthvqa", "longctx", "apps", "eval", "bench", "tests") for p in (root / folder).rglob("*.py")]
    assert len(sources) > 40
    edits = [str(p.relative_to(root)) for p in sources if re.search(r"sys\.path\.(insert|append)", p.read_text())
             and p.name != "test_package.py"]
    assert not edits, edits
    imports = re.compile(r"^\s*(?:from|import)\s+(synthvqa|longctx|apps|eval|bench|tests)\b", re.M)
    leaks = [str(p.relative_to(root)) for p in (root / "dashvl").rglob("*.py") if imports.search(p.read_text())]
    assert not leaks, leaks
