"""Gradient checkpointing: resnets and transformer blocks keep only their inputs in the forward pass and recompute
their insides in the backward pass (torch.utils.checkpoint, use_reentrant=False), trading about one more forward
for the activation memory. Only while autograd records (`torch.is_grad_enabled()`): sampling is unchanged.
Gradients are the same, up to float round-off of the recomputation (bit-identical on CPU in practice).
"""
from torch import nn


def set_gradient_checkpointing(model: nn.Module, enabled: bool):
    """Switch every block of `model` that supports it (those with a `gradient_checkpointing` attribute)."""
    if not isinstance(enabled, bool):
        raise TypeError(f"set_gradient_checkpointing: enabled must be True or False, got {enabled!r}")
    for module in model.modules():
        if hasattr(type(module), "gradient_checkpointing"):
            module.gradient_checkpointing = enabled
    return model


class GradientCheckpointingMixin:
    """enable_gradient_checkpointing() / disable_gradient_checkpointing(), diffusers' names."""

    def enable_gradient_checkpointing(self):
        return set_gradient_checkpointing(self, True)

    def disable_gradient_checkpointing(self):
        return set_gradient_checkpointing(self, False)

    @property
    def is_gradient_checkpointing(self):
        return any(getattr(m, "gradient_checkpointing", False) for m in self.modules())
