"""From logits to the probabilities Pneumo reports. numpy at import: shared by training, predict and serve.

Column 0 of the logits is NORMAL; the other columns are pneumonia (one for the binary task, bacterial and viral
for the subtype task). The pneumonia log-odds ``z = logsumexp(logits[1:]) - logits[0]`` is calibrated as
``sigmoid(z / T + b)`` with ``T`` and ``b`` fitted on validation (``b = 0`` is plain temperature scaling).
"""

from __future__ import annotations

import sys

import numpy as np


def softmax(logits: np.ndarray, T: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / T`` (N x C), computed stably."""
    z = np.asarray(logits, dtype=np.float64) / T
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _namespace(x):
    """numpy, or torch for a torch tensor (training's monitor and Grad-CAM's target need autograd, not a copy).
    torch is only looked up, never imported: the inference path passes numpy arrays."""
    return sys.modules["torch"] if type(x).__module__.startswith("torch") else np


def pneumonia_log_odds(logits):
    """``log P(pneumonia) / P(normal)`` under the uncalibrated softmax: ``logsumexp(logits[1:]) - logits[0]`` over
    the last axis, for numpy arrays (as float64) and torch tensors alike; the one definition of P(pneumonia)."""
    xp = _namespace(logits)
    lg = np.asarray(logits, dtype=np.float64) if xp is np else logits
    rest = lg[..., 1:]
    m = xp.amax(rest, axis=-1, keepdims=True)
    return m[..., 0] + xp.log(xp.sum(xp.exp(rest - m), axis=-1)) - lg[..., 0]


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


def calibrated_probability(logits: np.ndarray, temperature: float = 1.0, bias: float = 0.0) -> np.ndarray:
    """Calibrated probability of pneumonia for N x C logits."""
    return sigmoid(pneumonia_log_odds(logits) / temperature + bias)


def subtype_probabilities(
    logits: np.ndarray, temperature: float = 1.0, bias: float = 0.0, subtype_logits: np.ndarray | None = None
) -> np.ndarray:
    """N x 3 (normal, bacterial, viral): the calibrated pneumonia probability shared out in the model's own
    bacterial : viral ratio, so the three always sum to 1 and ``p_normal == 1 - probability``.

    The ratio comes from ``subtype_logits`` (a separate subtype head) when given, else from the subtype logits
    themselves (a model trained on the three classes)."""
    p = calibrated_probability(logits, temperature, bias)
    if subtype_logits is None:
        split = softmax(np.asarray(logits)[:, 1:], temperature)
    else:
        split = softmax(np.asarray(subtype_logits)[:, 1:])
    return np.column_stack([1.0 - p, p[:, None] * split])
