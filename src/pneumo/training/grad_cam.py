"""PyTorch Grad-CAM: the heat-map fallback of :class:`pneumo.explain.cam.HeatMapper` for graphs without a ``cam``
output (older model files, architectures without a global-average-pooling head). The only heat-map code that imports
torch, and only when a :class:`GradCam` is made."""

from __future__ import annotations

import numpy as np

from pneumo.modelfile import ModelFile
from pneumo.preprocess import to_input
from pneumo.probability import pneumonia_log_odds


class GradCam:
    """Grad-CAM (the ``grad-cam`` package) on the PyTorch twin of a model file, for the pneumonia log-odds."""

    def __init__(self, model: ModelFile):
        from pytorch_grad_cam import GradCAM

        from pneumo.training.export import torch_twin
        from pneumo.training.models import cam_target_layer

        self.preprocessing = model.meta.preprocessing
        self.net = torch_twin(model)
        self.cam = GradCAM(model=self.net, target_layers=[cam_target_layer(self.net, model.meta.arch)])

    def heatmap(self, image: np.ndarray) -> np.ndarray:
        """Grad-CAM map (input size, [0, 1]) for one image already at the model's input size."""
        import torch

        x = torch.from_numpy(to_input([image], self.preprocessing))
        cam = self.cam(input_tensor=x, targets=[pneumonia_log_odds])[0]
        return np.nan_to_num(cam.astype(np.float32))
