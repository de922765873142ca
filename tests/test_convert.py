"""`minunet convert`: pickles -> safetensors with torch.load(weights_only=True); hostile pickles refused unrun."""
import pytest
import safetensors.torch as st
import torch

from helpers import TINY, assert_close, randomize_, unet_inputs
from minunet import CheckpointError, UNet, load_unet, original_state_dict
from minunet.cli import main
from minunet.loading.convert import convert


@pytest.fixture(scope="module")
def model():
    return randomize_(UNet(TINY["sd15"])).eval()


def lightning_checkpoint(model, path):
    """A CompVis / Lightning-style .ckpt: nested state_dict, non-tensor entries, and tensors sharing memory
    (an EMA entry that is the same tensor as the UNet weight, and a view of another's storage)."""
    state = dict(original_state_dict(model))
    key = "model.diffusion_model.out.2.weight"
    state["model_ema.diffusion_modelout2weight"] = state[key]  # the same tensor under two names
    state["model_ema.slice"] = state[key][:1]                  # a view into it
    torch.save({"state_dict": state, "global_step": 123, "epoch": 4}, path)
    return state


def test_nested_shared_checkpoint_converts_and_loads_to_the_same_outputs(model, tmp_path):
    src, dst = tmp_path / "model.ckpt", tmp_path / "model.safetensors"
    state = lightning_checkpoint(model, src)
    info = convert(src, dst)
    assert info["tensors"] == len(state) and info["shared_copied"] == 2
    assert info["dropped"] == [] and dst.is_file()
    back = st.load_file(dst)  # the official library reads it too
    assert set(back) == set(state)
    loaded = load_unet(dst)
    x, t, ctx, kw = unet_inputs(TINY["sd15"])
    with torch.no_grad():
        assert_close(loaded(x, t, ctx), model(x, t, ctx), rel=0)
    # the copies no longer alias: an in-place change of one leaves the other
    key = "model.diffusion_model.out.2.weight"
    assert torch.equal(back[key], back["model_ema.diffusion_modelout2weight"])


def test_dtype_float16_and_cli(model, tmp_path, capsys):
    src, dst = tmp_path / "model.pt", tmp_path / "half.safetensors"
    lightning_checkpoint(model, src)
    assert main(["convert", str(src), str(dst), "--dtype", "float16"]) == 0
    assert "verified by reading it back" in capsys.readouterr().out
    back = st.load_file(dst)
    assert {v.dtype for v in back.values()} == {torch.float16}
    ref = original_state_dict(model)
    for k, v in ref.items():
        assert torch.equal(back[k], v.half())


def test_non_tensor_entries_are_dropped_and_listed(tmp_path):
    src, dst = tmp_path / "m.bin", tmp_path / "m.safetensors"
    torch.save({"a": torch.ones(3), "step": 5, "names": ["x"]}, src)
    info = convert(src, dst)
    assert info["dropped"] == ["names", "step"] and list(st.load_file(dst)) == ["a"]


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_malicious_pickle_is_refused_and_its_code_never_runs(tmp_path, capsys):
    marker = tmp_path / "PWNED"
    src, dst = tmp_path / "evil.ckpt", tmp_path / "evil.safetensors"
    torch.save({"state_dict": {"w": torch.ones(2), "x": Evil(marker)}}, src)
    with pytest.raises(CheckpointError, match=r"evil\.ckpt: refused: .*could run code"):
        convert(src, dst)
    assert main(["convert", str(src), str(dst)]) == 1
    assert "refused" in capsys.readouterr().err
    assert not marker.exists() and not dst.exists()
    assert not (tmp_path / "evil.safetensors.partial").exists()


@pytest.mark.parametrize("content, message", [(b"", "not a readable PyTorch checkpoint"),
                                              (b"garbage" * 10, "not a readable PyTorch checkpoint")])
def test_unreadable_inputs(tmp_path, content, message):
    src = tmp_path / "bad.pth"
    src.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        convert(src, tmp_path / "out.safetensors")


def test_arguments(tmp_path):
    src = tmp_path / "m.pt"
    torch.save({"a": torch.ones(1)}, src)
    with pytest.raises(ValueError, match="must end in .safetensors"):
        convert(src, tmp_path / "out.bin")
    with pytest.raises(CheckpointError, match="no such file"):
        convert(tmp_path / "none.pt", tmp_path / "o.safetensors")
    torch.save([torch.ones(1)], src)
    with pytest.raises(CheckpointError, match="expected a dict of tensors"):
        convert(src, tmp_path / "o.safetensors")


def test_loaders_point_to_convert(tmp_path):
    with pytest.raises(CheckpointError, match="minunet convert"):
        load_unet(tmp_path / "model.ckpt")
