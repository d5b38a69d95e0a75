"""pneumo.explain.cam: occlusion maps are the default, for every graph and without torch; the old class activation map
(method "cam") is Grad-CAM computed without torch; the overlay fades in smoothly; model files without the map fall
back to PyTorch Grad-CAM for method "cam"."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from pneumo.explain import cam as cam_mod
from pneumo.explain.cam import (
    ALPHA_FLOOR,
    ALPHA_MAX,
    CAM,
    CAM_OUTPUT,
    METHODS,
    HeatMapper,
    heatmap_rgba,
    overlay_alpha,
    overlay_rgb,
)
from pneumo.imaging import resize_map
from pneumo.inference import Predictor
from pneumo.modelfile import (
    TASK_CLASSES,
    ModelFile,
    ModelFileError,
    ModelMeta,
    Preprocessing,
    load_model_file,
    save_model_file,
)
from pneumo.probability import pneumonia_log_odds
from pneumo.training.export import (
    TOLERANCE,
    ExportError,
    WithCam,
    build_model_file,
    export_onnx,
    export_wrapper,
    verify_onnx,
)
from pneumo.training.grad_cam import GradCam
from pneumo.training.models import cam_target_layer, create_model

SIZE = 64


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny networks: one thread is faster than two fighting over a shared CPU (restored for later modules)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _net(arch: str = "cnn-small", task: str = "binary", subtype_head: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    return create_model(arch, len(TASK_CLASSES[task]), subtype_head=subtype_head).eval()


def _meta(arch: str = "cnn-small", task: str = "binary", subtype_head: bool = False) -> ModelMeta:
    return ModelMeta(
        arch=arch, task=task, class_names=list(TASK_CLASSES[task]), preprocessing=Preprocessing(image_size=SIZE),
        arch_kwargs={"subtype_head": True} if subtype_head else {}, temperature=1.7, calibration_bias=0.4,
    )  # fmt: skip


def _images(n: int = 4, seed: int = 1) -> list[np.ndarray]:
    """Seeded X-ray-like images: a vertical gradient, a bright blob at a random place, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    out = []
    for _ in range(n):
        cy, cx = rng.uniform(0.2, 0.8, 2)
        blob = 0.4 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 0.02)
        out.append(np.clip(0.2 + 0.3 * yy + blob + 0.08 * rng.standard_normal((SIZE, SIZE)), 0, 1).astype(np.float32))
    return out


@pytest.fixture(scope="module", params=[("binary", False), ("subtype", False), ("binary", True)], ids=str)
def cam_model(request) -> ModelFile:
    task, head = request.param
    return build_model_file(_net(task=task, subtype_head=head), _meta(task=task, subtype_head=head), {})


def _grad_cam_bound(mapper: HeatMapper, image: np.ndarray, shape: tuple[int, int]) -> float:
    """How far the ONNX map may lie from Grad-CAM: the export check holds the graph's raw map to within
    e = TOLERANCE * max(1, max|raw|) of PyTorch's; ReLU does not grow an error, the bilinear resize (a convex
    combination) neither, and min-max scaling by the resized map's range R turns it into at most 2 e / R."""
    raw = mapper.raw_map(image)
    resized = resize_map(np.maximum(raw, 0), shape)
    spread = float(resized.max() - resized.min())
    assert spread > 0.05 * max(float(np.abs(raw).max()), 1e-6), "a near-flat map would make the bound meaningless"
    return 2 * TOLERANCE * max(1.0, float(np.abs(raw).max())) / spread


def test_graph_keeps_the_old_outputs_first_and_adds_the_map(cam_model):
    outs = [o.name for o in ort.InferenceSession(cam_model.onnx).get_outputs()]
    old = ["logits", "features"] + (["subtype_logits"] if cam_model.meta.arch_kwargs else [])
    assert outs == [*old, CAM_OUTPUT]  # positional readers of the old outputs read the same thing
    mapper = HeatMapper(Predictor(cam_model), CAM)
    assert mapper.method == "onnx-cam"
    assert mapper.raw_map(_images(1)[0]).shape == (SIZE // 16, SIZE // 16)  # cnn-small: 4 max-pools


def test_onnx_map_equals_pytorch_grad_cam(cam_model):
    """The map from the ONNX graph, in numpy, is pytorch-grad-cam's on the pneumonia log-odds (as explain
    always computed it), for a binary head, a three-class head and a binary head beside a subtype head."""
    mapper, grad_cam = HeatMapper(Predictor(cam_model), CAM), GradCam(cam_model)
    for image in _images():
        ref = grad_cam.heatmap(image)
        got = mapper.heatmap(image)
        assert got.shape == ref.shape == (SIZE, SIZE) and got.dtype == np.float32
        err = float(np.abs(got - ref).max())
        assert err <= _grad_cam_bound(mapper, image, (SIZE, SIZE)), f"max difference {err:.2e}"


def test_negative_evidence_is_cut_before_scaling():
    """Where the map is negative (evidence for NORMAL) it is cut at 0 before min-max scaling, as in Grad-CAM.
    A random head's map is positive everywhere here, so this head is set by hand: pneumonia log-odds = channel 0
    minus channel 1 of the last block, whose difference changes sign across the image."""
    net = _net()
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.weight[1, 0], net.head.weight[0, 1] = 1.0, 1.0
    model = build_model_file(net, _meta(), {})
    mapper, grad_cam = HeatMapper(Predictor(model), CAM), GradCam(model)
    signed = 0
    for image in _images(6, seed=7):
        raw = mapper.raw_map(image)
        signed += bool((raw < 0).any() and (raw > 0).any())
        err = float(np.abs(mapper.heatmap(image) - grad_cam.heatmap(image)).max())
        assert err <= _grad_cam_bound(mapper, image, (SIZE, SIZE)), f"max difference {err:.2e}"
    assert signed >= 3, "the check needs maps with both signs"


def test_tta_model_maps_the_unaltered_view():
    """A model that averages test-time views for its probability is explained on the image as it is (scale 1.0),
    the view Grad-CAM has always been given."""
    meta = _meta().model_copy(update={"preprocessing": Preprocessing(image_size=SIZE, content_scales=[0.8, 0.9, 1.0])})
    model = build_model_file(_net(), meta, {})
    mapper, image = HeatMapper(Predictor(model), CAM), _images(1, seed=3)[0]
    ref = GradCam(model).heatmap(image)
    assert np.abs(mapper.heatmap(image) - ref).max() <= _grad_cam_bound(mapper, image, (SIZE, SIZE))


def test_three_class_head_weighs_bacterial_and_viral_by_their_share():
    """For a three-class head the channel weights depend on the image (softmax of the two pneumonia logits): a
    map built with fixed weights would be wrong. Checked on the torch side, against autograd."""
    net = _net(task="subtype")
    layer = cam_target_layer(net, "cnn-small")
    x = torch.from_numpy(np.stack(_images(3))[:, None])
    with torch.no_grad():
        cam = WithCam(net, layer)(x)[-1]
    acts = []
    hook = layer.register_forward_hook(lambda m, a, out: acts.append(out))
    logits = net(x)
    hook.remove()
    (grad,) = torch.autograd.grad(pneumonia_log_odds(logits).sum(), acts[0])
    expected = (grad.sum(dim=(2, 3), keepdim=True) * acts[0]).sum(dim=1)  # Grad-CAM x number of cells
    torch.testing.assert_close(cam, expected.detach(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["cnn-deep", "resnet18", "densenet121", "efficientnet_lite0"])
def test_every_pooling_architecture_gets_the_map_and_it_is_grad_cam(arch):
    """The identity is checked, not assumed, for each registered architecture with a pooling head; Grad-CAM
    (pytorch-grad-cam) on the same layer gives the same map."""
    from pytorch_grad_cam import GradCAM

    net = _net(arch, subtype_head=True)
    wrapped = export_wrapper(net, arch)
    assert isinstance(wrapped, WithCam) and wrapped.output_names[-1] == CAM_OUTPUT
    x = torch.from_numpy(np.stack(_images(2))[:, None] * 4 - 2)
    with torch.no_grad():
        raw = wrapped(x)[-1].numpy()
    ref = GradCAM(model=net, target_layers=[cam_target_layer(net, arch)])(x, targets=[pneumonia_log_odds] * 2)
    for i in range(2):
        got = cam_mod.normalised_map(raw[i], (SIZE, SIZE))
        assert np.abs(got - ref[i]).max() < 1e-4  # float32 autograd against the closed form, both in torch


def test_no_map_where_the_identity_does_not_hold():
    """The dense baseline's Grad-CAM layer is a 32 x 32 thumbnail, not the head's pooled input: no cam output."""
    net = _net("dense")
    assert not isinstance(export_wrapper(net, "dense"), WithCam)
    graph = export_onnx(net, SIZE, arch="dense")
    assert CAM_OUTPUT not in {o.name for o in ort.InferenceSession(graph).get_outputs()}


def _shifted_cam(data: bytes, delta: float) -> bytes:
    """The same graph with ``delta`` added to its cam output (the other outputs untouched)."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load_from_string(data)
    for node in proto.graph.node:
        node.output[:] = ["cam_unshifted" if o == CAM_OUTPUT else o for o in node.output]
    proto.graph.initializer.append(numpy_helper.from_array(np.array(delta, dtype=np.float32), "cam_delta"))
    proto.graph.node.append(helper.make_node("Add", ["cam_unshifted", "cam_delta"], [CAM_OUTPUT]))
    return proto.SerializeToString()


def test_parity_check_covers_the_map():
    """A graph whose map is off by 1e-2 is refused, one off by 1e-4 accepted (the map is below 1 here, so the
    bound is TOLERANCE itself); the logits are the same in both."""
    net = _net()
    x = torch.randn(2, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    graph = export_onnx(net, SIZE, arch="cnn-small")
    with torch.no_grad():
        assert export_wrapper(net, "cnn-small", x)(x)[-1].abs().max() < 1
    verify_onnx(_shifted_cam(graph, 1e-4), net, x, arch="cnn-small")
    with pytest.raises(ExportError, match=r"ONNX cam differ from PyTorch by 1\.00e-02"):
        verify_onnx(_shifted_cam(graph, 1e-2), net, x, arch="cnn-small")


# -- the overlay ------------------------------------------------------------------------------------------------

SLOPE = 1.5 * ALPHA_MAX / (1 - ALPHA_FLOOR)  # the smoothstep's steepest slope, at the middle of the ramp


def test_overlay_alpha_is_a_smooth_ramp():
    # steps of 1e-3: float32 rounding (~1e-7) moves a finite-difference slope by ~1e-4 only
    heat = np.linspace(0, 1, 1001, dtype=np.float64)
    alpha = overlay_alpha(heat).astype(np.float64)
    step = heat[1] - heat[0]
    slope = np.diff(alpha) / step
    assert alpha[0] == 0 and alpha[-1] == pytest.approx(ALPHA_MAX)
    assert slope.min() >= -1e-3, "opacity must not fall as the heat rises"
    assert slope.max() <= SLOPE + 1e-3, f"opacity jumps: slope {slope.max():.2f} > {SLOPE:.2f}"
    # a continuous slope too, no kink where the ramp starts or ends (a clipped linear ramp or x**0.7 has one):
    # the smoothstep's second derivative is at most 6 (times ALPHA_MAX / (1 - ALPHA_FLOOR)**2)
    kink = np.abs(np.diff(slope)).max()
    assert kink <= 6 * ALPHA_MAX / (1 - ALPHA_FLOOR) ** 2 * step + 1e-3, f"the slope jumps by {kink:.3f}"


def test_overlay_of_a_smooth_map_has_no_edges():
    """On a real, bilinear heat map the overlay's opacity changes between neighbouring pixels by no more than
    the ramp's slope times the map's own change (plus PNG rounding): no iso-line is drawn as an edge."""
    mapper = HeatMapper(Predictor(build_model_file(_net(), _meta(), {})), CAM)
    heat = mapper.heatmap(_images(1, seed=5)[0], (300, 240))
    alpha = heatmap_rgba(heat)[..., 3].astype(np.float64) / 255
    for axis in (0, 1):
        d_alpha, d_heat = np.abs(np.diff(alpha, axis=axis)), np.abs(np.diff(heat.astype(np.float64), axis=axis))
        assert np.all(d_alpha <= SLOPE * d_heat + 1.01 / 255)
    assert alpha.max() > 0.5 * ALPHA_MAX and alpha.min() == 0  # the map shows, and the rest stays clear


def test_jet_is_matplotlibs():
    colormaps = pytest.importorskip("matplotlib").colormaps
    heat = np.linspace(0, 1, 2049)
    # matplotlib samples its map into a 256-entry table (value x reads entry floor(256 x), sampled at i / 255):
    # against continuous interpolation that is off by at most the steepest segment's slope times 1 / 255
    steepest = max(float(np.max(np.abs(np.diff(ys) / np.diff(xs)))) for xs, ys in cam_mod._JET)
    np.testing.assert_allclose(cam_mod.jet(heat), colormaps["jet"](heat)[:, :3], atol=steepest / 255 + 1e-6)


def test_overlay_rgb_burns_the_map_into_the_gray_image():
    gray = np.tile(np.linspace(0, 1, 50, dtype=np.float32), (40, 1))
    heat = np.zeros_like(gray)
    heat[10:30, 10:40] = 1.0
    rgb = overlay_rgb(gray, heat)
    assert rgb.shape == (40, 50, 3) and rgb.dtype == np.uint8
    cold = heat < ALPHA_FLOOR
    np.testing.assert_array_equal(rgb[cold], np.repeat(np.round(gray[cold] * 255)[:, None], 3, axis=1))
    hot = rgb[20, 20].astype(int)  # jet at 1 is dark red: red dominates where the map is hottest
    assert hot[0] > hot[1] and hot[0] > hot[2]
    with pytest.raises(ValueError, match="differ in shape"):
        overlay_rgb(gray, heat[:, :10])


# -- fallback and the torch-free path ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def old_model_file(tmp_path_factory):
    """A model file as earlier versions wrote it: a graph without the map, PyTorch weights beside it."""
    from pneumo.training.export import weights_bytes

    net = _net()
    mf = ModelFile(meta=_meta(), onnx=export_onnx(net, SIZE), weights=weights_bytes(net))
    return save_model_file(tmp_path_factory.mktemp("old") / "old.pneumo", mf)


def test_model_file_without_the_map_falls_back_to_grad_cam(old_model_file):
    predictor = Predictor.load(old_model_file)  # loads the graph only, as predict and serve do
    assert predictor.predict_arrays(_images(1), ["x"])[0].probability is not None  # the old graph still predicts
    mapper = HeatMapper(predictor, CAM, grad_cam=GradCam)
    assert mapper.method == "grad-cam"
    image = _images(1)[0]
    ref = GradCam(load_model_file(old_model_file)).heatmap(image)
    np.testing.assert_allclose(mapper.heatmap(image, (SIZE, SIZE)), ref, atol=1e-6)  # the same computation


def test_bare_graph_without_map_or_weights_is_refused_with_a_reason(old_model_file, tmp_path):
    from pneumo.training.export import export_model

    bare = export_model(old_model_file, tmp_path / "new.onnx")  # a re-export: now it has the map
    assert HeatMapper(Predictor.load(bare), CAM).method == "onnx-cam"
    legacy = tmp_path / "legacy.onnx"
    legacy.write_bytes(export_onnx(_net(), SIZE))
    with pytest.raises(ModelFileError, match="re-export it with `pneumo export`"):
        HeatMapper(
            Predictor(ModelFile(meta=_meta(), onnx=legacy.read_bytes(), path=legacy)), CAM, grad_cam=GradCam
        ).prepare()


def test_reexport_gives_an_old_model_file_the_map(old_model_file, tmp_path):
    """``pneumo export --output X.pneumo`` rebuilds the graph from the weights: same predictions, plus the map."""
    from pneumo.training.export import export_model

    new = export_model(old_model_file, tmp_path / "new.pneumo")
    old_p, new_p = Predictor.load(old_model_file), Predictor.load(new)
    images = _images()
    assert [p.probability for p in new_p.predict_arrays(images, list("abcd"))] == pytest.approx(
        [p.probability for p in old_p.predict_arrays(images, list("abcd"))], abs=1e-6
    )
    got = HeatMapper(new_p, CAM).heatmap(images[0])
    ref = HeatMapper(old_p, CAM, grad_cam=GradCam).heatmap(images[0])
    assert np.abs(got - ref).max() <= _grad_cam_bound(HeatMapper(new_p, CAM), images[0], (SIZE, SIZE))


_TORCH_FREE = textwrap.dedent(
    """
    import io, json, sys
    from pathlib import Path
    from fastapi.testclient import TestClient
    from pneumo.cli import main
    from pneumo.serve.app import create_app

    model, image, out = sys.argv[1:4]
    data = Path(image).read_bytes()
    body = TestClient(create_app(model)).post(
        "/api/v1/predict", files={"file": ("x.png", data, "image/png")}, data={"explain": "true"}
    ).json()
    code = main(["explain", image, "--model", model, "--output", out])
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in {"torch", "pytorch_grad_cam", "timm"})
    print(json.dumps({"heatmap": body["heatmap"] is not None, "error": body["explain_error"], "code": code,
                      "loaded": loaded}))
    """
)


def test_serve_and_explain_make_heat_maps_without_importing_torch(tmp_path):
    model = save_model_file(tmp_path / "cam.pneumo", build_model_file(_net(), _meta(), {}))
    image = tmp_path / "x.png"
    Image.fromarray((_images(1)[0] * 255).astype(np.uint8)).resize((120, 90)).save(image)
    run = subprocess.run(
        [sys.executable, "-c", _TORCH_FREE, str(model), str(image), str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result == {"heatmap": True, "error": None, "code": 0, "loaded": []}
    with Image.open(tmp_path / "out" / "x_occlusion.png") as im:
        assert im.format == "PNG" and im.width > 100


def test_server_falls_back_with_a_note_when_torch_is_missing(old_model_file, monkeypatch):
    """An old model file (no map in its graph) gets the default occlusion map without torch; asked for the class
    activation map, the analyser leaves it out and says what to do."""
    from fastapi.testclient import TestClient

    from pneumo.explain.analyser import ImageAnalyser
    from pneumo.serve.app import create_app

    monkeypatch.setitem(sys.modules, "pneumo.training.grad_cam", None)  # any import of it now raises ImportError
    buf = io.BytesIO()
    Image.fromarray((_images(1)[0] * 255).astype(np.uint8)).save(buf, "PNG")
    files = {"file": ("x.png", buf.getvalue(), "image/png")}
    body = TestClient(create_app(old_model_file)).post("/api/v1/predict", files=files, data={"explain": "true"}).json()
    assert body["heatmap"] is not None and body["explain_error"] is None and body["probability"] is not None
    analyser = ImageAnalyser(Predictor.load(old_model_file), method=CAM)
    result = analyser.analyse(buf.getvalue(), "x.png")
    assert result.heatmap is None and result.prediction.probability is not None
    assert "explain" in result.heatmap_error and "pneumo export" in result.heatmap_error


def test_occlusion_is_the_default_and_methods_are_named():
    predictor = Predictor(build_model_file(_net(), _meta(), {}))
    assert METHODS[0] == "occlusion" and HeatMapper(predictor).method == "occlusion"
    # The captions speak of odds: a drop of 1 in log-odds (the top of the scale) multiplies the odds by 1/e (-63 %),
    # the transparent floor's 0.15 by exp(-0.15) (-14 %).
    assert "lowers the odds of pneumonia by 63 % or more" in HeatMapper(predictor).scale
    assert "own maximum" in HeatMapper(predictor, CAM).scale
    assert HeatMapper(predictor, CAM).scale.startswith("class activation map, for comparison only")
    assert "by less than 14 %" in HeatMapper(predictor).empty and HeatMapper(predictor, CAM).empty is None
    with pytest.raises(ValueError, match="unknown heat-map method"):
        HeatMapper(predictor, "lime")


def test_without_a_grad_cam_an_old_graph_refuses_the_cam_map_and_says_what_to_do(old_model_file):
    """The inference side never imports training code: the PyTorch Grad-CAM comes only from the caller."""
    mapper = HeatMapper(Predictor.load(old_model_file), CAM)
    with pytest.raises(ModelFileError, match=r"explain --method cam.*pneumo export"):
        mapper.heatmap(_images(1)[0])
    assert HeatMapper(Predictor.load(old_model_file)).heatmap(_images(1)[0]).shape == (SIZE, SIZE)  # occlusion works
