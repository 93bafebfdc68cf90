#!/usr/bin/python3
"""Developer acceptance check: full-size torchvision networks (random weights, 224x224) exported to
ONNX, converted and run by the camrt CLI, and compared with PyTorch's logits.
Pass: max |camrt - torch| / max |torch| <= 1e-4 for every model. Exit code 1 on any failure.

Usage: /usr/bin/python3 tools/golden/check_torchvision.py [--camrt build/camrt] [--workdir DIR]
       [--models resnet50 vgg16 ...] [--batch 2] [--tol 1e-4] [--no-calibrate-bn]
       [--predict-args "--channels-last half"]  (extra `camrt predict` arguments; fp16 storage wants --tol 1e-2)

Freshly initialised torchvision BatchNorms are identities (mean 0, var 1, weight 1, bias 0) and
every bias is zero, so signal decays through depth (efficientnet_b0's logits come out ~4e-14,
mobilenet_v2's ~3e-9) and a runtime that drops a bias or mis-folds a BN would still pass. By
default the BN running statistics are therefore calibrated on one seeded random batch (train-mode
forward, cumulative average) before the eval-mode export: logits become O(1) and folding BN
yields real biases. --no-calibrate-bn checks the plain torchvision initialisation instead.
Uses only the CLI contract: `camrt convert model.onnx -o DIR` writes DIR/model.json and
DIR/model.safetensors; `camrt predict DIR/model.json --input x.npy --save-logits y.npy` reads a
float32 NCHW .npy and writes float32 logits.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from typing import Callable, Dict, List

import numpy as np
import torch
import torchvision

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SEED = 0
INPUT_HW = 224
OPSET = 13

MODELS: Dict[str, Callable[[], torch.nn.Module]] = {
    "resnet50": lambda: torchvision.models.resnet50(weights=None),
    "vgg16": lambda: torchvision.models.vgg16(weights=None),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(weights=None),
    "densenet121": lambda: torchvision.models.densenet121(weights=None),
    "efficientnet_b0": lambda: torchvision.models.efficientnet_b0(weights=None),
}


def run_cli(cmd: List[str]) -> float:
    """Runs one camrt command; returns its wall time in seconds or raises with its stderr."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(f"`{' '.join(cmd)}` exited {proc.returncode}: " + " | ".join(tail))
    return seconds


def calibrate_batchnorm(model: torch.nn.Module) -> None:
    """Sets every BN's running stats to those of one seeded random batch (see module docstring)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: after one batch the stats are that batch's
    calib = torch.randn(4, 3, INPUT_HW, INPUT_HW, generator=torch.Generator().manual_seed(SEED + 1))
    model.train()
    with torch.no_grad():
        model(calib)
    model.eval()
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum


def check_model(name: str, camrt: str, workdir: str, batch: int, tol: float, calibrate_bn: bool,
                predict_args: list) -> bool:
    model_dir = os.path.join(workdir, name)
    os.makedirs(model_dir, exist_ok=True)
    onnx_path = os.path.join(model_dir, "model.onnx")
    converted_dir = os.path.join(model_dir, "camrt")
    x_path = os.path.join(model_dir, "x.npy")
    y_path = os.path.join(model_dir, "y.npy")
    if os.path.exists(y_path):
        os.remove(y_path)  # never compare against a stale result from an earlier run

    torch.manual_seed(SEED)
    model = MODELS[name]().eval()
    if calibrate_bn:
        calibrate_batchnorm(model)
    x = torch.randn(batch, 3, INPUT_HW, INPUT_HW, generator=torch.Generator().manual_seed(SEED))
    start = time.perf_counter()
    with torch.no_grad():
        want = model(x)
    torch_s = time.perf_counter() - start

    start = time.perf_counter()
    torch.onnx.export(model, (x,), onnx_path, opset_version=OPSET,
                      input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      do_constant_folding=True)
    export_s = time.perf_counter() - start
    np.save(x_path, x.numpy().astype(np.float32))

    try:
        convert_s = run_cli([camrt, "convert", onnx_path, "-o", converted_dir])
        predict_s = run_cli([camrt, "predict", os.path.join(converted_dir, "model.json"),
                             "--input", x_path, "--save-logits", y_path] + predict_args)
        got = np.load(y_path)
    except (RuntimeError, OSError, ValueError) as e:
        print(f"{name:16s} FAIL  {e}")
        return False

    want_np = want.numpy()
    if got.dtype != np.float32 or got.shape != want_np.shape:
        print(f"{name:16s} FAIL  logits {got.dtype} {got.shape}, expected float32 {want_np.shape}")
        return False
    max_logit = float(np.abs(want_np).max())
    rel_err = float(np.abs(got.astype(np.float64) - want_np.astype(np.float64)).max()) / max_logit
    ok = bool(np.isfinite(rel_err)) and rel_err <= tol
    print(f"{name:16s} {'OK  ' if ok else 'FAIL'}  rel_err {rel_err:.2e} (tol {tol:.0e}, max|logit| "
          f"{max_logit:.3g})  torch {torch_s * 1e3:7.1f} ms  export {export_s:5.1f} s  "
          f"convert {convert_s:5.2f} s  predict {predict_s:5.2f} s")
    return ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--camrt", default=os.path.join(REPO_ROOT, "build", "camrt"),
                        help="path of the camrt binary (default: build/camrt)")
    parser.add_argument("--workdir", help="keep ONNX, converted models and .npy files here "
                                          "(default: a temporary directory, removed afterwards)")
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=list(MODELS),
                        help="subset to check (default: all)")
    parser.add_argument("--batch", type=int, default=2, help="images per batch (default 2)")
    # 1e-4 of the largest logit: float32 accumulation-order differences over ~50 layers stay
    # around 1e-6..1e-5; a wrong op (padding, eps, layout) gives 1e-3 or more.
    parser.add_argument("--no-calibrate-bn", dest="calibrate_bn", action="store_false",
                        help="keep torchvision's identity BatchNorm statistics (weak check)")
    parser.add_argument("--tol", type=float, default=1e-4, help="max |error| / max |logit|")
    parser.add_argument("--predict-args", default="", help="extra camrt predict arguments, one string")
    args = parser.parse_args()

    camrt = os.path.abspath(args.camrt)
    if not (os.path.isfile(camrt) and os.access(camrt, os.X_OK)):
        print(f"camrt binary not found or not executable: {camrt} (build it, or pass --camrt)",
              file=sys.stderr)
        return 1
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, opset {OPSET}, "
          f"input ({args.batch}, 3, {INPUT_HW}, {INPUT_HW}), seed {SEED}, "
          f"BN {'calibrated' if args.calibrate_bn else 'torchvision init'}, camrt {camrt}")

    with tempfile.TemporaryDirectory(prefix="camrt_check_") as tmp:
        workdir = os.path.abspath(args.workdir) if args.workdir else tmp
        results = [check_model(name, camrt, workdir, args.batch, args.tol, args.calibrate_bn, args.predict_args.split())
                   for name in args.models]
    failed = [n for n, ok in zip(args.models, results) if not ok]
    print(f"{len(results) - len(failed)}/{len(results)} passed" + (f"; failed: {' '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
