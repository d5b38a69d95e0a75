"""pneumo.explain.occlusion: occluded copies, the per-cell mean over windows, the drop in calibrated log-odds with its
floor, the absolute heat scale, multi-scale windows and the blurred filler; through a real ONNX graph, the map is
hottest where the graph reads and empty when nothing moves it, in one run per map; HeatMapper's occlusion map
matches running each copy on its own."""

from __future__ import annotations

import numpy as np
import pytest

from pneumo.explain.occlusion import (
    BLUR,
    FLOOR,
    FULL_SCALE,
    MEAN,
    NORMAL,
    OcclusionGrid,
    evidence,
    filler,
    heat,
    normal_reference,
    synthetic_reference,
)

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


def _onnx_run(region: tuple[slice, slice] | None, size: int = SIZE, weight: float = 4.0, offset: float = 0.0):
    """A real ONNX graph run through ONNX Runtime: pneumonia logit = weight x the mean of the input over ``region``
    (rows, columns) + offset, normal logit 0; with ``region=None`` the logits are constant (offset, whatever the
    image). Returns (run, calls): each call's batch size is recorded."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def const(name, values, dtype=TensorProto.INT64):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, dtype, [len(values)], values))

    r, c = region or (slice(0, size), slice(0, size))
    nodes = [
        const("starts", [r.start, c.start]),
        const("ends", [r.stop, c.stop]),
        const("axes", [2, 3]),
        const("w", [0.0 if region is None else weight], TensorProto.FLOAT),
        const("b", [offset], TensorProto.FLOAT),
        helper.make_node("Slice", ["image", "starts", "ends", "axes"], ["patch"]),
        helper.make_node("ReduceMean", ["patch"], ["m"], axes=[2, 3], keepdims=0),  # N x 1
        helper.make_node("Mul", ["m", "w"], ["mw"]),
        helper.make_node("Add", ["mw", "b"], ["pneu"]),
        helper.make_node("Sub", ["pneu", "pneu"], ["zero"]),
        helper.make_node("Concat", ["zero", "pneu"], ["logits"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "region",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [None, 1, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    calls: list[int] = []

    def run(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return session.run(["logits"], {"image": batch})[0]

    return run, calls


MULTI = [OcclusionGrid(8, 1), OcclusionGrid(8, 2)]


@pytest.mark.parametrize(("grid", "fill"), [(None, MEAN), (MULTI, MEAN), (None, BLUR), ([OcclusionGrid(16, 2)], MEAN)])
def test_an_onnx_graph_reading_one_region_is_hottest_there(grid, fill):
    """Through ONNX Runtime, for the default and for the alternatives (multi-scale, blurred filler, a finer grid):
    the hottest cell of the map lies on the one region the graph reads, and the map's mass is mostly there."""
    region = (slice(8, 24), slice(40, 56))  # cells (1-2, 5-6) of the 8 x 8 grid: the bright "opacity"
    run, _ = _onnx_run(region)
    cells = evidence(run, _image(), grid=grid, floor=None, fill=fill)
    k = cells.shape[0] // 8  # grid cells per eighth of the side
    on = np.zeros(cells.shape, bool)
    on[k : 3 * k, 5 * k : 7 * k] = True
    assert on[np.unravel_index(np.argmax(cells), cells.shape)]
    assert cells[on].sum() > 0.5 * np.maximum(cells, 0).sum()


def test_a_constant_graph_gives_an_empty_map_and_one_run_per_map():
    """Nothing moves a constant output: no evidence anywhere, an empty heat map, whatever the floor; and a map
    costs one network run of 1 + 64 copies (1 + 64 + 49 for the two window sizes): the cost bound of a map."""
    run, calls = _onnx_run(None, offset=3.0)  # P(pneumonia) 0.95: a confident image whose output nothing moves
    for floor in (FLOOR, None):
        cells = evidence(run, _image(), floor=floor)
        assert np.all(cells == 0.0) and heat(cells, (SIZE, SIZE)).max() == 0.0
    assert calls == [65, 65]
    evidence(run, _image(), grid=MULTI)
    assert calls[-1] == 1 + 64 + 49


def test_multiscale_evidence_is_the_mean_of_each_grid_on_the_finest():
    region = (slice(8, 24), slice(40, 56))
    x = _image()
    fine = evidence(_linear_run(region), x, grid=OcclusionGrid(16, 2), floor=None)
    coarse = evidence(_linear_run(region), x, grid=OcclusionGrid(8, 1), floor=None)
    both = evidence(_linear_run(region), x, grid=[OcclusionGrid(16, 2), OcclusionGrid(8, 1)], floor=None)
    assert both.shape == (16, 16)
    np.testing.assert_allclose(both, (fine + np.kron(coarse, np.ones((2, 2)))) / 2, atol=1e-6)
    with pytest.raises(ValueError, match="do not nest"):
        evidence(_linear_run(region), x, grid=[OcclusionGrid(8, 1), OcclusionGrid(6, 1)])


def test_blurred_filler_keeps_local_brightness_and_drops_less_than_flat_grey():
    x = _image()
    blur = filler(x, BLUR)
    assert blur.shape == x.shape and blur.dtype == np.float32
    assert blur[0, 8:24, 40:56].mean() > x.mean() + 0.5  # the bright region stays brighter than the image's mean
    assert blur.std() < x.std()  # texture gone
    np.testing.assert_array_equal(filler(x, MEAN), np.full_like(x, x.mean()))
    region = (slice(8, 24), slice(40, 56))
    flat = evidence(_linear_run(region), x, floor=None)
    soft = evidence(_linear_run(region), x, floor=None, fill=BLUR)
    assert 0 < soft.max() < flat.max()
    with pytest.raises(ValueError, match="unknown occlusion filler"):
        filler(x, "noise")


def test_normal_filler_replaces_each_window_by_the_reference_there():
    """With the ``"normal"`` filler a window is filled with what the reference shows there: on the linear stand-in
    the drop of the window on the region is weight x (image mean there - reference mean there), and a region where
    the image already looks like the reference gives no evidence."""
    x = _image()
    reference = np.random.default_rng(5).normal(0.0, 0.3, (SIZE, SIZE)).astype(np.float32)
    np.testing.assert_array_equal(filler(x, NORMAL, reference), reference[None])
    cell = (slice(16, 32), slice(32, 48))
    drops = evidence(_linear_run(cell), x, floor=None, grid=OcclusionGrid(4, 1), fill=NORMAL, reference=reference)
    assert drops[1, 2] == pytest.approx(4.0 * (x[0][cell].mean() - reference[cell].mean()), rel=1e-5)
    assert np.count_nonzero(drops) == 1
    same = evidence(_linear_run(cell), x, floor=None, grid=OcclusionGrid(4, 1), fill=NORMAL, reference=x[0])
    assert np.all(same == 0.0)  # an image equal to the reference: hiding any region changes nothing
    for bad in (None, reference[:-1]):
        with pytest.raises(ValueError, match="normal filler needs a reference of 64x64"):
            evidence(_linear_run(cell), x, fill=NORMAL, reference=bad)


def test_normal_reference_is_the_mean_normal_image_as_the_network_sees_it(monkeypatch):
    """The mean of the images through the network's input transform (histogram equalisation, mean / std), the
    same whether computed in one batch or several."""
    from pneumo.explain import occlusion
    from pneumo.modelfile import Preprocessing
    from pneumo.preprocess import to_input

    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, (7, 16, 16), dtype=np.uint8)
    pre = Preprocessing(image_size=16)
    want = to_input(list(images), pre)[:, 0].astype(np.float64).mean(0)
    monkeypatch.setattr(occlusion, "REFERENCE_IMAGES", 3)  # three batches: 3 + 3 + 1
    got = normal_reference(images, pre, samples=0)
    assert got.shape == (1, 16, 16) and got.dtype == np.float32
    np.testing.assert_allclose(got[0], want, atol=1e-6)
    some = normal_reference(images, pre, samples=3, seed=1)  # three of the images themselves, as the network sees them
    assert some.shape == (3, 16, 16)
    inputs = to_input(list(images), pre)[:, 0]
    assert all(any(np.allclose(s, i) for i in inputs) for s in some) and len({s.tobytes() for s in some}) == 3
    with pytest.raises(ValueError, match="no normal training image"):
        normal_reference(images[:0], pre)


def test_synthetic_films_are_drawn_from_the_films_principal_directions():
    """Films of a known two-direction model: the draws lie in the mean plus those directions, spread as the films do
    along them, and are none of the films."""
    from pneumo.modelfile import Preprocessing
    from pneumo.preprocess import to_input

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:16, 0:16] / 16.0
    base, u1, u2 = 120 + 20 * yy, 40 * np.sin(3 * xx), 30 * np.cos(4 * yy) * xx
    coeffs = rng.standard_normal((300, 2)) * [1.0, 0.5]
    images = np.rint(base + coeffs[:, :1, None] * u1 + coeffs[:, 1:, None] * u2).astype(np.uint8)
    pre = Preprocessing(image_size=16, normalization="none")  # linear: the directions survive the input transform
    x = to_input(list(images), pre)[:, 0].astype(np.float64).reshape(300, -1)
    mean = x.mean(0)

    films = synthetic_reference(images, pre, samples=4, components=2, seed=0)
    assert films.shape == (4, 16, 16) and films.dtype == np.float32
    np.testing.assert_array_equal(films, synthetic_reference(images, pre, samples=4, components=2, seed=0))
    assert not np.allclose(films, synthetic_reference(images, pre, samples=4, components=2, seed=1))
    basis = np.linalg.svd(x - mean, full_matrices=False)[2][:2]  # the films' own two directions
    dev = films.reshape(4, -1) - mean
    residual = dev - (dev @ basis.T) @ basis
    assert np.abs(residual).max() < 0.02 * np.abs(dev).max()  # in the span (rounding to uint8 adds a little)
    # none of the films: more than half a grey level (0.5 / 255 / std) from each, wherever it lies
    assert min(np.abs(f - xi).max() for f in films.reshape(4, -1) for xi in x) > 0.5 / 255 / pre.std
    many = synthetic_reference(images, pre, samples=4000, components=2, seed=0).reshape(4000, -1)
    np.testing.assert_allclose((many - mean).var(0).sum(), (x - mean).var(0).sum(), rtol=0.08)  # their spread
    with pytest.raises(ValueError, match="at least two"):
        synthetic_reference(images[:1], pre)


def test_several_references_give_the_mean_of_their_maps():
    x, cell = _image(), (slice(16, 32), slice(32, 48))
    refs = np.random.default_rng(6).normal(0.0, 0.3, (3, SIZE, SIZE)).astype(np.float32)
    each = [evidence(_linear_run(cell), x, floor=None, fill=NORMAL, reference=r) for r in refs]
    both = evidence(_linear_run(cell), x, floor=None, fill=NORMAL, reference=refs)
    np.testing.assert_allclose(both, np.mean(each, axis=0), atol=1e-6)
    assert np.abs(each[0] - each[1]).max() > 1e-3


def test_mapper_fills_with_the_model_files_reference(tiny_model, tmp_path):
    """A model file with an occlusion reference is mapped with the normal filler, one without it with mean grey;
    a reference that is not input size x input size floats is refused when the file loads."""
    from pneumo.errors import ModelFileError
    from pneumo.explain.cam import HeatMapper
    from pneumo.inference import Predictor
    from pneumo.modelfile import OCCLUSION_REFERENCE, load_model_file, save_model_file
    from pneumo.preprocess import to_input

    model = load_model_file(tiny_model)
    size = model.meta.preprocessing.image_size
    rng = np.random.default_rng(4)
    reference = rng.normal(0.0, 0.5, (1, size, size)).astype(np.float32)
    image = np.clip(0.4 + 0.2 * rng.standard_normal((size, size)), 0, 1).astype(np.float32)
    with_ref = model.model_copy(update={"arrays": {**model.arrays, OCCLUSION_REFERENCE: reference}})
    predictor = Predictor.load(save_model_file(tmp_path / "ref.pneumo", with_ref))
    session, m = predictor.session, predictor.meta
    x = to_input([image], m.preprocessing)[0]

    def run(b):
        return session.run(["logits"], {"image": b})[0]

    want = evidence(run, x, m.temperature, m.calibration_bias, fill=NORMAL, reference=reference)
    grey = evidence(run, x, m.temperature, m.calibration_bias, fill=MEAN)
    np.testing.assert_allclose(HeatMapper(predictor).evidence(image), want, atol=1e-6)
    assert np.abs(want - grey).max() > 1e-3, "the test needs the two fillers to differ"
    np.testing.assert_allclose(HeatMapper(Predictor.load(tiny_model)).evidence(image), grey, atol=1e-6)
    for bad in (reference[:, :, :-1], reference[0], reference.astype(np.int32), np.repeat(reference, 17, axis=0)):
        broken = model.model_copy(update={"arrays": {**model.arrays, OCCLUSION_REFERENCE: bad}})
        path = save_model_file(tmp_path / "bad.pneumo", broken)
        with pytest.raises(ModelFileError, match=f"occlusion_reference .*not K x {size}x{size} floats"):
            load_model_file(path)
