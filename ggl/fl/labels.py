"""Label inference from the last linear layer's gradient.

Batch of one (iDLG, Zhao et al. 2020, arXiv 2001.02610): with cross-entropy and non-negative inputs to the last
linear layer, the weight-gradient row of the true class is the only one whose entries are all <= 0, so the label
is the row with the most negative sum.

Batch of B (count rule, after Wainakh et al. 2022 "User-Level Label Leakage from Gradients" and Geng et al. 2021):
the bias gradient of class c is ``mean_i p_ic - n_c / B``. Assuming an untrained model's softmax is close to
uniform (``p_ic ~ 1/K``), ``n_c ~ B (1/K - db_c)``. Counts are assigned greedily: B times, give one label to the
class with the largest remaining estimate and lower that estimate by one sample. Without a bias, the weight-row
sums are rescaled by the impact of one sample, estimated from the absent classes (whose rows sum to ``m/K``).
Assumptions: non-negative features into the last layer (ReLU/sigmoid), cross-entropy, an update proportional to
the gradient: a FedAvg update (``w_before - w_after``) is divided by ``local_steps * local_lr`` first, exact for
one full-batch step and first-order for more. Accuracy degrades for confident (trained) models, many local steps
and large B.
"""

from __future__ import annotations

import torch
from torch import nn

from ggl.checks import positive_int
from ggl.fl.client import SharedUpdate
from ggl.fl.protocol import UpdateProtocol


def last_linear_indices(model: nn.Module) -> tuple[int, int | None]:
    """Positions in ``model.parameters()`` of the last ``nn.Linear``'s weight and bias (None without bias)."""
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer; label inference needs one at the end")
    last = linears[-1]
    positions = {id(p): i for i, p in enumerate(model.parameters())}
    bias = positions[id(last.bias)] if last.bias is not None else None
    return positions[id(last.weight)], bias


def infer_labels(update: SharedUpdate, model: nn.Module) -> torch.Tensor:
    """Infer the B labels behind ``update`` from the last linear layer's gradient.

    Returns:
        LongTensor of length ``update.num_samples``, sorted ascending for B > 1 (the order of a batch is not
        recoverable from a summed gradient).
    """
    weight_index, bias_index = last_linear_indices(model)
    weight_grad = update.gradients[weight_index].detach().double()
    if weight_grad.ndim != 2:
        raise ValueError(f"the last linear layer's gradient must be 2-D, got shape {tuple(weight_grad.shape)}")
    positive_int("update.num_samples", update.num_samples)
    row_sums = weight_grad.sum(dim=1)
    if update.num_samples == 1:
        return row_sums.argmin().reshape(1).long().cpu()

    num_classes = row_sums.shape[0]
    batch = update.num_samples
    if bias_index is not None:
        scale = UpdateProtocol.from_metadata(update.metadata).gradient_scale()
        per_class = update.gradients[bias_index].detach().double() / scale
    else:
        positive = row_sums[row_sums > 0]
        impact = num_classes * (positive.median() if positive.numel() else row_sums.abs().max())
        per_class = row_sums / impact.clamp_min(1e-12)
    estimate = batch * (1.0 / num_classes - per_class)
    labels = []
    for _ in range(batch):
        chosen = int(estimate.argmax())
        labels.append(chosen)
        estimate[chosen] -= 1.0
    return torch.tensor(sorted(labels), dtype=torch.long)
