"""Weight norms: the total squared norm falls sharply in the cleanup phase, as weight decay removes memorisation;
in language runs the norm grows for every depth (Murty et al. 2023), a foil to tree-structuredness.

`total_sq_weight_norm` and `per_matrix_norms` take a model or a state dict. For a model only its parameters count: the zero
attention/unembedding biases a bias-free model keeps as buffers are not weights. A state dict also
holds those buffers; being zero they add nothing, but a fixed sinusoidal `pos_embed.W_pos` or a tied
model's derived `unembed.W_U` would be counted, so pass the model for such runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from torch import Tensor, nn


def _named_weights(weights: nn.Module | Mapping[str, Tensor]) -> dict[str, Tensor]:
    if isinstance(weights, nn.Module):
        return {name: param.detach() for name, param in weights.named_parameters()}
    return {name: t.detach() for name, t in weights.items() if t.is_floating_point()}


def sq_norm(tensors: Iterable[Tensor]) -> float:
    """Sum of the squared entries of `tensors`, accumulated in float64 (0 for none)."""
    return sum(t.detach().double().pow(2).sum().item() for t in tensors)


def total_sq_weight_norm(weights: nn.Module | Mapping[str, Tensor]) -> float:
    """Sum over all parameters of sum(param^2), accumulated in float64."""
    return sq_norm(_named_weights(weights).values())


def per_matrix_norms(weights: nn.Module | Mapping[str, Tensor]) -> dict[str, float]:
    """Frobenius norm of each named parameter, to see which matrices shrink when."""
    return {name: t.double().norm().item() for name, t in _named_weights(weights).items()}


def weight_norms(model: nn.Module) -> dict[str, float]:
    """L2 norms of the trainable parameters: global, per block, per matrix and depth-normalised.

    Only `parameters()` count (as in the paper's `get_norm`): the zero bias buffers of a bias-free
    model and the fixed sinusoidal position table are not weights; tied embeddings count once.

    Keys: `weight_norm` (all parameters), `weight_norm_layer{l}` (everything under `blocks.{l}`),
    `weight_norm/{name}` (each parameter) and `weight_norm_depth_normalized`, the root mean square
    of the per-block norms, sqrt(sum_l |block_l|^2 / n_layers). Every block has the same shapes and
    initialisation, so at initialisation that number is the same for every depth, and afterwards it
    says how large a typical block has grown; the global norm instead grows like sqrt(n_layers) from
    stacking alone. Embeddings and unembedding are left out of it because their size does not
    change with depth.
    """
    params = _named_weights(model)
    n_layers = model.cfg.n_layers
    layers = [[p for name, p in params.items() if name.startswith(f"blocks.{l}.")] for l in range(n_layers)]
    out = {"weight_norm": sq_norm(params.values()) ** 0.5}
    out |= {f"weight_norm_layer{l}": sq_norm(ps) ** 0.5 for l, ps in enumerate(layers)}
    out["weight_norm_depth_normalized"] = sq_norm(p for ps in layers for p in ps) ** 0.5 / n_layers**0.5
    out |= {f"weight_norm/{name}": sq_norm([p]) ** 0.5 for name, p in params.items()}
    return out
