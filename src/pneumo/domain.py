"""Domain guard: is this image like the pediatric chest X-rays the model was validated on?

It reads the network's feature space (mid-level activation statistics, :class:`pneumo.training.models.PneumoNet`).
Features are standardised per dimension with the training statistics, then projected on their top
principal components; an image's distance combines the Mahalanobis distance inside that subspace (Hotelling's
T^2) with the squared residual outside it (Q statistic), each scaled to mean 1 on the training features so that
neither dominates. The cut-off is a quantile of the validation distances; the stored sorted validation distances
turn a distance into ``domain_score``: the fraction of validation X-rays that lie further out (1 = typical,
near 0 = unlike anything the model was validated on). numpy only: this runs on the inference path.
"""

from __future__ import annotations

import numpy as np

from pneumo.modelfile import DomainGuard

_EPS = 1e-6


def _standardize(features: np.ndarray, arrays: dict[str, np.ndarray]) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    if "domain_feature_mean" not in arrays:  # model files written before the guard standardised its features
        return f
    return (f - arrays["domain_feature_mean"]) / arrays["domain_feature_std"]


def _distance(features: np.ndarray, arrays: dict[str, np.ndarray]) -> np.ndarray:
    f = _standardize(features, arrays) - arrays["domain_mean"]
    z = f @ arrays["domain_components"].T
    t2 = (z**2 / arrays["domain_variances"]).sum(1) / arrays["domain_scale"][0]
    resid = f - z @ arrays["domain_components"]
    q = (resid**2).sum(1) / arrays["domain_scale"][1]
    return np.sqrt(0.5 * (t2 + q))


def fit_domain_guard(
    train_features: np.ndarray, val_features: np.ndarray, components: int = 32, quantile: float = 0.98
) -> tuple[DomainGuard, dict[str, np.ndarray]]:
    """Fit the guard on training features; set the cut-off at ``quantile`` of the validation distances."""
    raw = np.asarray(train_features, dtype=np.float64)
    # Standardised so that no channel dominates by scale alone (mean and std features differ by orders).
    scaling = {"domain_feature_mean": raw.mean(0), "domain_feature_std": raw.std(0) + 1e-6}
    x = _standardize(raw, scaling)
    mean = x.mean(0)
    xc = x - mean
    k = int(min(components, x.shape[0] - 1, x.shape[1]))
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    comps = vt[:k]
    var = s[:k] ** 2 / max(1, x.shape[0] - 1) + _EPS
    z = xc @ comps.T
    t2 = (z**2 / var).sum(1)
    q = ((xc - z @ comps) ** 2).sum(1)
    arrays = {
        **scaling,
        "domain_mean": mean,
        "domain_components": comps,
        "domain_variances": var,
        "domain_scale": np.array([max(t2.mean(), _EPS), max(q.mean(), _EPS)]),
    }
    val_d = np.sort(_distance(val_features, arrays))
    arrays["domain_val_distances"] = val_d
    cutoff = float(np.quantile(val_d, quantile))
    guard = DomainGuard(
        components=k, cutoff=cutoff, quantile=quantile, validation_flag_rate=float((val_d > cutoff).mean())
    )
    return guard, {k_: v.astype(np.float32) for k_, v in arrays.items()}


def domain_check(
    features: np.ndarray, guard: DomainGuard, arrays: dict[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """``(in_domain, domain_score)`` for a batch of pooled features."""
    d = _distance(features, arrays)
    val_d = arrays["domain_val_distances"]
    score = 1.0 - np.searchsorted(val_d, d, side="left") / len(val_d)
    return d <= guard.cutoff, score.astype(np.float64)
