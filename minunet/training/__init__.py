"""Training the tiny Stable Diffusion that ships with minunet: the drawn data set (shapes), the recipe (tiny),
checkpoints (state) and data parallelism (distributed). `minunet train-tiny` runs it."""
