"""Figures per held-out acquisition block: each block's rate at the threshold and the worst block, named."""

from __future__ import annotations

import numpy as np
import pytest

from pneumo.evaluation.metrics import block_figures


def test_block_figures_per_block_and_worst() -> None:
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0])
    p = np.array([0.1, 0.2, 0.9, 0.1, 0.1, 0.5, 0.9, 0.4, 0.8, 0.95, 0.99])
    blocks = ["NORMAL IM 1-9"] * 3 + ["NORMAL IM 100-120"] * 3 + ["PNEUMONIA person_virus 5-9"] * 4 + [""]
    out = block_figures(y, p, blocks, threshold=0.5)
    per = out["per_block"]
    assert list(per) == ["NORMAL IM 1-9", "NORMAL IM 100-120", "PNEUMONIA person_virus 5-9"]  # numeric order
    assert per["NORMAL IM 1-9"]["specificity"] == pytest.approx(2 / 3)
    assert per["NORMAL IM 100-120"]["specificity"] == pytest.approx(2 / 3)  # 0.5 is at the threshold: positive
    assert per["PNEUMONIA person_virus 5-9"]["sensitivity"] == pytest.approx(3 / 4)
    assert np.isnan(per["PNEUMONIA person_virus 5-9"]["specificity"])
    assert sum(b["n"] for b in per.values()) == 10  # the row outside every block is left out
    assert out["worst_specificity"]["value"] == pytest.approx(2 / 3)
    assert out["worst_sensitivity"] == {"value": pytest.approx(0.75), "block": "PNEUMONIA person_virus 5-9", "n": 4}


def test_block_figures_refuses_misaligned_blocks() -> None:
    with pytest.raises(ValueError, match="block names"):
        block_figures([0, 1], [0.1, 0.9], ["a"], threshold=0.5)
