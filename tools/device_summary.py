#!/usr/bin/env python3
"""Side-by-side table and issue-4 target ratios from a device check's JSON lines.

Reads OUT/camrt_bench.jsonl (camrt bench) and OUT/torch_baseline.jsonl (../shared/bench/torch_baseline.py) and
prints every row (median ms, peak MiB), then, per model, each performance target of issue 4 as camrt's number,
PyTorch's number, their ratio and whether the target is met. A ratio is only printed when both rows exist, so a
device check cut short says which targets it did not reach instead of guessing them.

Usage: device_summary.py OUT_DIR
"""
import json
import os
import sys

# (label, camrt row, reference row, bound): a row is (scenario, batch, variant); "variant" filters camrt rows
# by the bench options that are not in the scenario name (the default variant: fused, NCHW unless automatic,
# the default algorithm policy, the predicted class, no aug-smooth).
TARGETS = [
    ("Grad-CAM b1 <= 0.30x torch Grad-CAM", ("camrt_gradcam_tf32", 1), ("torch_gradcam_fp32", 1), 0.30),
    ("Grad-CAM b32 <= 1.0x torch forward", ("camrt_gradcam_tf32", 32), ("torch_forward_fp32", 32), 1.0),
    ("Score-CAM b1 <= 0.25x torch Score-CAM", ("camrt_scorecam_tf32", 1), ("torch_scorecam_fp32", 1), 0.25),
    ("Eigen-CAM b32 <= 1.2x our Grad-CAM", ("camrt_eigencam_tf32", 32), ("camrt_gradcam_tf32", 32), 1.2),
    ("fp16 Grad-CAM b1 <= 1.2x torch fp16 graph", ("camrt_gradcam_fp16", 1), ("torch_forward_fp16_cudagraph", 1), 1.2),
]
PEAK_TARGET = ("peak MiB, Grad-CAM b1 <= 160", ("camrt_gradcam_tf32", 1), 160.0)


def variant(r):
    """The bench options a camrt row ran with beyond its scenario name; '' for the default."""
    parts = []
    if r.get("fusion") is False:
        parts.append("unfused")
    if r.get("channels_last") not in (None, "auto"):
        parts.append("nhwc_" + r["channels_last"] if r["channels_last"] != "off" else "nchw")
    if r.get("algo_slack_pct", 10) != 10:
        parts.append("slack%g" % r["algo_slack_pct"])
    if r.get("target", "predicted") != "predicted":
        parts.append(r["target"])
    if r.get("aug_smooth"):
        parts.append("aug" + ("_chunk%d" % r["chunk"] if r.get("chunk") else ""))
    return "_".join(parts)


def load(out):
    rows = []
    for name in ("camrt_bench.jsonl", "torch_baseline.jsonl"):
        path = os.path.join(out, name)
        if not os.path.exists(path):
            continue
        for line in open(path):
            line = line.strip()
            if line.startswith("{"):
                r = json.loads(line)
                if "median_ms" in r:
                    rows.append(r)
    return rows


def main():
    out = sys.argv[1]
    rows = load(out)
    print("All rows (median ms; camrt: device-resident work, end-to-end adds the host copies)")
    for r in sorted(rows, key=lambda r: (r["model"], r["batch"], r["scenario"], variant(r))):
        name = r["scenario"] + ("_" + variant(r) if variant(r) else "")
        e2e = "  end-to-end %9.3f ms" % r["end_to_end_ms"] if "end_to_end_ms" in r else ""
        print("%13s b%-3d %-40s %9.3f ms  peak %8.1f MiB%s" % (r["model"], r["batch"], name, r["median_ms"],
                                                              r.get("peak_mib", 0), e2e))
        if r.get("capture_failure"):  # ran eagerly: a launch per kernel
            print("%13s      CUDA graph capture failed: %s" % ("", r["capture_failure"]))
        if r.get("allocations_in_timed_loop"):
            print("%13s      %d device/pinned allocations in the timed loop" % ("", r["allocations_in_timed_loop"]))
    default = {}
    for r in rows:
        if variant(r) == "":
            default.setdefault((r["model"], r["scenario"], r["batch"]), r)  # the first run of a scenario counts
    device = next((r["device"] for r in rows if r["scenario"].startswith("camrt_")), "?")
    print("\nIssue 4 targets (%s)" % device)
    for model in sorted({r["model"] for r in rows}):
        print(model)
        for label, (ours, ob), (ref, rb), bound in TARGETS:
            a, b = default.get((model, ours, ob)), default.get((model, ref, rb))
            if a is None or b is None:
                print("  %-44s not measured (%s)" % (label, ours if a is None else ref))
                continue
            ratio = a["median_ms"] / b["median_ms"]
            print("  %-44s %9.3f / %9.3f ms = %5.2fx  %s" % (label, a["median_ms"], b["median_ms"], ratio,
                                                             "met" if ratio <= bound else "NOT met"))
        label, (ours, ob), bound = PEAK_TARGET
        a = default.get((model, ours, ob))
        if a is None:
            print("  %-44s not measured" % label)
        else:
            print("  %-44s %9.1f MiB  %s" % (label, a["peak_mib"], "met" if a["peak_mib"] <= bound else "NOT met"))


if __name__ == "__main__":
    main()
