#!/usr/bin/python3
"""Golden fixtures for camrt's whole-model tests: small, seeded torchvision CNNs exported to ONNX,
with an input batch, PyTorch's logits and the CAM reference data (cam-spec.md) for it, under
tests/fixtures/models/<name>/. Every file here is generated; regenerate with
`/usr/bin/python3 tools/golden/make_golden.py`, never edit.

Layout of one fixture directory:
  model.onnx   torch.onnx.export, input "input" (batch, 3, H, W), output "logits" (batch, classes)
  input.npy    float32 (2, 3, H, W), seeded standard normal
  logits.npy   float32 (2, classes), PyTorch's eval-mode output for input.npy
  meta.json    versions, seed, opset, shapes, and the explanation layer (PyTorch module and ONNX node)
  cam/meta.json, cam/<input>/...  target-layer activation and gradient, target classes and the final
               map of every CAM method for input.npy ("input") and/or a real photo ("chelsea");
               see dump_cams and tools/golden/README.md

Each model comes from a builder returning (model, target module path); the main loop makes the
BatchNorm statistics non-trivial, exports, checks and writes, then dump_cams works on a copy of the
model (so the CAM data cannot change the files before it).
"""

import argparse
import collections
import copy
import hashlib
import json
import os
import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Tuple

import numpy as np
import onnx
import onnx.numpy_helper
import torch
import torch.nn as nn
import torchvision
from torchvision.models import densenet, efficientnet, mobilenetv3, resnet, vgg

# One seed for everything; each model re-seeds with it so adding or reordering models changes
# no other fixture.
SEED = 1234
BATCH = 2
NUM_CLASSES = 10
REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_OUT = os.path.join(REPO_ROOT, "tests", "fixtures", "models")


@dataclass
class FixtureSpec:
    name: str
    build: Callable[[], Tuple[nn.Module, str]]  # returns (model, dotted path of the target module)
    input_hw: int
    opset: int
    # True: torch's eval-mode exporter folds each Conv->BatchNorm into the Conv (what a default
    # export gives). False: export with TrainingMode.PRESERVE on the eval-mode model, which keeps
    # the BatchNormalization nodes (inference form), so camrt's own BN handling/folding is tested.
    exporter_folds_bn: bool
    note: str
    # Inputs the CAM golden data is written for (cam/<input>/): "input" = input.npy, "chelsea" = the
    # photo. Chosen per model to keep tests/fixtures/models small (see tools/golden/README.md).
    cam_inputs: Tuple[str, ...] = ("input", "chelsea")


# ---------------------------------------------------------------------------------------------
# Builders. Each keeps torchvision's module structure and parameter names (layer4.1.conv1.weight)
# so the fixtures look like the real networks to the importer, only narrower.
# ---------------------------------------------------------------------------------------------

class NarrowResNet(resnet.ResNet):
    """torchvision ResNet with the stage widths as a parameter (torchvision fixes 64..512).
    Reuses ResNet._make_layer and ResNet.forward; only the width constants differ."""

    def __init__(self, block, layers: List[int], widths: Tuple[int, int, int, int], num_classes: int):
        nn.Module.__init__(self)  # ResNet.__init__ hard-codes the widths, so set its fields here
        self._norm_layer = nn.BatchNorm2d
        self.inplanes = widths[0]
        self.dilation = 1
        self.groups = 1
        self.base_width = 64  # Bottleneck inner width = planes * base_width / 64 = planes
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes)
        for m in self.modules():  # same initialisation rule as torchvision's ResNet
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


def build_resnet18() -> Tuple[nn.Module, str]:
    # BasicBlock [2,2,2,2] as resnet18; layer2..4 start with a strided 1x1 downsample branch.
    model = NarrowResNet(resnet.BasicBlock, [2, 2, 2, 2], (8, 16, 32, 64), NUM_CLASSES)
    return model, "layer4.1"


def build_resnet50_style() -> Tuple[nn.Module, str]:
    # Bottleneck blocks (1x1 -> 3x3 -> 1x1, expansion 4); layer1 has two blocks so one has a
    # downsample (channel change, stride 1) and one is a plain identity residual.
    model = NarrowResNet(resnet.Bottleneck, [2, 1, 1, 1], (8, 16, 32, 48), NUM_CLASSES)
    return model, "layer4.0"


class NarrowVGG(vgg.VGG):
    """torchvision VGG with a narrow classifier. VGG.__init__ allocates the 512*7*7 x 4096
    classifier (100M parameters) just to be replaced, so set the three fields directly."""

    def __init__(self, cfg: List, pool_hw: int, hidden: int, num_classes: int):
        nn.Module.__init__(self)
        self.features = vgg.make_layers(cfg, batch_norm=True)
        self.avgpool = nn.AdaptiveAvgPool2d((pool_hw, pool_hw))
        channels = [c for c in cfg if c != "M"][-1]
        self.classifier = nn.Sequential(
            nn.Linear(channels * pool_hw * pool_hw, hidden),
            nn.ReLU(True),
            nn.Dropout(p=0.5),
            nn.Linear(hidden, hidden),
            nn.ReLU(True),
            nn.Dropout(p=0.5),
            nn.Linear(hidden, num_classes),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        # Linear layers keep PyTorch's default init (torchvision's N(0, 0.01) would make the
        # logits ~1e-3 and the relative-error checks weak).


def build_vgg11_bn() -> Tuple[nn.Module, str]:
    # vgg11_bn's config "A" with every width divided by 8. At 128x128 the features end at 4x4
    # and AdaptiveAvgPool2d((2,2)) exports as a real AveragePool(k=2,s=2) followed by a
    # Flatten of C*2*2, like VGG's 7x7 pool + flatten at 224 (at 64x64 it would be a no-op).
    cfg = [c if c == "M" else c // 8 for c in vgg.cfgs["A"]]
    model = NarrowVGG(cfg, pool_hw=2, hidden=64, num_classes=NUM_CLASSES)
    # Target: the last ReLU of the features (conv5 block), the layer Grad-CAM explains for VGG;
    # the final MaxPool after it only halves the map.
    last_relu = max(i for i, m in enumerate(model.features) if isinstance(m, nn.ReLU))
    return model, f"features.{last_relu}"


def build_mobilenet_v2() -> Tuple[nn.Module, str]:
    # Inverted residuals with depthwise 3x3 convs and ReLU6 (exported as Clip).
    model = torchvision.models.mobilenet_v2(weights=None, width_mult=0.25, num_classes=NUM_CLASSES)
    return model, f"features.{len(model.features) - 1}"


def build_mobilenet_v3_small() -> Tuple[nn.Module, str]:
    # Hardswish/Hardsigmoid, squeeze-excitation, 5x5 depthwise convs (torchvision rounds every
    # width up to a multiple of 8, so 0.25 still leaves 8-channel SE squeezes).
    setting, last_channel = mobilenetv3._mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.25)
    model = mobilenetv3.MobileNetV3(setting, last_channel, num_classes=NUM_CLASSES)
    # torchvision initialises these Linear layers N(0, 0.01), which leaves logits ~0.05; PyTorch's
    # default init gives O(1) logits so relative-error checks against them mean something.
    for m in model.classifier:
        if isinstance(m, nn.Linear):
            m.reset_parameters()
    return model, f"features.{len(model.features) - 1}"


class DenseNetModuleReLU(densenet.DenseNet):
    """torchvision DenseNet whose final ReLU is a module rather than F.relu, so the explanation
    layer (the map that is pooled) can be hooked in PyTorch and has its own ONNX scope."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.final_relu = nn.ReLU(inplace=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.final_relu(self.features(x))
        out = nn.functional.adaptive_avg_pool2d(out, (1, 1))
        return self.classifier(torch.flatten(out, 1))


def build_densenet121_style() -> Tuple[nn.Module, str]:
    # Dense blocks concatenate features; BN precedes each conv (pre-activation) so these
    # BatchNormalization nodes survive export instead of being folded into a conv.
    model = DenseNetModuleReLU(growth_rate=8, block_config=(2, 2, 2, 2), num_init_features=16,
                               bn_size=4, num_classes=NUM_CLASSES)
    return model, "final_relu"


def build_efficientnet_b0_style() -> Tuple[nn.Module, str]:
    # MBConv with SiLU and squeeze-excitation; width 0.25 and depth 0.5 of b0 (10 blocks).
    setting, last_channel = efficientnet._efficientnet_conf("efficientnet_b0", width_mult=0.25,
                                                            depth_mult=0.5)
    model = efficientnet.EfficientNet(setting, dropout=0.2, num_classes=NUM_CLASSES,
                                      last_channel=last_channel)
    # torchvision zero-initialises the squeeze-excitation conv biases; give them values so a
    # runtime that drops a 1x1 conv's bias fails here. (mobilenet_v3_small keeps the zeros,
    # which the exporter deduplicates into Identity nodes: that quirk is covered there.)
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            nn.init.uniform_(m.bias, -0.2, 0.2)
    return model, f"features.{len(model.features) - 1}"


FIXTURES: List[FixtureSpec] = [
    FixtureSpec("resnet18", build_resnet18, 64, 13, False, "BasicBlock [2,2,2,2], widths 8-64"),
    FixtureSpec("resnet50_style", build_resnet50_style, 64, 13, False,
                "Bottleneck [2,1,1,1], widths 8-48"),
    FixtureSpec("vgg11_bn", build_vgg11_bn, 128, 11, True, "config A / 8, pool 2x2, classifier 64",
                cam_inputs=("chelsea",)),  # 128x128: CAM data for both inputs would be ~10 MB
    FixtureSpec("mobilenet_v2", build_mobilenet_v2, 64, 13, True, "width_mult 0.25"),
    FixtureSpec("mobilenet_v3_small", build_mobilenet_v3_small, 64, 17, False, "width_mult 0.25"),
    FixtureSpec("densenet121_style", build_densenet121_style, 64, 13, True,
                "growth 8, blocks (2,2,2,2), 16 init features"),
    FixtureSpec("efficientnet_b0_style", build_efficientnet_b0_style, 64, 13, True,
                "width 0.25, depth 0.5"),
]


# ---------------------------------------------------------------------------------------------
# Model preparation
# ---------------------------------------------------------------------------------------------

def randomize_batchnorm(model: nn.Module, input_hw: int, seed: int) -> None:
    """Gives every BatchNorm statistics that are neither identity nor degenerate.

    Running stats are first calibrated on one seeded random batch (so activations stay O(1)
    through the depth and ReLUs are not all dead), then perturbed: var * U[0.5, 2],
    mean + N(0, 0.2) * std, weight U[0.5, 1.5], bias N(0, 0.1). The perturbation makes eval
    differ from train and makes folding BN into the conv change the weights materially."""
    gen = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch, the stats are that batch's
    calib = torch.randn(8, 3, input_hw, input_hw, generator=gen)
    model.train()
    with torch.no_grad():
        model(calib)
    model.eval()
    with torch.no_grad():
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
            c = m.num_features
            m.running_var.mul_(torch.empty(c).uniform_(0.5, 2.0, generator=gen))
            m.running_mean.add_(torch.randn(c, generator=gen) * 0.2 * m.running_var.sqrt())
            m.weight.copy_(torch.empty(c).uniform_(0.5, 1.5, generator=gen))
            m.bias.copy_(torch.randn(c, generator=gen) * 0.1)


def onnx_scope(module_path: str) -> str:
    """ONNX node-name prefix torch 1.13 gives the nodes of a module: 'layer4.1' -> '/layer4/layer4.1/'."""
    parts = module_path.split(".")
    return "/" + "/".join(".".join(parts[: i + 1]) for i in range(len(parts))) + "/"


def find_target_node(graph: onnx.GraphProto, module_path: str) -> onnx.NodeProto:
    """The last non-Constant node inside the module's scope: its output is the module's output
    (e.g. layer4.1 -> /layer4/layer4.1/relu_1/Relu, the ReLU after the residual add)."""
    scope = onnx_scope(module_path)
    hits = [n for n in graph.node if n.name.startswith(scope) and n.op_type != "Constant"]
    if not hits:
        raise RuntimeError(f"no ONNX node under scope {scope} for module {module_path}")
    return hits[-1]


def tensor_shape(model: onnx.ModelProto, name: str) -> List:
    for vi in list(model.graph.value_info) + list(model.graph.output):
        if vi.name == name:
            return [d.dim_param if d.dim_param else d.dim_value for d in vi.type.tensor_type.shape.dim]
    raise RuntimeError(f"shape inference gave no shape for tensor {name}")


# ---------------------------------------------------------------------------------------------
# An independent check of the exported graph. onnx 1.12 has no reference evaluator and
# onnxruntime is not installed, so this walks the ONNX nodes with torch.nn.functional in
# float64: if the exporter mis-translated anything, the graph's logits would not match
# PyTorch's. It covers exactly the ops these fixtures contain and refuses any other.
# ---------------------------------------------------------------------------------------------

def _attrs(node: onnx.NodeProto) -> Dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _torch_pads(onnx_pads: List[int]) -> List[int]:
    """ONNX pads (begin per axis..., end per axis...) -> F.pad order (last axis first)."""
    n = len(onnx_pads) // 2
    out = []
    for axis in reversed(range(n)):
        out += [int(onnx_pads[axis]), int(onnx_pads[axis + n])]
    return out


def evaluate_onnx(model: onnx.ModelProto, feeds: Dict[str, np.ndarray]) -> Dict[str, torch.Tensor]:
    """Runs the graph in float64 and returns every tensor by name."""
    F = nn.functional
    env: Dict[str, torch.Tensor] = {}
    for init in model.graph.initializer:
        arr = onnx.numpy_helper.to_array(init)
        env[init.name] = torch.from_numpy(arr.astype(np.float64) if arr.dtype == np.float32 else arr.copy())
    for name, value in feeds.items():
        env[name] = torch.from_numpy(value.astype(np.float64))
    for node in model.graph.node:
        a = _attrs(node)
        x = [env[i] if i else None for i in node.input]
        op = node.op_type
        if op == "Constant":
            arr = onnx.numpy_helper.to_array(a["value"])
            y = torch.from_numpy(arr.astype(np.float64) if arr.dtype == np.float32 else arr.copy())
        elif op == "Identity":
            y = x[0]
        elif op == "Conv":
            pads = a.get("pads", [0] * 4)
            inp = F.pad(x[0], _torch_pads(pads)) if any(pads) else x[0]
            y = F.conv2d(inp, x[1], x[2] if len(x) > 2 else None, stride=a.get("strides", 1),
                         dilation=a.get("dilations", 1), groups=a.get("group", 1))
        elif op == "BatchNormalization":
            if a.get("training_mode", 0):
                raise RuntimeError(f"{node.name}: training-mode BatchNormalization")
            y = F.batch_norm(x[0], x[3], x[4], x[1], x[2], training=False, eps=a.get("epsilon", 1e-5))
        elif op == "Relu":
            y = F.relu(x[0])
        elif op == "Sigmoid":
            y = torch.sigmoid(x[0])
        elif op == "HardSigmoid":
            y = torch.clamp(a.get("alpha", 0.2) * x[0] + a.get("beta", 0.5), 0, 1)
        elif op == "HardSwish":
            y = x[0] * torch.clamp(x[0] / 6 + 0.5, 0, 1)
        elif op == "Clip":
            lo = x[1] if len(x) > 1 and x[1] is not None else a.get("min")
            hi = x[2] if len(x) > 2 and x[2] is not None else a.get("max")
            y = torch.clamp(x[0], None if lo is None else float(lo), None if hi is None else float(hi))
        elif op == "Add":
            y = x[0] + x[1]
        elif op == "Mul":
            y = x[0] * x[1]
        elif op == "Concat":
            y = torch.cat(x, dim=a["axis"])
        elif op == "Pad":
            if a.get("mode", b"constant") != b"constant":
                raise RuntimeError(f"{node.name}: Pad mode {a['mode']}")
            value = float(x[2]) if len(x) > 2 and x[2] is not None else 0.0
            y = F.pad(x[0], _torch_pads(x[1].tolist()), value=value)
        elif op == "MaxPool":
            pads = a.get("pads", [0] * 4)
            inp = F.pad(x[0], _torch_pads(pads), value=-float("inf")) if any(pads) else x[0]
            y = F.max_pool2d(inp, a["kernel_shape"], a.get("strides", 1), ceil_mode=bool(a.get("ceil_mode", 0)))
        elif op == "AveragePool":
            if any(a.get("pads", [0])):
                raise RuntimeError(f"{node.name}: padded AveragePool not covered here")
            y = F.avg_pool2d(x[0], a["kernel_shape"], a.get("strides", 1), ceil_mode=bool(a.get("ceil_mode", 0)))
        elif op == "GlobalAveragePool":
            y = x[0].mean(dim=(2, 3), keepdim=True)
        elif op == "Flatten":
            axis = a.get("axis", 1)
            y = x[0].reshape(int(np.prod(x[0].shape[:axis])), -1)
        elif op == "Gemm":
            A = x[0].t() if a.get("transA", 0) else x[0]
            B = x[1].t() if a.get("transB", 0) else x[1]
            y = a.get("alpha", 1.0) * (A @ B)
            if len(x) > 2:
                y = y + a.get("beta", 1.0) * x[2]
        else:
            raise RuntimeError(f"{node.name}: op {op} not covered by evaluate_onnx")
        env[node.output[0]] = y
    return env


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """max |got - want| / max |want|: the metric camrt's whole-model tests use."""
    return float((got.double() - want.double()).abs().max() / want.double().abs().max())


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ---------------------------------------------------------------------------------------------
# CAM golden data (cam-spec.md, /work/shared/docs/cam-spec.md is the contract these follow).
# A and G come from the float32 model (what camrt runs); every formula after them is float64.
# The same pipeline is also run on a float64 copy of the model: the difference between the two
# is how much float32 rounding alone moves each final map, stored as a tolerance hint.
# ---------------------------------------------------------------------------------------------

CAM_METHODS = ["cam", "gradcam", "gradcam-neg", "hirescam", "gradcam-ew", "gradcampp", "smooth-gradcampp",
               "xgradcam", "layercam", "eigencam", "eigengradcam", "normgrad", "scorecam", "ablationcam",
               "guided-backprop", "guided-gradcam"]
SMOOTH_SAMPLES = 8          # cam-spec: n = 8
SMOOTH_SIGMA_FRACTION = 0.2  # cam-spec: sigma = 0.2 * (max x - min x) per image
CAM_CHUNK = 128             # images per forward in Score-CAM / Ablation-CAM batches
F64_SCORECAM_MAX_CHANNELS = 256  # float64 Score-CAM (the sensitivity estimate) only up to this K
CAM_INPUT_NAMES = ("input", "chelsea")  # input.npy; skimage.data.chelsea()
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Tolerances on final normalized maps, from cam-spec.md "Numerical tolerances".
SPEC_TOLERANCES = {
    "cam": 1e-4, "gradcam": 1e-4, "gradcam-neg": 1e-4, "hirescam": 1e-4, "gradcam-ew": 1e-4,
    "xgradcam": 1e-4, "layercam": 1e-4, "eigencam": 1e-4, "eigengradcam": 1e-4, "normgrad": 1e-4,
    "gradcampp": 1e-3, "smooth-gradcampp": 1e-3, "scorecam": 1e-3, "ablationcam": 1e-3,
}


CAM_CONVENTIONS = {
    "target": "class = argmax of the float32 logits per image (target.npy); y = that logit. The same class is "
              "used for every noisy sample of smooth-gradcampp and every Score-CAM / Ablation-CAM forward",
    "A_and_G": "activation.npy = forward-hook output of target_module (float32 model); gradient.npy = d(sum_b y_b)/dA "
               "(float32); every formula after them in float64, maps saved as float32",
    "postprocess": "steps 1-4 of cam-spec for one layer: ReLU (not normgrad), per image x - min, / (max + 1e-7), "
                   "bilinear align_corners=False to (H_in, W_in), ReLU, x - min, / (max + 1e-7)",
    "ablationcam": "cam-spec's `min A` read literally: A is the (B, K, h, w) tensor of the batch, so one ablation value "
                   "for the whole batch (0 if min A == 0 else min A - 1e7). inputs.*.ablation_per_image_reading gives "
                   "the per-image reading (pytorch-grad-cam's) and how much the map would change (0 here: the minimum is 0 "
                   "in every image after ReLU/ReLU6, and for HardSwish / SiLU (mobilenet_v3_small, "
                   "efficientnet_b0_style) the per-image minima differ by < 1e-5, far below float32's spacing of 1 at "
                   "1e7: both readings give the same float32 value, ablation_value_float32). The network continues from the target layer on A^(k) (a forward hook replaces "
                   "the target's output with the K ablated copies; the float32 A^(k), value rounded to float32)",
    "scorecam": "masks from A upsampled with align_corners=True, (U - min) / (max - min + 1e-8) per image and channel in "
                "float64; x * M_k cast to float32 for the forward; w = softmax over k of the float32 target logits",
    "eigencam": "torch.linalg.svd in float64 of the centred (Z x K) matrix; sign: flip if sum_ij cam_ij * sum_k A_kij < 0",
    "eigengradcam": "Eigen-CAM applied to M = G * A (elementwise), the sign reference being sum_k M_kij = "
                    "sum_k G_kij A_kij (the rule with A replaced by M, as for --eigen-smooth)",
    "smooth-gradcampp": "n = 8 samples x_s = x + noise[s] in float32, noise = torch.randn(8, B, 3, H, W) * sigma_b with "
                        "sigma_b = 0.2 (max x_b - min x_b) in float32; D1..D3 in float64; S_k and A from the clean input",
    "guided-backprop": "every nn.ReLU module (exactly the ONNX Relu nodes; call count checked against them) replaced by "
                       "a ReLU whose backward passes dY where input > 0 and dY > 0. ReLU6 (ONNX Clip), Hardswish, "
                       "Hardsigmoid, SiLU are left alone: mobilenet_v2 and efficientnet_b0_style have no Relu, so "
                       "their guided-backprop is the plain input gradient. Output (B, 3, H, W) raw float32",
    "guided-gradcam": "guided-backprop * final gradcam map (broadcast over the 3 channels), float64 product saved as float32",
    "cam": "only where the target output feeds exactly GlobalAveragePool -> Flatten -> Gemm -> graph output; W = that "
           "Gemm's weight (C x K), no bias",
    "gap_linear_heads": "for resnet18, resnet50_style, mobilenet_v2, densenet121_style, efficientnet_b0_style the "
                        "gradient is W_c / Z at every position, so gradcam == hirescam == cam and smooth-gradcampp == "
                        "gradcampp there (checked); vgg11_bn and mobilenet_v3_small are the fixtures that tell these apart",
}


def run_hooked(model: nn.Module, target: nn.Module, x: torch.Tensor, replace: Callable) -> Tuple[torch.Tensor, Dict]:
    """model(x) with the target module's output replaced by replace(output); returns (logits, store)
    where store['out'] is the original output and store['a'] what the network continued with."""
    store: Dict = {}

    def hook(module, inputs, output):
        store["out"] = output
        store["a"] = replace(output)
        return store["a"]

    handle = target.register_forward_hook(hook)
    try:
        logits = model(x)
    finally:
        handle.remove()
    return logits, store


def activation_and_gradient(model: nn.Module, target: nn.Module, x: torch.Tensor, cls: torch.Tensor):
    """A (B,K,h,w) and G = d(sum_b z_b,cls_b)/dA: the activation becomes a leaf the rest of the network
    continues from, so the backward stops there. Images are independent in eval mode, so the
    gradient of the sum is each image's own dy/dA."""
    logits, store = run_hooked(model, target, x, lambda o: o.detach().clone().requires_grad_(True))
    a = store["a"]
    (g,) = torch.autograd.grad(logits.gather(1, cls[:, None]).sum(), a)
    return logits.detach(), a.detach(), g.detach()


def weighted_sum(w: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """sum_k w_k A_k: w (B, K), A (B, K, h, w) -> (B, h, w)."""
    return (w[:, :, None, None] * A).sum(1)


def normalize_per_image(cam: torch.Tensor) -> torch.Tensor:
    """cam-spec post-processing step 2: cam - min; cam / (max + 1e-7), per image. cam (B, H, W)."""
    cam = cam - cam.amin(dim=(1, 2), keepdim=True)
    return cam / (cam.amax(dim=(1, 2), keepdim=True) + 1e-7)


def postprocess(cam: torch.Tensor, hw: Tuple[int, int], relu: bool = True) -> torch.Tensor:
    """cam-spec steps 1-4 for one layer: ReLU, normalize, half-pixel bilinear resize, then the layer
    aggregation (ReLU, mean over the one layer, normalize again). cam (B, h, w) float64."""
    if relu:
        cam = cam.clamp_min(0)
    cam = normalize_per_image(cam)
    cam = nn.functional.interpolate(cam[:, None], size=hw, mode="bilinear", align_corners=False)[:, 0]
    cam = cam.clamp_min(0)  # step 4: ReLU, mean over one layer (identity), step 2 again
    return normalize_per_image(cam)


def eigen_projection(M: torch.Tensor) -> Tuple[torch.Tensor, List[List[float]]]:
    """cam-spec Eigen-CAM on M (B, K, h, w): per image, (Z x K) with centred columns, projected on the
    first right-singular vector; the sign makes sum_ij cam_ij * sum_k M_kij >= 0. Also returns per image
    the first three singular values (a small gap s0 ~ s1 would make the direction unstable) and the
    cosine between cam and sum_k M_k (the sign rule's margin)."""
    B, K, h, w = M.shape
    cams, svals = [], []
    for b in range(B):
        rows = M[b].reshape(K, h * w).t()  # (Z, K)
        centred = rows - rows.mean(dim=0, keepdim=True)
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)
        cam = centred @ vh[0]
        reference = rows.sum(dim=1)  # sum_k M_kij
        if float((cam * reference).sum()) < 0:
            cam = -cam
        cams.append(cam.reshape(h, w))
        # Cosine between cam and the sign reference: near 0, float32 noise could flip the sign.
        svals.append([float(v) for v in s[:3]] + [float((cam * reference).sum() / (cam.norm() * reference.norm()))])
    return torch.stack(cams), svals


def gradcampp_weights(A: torch.Tensor, D1: torch.Tensor, D2: torch.Tensor, D3: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ channel weights (B, K): alpha = D2 / (2 D2 + S_k D3 + 1e-6), 0 where D2 == 0,
    w_k = sum_ij alpha ReLU(D1). Plain Grad-CAM++ is D1 = G, D2 = G^2, D3 = G^3 (D2 == 0 iff G == 0)."""
    S = A.sum(dim=(2, 3), keepdim=True)
    alpha = D2 / (2 * D2 + S * D3 + 1e-6)
    alpha = torch.where(D2 != 0, alpha, torch.zeros_like(alpha))
    return (alpha * D1.clamp_min(0)).sum(dim=(2, 3))


class GuidedReLUFunction(torch.autograd.Function):
    """ReLU whose backward passes dY only where the input > 0 and dY > 0 (Guided Backprop)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, dy):
        (x,) = ctx.saved_tensors
        return dy * ((x > 0) & (dy > 0)).to(dy.dtype)


class GuidedReLU(nn.Module):
    def __init__(self, counter: List[int]):
        super().__init__()
        self.counter = counter  # shared: number of ReLU applications in one forward

    def forward(self, x):
        self.counter[0] += 1
        return GuidedReLUFunction.apply(x)


def guided_copy(model: nn.Module) -> Tuple[nn.Module, List[int], int]:
    """A copy with every nn.ReLU module (exactly those export as ONNX Relu) replaced by GuidedReLU.
    ReLU6 (Clip), Hardswish, SiLU stay as they are. Returns (copy, call counter, modules replaced)."""
    guided = copy.deepcopy(model)
    counter = [0]
    replaced = 0
    for parent in list(guided.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.ReLU:
                setattr(parent, name, GuidedReLU(counter))
                replaced += 1
    return guided, counter, replaced


def head_weight_if_gap_linear(graph: onnx.GraphProto, target_tensor: str):
    """W (C, K) of the Gemm when the target tensor's only consumer is GlobalAveragePool -> Flatten ->
    Gemm -> graph output (the only structure CAM is defined for); otherwise (None, reason)."""
    consumers = collections.defaultdict(list)
    for n in graph.node:
        for i in n.input:
            consumers[i].append(n)
    inits = {t.name: t for t in graph.initializer}
    chain, tensor = [], target_tensor
    for expected in ("GlobalAveragePool", "Flatten", "Gemm"):
        users = consumers.get(tensor, [])
        if len(users) != 1 or users[0].op_type != expected:
            found = "/".join(u.op_type for u in users) or "nothing"
            return None, (f"target output feeds {found} after {' -> '.join(chain) or 'the target layer'}, "
                          f"not GlobalAveragePool -> Flatten -> Gemm (one Linear)")
        chain.append(expected)
        tensor = users[0].output[0]
    gemm = consumers[consumers[target_tensor][0].output[0]][0]
    gemm = consumers[gemm.output[0]][0]
    if tensor not in [o.name for o in graph.output]:
        return None, "the Gemm after GlobalAveragePool is not the graph output (more layers follow)"
    a = _attrs(gemm)
    W = onnx.numpy_helper.to_array(inits[gemm.input[1]]).astype(np.float64)
    if not a.get("transB", 0):
        W = W.T
    if a.get("transA", 0) or a.get("alpha", 1.0) != 1.0:
        return None, "Gemm with transA or alpha != 1"
    return torch.from_numpy(W), None


def ablation_value(A: torch.Tensor) -> float:
    """cam-spec: 0 if min A == 0, else min A - 1e7 (A as given: a batch, or one image)."""
    m = float(A.min())
    return 0.0 if m == 0.0 else m - 1e7


def ablation_scores(model: nn.Module, target: nn.Module, x: torch.Tensor, A: torch.Tensor, cls: torch.Tensor,
                    values: List[float]) -> torch.Tensor:
    """y_k (B, K) of Ablation-CAM: the network continues from the target layer on A (B, K, h, w) with
    channel k set to values[b]. The hook swaps the ablated copies in for the target's output, so the
    layers after it run on them (the layers before run once on the image; their A is not used)."""
    B, K = A.shape[:2]
    out = torch.zeros(B, K, dtype=torch.float64)
    with torch.no_grad():
        for b in range(B):
            for k0 in range(0, K, CAM_CHUNK):
                ks = torch.arange(k0, min(K, k0 + CAM_CHUNK))
                batch = A[b][None].repeat(len(ks), 1, 1, 1)
                batch[torch.arange(len(ks)), ks] = values[b]
                # The image goes in once; the hook hands the layers after the target a batch of len(ks).
                logits_k, _ = run_hooked(model, target, x[b:b + 1], lambda o: batch)
                out[b, ks] = logits_k[:, cls[b]].double()
    return out


def compute_cams(model: nn.Module, target_path: str, x: torch.Tensor, cls: torch.Tensor, noise: torch.Tensor,
                 head_W, with_scorecam: bool = True) -> Tuple[Dict[str, torch.Tensor], Dict]:
    """Every method of cam-spec.md for the default target (class cls[b] per image) on x (B, 3, H, W),
    in the model's dtype up to A and G, float64 after. Returns ({method or tensor name: tensor}, info)."""
    model_dtype = next(model.parameters()).dtype
    target = model.get_submodule(target_path)
    x = x.to(model_dtype)
    B, _, H, W = x.shape
    hw = (H, W)
    logits, A32, G32 = activation_and_gradient(model, target, x, cls)
    A, G = A32.double(), G32.double()
    K = A.shape[1]
    y = logits.double().gather(1, cls[:, None])[:, 0]  # (B,)
    out: Dict[str, torch.Tensor] = {"logits": logits, "activation": A32, "gradient": G32}
    info: Dict = {}
    raw: Dict[str, torch.Tensor] = {}  # maps before post-processing (B, h, w)

    if head_W is not None:
        raw["cam"] = weighted_sum(head_W[cls], A)
    raw["gradcam"] = weighted_sum(G.mean(dim=(2, 3)), A)
    raw["gradcam-neg"] = weighted_sum((-G).mean(dim=(2, 3)), A)
    raw["hirescam"] = (G * A).sum(1)
    raw["gradcam-ew"] = (G * A).clamp_min(0).sum(1)
    raw["gradcampp"] = weighted_sum(gradcampp_weights(A, G, G * G, G * G * G), A)
    raw["xgradcam"] = weighted_sum((G * A).sum(dim=(2, 3)) / (A.sum(dim=(2, 3)) + 1e-7), A)
    raw["layercam"] = (G.clamp_min(0) * A).sum(1)
    raw["eigencam"], info["eigencam_singular_values"] = eigen_projection(A)
    raw["eigengradcam"], info["eigengradcam_singular_values"] = eigen_projection(G * A)
    raw["normgrad"] = G.norm(dim=1) * A.norm(dim=1)

    # Smooth Grad-CAM++: gradients on x + noise[s] (float32 sum, as camrt adds it); S_k and A clean.
    # If G does not depend on the input at all (GAP + Linear heads: G = W_c / Z), every noise gives
    # the same map; smooth_gradient_deviation == 0 records that (dump_cams then stores no noise).
    D1 = torch.zeros_like(G); D2 = torch.zeros_like(G); D3 = torch.zeros_like(G)
    info["smooth_gradient_deviation"] = 0.0
    for s in range(noise.shape[0]):
        _, _, Gs = activation_and_gradient(model, target, x + noise[s].to(model_dtype), cls)
        Gs = Gs.double()
        info["smooth_gradient_deviation"] = max(info["smooth_gradient_deviation"], max_abs(Gs, G))
        D1 += Gs; D2 += Gs * Gs; D3 += Gs * Gs * Gs
    n = noise.shape[0]
    raw["smooth-gradcampp"] = weighted_sum(gradcampp_weights(A, D1 / n, D2 / n, D3 / n), A)

    # Score-CAM: masks from the align_corners=True upsampled channels, scores = target logits.
    # (with_scorecam=False: skipped, K full forwards per image are slow for the float64 copy.)
    if with_scorecam:
        with torch.no_grad():
            U = nn.functional.interpolate(A, size=hw, mode="bilinear", align_corners=True)  # (B, K, H, W)
            lo = U.amin(dim=(2, 3), keepdim=True); hi = U.amax(dim=(2, 3), keepdim=True)
            masks = (U - lo) / (hi - lo + 1e-8)
            scores = torch.zeros(B, K, dtype=torch.float64)
            for b in range(B):
                for k0 in range(0, K, CAM_CHUNK):
                    m = masks[b, k0:k0 + CAM_CHUNK]
                    xin = (x[b].double()[None] * m[:, None]).to(model_dtype)
                    scores[b, k0:k0 + len(m)] = model(xin)[:, cls[b]].double()
        raw["scorecam"] = weighted_sum(torch.softmax(scores, dim=1), A)
        info["scorecam_scores_range"] = [[float(scores[b].min()), float(scores[b].max())] for b in range(B)]

    # cam-spec's "min A" read literally: A is the (B, K, h, w) batch tensor (see dump_cams).
    values = [ablation_value(A32)] * B
    ablated_scores = ablation_scores(model, target, x, A32, cls, values)
    raw["ablationcam"] = weighted_sum((y[:, None] - ablated_scores) / y[:, None], A)
    info["ablation_values"] = values
    out["ablation_scores"] = ablated_scores

    for method, cam in raw.items():
        out[method] = postprocess(cam, hw, relu=(method != "normgrad"))
        # How often step 1's ReLU leaves nothing: an all-zero map is a weak test.
        info.setdefault("raw_positive_fraction", {})[method] = [float((cam[b] > 0).double().mean()) for b in range(B)]

    # Guided Backprop on a copy with guided ReLUs; Guided Grad-CAM = it times the final Grad-CAM map.
    guided, counter, replaced = guided_copy(model)
    xg = x.clone().requires_grad_(True)
    glogits = guided(xg)
    (gb,) = torch.autograd.grad(glogits.gather(1, cls[:, None]).sum(), xg)
    out["guided-backprop"] = gb.detach()
    out["guided-gradcam"] = gb.detach().double() * out["gradcam"][:, None]
    info["guided_relu_modules"] = replaced
    info["guided_relu_calls"] = counter[0]
    return out, info


def preprocess_chelsea(size: int) -> torch.Tensor:
    """skimage.data.chelsea() (300x451 RGB) through torchvision's ImageNet eval transform:
    Resize(round(size*256/224)) (PIL bilinear, shorter side), CenterCrop(size), ToTensor,
    Normalize(ImageNet mean/std) -> (1, 3, size, size) float32."""
    import skimage.data  # Debian python3-skimage; only needed here
    from PIL import Image
    import torchvision.transforms as T
    tf = T.Compose([T.Resize(round(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(),
                    T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    return tf(Image.fromarray(skimage.data.chelsea()))[None].contiguous()


def smooth_noise(x: torch.Tensor, seed: int) -> Tuple[torch.Tensor, List[float]]:
    """(n, B, 3, H, W) float32 additive noise N(0, sigma_b^2), sigma_b = 0.2 (max x_b - min x_b)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(SMOOTH_SAMPLES, *x.shape, generator=gen, dtype=torch.float32)
    sigma = torch.stack([SMOOTH_SIGMA_FRACTION * (x[b].max() - x[b].min()) for b in range(x.shape[0])])
    return z * sigma[None, :, None, None, None], [float(s) for s in sigma]


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max())


def cross_checks(model: nn.Module, target_path: str, x: torch.Tensor, cls: torch.Tensor,
                 res: Dict[str, torch.Tensor], head_W, ablation_values: List[float]) -> Dict:
    """Independent ways to the same numbers, on the float32 model unless stated; each value is a max abs
    difference (raises if any is out of bounds, so a wrong formula cannot be written silently)."""
    target = model.get_submodule(target_path)
    B, _, H, W = x.shape
    A, G = res["activation"].double(), res["gradient"].double()
    K, Z = A.shape[1], A.shape[2] * A.shape[3]
    checks: Dict = {}
    # 1. Grad-CAM weights as the gradient w.r.t. a per-channel shift of A (autograd through a broadcast
    #    parameter: sum_ij G_kij without forming G), one image at a time (no batch coupling). Compared
    #    as weights (relative to the largest); the map built from them with the saved A is reported too
    #    (both paths are float32 sums in different orders, and a map that is a sum of K terms with
    #    cancellation can magnify that; no bound on it).
    weights = []
    for b in range(B):
        shift = torch.zeros(1, K, dtype=torch.float32, requires_grad=True)
        logits, _ = run_hooked(model, target, x[b:b + 1], lambda o: o.detach() + shift[:, :, None, None])
        (gs,) = torch.autograd.grad(logits[0, cls[b]], shift)
        weights.append(gs[0].double() / Z)
    weights = torch.stack(weights)
    checks["gradcam_weights_via_channel_shift_rel"] = max_abs(weights, G.mean(dim=(2, 3))) / float(weights.abs().max())
    checks["gradcam_map_via_channel_shift"] = max_abs(postprocess(weighted_sum(weights, A), (H, W)), res["gradcam"])
    # 2. The same weights by central differences on a float64 copy, for 8 channels.
    m64 = copy.deepcopy(model).double()
    t64 = m64.get_submodule(target_path)
    _, A64, G64 = activation_and_gradient(m64, t64, x.double(), cls)
    h, worst = 1e-4, 0.0
    for b in range(B):
        for k in range(0, K, max(1, K // 8)):
            ys = []
            for sgn in (1.0, -1.0):
                def bump(o, b=b, k=k, sgn=sgn):
                    o = o.detach().clone(); o[:, k] += sgn * h; return o
                lg, _ = run_hooked(m64, t64, x[b:b + 1].double(), bump)
                ys.append(float(lg[0, cls[b]]))
            fd = (ys[0] - ys[1]) / (2 * h)
            worst = max(worst, abs(fd - float(G64[b, k].sum())) / max(1e-3, abs(float(G64[b, k].sum()))))
    checks["gradcam_weight_central_difference_f64_rel"] = worst
    # 3. Gradient of the batch sum vs one backward per image.
    single = torch.cat([activation_and_gradient(model, target, x[b:b + 1], cls[b:b + 1])[2] for b in range(B)])
    checks["gradient_batch_vs_single_rel"] = max_abs(single, G) / float(G.abs().max())
    # 4. Eigen-CAM direction from numpy's SVD (another LAPACK path), compared up to sign before
    #    post-processing; and from the top eigenvector of the covariance (eigh).
    worst_np, worst_eigh = 0.0, 0.0
    for b in range(B):
        rows = A[b].reshape(K, -1).t().numpy()
        c = rows - rows.mean(axis=0, keepdims=True)
        v = np.linalg.svd(c, full_matrices=False)[2][0]
        evals, evecs = np.linalg.eigh(c.T @ c)
        for other, slot in ((c @ v, "np"), (c @ evecs[:, -1], "eigh")):
            if float((other * rows.sum(axis=1)).sum()) < 0:
                other = -other
            ref = postprocess(torch.from_numpy(other.reshape(1, A.shape[2], A.shape[3])), (H, W))[0]
            d = max_abs(ref, res["eigencam"][b])
            worst_np, worst_eigh = (max(worst_np, d), worst_eigh) if slot == "np" else (worst_np, max(worst_eigh, d))
    checks["eigencam_numpy_svd"] = worst_np
    checks["eigencam_covariance_eigh"] = worst_eigh
    # 5. Where the head is GAP + Linear, dy/dA_kij = W_ck / Z exactly: Grad-CAM == HiResCAM == CAM, and
    #    the ablated score is known in closed form: y_k = y - W_ck (mean A_k - v).
    if head_W is not None:
        Wc = head_W[cls]  # (B, K)
        checks["gradient_vs_W_over_Z"] = max_abs(G, (Wc / Z)[:, :, None, None].expand_as(G))
        checks["gradcam_vs_cam"] = max_abs(res["gradcam"], res["cam"])
        checks["hirescam_vs_cam"] = max_abs(res["hirescam"], res["cam"])
        y = res["logits"].double().gather(1, cls[:, None])
        v = torch.tensor(ablation_values, dtype=torch.float64)[:, None]
        closed = y - Wc * (A.mean(dim=(2, 3)) - v)
        checks["ablation_scores_closed_form_rel"] = max_abs(closed, res["ablation_scores"]) / float(closed.abs().max())
    # 6. Guided Backprop the classic way: backward hooks that clamp each ReLU module's input gradient
    #    at 0 (ReLU's own backward already zeroes where the input <= 0), on a copy without in-place ReLUs.
    hooked = copy.deepcopy(model)
    for m in hooked.modules():
        if type(m) is nn.ReLU:
            m.inplace = False
            m.register_full_backward_hook(lambda mod, gin, gout: (gin[0].clamp_min(0),))
    xg = x.clone().requires_grad_(True)
    (gb,) = torch.autograd.grad(hooked(xg).gather(1, cls[:, None]).sum(), xg)
    checks["guided_backprop_via_backward_hooks_rel"] = max_abs(gb, res["guided-backprop"]) / float(gb.abs().max())
    # 7. Sanity of the batched-forward methods: finite, in [0, 1], not constant.
    for m in ("scorecam", "ablationcam", "smooth-gradcampp"):
        mp = res[m]
        if not torch.isfinite(mp).all() or float(mp.min()) < 0 or float(mp.max()) > 1:
            raise RuntimeError(f"{m}: map not finite or outside [0, 1]")
        checks[f"{m}_per_image_range"] = [float(mp[b].max() - mp[b].min()) for b in range(B)]
    bounds = {"gradcam_weights_via_channel_shift_rel": 1e-5, "gradcam_weight_central_difference_f64_rel": 1e-6,
              "gradient_batch_vs_single_rel": 1e-5, "eigencam_numpy_svd": 1e-8, "eigencam_covariance_eigh": 1e-6,
              "gradient_vs_W_over_Z": 1e-6, "gradcam_vs_cam": 1e-6, "hirescam_vs_cam": 1e-6,
              "ablation_scores_closed_form_rel": 1e-5, "guided_backprop_via_backward_hooks_rel": 1e-6}
    for key, bound in bounds.items():
        if key in checks and not checks[key] <= bound:
            raise RuntimeError(f"cross-check {key} = {checks[key]:.3g} exceeds {bound:g}")
    return checks


def dump_cams(spec: FixtureSpec, model: nn.Module, target_path: str, x_input: torch.Tensor,
              onnx_model: onnx.ModelProto, target_tensor: str, out_dir: str, inputs: List[str]) -> Dict:
    """Writes cam/<input>/... and cam/meta.json for the inputs named ('input': input.npy, 'chelsea')."""
    model = copy.deepcopy(model).eval()  # nothing done here may touch the exported model
    for p in model.parameters():
        p.requires_grad_(False)
    head_W, cam_skip_reason = head_weight_if_gap_linear(onnx_model.graph, target_tensor)
    relu_nodes = sum(1 for n in onnx_model.graph.node if n.op_type == "Relu")
    meta: Dict = {
        "name": spec.name, "torch": torch.__version__, "torchvision": torchvision.__version__,
        "numpy": np.__version__, "seed": SEED, "generated_by": "tools/golden/make_golden.py",
        "target_module": target_path, "target_layer": find_target_node(onnx_model.graph, target_path).name,
        "target_tensor": target_tensor, "methods": [m for m in CAM_METHODS if m != "cam" or head_W is not None],
        "skipped": {} if head_W is not None else {"cam": cam_skip_reason},
        "spec_tolerances_max_abs": {m: t for m, t in SPEC_TOLERANCES.items() if m != "cam" or head_W is not None},
        "suggested_tolerances_not_in_spec": {
            "guided-backprop": "max |diff| / max |ref| <= 1e-4 (raw gradient; float32-vs-float64 model: <= 2e-5 here)",
            "guided-gradcam": "max |diff| / max |ref| <= 1e-4 (same reason)",
            "activation": "max |diff| / max |ref| <= 1e-4 (as the logits test)",
            "gradient": "max |diff| / max |ref| <= 1e-4"},
        "conventions": CAM_CONVENTIONS,
        "inputs": {},
    }
    for name in inputs:
        if name == "input":
            x = x_input
            source = {"file": "input.npy", "what": "seeded standard normal (the fixture's input.npy)"}
        else:
            x = preprocess_chelsea(spec.input_hw)
            source = {"file": f"cam/{name}/input.npy", "what": "skimage.data.chelsea() 300x451, torchvision "
                      f"Resize({round(spec.input_hw * 256 / 224)}) (PIL bilinear) + CenterCrop({spec.input_hw}) + "
                      "ToTensor + Normalize(ImageNet mean/std)"}
        with torch.no_grad():
            cls = model(x).argmax(dim=1)
        noise_seed = SEED + 10 + CAM_INPUT_NAMES.index(name)  # per input, the same in every fixture
        noise, sigma = smooth_noise(x, noise_seed)
        res, info = compute_cams(model, target_path, x, cls, noise, head_W)
        # The spec's "min A" read literally: A is the (B, K, h, w) batch; the per-image reading
        # (pytorch-grad-cam's, which ablates one image at a time) is computed for comparison.
        per_image_values = [ablation_value(res["activation"][b]) for b in range(x.shape[0])]
        per_image_diff = 0.0
        if per_image_values != info["ablation_values"]:
            y = res["logits"].double().gather(1, cls[:, None])
            per_image_w = (y - ablation_scores(model, model.get_submodule(target_path), x, res["activation"], cls,
                                               per_image_values)) / y
            per_image_map = postprocess(weighted_sum(per_image_w, res["activation"].double()), tuple(x.shape[2:]))
            per_image_diff = max_abs(per_image_map, res["ablationcam"])
        checks = cross_checks(model, target_path, x, cls, res, head_W, info["ablation_values"])
        # The same pipeline on a float64 copy: how far float32 rounding alone moves each final map.
        # Score-CAM's K float64 forwards per image are too slow on CPU for wide layers (mobilenet_v2: 1280).
        scorecam64 = res["activation"].shape[1] <= F64_SCORECAM_MAX_CHANNELS
        res64, _ = compute_cams(copy.deepcopy(model).double(), target_path, x, cls, noise, head_W, scorecam64)
        sensitivity = {}
        for m in CAM_METHODS:
            if m in res and m in res64:
                d = max_abs(res[m], res64[m])
                if m in ("guided-backprop", "guided-gradcam"):
                    d /= float(res64[m].abs().max())
                sensitivity[m] = d
        guided_calls = info["guided_relu_calls"]
        if guided_calls != relu_nodes:
            raise RuntimeError(f"{spec.name}: {guided_calls} guided ReLU calls but {relu_nodes} ONNX Relu nodes")

        cam_dir = os.path.join(out_dir, "cam", name)
        os.makedirs(cam_dir, exist_ok=True)
        if name != "input":
            np.save(os.path.join(cam_dir, "input.npy"), x.numpy().astype(np.float32))
            np.save(os.path.join(cam_dir, "logits.npy"), res["logits"].numpy().astype(np.float32))
        np.save(os.path.join(cam_dir, "activation.npy"), res["activation"].numpy().astype(np.float32))
        np.save(os.path.join(cam_dir, "gradient.npy"), res["gradient"].numpy().astype(np.float32))
        np.save(os.path.join(cam_dir, "target.npy"), cls.numpy().astype(np.int64))
        noise_matters = info["smooth_gradient_deviation"] > 0.0
        if noise_matters:
            np.save(os.path.join(cam_dir, "smooth_noise.npy"), noise.numpy().astype(np.float32))
        for m in meta["methods"]:
            np.save(os.path.join(cam_dir, f"{m}.npy"), res[m].numpy().astype(np.float32))
        B = x.shape[0]
        meta["inputs"][name] = {
            **source,
            "shape": list(x.shape),
            "targets": [int(c) for c in cls],
            "target_logits": [float(res["logits"][b, cls[b]]) for b in range(B)],
            "smooth_noise": {
                "file": f"cam/{name}/smooth_noise.npy" if noise_matters else None,
                "seed": noise_seed, "samples": SMOOTH_SAMPLES, "sigma": sigma,
                "generator": "torch.randn(n, B, 3, H, W, generator=seed) * sigma_b in float32; x_s = x + noise[s] in float32",
                "max_abs_gradient_change_under_noise": info["smooth_gradient_deviation"],
                "note": ("the noise used, (n, B, 3, H, W) float32" if noise_matters else
                         "not stored: G is exactly the same for every noisy input (the head after the target layer is "
                         "GlobalAveragePool + one Linear, so G = W_c / Z), hence smooth-gradcampp == gradcampp for any "
                         "noise and any seed")},
            "ablation_value": info["ablation_values"],
            "ablation_value_float32": [float(np.float32(v)) for v in info["ablation_values"]],
            "ablation_per_image_reading": {
                "values": per_image_values, "max_abs_diff_vs_saved": per_image_diff},
            "eigencam_singular_values_and_sign_cosine": info["eigencam_singular_values"],
            "eigengradcam_singular_values_and_sign_cosine": info["eigengradcam_singular_values"],
            "scorecam_score_range": info["scorecam_scores_range"],
            "raw_positive_fraction": info["raw_positive_fraction"],
            "guided_relu": {"modules_replaced": info["guided_relu_modules"], "calls": guided_calls,
                            "onnx_relu_nodes": relu_nodes},
            "cross_checks": checks,
            "f32_vs_f64_model_max_abs": sensitivity,
        }
    with open(os.path.join(out_dir, "cam", "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return meta


# ---------------------------------------------------------------------------------------------
# One fixture
# ---------------------------------------------------------------------------------------------

def dump_fixture(spec: FixtureSpec, out_root: str, cam_inputs: List[str]) -> Dict:
    torch.manual_seed(SEED)
    model, target = spec.build()
    model.eval()
    randomize_batchnorm(model, spec.input_hw, SEED + 1)
    target_module = model.get_submodule(target)

    gen = torch.Generator().manual_seed(SEED + 2)
    x = torch.randn(BATCH, 3, spec.input_hw, spec.input_hw, generator=gen, dtype=torch.float32)

    captured = {}
    handle = target_module.register_forward_hook(lambda m, i, o: captured.__setitem__("act", o.detach().clone()))
    with torch.no_grad():
        logits = model(x)
    handle.remove()
    act = captured["act"]

    out_dir = os.path.join(out_root, spec.name)
    os.makedirs(out_dir, exist_ok=True)
    onnx_path = os.path.join(out_dir, "model.onnx")
    torch.onnx.export(
        model, (x,), onnx_path,
        opset_version=spec.opset,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        do_constant_folding=True,
        training=torch.onnx.TrainingMode.EVAL if spec.exporter_folds_bn else torch.onnx.TrainingMode.PRESERVE,
    )

    onnx_model = onnx.load(onnx_path)
    onnx.checker.check_model(onnx_model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(onnx_model)
    node = find_target_node(inferred.graph, target)
    target_tensor = node.output[0]
    onnx_shape = tensor_shape(inferred, target_tensor)
    # The hooked PyTorch activation and the chosen ONNX tensor must agree on (C, h, w); this is
    # what catches a scope that resolved to the wrong node.
    if onnx_shape[1:] != list(act.shape[1:]):
        raise RuntimeError(f"{spec.name}: target {node.name} has shape {onnx_shape}, "
                           f"PyTorch {target} gives {list(act.shape)}")
    if tensor_shape(inferred, "logits")[1:] != [logits.shape[1]]:
        raise RuntimeError(f"{spec.name}: ONNX logits shape disagrees with PyTorch")

    # float64 graph vs float32 PyTorch: the difference is PyTorch's float32 rounding, ~1e-6
    # relative for these depths; 1e-4 leaves room and still catches any mis-exported op.
    env = evaluate_onnx(onnx_model, {"input": x.numpy()})
    logits_err = relative_error(env["logits"], logits)
    target_err = relative_error(env[target_tensor], act)
    if logits_err > 1e-4 or target_err > 1e-4:
        raise RuntimeError(f"{spec.name}: ONNX graph disagrees with PyTorch: logits rel err "
                           f"{logits_err:.2e}, target rel err {target_err:.2e}")

    np.save(os.path.join(out_dir, "input.npy"), x.numpy().astype(np.float32))
    np.save(os.path.join(out_dir, "logits.npy"), logits.numpy().astype(np.float32))

    op_counts = collections.Counter(n.op_type for n in onnx_model.graph.node)
    meta = {
        "name": spec.name,
        "description": spec.note,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "seed": SEED,
        "opset": spec.opset,
        "exporter_folds_bn": spec.exporter_folds_bn,
        "input_shape": list(x.shape),
        "logits_shape": list(logits.shape),
        "num_classes": int(logits.shape[1]),
        "target_module": target,
        "target_layer": node.name,
        "target_tensor": target_tensor,
        "target_shape": list(act.shape),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "max_abs_logit": float(logits.abs().max()),
        # Relative error of this model.onnx evaluated in float64 (evaluate_onnx) against
        # logits.npy: the float32 rounding floor a correct runtime can expect to reach.
        "onnx_f64_vs_torch_rel_err": {"logits": logits_err, "target": target_err},
        "op_types": dict(sorted(op_counts.items())),
        "generated_by": "tools/golden/make_golden.py",
    }
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    # After everything above is written: the CAM data works on a copy and its own generators, so it
    # cannot change model.onnx, input.npy, logits.npy or meta.json.
    if cam_inputs:
        dump_cams(spec, model, target, x, onnx_model, target_tensor, out_dir, cam_inputs)
    return meta


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="fixture root (default: tests/fixtures/models)")
    parser.add_argument("--only", nargs="*", help="names of fixtures to regenerate (default: all)")
    parser.add_argument("--no-cams", action="store_true", help="skip the CAM golden data (cam/), ~10x faster")
    args = parser.parse_args()

    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    # Raised for every PRESERVE export although the model is in eval mode, where constant folding
    # cannot touch BN statistics; evaluate_onnx below is the actual check that nothing changed.
    warnings.filterwarnings("ignore", message="It is recommended that constant folding be turned off")
    specs = [s for s in FIXTURES if not args.only or s.name in args.only]
    unknown = set(args.only or []) - {s.name for s in FIXTURES}
    if unknown:
        print(f"unknown fixture(s): {', '.join(sorted(unknown))}", file=sys.stderr)
        return 1

    total_bytes = 0
    print(f"{'fixture':24s} {'opset':>5s} {'input':>16s} {'params':>8s} {'onnx KiB':>9s} "
          f"{'max|logit|':>10s} {'f64 err':>8s}  target_layer -> shape")
    for spec in specs:
        meta = dump_fixture(spec, args.out, [] if args.no_cams else list(spec.cam_inputs))
        out_dir = os.path.join(args.out, spec.name)
        sizes = {os.path.relpath(os.path.join(d, f), out_dir): os.path.getsize(os.path.join(d, f))
                 for d, _, files in os.walk(out_dir) for f in files}
        total_bytes += sum(sizes.values())
        cam_bytes = sum(v for k, v in sizes.items() if k.startswith("cam" + os.sep))
        print(f"{spec.name:24s} {spec.opset:5d} {str(tuple(meta['input_shape'])):>16s} "
              f"{meta['num_parameters']:8d} {sizes['model.onnx'] / 1024:9.1f} "
              f"{meta['max_abs_logit']:10.4f} {meta['onnx_f64_vs_torch_rel_err']['logits']:8.1e}  {meta['target_layer']} -> {meta['target_shape']}")
        for f in ("input.npy", "logits.npy"):
            print(f"    {f:12s} {sizes[f]:8d} B  sha256 {sha256(os.path.join(out_dir, f))[:16]}")
        if cam_bytes:
            print(f"    cam/         {cam_bytes:8d} B  inputs {', '.join(spec.cam_inputs)}")
    print(f"total {total_bytes / 1024 / 1024:.2f} MiB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
