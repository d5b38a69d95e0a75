"""pneumo.explain.occlusion: occluded copies, the per-cell mean over windows, the drop in calibrated log-odds with its
floor, and the absolute heat scale; HeatMapper's occlusion map matches running each copy on its own."""

from __future__ import annotations

import numpy as np
import pytest

from pneumo.explain.occlusion import FLOOR, FULL_SCALE, OcclusionGrid, evidence, heat

SIZE = 64


def _linear_run(region: tuple[slice, slice], weight: float = 4.0, offset: float = 0.0):
    """A stand-in network: pneumonia logit = weight x the mean of the input over ``region`` + offset, normal 0.
    Its log-odds change only when a window overlaps the region."""

    def run(batch: np.ndarray) -> np.ndarray:
        z = weight * batch[:, 0][:, region[0], region[1]].mean(axis=(1, 2)) + offset
        return np.stack([np.zeros_like(z), z], axis=1)

    return run


def _image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(0.0, 0.3, (1, SIZE, SIZE)).astype(np.float32)
    x[0, 8:24, 40:56] += 2.0  # a bright "opacity" in cells (1-2, 5-6) of the 8 x 8 grid
    return x


def test_grid_geometry_and_occluded_copies():
    assert (OcclusionGrid().cells, OcclusionGrid().span, OcclusionGrid().positions) == (8, 1, 8)  # the default
    grid = OcclusionGrid(span=2)
    assert (grid.cells, grid.span, grid.positions) == (8, 2, 7)
    np.testing.assert_array_equal(grid.edges(SIZE), np.arange(0, SIZE + 1, 8))
    x = _image()
    batch = grid.occluded(x)
    assert batch.shape == (50, 1, SIZE, SIZE) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[0], x)  # the image itself first
    k = 1 + 2 * 7 + 3  # window row 2, column 3: pixels 16-31 down, 24-39 across
    changed = batch[k, 0] != x[0]
    assert changed[16:32, 24:40].all() and changed.sum() == 16 * 16
    assert np.all(batch[k, 0, 16:32, 24:40] == np.float32(x.mean()))
    with pytest.raises(ValueError):
        OcclusionGrid(cells=4, span=5)


def test_a_cell_is_the_mean_of_the_windows_covering_it():
    grid = OcclusionGrid(span=2)
    drops = np.zeros((7, 7))
    drops[0, 0] = 1.0  # only the top-left window matters
    cells = grid.cell_means(drops)
    assert cells[0, 0] == 1.0  # covered by that window alone
    assert cells[1, 1] == 0.25  # covered by four windows, one of them that one
    assert cells[0, 1] == 0.5 and cells[2, 2] == 0.0


def test_evidence_lies_where_the_network_reads_and_nowhere_else():
    region = (slice(8, 24), slice(40, 56))
    cells = evidence(_linear_run(region), _image(), floor=None)
    assert cells.shape == (8, 8) and cells.dtype == np.float32
    assert np.unravel_index(np.argmax(cells), cells.shape) in {(1, 5), (1, 6), (2, 5), (2, 6)}
    # cells whose every covering window misses the region read exactly 0: nothing is spread by a normalisation
    far = np.ones((8, 8), bool)
    far[0:4, 3:8] = False
    assert np.all(cells[far] == 0.0)
    assert cells[1:3, 5:7].min() > 0


def test_evidence_is_in_calibrated_log_odds():
    """The same network at temperature 2 gives half the evidence: the scale is that of the reported odds, so a
    model file's calibration does not change what a colour means."""
    region = (slice(8, 24), slice(40, 56))
    raw = evidence(_linear_run(region), _image(), temperature=1.0, floor=None)
    half = evidence(_linear_run(region), _image(), temperature=2.0, bias=0.7, floor=None)
    np.testing.assert_allclose(half, raw / 2, rtol=1e-5, atol=1e-6)
    # golden: on a 4 x 4 grid of one-cell windows, the window on the region drops z by weight x (its mean - fill)
    x, cell = _image(), (slice(16, 32), slice(32, 48))
    drops = evidence(_linear_run(cell), x, floor=None, grid=OcclusionGrid(4, 1))
    assert drops[1, 2] == pytest.approx(4.0 * (x[0][cell].mean() - x.mean()), rel=1e-5)
    assert np.count_nonzero(drops) == 1


def test_a_confident_normal_shows_nothing_above_the_floor():
    region = (slice(8, 24), slice(40, 56))
    normal = _linear_run(region, offset=-12.0)  # P(pneumonia) ~ 1e-4, far below the floor
    assert np.all(evidence(normal, _image()) == 0.0)
    assert evidence(normal, _image(), floor=None).max() > 0  # without the floor its odds still move
    # an image at the floor's edge shows at most its distance to it
    z_floor = np.log(FLOOR / (1 - FLOOR))
    edge = _linear_run(region, offset=z_floor - 4.0 * _image()[0, 8:24, 40:56].mean() + 0.3)
    assert 0 < evidence(edge, _image()).max() <= 0.3 + 1e-5


def test_heat_is_absolute_not_scaled_to_each_map():
    cells = np.zeros((8, 8), np.float32)
    cells[3, 3] = 0.4 * FULL_SCALE
    assert heat(cells, (8, 8))[3, 3] == pytest.approx(0.4, abs=1e-6)  # at the grid's own size: the value itself
    weak, strong = heat(cells, (64, 64)), heat(cells * 2, (64, 64))
    np.testing.assert_allclose(strong, 2 * weak, atol=1e-6)  # twice the evidence, twice the heat
    assert 0.3 < weak.max() <= 0.4
    assert heat(cells * 10, (8, 8)).max() == 1.0  # clipped at the top of the scale
    assert heat(-cells, (30, 50)).max() == 0.0 and heat(-cells, (30, 50)).shape == (30, 50)  # NORMAL evidence: none


def test_mapper_batches_the_copies_as_single_runs_would(tiny_model):
    """HeatMapper's one batched run gives what running every occluded copy on its own through the predictor's
    session gives (ONNX Runtime batch and single runs agree to float32 rounding)."""
    from pneumo.explain.cam import HeatMapper
    from pneumo.inference import Predictor
    from pneumo.preprocess import to_input
    from pneumo.probability import pneumonia_log_odds

    predictor = Predictor.load(tiny_model)
    mapper = HeatMapper(predictor)
    assert mapper.method == "occlusion"
    rng = np.random.default_rng(3)
    image = np.clip(0.4 + 0.2 * rng.standard_normal((predictor.size, predictor.size)), 0, 1).astype(np.float32)
    got = mapper.evidence(image)
    x = to_input([image], predictor.meta.preprocessing)[0]
    copies = OcclusionGrid().occluded(x)
    m = predictor.meta
    z = np.array([pneumonia_log_odds(predictor.session.run(["logits"], {"image": c[None]})[0])[0] for c in copies])
    z = np.maximum(z / m.temperature + m.calibration_bias, np.log(FLOOR / (1 - FLOOR)))
    n = OcclusionGrid().positions
    expected = OcclusionGrid().cell_means((z[0] - z[1:]).reshape(n, n))
    np.testing.assert_allclose(got, expected, atol=1e-4)
    h = mapper.heatmap(image, (90, 70))
    assert h.shape == (90, 70) and h.dtype == np.float32 and h.min() >= 0 and h.max() <= 1
