"""examples/train_lora.py, briefly: a few LoRA steps on the tiny pipeline lower the held-out loss, and the saved
kohya file loads back to the trained model."""
import importlib.util
from pathlib import Path

import safetensors.torch as st

EXAMPLE = Path(__file__).parent.parent / "examples" / "train_lora.py"


def test_train_lora_example(tmp_path):
    spec = importlib.util.spec_from_file_location("train_lora", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lines = []
    out = tmp_path / "tiny-lora.safetensors"
    before, after, reloaded = module.train(steps=6, out=out, log=lines.append)
    assert after < 0.9 * before, lines  # measured 1.17 -> 0.41 in 30 steps
    assert abs(reloaded - after) <= 1e-4 * after  # (the example itself also checks this)
    keys = st.load_file(out)
    assert keys and all(k.startswith("lora_unet_") and k.endswith((".lora_down.weight", ".lora_up.weight", ".alpha"))
                        for k in keys)
    assert any("_resnets_0_conv1." in k for k in keys) and any("_attn2_to_k." in k for k in keys)
