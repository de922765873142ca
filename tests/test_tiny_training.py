"""The tiny model's recipe: the drawn data set is what its captions say (judged by the tests' own analyser),
resuming gives the parameters of a run that never stopped, 2 gloo ranks give one process's parameters (float32,
1e-5), gradient checkpointing works under DDP, and a short run lowers the loss."""
import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shapes_judge import judge
from minunet.loading.io import load_safetensors
from minunet.training import shapes, tiny

ROOT = Path(__file__).resolve().parents[1]


def test_drawn_pictures_are_what_the_judge_sees():
    """At 64 px the judge reads every drawn picture right."""
    images, _ = shapes.draw_batch(range(300), seed=3, size=64)
    for i, image in enumerate(images):
        p = shapes.draw_params(i, 3)
        v = judge(image * 0.5 + 0.5)
        assert (v["colour"], v["shape"], v["background"]) == (p["colour"], p["shape"], p["background"]), (i, p, v)


def test_at_32_px_the_judge_reads_colours_always_and_shapes_nearly_always():
    """At the tiny model's 32 px, with the shape read from the coverage (the anti-aliased edges of the smallest
    triangles, 8 px, counted by how much of each pixel they cover): measured 99.7% of the shapes right on 1000 drawn
    pictures (triangles 99.1%), colours and backgrounds 100%. The thresholded pixels' box read 92.4% (triangles
    78%)."""
    images, _ = shapes.draw_batch(range(1000), seed=3, size=32)
    drawn = [shapes.draw_params(i, 3) for i in range(1000)]
    verdicts = [judge(im * 0.5 + 0.5) for im in images]
    assert all(v["colour"] == p["colour"] and v["background"] == p["background"] for v, p in zip(verdicts, drawn))
    assert sum(v["shape"] == p["shape"] for v, p in zip(verdicts, drawn)) / 1000 >= 0.99
    triangles = [v["shape"] == "triangle" for v, p in zip(verdicts, drawn) if p["shape"] == "triangle"]
    assert sum(triangles) / len(triangles) >= 0.98


def test_captions_name_the_colours_and_the_shape():
    for i in range(300):
        p = shapes.draw_params(i, 5)
        words = p["caption"].replace(",", "").split()
        assert p["shape"] in words and p["colour"] in words and p["background"] in words, p
        assert words.index(p["colour"]) < words.index(p["shape"]), p  # the colour word goes with the shape
        assert p["colour"] != p["background"]


def test_the_plain_form_is_drawn_word_for_word():
    drawn = [shapes.draw_params(i, 0) for i in range(400)]
    plain = [p for p in drawn if p["caption"] == f"a {p['colour']} {p['shape']} on a {p['background']} background"]
    assert 0.15 < len(plain) / len(drawn) < 0.5


def test_same_seed_same_samples_other_seed_other_samples():
    a, ca = shapes.draw_batch(range(8), seed=1)
    b, cb = shapes.draw_batch(range(8), seed=1)
    c, _ = shapes.draw_batch(range(8), seed=2)
    assert torch.equal(a, b) and ca == cb and not torch.equal(a, c)


# ---- the recipe at test size: the real structures, narrow ----------------------------------------------------
# Adam's eps 1e-4 instead of 1e-8: with 1e-8 Adam turns float32 round-off (~1e-7) in gradient elements that are
# zero in exact arithmetic (conv biases right before a one-channel-per-group GroupNorm) into steps of +-lr, so any
# two runs that sum in another order (2 ranks, or 1 thread and 2) end ~lr apart there (measured: 1e-3 after 6
# steps, while the gradients agree within 4e-7). With 1e-4 the same round-off moves a parameter < 1e-6 per step.
STAGE = dict(steps=6, batch=4, lr=1e-3, warmup=2, sample_every=10 ** 6, checkpoint_every=10 ** 6, adam_eps=1e-4)
SMALL = dataclasses.replace(
    tiny.TINY,
    vae=dataclasses.replace(tiny.TINY.vae, block_out_channels=(32, 32, 32, 32)),
    unet=dataclasses.replace(tiny.TINY.unet, block_out_channels=(32, 64)),
    text_layers=1, cache_size=64,
    stages={name: tiny.Stage(**STAGE) for name in tiny.STAGES})


def stage_params(out, name):
    state = load_safetensors(Path(out) / f"{name}-state.safetensors")
    return {k: v for k, v in state.items() if k.startswith(("model.", "ema."))}


def run_stages(out, gradient_checkpointing=False, **kw):
    vae = tiny.train_vae(SMALL, out, progress=False, mixed_precision="no", **kw)
    tiny.train_decoder(SMALL, out, vae=vae, progress=False, mixed_precision="no", **kw)
    tiny.train_unet(SMALL, out, vae=vae, progress=False, mixed_precision="no",
                    gradient_checkpointing=gradient_checkpointing, **kw)
    return tiny.train_refine(SMALL, out, vae=vae, progress=False, mixed_precision="no",
                             gradient_checkpointing=gradient_checkpointing, **kw)


def test_resuming_gives_the_parameters_of_a_run_that_never_stopped(tmp_path):
    run_stages(tmp_path / "straight")
    tiny.train_vae(SMALL, tmp_path / "stopped", progress=False, mixed_precision="no", stop_at=3)
    vae = tiny.train_vae(SMALL, tmp_path / "stopped", progress=False, mixed_precision="no")  # resumes at 3
    tiny.train_decoder(SMALL, tmp_path / "stopped", progress=False, mixed_precision="no", stop_at=4)
    tiny.train_decoder(SMALL, tmp_path / "stopped", progress=False, mixed_precision="no")
    tiny.train_unet(SMALL, tmp_path / "stopped", vae=vae, progress=False, mixed_precision="no", stop_at=2)
    tiny.train_unet(SMALL, tmp_path / "stopped", vae=vae, progress=False, mixed_precision="no")
    tiny.train_refine(SMALL, tmp_path / "stopped", vae=vae, progress=False, mixed_precision="no", stop_at=5)
    tiny.train_refine(SMALL, tmp_path / "stopped", vae=vae, progress=False, mixed_precision="no")
    for name in SMALL.stages:
        a, b = stage_params(tmp_path / "straight", name), stage_params(tmp_path / "stopped", name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}: {k} differs after resuming"


def test_resuming_another_run_is_refused(tmp_path):
    from minunet import CheckpointError

    tiny.train_vae(SMALL, tmp_path, progress=False, mixed_precision="no", stop_at=2)
    with pytest.raises(CheckpointError, match="seed=0.*seed=1"):
        tiny.train_vae(SMALL, tmp_path, progress=False, mixed_precision="no", seed=1)


# ---- two gloo ranks against one process: the helpers every recipe's test uses -----------------------------------
DDP_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from {module} import ddp_run
from minunet.training import distributed
world = distributed.start()
try:
    ddp_run(sys.argv[1], world, *sys.argv[2:])
finally:
    distributed.stop(world)
"""


def on_two_ranks(tmp_path, module, *args):
    """Runs `module.ddp_run(out, world, *args)` (a test module's run of its recipe) on 2 gloo ranks; -> out."""
    script, out = tmp_path / "ddp.py", tmp_path / "two"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent), module=module))
    torchrun(script, 2, out, *args)
    return out


def assert_same_and_trained(a, b, start, what="", moved_at_least=1e-3):
    """Parameters a (one process) and b (2 ranks) agree within 1e-5, and moved from `start` (the runs trained:
    equal because they agree, not because nothing changed)."""
    assert a.keys() == b.keys() and len(a) > 0
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst < 1e-5, f"{what}parameters differ by {worst:.2e}"
    assert max(float((a[k] - start[k]).abs().max()) for k in a if k in start) > moved_at_least


def ddp_run(out, world, checkpointing):
    run_stages(out, world=world, gradient_checkpointing=bool(int(checkpointing)))


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script, n, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(n), "--master_port", str(free_port()),
           str(script), *map(str, args)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


def test_two_gloo_ranks_give_one_process_parameters(tmp_path):
    """Global batch 4 over 2 ranks (2 each) = batch 4 in one process, float32, within 1e-5; the 2-rank run also
    checkpoints the UNet's blocks (gradient checkpointing under DDP)."""
    two = on_two_ranks(tmp_path, "test_tiny_training", 1)
    run_stages(tmp_path / "one")
    for name in SMALL.stages:
        a, b = stage_params(tmp_path / "one", name), stage_params(two, name)
        assert_same_and_trained(a, b, tiny_initial(name, tmp_path / "one"), f"{name}: ")


def tiny_initial(name, out):
    if name == "decoder":  # starts from the VAE stage's result
        return {f"model.vae.{k}": v for k, v in tiny.load_stage_vae(SMALL, out, "vae").state_dict().items()}
    if name == "vae":
        return {f"model.vae.{k}": v for k, v in tiny.build_vae(SMALL, 0).state_dict().items()}
    if name == "refine":  # starts from the unet stage's EMA UNet
        return {f"model.unet.{k}": v for k, v in tiny.unet_stage_result(SMALL, out, 0)[0].state_dict().items()}
    return {f"model.unet.{k}": v for k, v in tiny.build_unet(SMALL, 0).state_dict().items()}


def test_the_refine_stage_trains_the_unet_and_keeps_the_text_encoder(tmp_path):
    """The models built on the tiny model's text encoder (video, upscaler, inpainting) need it unchanged."""
    unet, text = run_stages(tmp_path)
    start_unet, start_text = tiny.unet_stage_result(SMALL, tmp_path, 0)
    for k, v in start_text.state_dict().items():
        assert torch.equal(text.state_dict()[k], v), k
    moved = max(float((unet.state_dict()[k] - v).abs().max()) for k, v in start_unet.state_dict().items())
    assert moved > 1e-3
    state = load_safetensors(tmp_path / "refine-state.safetensors")
    assert not any(k.startswith(("model.text.", "ema.text.")) for k in state)  # frozen: not trained, not saved


@torch.no_grad()
def held_out_loss(recipe, unet, text, vae, n=64):
    """The recipe's loss on fixed held-out samples, timesteps and noise (no caption dropout)."""
    x, captions = shapes.draw_batch(range(tiny.VALIDATION_START, tiny.VALIDATION_START + n), 0, recipe.image_size)
    x0 = vae.encode(x).mean * recipe.vae.scaling_factor
    g = torch.Generator().manual_seed(0)
    t = torch.linspace(0, 999, n).long()
    eps = torch.randn(x0.shape, generator=g)
    loss = tiny.DenoiserLoss(unet, text, tiny.sd15_schedule().alphas_cumprod(), recipe.min_snr)
    return float(loss(tiny.token_ids(tiny.tokenizer(), captions), x0, t, eps))


def test_a_short_run_of_the_real_recipe_lowers_the_loss(tmp_path):
    """The shipped recipe's UNet + text stage at its real widths, on the shipped VAE, 40 steps of batch 16 (well
    under a minute): the held-out loss falls to under 70% of the untrained models'."""
    from minunet import Pipeline

    vae = Pipeline.tiny().vae
    stage = tiny.Stage(steps=40, batch=16, lr=1e-3, warmup=5, sample_every=10 ** 6, checkpoint_every=10 ** 6)
    recipe = dataclasses.replace(tiny.TINY, cache_size=640, stages={**tiny.TINY.stages, "unet": stage})
    before = held_out_loss(recipe, tiny.build_unet(recipe, 0), tiny.build_text(recipe, 0), vae)
    unet, text = tiny.train_unet(recipe, tmp_path, vae=vae, progress=False)
    after = held_out_loss(recipe, unet, text, vae)
    assert after < 0.7 * before, (before, after)


def test_train_tiny_command_writes_log_samples_and_checkpoint(tmp_path, capsys):
    from minunet.cli import main

    out = tmp_path / "run"
    assert main(["train-tiny", "--out", str(out), "--stage", "vae", "--steps", "2", "--batch-size", "2",
                 "--no-progress"]) == 0
    assert (out / "vae-state.safetensors").is_file() and (out / "vae.safetensors").is_file()
    assert (out / "samples" / "vae-000002.png").is_file()
    assert (out / "loss.tsv").read_text().splitlines()[0] == "stage\tstep\tloss\tlr\tseconds"
    assert f"wrote {out / 'vae.safetensors'}" in capsys.readouterr().out


@pytest.mark.parametrize("argv,message", [
    (["--batch-size", "0"], "--batch-size 0: must be a positive integer"),
    (["--model", "huge"], "--model huge: no such recipe (known: tiny"),
    (["--stage", "upscale"], "--stage upscale: not a stage of --model tiny (known: vae, decoder, unet, refine, all)"),
    (["--stage", "unet"], "vae.safetensors: not found: the next stage needs the vae stage's output"),
    (["--stage", "decoder"], "vae.safetensors: not found: the next stage needs the vae stage's output"),
])
def test_train_tiny_usage_errors(tmp_path, capsys, argv, message):
    from minunet.cli import main

    code = main(["train-tiny", "--out", str(tmp_path / "run"), "--steps", "1", "--no-progress", *argv])
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert code == (1 if "not found" in message else 2)


def test_train_tiny_refuses_to_overwrite_checkpoints_without_resume(tmp_path, capsys):
    from minunet.cli import main

    (tmp_path / "vae-state.safetensors").write_bytes(b"")
    assert main(["train-tiny", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "holds checkpoints (vae-state.safetensors); add --resume" in capsys.readouterr().err
