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
