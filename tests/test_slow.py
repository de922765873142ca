"""Full-size checks, opt-in (MINUNET_SLOW=1): the official SD 1.5 and SD 2.1 UNets at full width with random
weights against diffusers, and the same model's single file. Each needs about 8 GB of RAM and a minute of CPU."""
import os

import pytest
import torch

from helpers import assert_close, diffusers_unet, randomize_
from minunet import SD15, SD21, UNet, load_unet, original_state_dict

pytestmark = pytest.mark.skipif(os.environ.get("MINUNET_SLOW") != "1", reason="full-size: set MINUNET_SLOW=1")


@pytest.mark.parametrize("name, cfg", [("sd15", SD15), ("sd21", SD21)])
@torch.no_grad()
def test_full_size_unet_matches_diffusers(name, cfg, tmp_path):
    import safetensors.torch as st

    ours = randomize_(UNet(cfg).eval())
    theirs = diffusers_unet(ours)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 24, 40, generator=g)  # 192 x 320 px, sizes that halve to odd numbers
    t = torch.tensor([999.0, 17.0])
    ctx = torch.randn(2, 77, cfg.context_dim, generator=g)
    expected = theirs(x, t, ctx).sample
    del theirs
    assert_close(ours(x, t, ctx), expected, rel=1e-5)
    path = tmp_path / f"{name}.safetensors"
    st.save_file({k: v.contiguous() for k, v in original_state_dict(ours).items()}, path)
    del ours
    loaded = load_unet(path)
    assert loaded.config == cfg
    assert_close(loaded(x, t, ctx), expected, rel=1e-5)
