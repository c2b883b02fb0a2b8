"""Weight norms: the total squared norm falls sharply in the cleanup phase, as weight decay removes memorisation.

Both functions take a model or a state dict. For a model only its parameters count: the zero
attention/unembedding biases a bias-free model keeps as buffers are not weights. A state dict also
holds those buffers; being zero they add nothing, but a fixed sinusoidal `pos_embed.W_pos` or a tied
model's derived `unembed.W_U` would be counted, so pass the model for such runs.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn


def _named_weights(weights: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(weights, nn.Module):
        return {name: param.detach() for name, param in weights.named_parameters()}
    return {name: t.detach() for name, t in weights.items() if t.is_floating_point()}


def total_sq_weight_norm(weights: nn.Module | Mapping[str, Tensor]) -> float:
    """Sum over all parameters of sum(param^2), accumulated in float64."""
    return sum(t.double().pow(2).sum().item() for t in _named_weights(weights).values())


def per_matrix_norms(weights: nn.Module | Mapping[str, Tensor]) -> dict[str, float]:
    """Frobenius norm of each named parameter, to see which matrices shrink when."""
    return {name: t.double().norm().item() for name, t in _named_weights(weights).items()}
