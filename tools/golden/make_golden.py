#!/usr/bin/python3
"""Golden fixtures for camrt's whole-model tests: small, seeded torchvision CNNs exported to ONNX,
with an input batch and PyTorch's logits for it, under tests/fixtures/models/<name>/.
Every file here is generated; regenerate with `/usr/bin/python3 tools/golden/make_golden.py`, never edit.

Layout of one fixture directory:
  model.onnx   torch.onnx.export, input "input" (batch, 3, H, W), output "logits" (batch, classes)
  input.npy    float32 (2, 3, H, W), seeded standard normal
  logits.npy   float32 (2, classes), PyTorch's eval-mode output for input.npy
  meta.json    versions, seed, opset, shapes, and the explanation layer (PyTorch module and ONNX node)

Each model comes from a builder returning (model, target module path); the main loop makes the
BatchNorm statistics non-trivial, exports, checks and writes. A later extension that dumps the
target layer's activation/gradient and CAM maps hooks `model.get_submodule(target)` in `dump_fixture`.
"""

import argparse
import collections
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
    FixtureSpec("vgg11_bn", build_vgg11_bn, 128, 11, True, "config A / 8, pool 2x2, classifier 64"),
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
# One fixture
# ---------------------------------------------------------------------------------------------

def dump_fixture(spec: FixtureSpec, out_root: str) -> Dict:
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
    return meta


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="fixture root (default: tests/fixtures/models)")
    parser.add_argument("--only", nargs="*", help="names of fixtures to regenerate (default: all)")
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
        meta = dump_fixture(spec, args.out)
        out_dir = os.path.join(args.out, spec.name)
        sizes = {f: os.path.getsize(os.path.join(out_dir, f)) for f in os.listdir(out_dir)}
        total_bytes += sum(sizes.values())
        print(f"{spec.name:24s} {spec.opset:5d} {str(tuple(meta['input_shape'])):>16s} "
              f"{meta['num_parameters']:8d} {sizes['model.onnx'] / 1024:9.1f} "
              f"{meta['max_abs_logit']:10.4f} {meta['onnx_f64_vs_torch_rel_err']['logits']:8.1e}  {meta['target_layer']} -> {meta['target_shape']}")
        for f in ("input.npy", "logits.npy"):
            print(f"    {f:12s} {sizes[f]:8d} B  sha256 {sha256(os.path.join(out_dir, f))[:16]}")
    print(f"total {total_bytes / 1024 / 1024:.2f} MiB in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
