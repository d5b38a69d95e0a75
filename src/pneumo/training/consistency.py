"""A penalty on evidence outside the lungs: the same image seen twice, each copy with its own context swap (what
lies outside the atlas lung field taken from another image of the batch) and its own geometry and acquisition
transforms, should get the same pneumonia probability. The penalty is the Jensen-Shannon divergence of the two
Bernoulli distributions (in nats, at most ln 2), weighted by ``augment.context_consistency``.

Half the batch is seen twice (:data:`TWIN_SHARE`), so a step costs about 1.5 times one without the penalty.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from pneumo.probability import pneumonia_log_odds

TWIN_SHARE = 0.5


def twin_count(batch_size: int, weight: float) -> int:
    """How many images of a batch of ``batch_size`` are seen twice: none without the penalty."""
    return math.ceil(batch_size * TWIN_SHARE) if weight > 0 and batch_size >= 2 else 0


def with_twins(x: torch.Tensor, weight: float) -> tuple[torch.Tensor, int]:
    """The batch followed by a second copy of its first ``k`` images (augmented independently downstream), and
    ``k`` (:func:`twin_count`; 0 and the batch itself without the penalty)."""
    k = twin_count(len(x), weight)
    return (torch.cat([x, x[:k]]) if k else x), k


def pair_divergence(logits: torch.Tensor, twin_logits: torch.Tensor) -> torch.Tensor:
    """The mean :func:`bernoulli_js` of the pneumonia probabilities of each image and its twin (class logits)."""
    return bernoulli_js(pneumonia_log_odds(logits), pneumonia_log_odds(twin_logits)).mean()


def bernoulli_js(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """Per pair, the Jensen-Shannon divergence (nats) between Bernoulli(sigmoid(z1)) and Bernoulli(sigmoid(z2)),
    computed from the log-odds so that confident probabilities stay exact."""
    logp1, logq1 = F.logsigmoid(z1), F.logsigmoid(-z1)  # log p, log (1 - p)
    logp2, logq2 = F.logsigmoid(z2), F.logsigmoid(-z2)
    logm_p = torch.logaddexp(logp1, logp2) - math.log(2.0)
    logm_q = torch.logaddexp(logq1, logq2) - math.log(2.0)

    def kl_to_m(logp, logq):
        return logp.exp() * (logp - logm_p) + logq.exp() * (logq - logm_q)

    return (0.5 * (kl_to_m(logp1, logq1) + kl_to_m(logp2, logq2))).clamp_min(0.0)  # >= 0 despite rounding
