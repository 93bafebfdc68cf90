#!/usr/bin/python3
"""Golden fixtures for camrt's image side (tests/test_image.cpp) and the generated colormap tables.
Every output is generated; regenerate with `/usr/bin/python3 tools/golden/make_image_golden.py`, never edit.

Writes
  tests/fixtures/image/            small images in every format the decoder must read, what PIL's
                                   Image.open(f).convert("RGB") makes of them (the torchvision reference),
                                   torchvision preprocessing outputs, torch bilinear interpolation outputs,
                                   OpenCV colormaps and pytorch-grad-cam-style overlays, meta.json
  engine/image/colormap_tables.inc the four 256-entry colormaps camrt compiles in

Needs the Debian packages python3-torch, python3-torchvision, python3-pil, python3-matplotlib (viridis, inferno,
turbo LUTs), python3-skimage (the chelsea photo) and python3-opencv (the colormap / overlay reference that
pytorch-grad-cam users see; cv2 is only a reference, camrt does not link OpenCV).
"""

import argparse
import io
import json
import os
import struct
import sys
import zlib

import numpy as np

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
DEFAULT_OUT = os.path.join(REPO_ROOT, "tests", "fixtures", "image")
DEFAULT_INC = os.path.join(REPO_ROOT, "engine", "image", "colormap_tables.inc")
SEED = 1234
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


# ---------------------------------------------------------------------------------------------
# Source images
# ---------------------------------------------------------------------------------------------

def smooth_rgb(rng, h, w):
    """A smooth colour field plus mild noise: resizing it gives values away from uint8 ties, and edges
    (a bright square) so antialiasing differences show."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r = 128 + 100 * np.sin(xx / 5.0 + 0.3) * np.cos(yy / 7.0)
    g = 128 + 90 * np.cos(xx / 3.0 - yy / 4.0)
    b = 40 + 200 * (xx + yy) / (h + w)
    img = np.stack([r, g, b], axis=-1) + rng.normal(0, 12, (h, w, 3))
    img[h // 4: h // 2, w // 4: w // 2] = [250, 250, 20]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_rgb16(pixels):
    """A 16-bit-per-channel RGB PNG (colour type 2, depth 16), which PIL cannot write. (h, w, 3) uint16."""
    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))
    ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(raw, 9)) +
            png_chunk(b"IEND", b""))


def save(out, name, data):
    with open(os.path.join(out, name), "wb") as f:
        f.write(data)


def pil_bytes(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def pil_rgb(path):
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


# ---------------------------------------------------------------------------------------------
# Colormaps
# ---------------------------------------------------------------------------------------------

def opencv_jet():
    """OpenCV's COLORMAP_JET, derived rather than copied: the classic piecewise-linear jet
    r = clamp(1.5 - |4x - 3|), g = clamp(1.5 - |4x - 2|), b = clamp(1.5 - |4x - 1|) sampled at x = i/255 is the
    base map; OpenCV (imgproc/colormap.cpp) stores it as float32, interpolates it with its float32 interp1 onto
    linspace(0, 1, 256) and converts with convertTo(CV_8U, 255) (round half to even). Every entry of the exact
    map is a tie (k + 0.5)/255, so the float32 steps decide the rounding; repeating them reproduces OpenCV
    4.6 exactly (checked against cv2 below: all 768 values; exact arithmetic differs at b[159])."""
    f32 = np.float32
    step = f32(f32(1) - f32(0)) / f32(255)
    xs = np.array([f32(0) + f32(i) * step for i in range(256)], dtype=f32)
    t = np.arange(256, dtype=np.float64) / 255.0
    table = np.zeros((256, 3), dtype=np.uint8)
    for ch, k in enumerate((3.0, 2.0, 1.0)):
        base = np.clip(1.5 - np.abs(4.0 * t - k), 0.0, 1.0).astype(f32)
        vals = np.zeros(256, dtype=f32)
        for i in range(256):  # OpenCV's interp1_: binary search for (low, high), then one float32 lerp
            low, high = 0, 255
            xi = xs[i]
            if xi < xs[low]:
                high = 1
            if xi > xs[high]:
                low = high - 1
            while high - low > 1:
                c = low + ((high - low) >> 1)
                if xi > xs[c]:
                    low = c
                else:
                    high = c
            vals[i] = f32(base[low] + f32(f32(f32(xi - xs[low]) * f32(base[high] - base[low])) /
                                         f32(xs[high] - xs[low])))
        table[:, ch] = np.clip(np.rint(vals * f32(255)), 0, 255).astype(np.uint8)
    return table


def matplotlib_table(name):
    """matplotlib's 256-entry ListedColormap (float RGB) rounded to uint8, which is how OpenCV builds its
    COLORMAP_VIRIDIS / INFERNO / TURBO from the same data (verified equal to cv2 below)."""
    import matplotlib
    lut = np.asarray(matplotlib.colormaps[name].colors, dtype=np.float64)
    assert lut.shape == (256, 3), (name, lut.shape)
    return np.clip(np.rint(lut * 255.0), 0, 255).astype(np.uint8)


def colormap_tables():
    return {"jet": opencv_jet(), "turbo": matplotlib_table("turbo"), "viridis": matplotlib_table("viridis"),
            "inferno": matplotlib_table("inferno")}


def write_inc(path, tables, versions):
    lines = [
        "// GENERATED by tools/golden/make_image_golden.py -- do not edit; rerun the script instead.",
        "// 256-entry RGB colormaps, index = uint8(255 * value). jet: OpenCV's COLORMAP_JET (derived from its",
        "// piecewise-linear definition, see opencv_jet() in the script); turbo (Mikhailov 2019, \"Turbo, an improved",
        "// rainbow colormap\", Google AI blog), viridis and inferno (van der Walt & Smith, matplotlib): matplotlib's",
        "// 256-entry tables rounded to uint8. All four equal OpenCV's applyColorMap output (what pytorch-grad-cam",
        "// overlays use), checked when the script ran. Versions: " + versions + ".",
    ]
    for name, table in tables.items():
        lines.append(f"static const uint8_t k_{name}_rgb[256][3] = {{")
        for i in range(0, 256, 8):
            lines.append("    " + " ".join("{%d, %d, %d}," % tuple(int(v) for v in table[j]) for j in range(i, i + 8)))
        lines.append("};")
    text = "\n".join(lines) + "\n"
    with open(path, "w") as f:
        f.write(text)


def cv2_colormaps():
    import cv2
    idx = np.arange(256, dtype=np.uint8).reshape(1, 256)
    out = {}
    for name in ("jet", "turbo", "viridis", "inferno"):
        bgr = cv2.applyColorMap(idx, getattr(cv2, "COLORMAP_" + name.upper()))
        out[name] = np.ascontiguousarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)[0])
    return out


def show_cam_on_image(img_u8, mask, cv2_map, image_weight=0.5):
    """pytorch-grad-cam's show_cam_on_image (use_rgb=True), written from cam-spec.md's Overlay section with
    the same float32 numpy steps the library takes."""
    import cv2
    img = np.float32(img_u8) / 255
    heatmap = cv2.applyColorMap(np.uint8(255 * mask), cv2_map)
    heatmap = cv2.cvtColor(heatmap, cv2.COLOR_BGR2RGB)
    heatmap = np.float32(heatmap) / 255
    cam = (1 - image_weight) * heatmap + image_weight * img
    cam = cam / np.max(cam)
    return np.uint8(255 * cam)


def deprocess_image(img):
    """cam-spec.md 'visualization of input-space maps' on an (h, w, 3) float32 array, as pytorch-grad-cam does."""
    img = img - np.mean(img)
    img = img / (np.std(img) + 1e-5)
    img = img * 0.1
    img = img + 0.5
    img = np.clip(img, 0, 1)
    return np.uint8(img * 255)


# ---------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=DEFAULT_OUT, help="fixture directory (default tests/fixtures/image)")
    ap.add_argument("--inc", default=DEFAULT_INC, help="where to write colormap_tables.inc")
    args = ap.parse_args()

    import cv2
    import matplotlib
    import PIL
    import skimage
    import skimage.data
    import torch
    import torch.nn.functional as F
    import torchvision
    import torchvision.transforms as T
    from PIL import Image

    torch.set_num_threads(2)
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(SEED)
    notes = {}

    def npy(name, arr):
        np.save(os.path.join(args.out, name), np.ascontiguousarray(arr))

    # --- images in each format camrt decodes; expected pixels are PIL's convert("RGB") -------------------
    rgb = smooth_rgb(rng, 30, 40)  # (h, w) = (30, 40): landscape
    portrait = smooth_rgb(rng, 41, 30)
    gray = np.clip(np.rint(rgb.astype(np.float64) @ [0.299, 0.587, 0.114]), 0, 255).astype(np.uint8)
    alpha = (np.arange(30 * 40).reshape(30, 40) * 7 % 256).astype(np.uint8)

    save(args.out, "rgb.png", pil_bytes(Image.fromarray(rgb), "PNG"))
    save(args.out, "portrait.png", pil_bytes(Image.fromarray(portrait), "PNG"))
    save(args.out, "gray.png", pil_bytes(Image.fromarray(gray, "L"), "PNG"))
    save(args.out, "rgba.png", pil_bytes(Image.fromarray(np.dstack([rgb, alpha]), "RGBA"), "PNG"))
    save(args.out, "la.png", pil_bytes(Image.fromarray(np.dstack([gray, alpha]), "LA"), "PNG"))
    pal = Image.fromarray(rgb).quantize(colors=16, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    save(args.out, "palette.png", pil_bytes(pal, "PNG", transparency=3))  # tRNS: alpha is dropped, colour kept
    # 16-bit: PIL reads 16-bit RGB by keeping the high byte (what stb and camrt do), but clamps 16-bit
    # grayscale ("I;16") to 255 in convert("RGB"); camrt takes the high byte there too (documented divergence),
    # so the gray16 reference is v >> 8, not PIL's output.
    gray16 = (gray.astype(np.uint16) * 257 + rng.integers(0, 256, gray.shape)).astype(np.uint16)
    save(args.out, "gray16.png", pil_bytes(Image.fromarray(gray16.astype(np.uint16), "I;16"), "PNG"))
    rgb16 = (rgb.astype(np.uint16) * 257 + rng.integers(0, 256, rgb.shape)).astype(np.uint16)
    save(args.out, "rgb16.png", png_rgb16(rgb16))
    save(args.out, "rgb.bmp", pil_bytes(Image.fromarray(rgb), "BMP"))
    save(args.out, "gray.bmp", pil_bytes(Image.fromarray(gray, "L"), "BMP"))  # 8-bit palette BMP
    save(args.out, "rgb.jpg", pil_bytes(Image.fromarray(rgb), "JPEG", quality=90))  # 4:2:0
    save(args.out, "rgb_progressive.jpg", pil_bytes(Image.fromarray(rgb), "JPEG", quality=90, progressive=True))
    save(args.out, "gray.jpg", pil_bytes(Image.fromarray(gray, "L"), "JPEG", quality=90))

    decoded = {}
    for name in ("rgb.png", "portrait.png", "gray.png", "rgba.png", "la.png", "palette.png", "rgb16.png",
                 "rgb.bmp", "gray.bmp", "rgb.jpg", "rgb_progressive.jpg", "gray.jpg"):
        decoded[name] = pil_rgb(os.path.join(args.out, name))
    assert (decoded["rgb.png"] == rgb).all() and (decoded["rgba.png"] == rgb).all()
    assert (decoded["rgb16.png"] == (rgb16 >> 8)).all()
    for name in ("gray.png", "la.png", "rgba.png", "palette.png", "rgb16.png", "rgb.bmp", "gray.bmp", "rgb.jpg",
                 "rgb_progressive.jpg", "gray.jpg"):
        npy("decoded_" + name.replace(".", "_") + ".npy", decoded[name])
    npy("decoded_gray16_png.npy", np.repeat((gray16 >> 8).astype(np.uint8)[:, :, None], 3, axis=2))

    # A real photo (skimage's chelsea, public domain) for the CAM golden data, 4:4:4 so that camrt's (stb)
    # and PIL's (libjpeg-turbo) JPEG decoders differ least (no chroma upsampling; IDCT/colour rounding remain).
    chelsea = Image.fromarray(skimage.data.chelsea()).resize((180, 120), Image.Resampling.LANCZOS)
    save(args.out, "chelsea.jpg", pil_bytes(chelsea, "JPEG", quality=90, subsampling=0))
    chelsea_rgb = pil_rgb(os.path.join(args.out, "chelsea.jpg"))

    # --- torchvision preprocessing: Resize(resize) [PIL bilinear, antialiased], CenterCrop, ToTensor, Normalize
    cases = [  # (name, source image file, resize, crop)
        ("rgb_r20_c16", "rgb.png", 20, 16),        # downscale x1.5: 26x20, crop offsets (2, 5)
        ("rgb_r33_c28", "rgb.png", 33, 28),        # upscale: 44x33, top round(2.5) = 2 (half to even)
        ("rgb_r33_c30", "rgb.png", 33, 30),        # top round(1.5) = 2
        ("rgb_r7_c5", "rgb.png", 7, 5),            # downscale x4.3: the filter support widens
        ("rgb_r16_c20", "rgb.png", 16, 20),        # crop larger than the image: zero padding
        ("portrait_r22_c19", "portrait.png", 22, 19),  # h > w: 22x30, offsets (6, 2)
        ("chelsea_r72_c64", "chelsea.jpg", 72, 64),    # from PIL's decode of the JPEG (see the test's tolerance)
    ]
    for name, src, resize, crop in cases:
        with Image.open(os.path.join(args.out, src)) as im:
            im = im.convert("RGB")
            shown = T.CenterCrop(crop)(T.Resize(resize)(im))
            x = T.Compose([T.Resize(resize), T.CenterCrop(crop), T.ToTensor(),
                           T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(im)
        npy(f"pre_{name}.npy", x.numpy().astype(np.float32))
        npy(f"shown_{name}.npy", np.asarray(shown))

    # --- bilinear interpolation of float maps (CAM upsampling; Score-CAM masks use align_corners=True) ------
    interp = [("up", (2, 7, 5), (23, 19)), ("down", (2, 13, 11), (5, 4)), ("row", (1, 1, 5), (4, 9)),
              ("mixed", (3, 6, 9), (14, 4))]
    for name, in_shape, out_hw in interp:
        x = torch.from_numpy(rng.standard_normal(in_shape).astype(np.float32))
        npy(f"interp_{name}_in.npy", x.numpy())
        for ac in (False, True):
            y = F.interpolate(x[None], size=out_hw, mode="bilinear", align_corners=ac)[0]
            npy(f"interp_{name}_{'ac' if ac else 'hp'}.npy", y.numpy())

    # --- colormaps, overlays, gradient visualization --------------------------------------------------------
    tables = colormap_tables()
    cv_tables = cv2_colormaps()
    for name in tables:
        mismatches = int((tables[name] != cv_tables[name]).sum())
        if mismatches:
            sys.exit(f"colormap {name}: {mismatches} values differ from OpenCV {cv2.__version__}")
        npy(f"cmap_{name}_cv2.npy", cv_tables[name])
    versions = (f"numpy {np.__version__}, matplotlib {matplotlib.__version__}, OpenCV {cv2.__version__} (check)")
    write_inc(args.inc, tables, versions)

    h, w = 12, 16
    img = rng.integers(0, 256, (h, w, 3)).astype(np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    mask = np.exp(-((yy - 4.0) ** 2 + (xx - 10.0) ** 2) / 18.0).astype(np.float32)
    mask = (mask - mask.min()) / (mask.max() - mask.min())  # exact 0 and 1 present
    mask = mask.astype(np.float32)
    # values k/255: 255 * float32(k/255) may land just below k, and uint8() truncates, so these check that the
    # colormap index is computed with the same float32 product
    mask[0, :8] = np.float32([100 / 255, 37 / 255, 1 / 255, 254 / 255, 128 / 255, 0.5, 29 / 255, 57 / 255])
    npy("overlay_image.npy", img)
    npy("overlay_mask.npy", mask)
    for name in tables:
        npy(f"overlay_{name}.npy", show_cam_on_image(img, mask, getattr(cv2, "COLORMAP_" + name.upper())))
    npy("overlay_jet_w03.npy", show_cam_on_image(img, mask, cv2.COLORMAP_JET, image_weight=0.3))
    grad = (rng.standard_normal((3, h, w)) * 0.02 + 0.003).astype(np.float32)
    npy("gradient.npy", grad)
    npy("gradient_vis.npy", deprocess_image(grad.transpose(1, 2, 0)))

    # --- metadata -------------------------------------------------------------------------------------------
    meta = {
        "generated_by": "tools/golden/make_image_golden.py",
        "seed": SEED,
        "versions": {"torch": torch.__version__, "torchvision": torchvision.__version__, "PIL": PIL.__version__,
                     "numpy": np.__version__, "matplotlib": matplotlib.__version__, "opencv": cv2.__version__,
                     "skimage": skimage.__version__},
        "normalize": {"mean": IMAGENET_MEAN, "std": IMAGENET_STD},
        "preprocess_cases": [{"name": n, "source": s, "resize": r, "crop": c} for n, s, r, c in cases],
        "interp_cases": [{"name": n, "in_shape": list(i), "out_hw": list(o)} for n, i, o in interp],
        "notes": {
            "decoded_*": "PIL Image.open(f).convert('RGB') (alpha dropped, palette expanded, gray replicated)",
            "decoded_gray16_png": "high byte of each 16-bit sample, replicated (PIL would clamp to 255)",
            "chelsea.jpg": "skimage.data.chelsea() resized to 180x120 (LANCZOS), JPEG q90 4:4:4",
            "pre_*": "torchvision Resize, CenterCrop, ToTensor, Normalize(ImageNet) on the PIL image, (3, c, c)",
            "shown_*": "the same without ToTensor/Normalize: (c, c, 3) uint8",
            "interp_*": "F.interpolate(bilinear) of interp_<name>_in; hp = align_corners False, ac = True",
            "cmap_*_cv2": "cv2.applyColorMap(arange(256)) converted to RGB, (256, 3)",
            "overlay_*": "pytorch-grad-cam show_cam_on_image(overlay_image/255, overlay_mask, use_rgb=True)",
            "gradient_vis": "deprocess_image(gradient.transpose(1, 2, 0))",
        },
    }
    with open(os.path.join(args.out, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(args.out, n)) for n in os.listdir(args.out))
    print(f"wrote {len(os.listdir(args.out))} files, {total / 1024:.1f} KiB, to {args.out}; tables to {args.inc}")


if __name__ == "__main__":
    main()
