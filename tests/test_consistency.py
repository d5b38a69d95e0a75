"""pneumo.training.consistency: the penalty on evidence outside the lungs (each image and its twin, context-swapped
and augmented independently, should get the same pneumonia probability)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from pydantic import ValidationError

from pneumo.config import AugmentConfig
from pneumo.training.consistency import bernoulli_js, pair_divergence, twin_count, with_twins


def _js_from_probabilities(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    m = (p + q) / 2

    def kl(a, b):
        return a * np.log(a / b) + (1 - a) * np.log((1 - a) / (1 - b))

    return 0.5 * kl(p, m) + 0.5 * kl(q, m)


def test_divergence_is_the_jensen_shannon_of_the_two_probabilities():
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(0, 3, 50), rng.normal(0, 3, 50)
    got = bernoulli_js(torch.tensor(z1), torch.tensor(z2)).numpy()
    p, q = 1 / (1 + np.exp(-z1)), 1 / (1 + np.exp(-z2))
    np.testing.assert_allclose(got, _js_from_probabilities(p, q), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got, bernoulli_js(torch.tensor(z2), torch.tensor(z1)).numpy(), rtol=1e-12)
    eps = torch.finfo(torch.float32).eps  # float32 rounding of the two KL terms, each of order one
    same = bernoulli_js(torch.tensor([1.7, -4.0, 9.0]), torch.tensor([1.7, -4.0, 9.0]))
    assert (same >= 0).all() and float(same.max()) <= 4 * eps


def test_divergence_stays_finite_and_bounded_for_certain_opposite_answers():
    z1 = torch.tensor([60.0, -60.0, 60.0], dtype=torch.float64, requires_grad=True)
    z2 = torch.tensor([-60.0, 60.0, 59.0], dtype=torch.float64)
    js = bernoulli_js(z1, z2)
    assert js[:2].detach().numpy() == pytest.approx([math.log(2)] * 2, abs=1e-12)
    assert 0 <= float(js[2]) < 1e-20
    js.sum().backward()
    assert torch.isfinite(z1.grad).all()


def test_twins_are_copies_of_the_first_half_and_none_without_the_penalty():
    x = torch.arange(6).view(6, 1, 1, 1)
    same, k = with_twins(x, 0.0)
    assert k == 0 and same is x
    doubled, k = with_twins(x, 2.0)
    assert k == twin_count(6, 2.0) == 3
    assert torch.equal(doubled, torch.cat([x, x[:3]]))
    assert twin_count(1, 2.0) == 0  # one image has no other image to swap its context with


def test_pair_divergence_reads_the_pneumonia_log_odds_of_class_logits():
    logits = torch.tensor([[0.0, 2.0], [1.0, -1.0]])  # pneumonia log-odds 2 and -2
    twins = torch.tensor([[0.0, 2.0], [-1.0, 1.0]])  # 2 and 2
    expected = bernoulli_js(torch.tensor([2.0, -2.0]), torch.tensor([2.0, 2.0])).mean()
    assert float(pair_divergence(logits, twins)) == pytest.approx(float(expected), rel=1e-6)


def test_the_penalty_needs_the_context_swap(tmp_path):
    with pytest.raises(ValidationError, match="context_swap_p"):
        AugmentConfig(context_consistency=1.0)
    AugmentConfig(context_consistency=1.0, context_swap_p=0.5, lung_atlas=tmp_path / "atlas.png")


def test_training_loss_adds_the_weighted_divergence_of_independently_augmented_twins(tmp_path):
    """loss = cross-entropy + weight * JS: linear in the weight with a positive slope, which is zero if the twins
    were augmented together with their originals (identical copies)."""
    from pneumo.training.train import PneumoModule
    from test_train import _cfg, make_dataset

    atlas = np.zeros((32, 32), np.uint8)
    atlas[6:26, 4:14] = atlas[6:26, 18:28] = 255  # two lung fields
    Image.fromarray(atlas).save(tmp_path / "atlas.png")
    data = make_dataset(tmp_path / "data", n=4, size=32)
    x = torch.randint(0, 256, (6, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 1, 2, 0])
    losses = []
    for weight in (1.0, 2.0, 3.0):
        augment = {"context_swap_p": 0.8, "lung_atlas": tmp_path / "atlas.png", "context_consistency": weight}
        cfg = _cfg(data, tmp_path / "run", tmp_path / "cache", subtype_head=True, augment=augment)
        torch.manual_seed(0)
        module = PneumoModule(cfg)
        torch.manual_seed(1)
        losses.append(float(module.training_step((x, y), 0)))
    slope = losses[1] - losses[0]
    assert 1e-4 < slope <= math.log(2)
    assert losses[2] - losses[1] == pytest.approx(slope, rel=1e-4)
