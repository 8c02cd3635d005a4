"""Linear probes: read binary labels off one position of the residual stream, layer by layer.

Background:
    A probe is a logistic regression from a residual-stream vector to a label. If a small linear map
    recovers the label on held-out inputs, the model represents it (linearly) at that point; if the
    same probe does as well on an untrained model or on shuffled labels, the probe learned the task
    itself and says nothing about the model. So every probe here is reported beside those controls.

    All labels and all layers are fitted in one batched optimisation (weights ``[layer, d, label]``)
    with L-BFGS on the full training split: deterministic, a few seconds on a CPU, and no extra
    dependency. scikit-learn's LogisticRegression would fit the same model one label and one layer
    at a time (hundreds of fits per probe sweep).

Usage:
    feats = residual_at(model, tokens, position=-1)            # [layer+1, batch, d_model]
    result = fit_probes(feats, labels, seed=0)                  # labels: [batch, label] bool
    result.accuracy                                             # [layer+1] on the held-out split

References:
    Ivanitskiy, Spies et al. 2023 (probing a maze solver's ``<PATH_START>`` token for the maze's
    connections); Alain & Bengio 2016 (linear classifier probes); Hewitt & Liang 2019 (controls).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Bool, Float, Int

from tinylens.analysis.protocol import HookedModel
from tinylens.errors import ConfigError
from tinylens.hooks import check_hook_names, resid_post, resid_pre


def residual_names(model: HookedModel) -> list[str]:
    """``hook_resid_pre`` of every block, then the last block's ``hook_resid_post``."""
    n = int(model.cfg.n_layers)
    return [resid_pre(layer) for layer in range(n)] + [resid_post(n - 1)]


@torch.no_grad()
def residual_at(
    model: HookedModel,
    tokens: Int[torch.Tensor, "batch pos"],
    position: int,
    names: Sequence[str] | None = None,
    batch_size: int = 256,
) -> Float[torch.Tensor, "site batch d_model"]:
    """The residual stream at one position, at each hook in ``names`` (default: every layer)."""
    names = residual_names(model) if names is None else list(names)
    check_hook_names(model, names)
    wanted = set(names)
    parts = []
    for chunk in tokens.split(batch_size):
        _, cache = model.run_with_cache(chunk, names_filter=lambda n: n in wanted)
        parts.append(torch.stack([cache[n][:, position] for n in names]))
    return torch.cat(parts, dim=1).float()


@dataclass(frozen=True)
class ProbeResult:
    """Held-out scores of one probe per (site, label)."""

    accuracy: Float[torch.Tensor, " site"]
    """Fraction of held-out (example, label) pairs predicted right, per site."""
    f1: Float[torch.Tensor, " site"]
    """F1 of the positive class, pooled over labels, per site."""
    label_accuracy: Float[torch.Tensor, "site label"]
    """Held-out accuracy of each label's probe."""
    predictions: Bool[torch.Tensor, "site test label"]
    """Held-out predictions."""
    test_index: Int[torch.Tensor, " test"]
    """Which input rows form the held-out split."""
    majority: float
    """Accuracy of always predicting each label's training-split majority class."""

    @property
    def best_site(self) -> int:
        return int(self.accuracy.argmax())


def shuffled_labels(
    labels: Bool[torch.Tensor, "batch label"], seed: int
) -> Bool[torch.Tensor, "batch label"]:
    """The label rows permuted across inputs: same label statistics, no tie to the input."""
    order = torch.randperm(labels.shape[0], generator=torch.Generator().manual_seed(seed))
    return labels[order]


def fit_probes(
    features: Float[torch.Tensor, "site batch d"],
    labels: Bool[torch.Tensor, "rows label"],  # rows == batch, checked with a clear error
    *,
    test_share: float = 0.25,
    l2: float = 1e-3,
    max_iter: int = 200,
    seed: int = 0,
) -> ProbeResult:
    """Fit a logistic-regression probe for every (site, label) and score it on held-out rows.

    Args:
        features: activations per site (e.g. layer) and input.
        labels: the binary targets per input.
        test_share: fraction of rows held out for scoring (a seeded random split).
        l2: weight decay on the probe weights (features are standardised first, so it is unitless).
        max_iter: L-BFGS iterations.
        seed: seeds the split.
    """
    n_sites, n, d = features.shape
    if labels.ndim != 2 or labels.shape[0] != n:
        raise ConfigError(f"labels must be [batch={n}, label], got {list(labels.shape)}")
    n_test = round(n * test_share)
    if not 0 < n_test < n - 1:
        raise ConfigError(f"test_share {test_share} leaves no train or no test rows of {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    test, train = order[:n_test], order[n_test:]
    x = features.double()
    mean = x[:, train].mean(1, keepdim=True)
    std = x[:, train].std(1, keepdim=True).clamp_min(1e-6)  # constant features stay zero
    x = (x - mean) / std
    y = labels.double()

    weight = torch.zeros(n_sites, d, labels.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(n_sites, 1, labels.shape[1], dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS(
        [weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-9
    )

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        logits = x[:, train] @ weight + bias  # [site, train, label]
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y[train].expand_as(logits))
        loss = loss + l2 * weight.pow(2).sum() / (n_sites * labels.shape[1])
        loss.backward()
        return loss

    optimiser.step(closure)
    with torch.no_grad():
        predicted = (x[:, test] @ weight + bias) > 0  # [site, test, label]
    truth = labels[test].expand_as(predicted)
    correct = predicted == truth
    tp = (predicted & truth).sum((1, 2)).double()
    fp = (predicted & ~truth).sum((1, 2)).double()
    fn = (~predicted & truth).sum((1, 2)).double()
    f1 = 2 * tp / (2 * tp + fp + fn).clamp_min(1)
    positive_rate = labels[train].double().mean(0)
    majority_hit = torch.where(positive_rate >= 0.5, labels[test], ~labels[test]).double().mean()
    return ProbeResult(
        accuracy=correct.double().mean((1, 2)).float(),
        f1=f1.float(),
        label_accuracy=correct.double().mean(1).float(),
        predictions=predicted,
        test_index=test,
        majority=float(majority_hit),
    )
