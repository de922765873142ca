"""Training the tiny models that ship with minunet: the drawn data set (shapes), the recipes (tiny: the text-to-image
model; one module per other system), checkpoints (state) and data parallelism (distributed). `minunet train-tiny`
runs them.

Each recipe module has `RECIPE` (its parts and stages), `STAGES` (the stage names of `--stage`, in order) and
`train(recipe, out, *, stages, seed, steps, batch, mixed_precision, progress, gradient_checkpointing, world)`
-> the path of the file it wrote (None when the last stage did not run).
"""
import importlib

# --model of `minunet train-tiny` -> the module of its recipe
MODELS = {"tiny": "minunet.training.tiny",
          "tiny-inpainting": "minunet.training.tiny_inpainting",
          "tiny-upscaler": "minunet.training.tiny_upscaler",
          "tiny-video": "minunet.training.tiny_video"}


def recipe_module(name):
    """The recipe module of --model `name` (a KeyError for an unknown one: the CLI checks names first)."""
    return importlib.import_module(MODELS[name])
