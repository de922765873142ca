"""Key maps from the original single-file layouts (CompVis / Stability) to minunet (= diffusers) names, as data."""
