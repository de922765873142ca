"""`minunet generate / video` with --dtype auto (the default), --deepcache N and --tome RATIO."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from minunet.cli import main
from minunet.pipelines.image import Pipeline
from minunet.loading.precision import resolve_dtype


def test_generate_with_deepcache_and_tome_is_the_api_run(tmp_path):
    out = tmp_path / "fast.png"
    argv = ["generate", "a red fox", "--model", "tiny-random", "--steps", "5", "--seed", "3", "--size", "64x48",
            "--dtype", "float32", "--deepcache", "2", "--deepcache-branch", "1", "--tome", "0.5", "--out", str(out)]
    assert main(argv) == 0
    image = Image.open(out)
    params = json.loads(image.text["minunet"])["settings"]
    assert (params["deepcache"], params["deepcache_branch"], params["tome"]) == (2, 1, 0.5)
    pipe = Pipeline.tiny_random()
    kw = dict(num_inference_steps=5, height=48, width=64, progress=False)
    pipe.enable_deepcache(2, 1)
    pipe.enable_tome(0.5)
    fast = pipe("a red fox", generator=torch.Generator().manual_seed(3), **kw).images[0]
    pipe.disable_deepcache()
    pipe.disable_tome()
    plain = pipe("a red fox", generator=torch.Generator().manual_seed(3), **kw).images[0]
    assert np.array_equal(np.asarray(image), np.asarray(fast))
    assert not np.array_equal(np.asarray(fast), np.asarray(plain))


def test_dtype_auto_is_the_default(tmp_path, monkeypatch):
    seen = []
    real_call = Pipeline.__call__

    def spy(self, prompt, **kw):
        seen.append(self.unet.dtype)
        return real_call(self, prompt, **kw)
    monkeypatch.setattr(Pipeline, "__call__", spy)
    out = tmp_path / "auto.png"
    assert main(["generate", "x", "--model", "tiny-random", "--steps", "2", "--size", "32x32", "--out", str(out)]) == 0
    assert seen == [resolve_dtype("auto")]
    assert json.loads(Image.open(out).text["minunet"])["settings"]["dtype"] == "auto"


@pytest.mark.parametrize("argv, message", [
    (["generate", "x", "--deepcache", "0"], "--deepcache: DeepCache: cache_interval must be an integer >= 1, got 0"),
    (["generate", "x", "--deepcache", "2", "--deepcache-branch", "-1"],
     "--deepcache-branch: DeepCache: cache_branch_id must be an integer >= 0, got -1"),
    (["generate", "x", "--model", "tiny-random", "--deepcache", "2", "--deepcache-branch", "6"],  # 2 levels, 0 .. 5
     "--deepcache-branch 6: DeepCache: cache_branch_id=6 is level 2, unit 0; this UNet has 2 levels of 2 layers: "
     "use 0 .. 5"),
    (["generate", "x", "--tome", "1.5"], "--tome: ToMe: ratio must be a number in [0, 1), got 1.5"),
    (["video", "x", "--deepcache", "-3"], "--deepcache: DeepCache: cache_interval must be an integer >= 1, got -3"),
])
def test_errors(argv, message, capsys, tmp_path):
    assert main(argv + ["--steps", "1", "--out", str(tmp_path / "x.png" if argv[0] == "generate" else "x.gif")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
