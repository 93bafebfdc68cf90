#!/usr/bin/env python3
"""What fp16 activation storage alone does to a torchvision net's logits, measured in PyTorch: the fp32 model
with every weight rounded to fp16 and every Conv2d / BatchNorm2d / ReLU / ReLU6 / MaxPool2d / residual-block
output rounded to fp16 (x.half().float()), against the plain fp32 model. The yardstick for camrt's half storage
(`camrt predict --channels-last half`, checked with tools/golden/check_torchvision.py --predict-args): camrt's
error against PyTorch's fp32 logits should be of the size this script prints, not zero and not much more.
Same models, seed, input and BatchNorm calibration as check_torchvision.py.

Usage: /usr/bin/python3 tools/golden/fp16_storage_reference.py [--models resnet50 mobilenet_v2 vgg16] [--batch 2]
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_torchvision as ct  # noqa: E402  (same directory: the models and the BN calibration)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(ct.MODELS), default=["resnet50", "mobilenet_v2", "vgg16"])
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(2)
    print(f"torch {torch.__version__}, seed {ct.SEED}, input ({args.batch}, 3, {ct.INPUT_HW}, {ct.INPUT_HW}), BN calibrated")
    rounded_types = (torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU, torch.nn.ReLU6, torch.nn.MaxPool2d)
    for name in args.models:
        torch.manual_seed(ct.SEED)
        model = ct.MODELS[name]().eval()
        ct.calibrate_batchnorm(model)
        x = torch.randn(args.batch, 3, ct.INPUT_HW, ct.INPUT_HW, generator=torch.Generator().manual_seed(ct.SEED))
        with torch.no_grad():
            want = model(x)
            for p in model.parameters():
                p.copy_(p.half().float())
            points = [m for m in model.modules()
                      if isinstance(m, rounded_types) or type(m).__name__ in ("Bottleneck", "BasicBlock", "InvertedResidual")]
            for m in points:
                m.register_forward_hook(lambda _m, _i, out: out.half().float())
            got = model(x.half().float())
        err = float((got - want).abs().max() / want.abs().max())
        print(f"{name:16s} fp16-rounded storage vs fp32: {err:.2e} of the largest logit ({len(points)} rounding points)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
