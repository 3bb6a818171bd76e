"""Real-looking calibration and evaluation images, generated here: rendered text pages (PIL + DejaVu fonts on
plain, gradient, noisy or photo backgrounds) and crops/flips/rescales of scikit-image's bundled photos.

Everything is a pure function of its seed, so calibration and held-out sets are disjoint by construction
(different seeds, different photos) and identical across runs.
"""

from __future__ import annotations

import dataclasses
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ttgraph.calibration import PRESETS, Preprocess

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")

WORDS = (
    "the of and to in is you that it he was for on are as with his they at be this have from or one had by "
    "word but not what all were we when your can said there use an each which she do how their if will up "
    "other about out many then them these so some her would make like him into time has look two more write "
    "go see number no way could people my than first water been call who oil its now find long down day did "
    "get come made may part invoice total amount date page chapter section report table figure summary "
    "address phone email price quantity order customer account balance payment receipt tax discount street "
    "city station north south east west open closed exit entrance menu coffee tea bread milk sugar salt "
    "Monday Tuesday Friday January March 2024 2025 12.50 99.99 No. 42 ID A-113 #7 www example com"
).split()

# scikit-image photos that ship inside the wheel (no download)
CALIB_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "camera", "page", "immunohistochemistry", "motorcycle")
HELDOUT_PHOTOS = ("text", "coins", "hubble_deep_field", "horse")


@cache
def _fonts() -> tuple[str, ...]:
    found = sorted(str(p) for p in FONT_DIR.glob("*.ttf")) if FONT_DIR.is_dir() else []
    return tuple(found)


def _font(rng: np.random.Generator, size: int) -> ImageFont.ImageFont:
    fonts = _fonts()
    if not fonts:
        return ImageFont.load_default(size)
    return ImageFont.truetype(fonts[int(rng.integers(len(fonts)))], size)


@cache
def photo(name: str) -> np.ndarray:
    """An RGB uint8 photo bundled with scikit-image."""
    from skimage import data

    if name == "motorcycle":
        img = data.stereo_motorcycle()[0]
    else:
        img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    img = img[..., :3]
    if img.dtype != np.uint8:
        img = img.astype(np.float64)
        img = (255 * (img - img.min()) / max(img.max() - img.min(), 1e-9)).astype(np.uint8)
    return img


def photo_variant(name: str, seed: int, size: int = 640) -> np.ndarray:
    """A random crop (40–100 % of the short side), maybe mirrored, resized to ``size``²."""
    rng = np.random.default_rng(seed)
    img = photo(name)
    h, w = img.shape[:2]
    side = int(min(h, w) * rng.uniform(0.4, 1.0))
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    crop = img[y : y + side, x : x + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((size, size), Image.BILINEAR))


def _background(rng: np.random.Generator, size: int, photos: tuple[str, ...]) -> tuple[Image.Image, bool]:
    """A page background and whether it is dark (then the text is light)."""
    kind = rng.choice(["plain", "gradient", "noise", "photo"], p=[0.35, 0.25, 0.2, 0.2])
    dark = rng.random() < 0.15
    if kind == "photo":
        name = photos[int(rng.integers(len(photos)))]
        base = photo_variant(name, int(rng.integers(1 << 30)), size).astype(np.float32)
        base = 0.35 * base + (0.0 if dark else 0.65 * 255)  # wash it out so text stays readable
        return Image.fromarray(base.clip(0, 255).astype(np.uint8)), dark
    c0 = rng.integers(0, 70, 3) if dark else rng.integers(175, 256, 3)
    if kind == "plain":
        return Image.new("RGB", (size, size), tuple(int(v) for v in c0)), dark
    c1 = rng.integers(0, 70, 3) if dark else rng.integers(175, 256, 3)
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    grad = (1 - t) * c0 + t * c1
    arr = np.broadcast_to(grad, (size, size, 3)).astype(np.float32)
    if kind == "noise":
        arr = arr + rng.normal(0, 12, arr.shape)
    return Image.fromarray(arr.clip(0, 255).astype(np.uint8)), dark


def text_page(seed: int, size: int = 640, photos: tuple[str, ...] = CALIB_PHOTOS) -> np.ndarray:
    """A rendered page of text lines (RGB uint8, ``size``²): varied fonts, sizes, colours, backgrounds
    (photo backgrounds are crops of ``photos``)."""
    return text_page_lines(seed, size, photos)[0]


def text_page_lines(
    seed: int, size: int = 640, photos: tuple[str, ...] = CALIB_PHOTOS
) -> tuple[np.ndarray, list[np.ndarray]]:
    """:func:`text_page` and where its lines are: one 4×2 float polygon per line (the ink's bounding box, turned
    with the page when the page is rotated; clipped to the page), the ground truth a text detector should find."""
    rng = np.random.default_rng(seed)
    img, dark = _background(rng, size, photos)
    draw = ImageDraw.Draw(img)
    boxes = []
    y = int(rng.integers(5, 40))
    while y < size - 20:
        font_size = int(rng.choice([14, 18, 22, 26, 32, 40, 52]))
        x = int(rng.integers(5, size // 3))
        words = [WORDS[int(i)] for i in rng.integers(len(WORDS), size=int(rng.integers(1, 9)))]
        colour = rng.integers(185, 256, 3) if dark else rng.integers(0, 80, 3)
        font = _font(rng, font_size)
        text = " ".join(words)
        draw.text((x, y), text, fill=tuple(int(v) for v in colour), font=font)
        left, top, right, bottom = draw.textbbox((x, y), text, font=font)
        right, bottom = min(right, size), min(bottom, size)
        if right > left and bottom > top:
            boxes.append(np.array([[left, top], [right, top], [right, bottom], [left, bottom]], np.float64))
        y += int(font_size * rng.uniform(1.3, 2.6))
    if rng.random() < 0.3:
        angle = float(rng.uniform(-4, 4))
        img = img.rotate(angle, resample=Image.BILINEAR, fillcolor=img.getpixel((0, 0)))
        # PIL turns the page counter-clockwise about its centre; y points down
        c, s, mid = np.cos(np.radians(angle)), np.sin(np.radians(angle)), size / 2
        turn = np.array([[c, -s], [s, c]])
        boxes = [np.clip((b - mid) @ turn + mid, 0, size) for b in boxes]
    if rng.random() < 0.2:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 1.0))))
    return np.asarray(img), [b.astype(np.float32) for b in boxes]


def det_image(kind: str, index: int, size: int = 640) -> np.ndarray:
    """Image ``index`` of the detector set ``kind`` ("calib" or "heldout", disjoint seeds and photos):
    every 4th is a photo crop, the others rendered pages."""
    base, photos = (0, CALIB_PHOTOS) if kind == "calib" else (100_000, HELDOUT_PHOTOS)
    if index % 4 == 3:
        return photo_variant(photos[(index // 4) % len(photos)], base + index, size)
    return text_page(base + index, size, photos)


def det_images(kind: str, count: int, size: int = 640) -> list[np.ndarray]:
    """The first ``count`` images of :func:`det_image`."""
    return [det_image(kind, i, size) for i in range(count)]


def heldout_pages(count: int, size: int = 640) -> list[np.ndarray]:
    """``count`` rendered pages only (what a text detector is for), disjoint from every calibration image."""
    return [text_page(200_000 + i, size, HELDOUT_PHOTOS) for i in range(count)]


def heldout_page_lines(count: int, size: int = 640) -> list[list[np.ndarray]]:
    """The line polygons of the pages of :func:`heldout_pages` (same seeds)."""
    return [text_page_lines(200_000 + i, size, HELDOUT_PHOTOS)[1] for i in range(count)]


def heldout_lines(count: int) -> list[np.ndarray]:
    """``count`` rendered text lines for the direction classifier, disjoint from every calibration line; line
    ``i`` is upside down when ``i`` is odd."""
    return [text_line_image(1_000_000 + i, i % 2 == 1) for i in range(count)]


def write_images(images: list[np.ndarray], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(folder / f"img{i:04d}.png")
    return folder


def text_line_image(seed: int, rotate: bool) -> np.ndarray:
    """A rendered text line for the direction classifier (RGB uint8 ~ 4:1), optionally rotated 180°."""
    rng = np.random.default_rng(seed)
    height = int(rng.integers(40, 80))
    width = int(height * rng.uniform(3.0, 6.0))
    dark = rng.random() < 0.15
    bg = rng.integers(0, 70, 3) if dark else rng.integers(170, 256, 3)
    fg = rng.integers(185, 256, 3) if dark else rng.integers(0, 90, 3)
    img = Image.new("RGB", (width, height), tuple(int(v) for v in bg))
    words = [WORDS[int(i)] for i in rng.integers(len(WORDS), size=int(rng.integers(1, 6)))]
    font = _font(rng, int(height * rng.uniform(0.5, 0.75)))
    ImageDraw.Draw(img).text(
        (int(rng.integers(2, 12)), int(height * 0.1)), " ".join(words), fill=tuple(int(v) for v in fg), font=font
    )
    if rotate:
        img = img.rotate(180)
    return np.asarray(img)


def binary_iou(a: list[np.ndarray], b: list[np.ndarray], threshold: float = 0.3) -> float:
    """Pooled IoU of ``map > threshold`` over a list of probability maps (Σ intersections / Σ unions)."""
    inter = union = 0
    for x, y in zip(a, b, strict=True):
        bx, by = x > threshold, y > threshold
        inter += int(np.logical_and(bx, by).sum())
        union += int(np.logical_or(bx, by).sum())
    return inter / union if union else 1.0


def top1_agreement(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """The share of outputs (class scores) whose arg-max class is the same in ``a`` and ``b``."""
    return float(np.mean([x.argmax() == y.argmax() for x, y in zip(a, b, strict=True)]))


def document_page(seed: int, height: int = 800, width: int = 608, photos: tuple[str, ...] = CALIB_PHOTOS) -> np.ndarray:
    """A rendered document page for a layout detector (RGB uint8, ``height``×``width``): a title, paragraphs of
    text lines, and maybe a figure (a crop of ``photos``) with a caption and a ruled table."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(235, 256, 3)))
    draw = ImageDraw.Draw(img)
    ink = tuple(int(v) for v in rng.integers(0, 60, 3))
    margin = int(rng.integers(30, 60))
    y = margin

    def words(n: int) -> str:
        return " ".join(WORDS[int(i)] for i in rng.integers(len(WORDS), size=n))

    draw.text((margin, y), words(int(rng.integers(2, 6))).title(), fill=ink, font=_font(rng, int(rng.integers(26, 38))))
    y += 60
    while y < height - margin - 40:
        kind = rng.choice(["paragraph", "figure", "table"], p=[0.6, 0.2, 0.2])
        if kind == "paragraph":
            size = int(rng.integers(12, 17))
            font = _font(rng, size)
            for _ in range(int(rng.integers(3, 9))):
                if y > height - margin - size:
                    break
                draw.text((margin, y), words(int(rng.integers(6, 12))), fill=ink, font=font)
                y += int(size * 1.5)
            y += int(rng.integers(12, 30))
        elif kind == "figure":
            fh = int(rng.integers(120, 220))
            fw = int(rng.integers(width // 3, width - 2 * margin))
            if y + fh + 40 > height - margin:
                break
            name = photos[int(rng.integers(len(photos)))]
            fig = Image.fromarray(photo_variant(name, int(rng.integers(1 << 30)), 256)).resize((fw, fh))
            img.paste(fig, (margin, y))
            y += fh + 8
            draw.text((margin, y), "Figure " + words(int(rng.integers(3, 8))), fill=ink, font=_font(rng, 12))
            y += 36
        else:
            rows, cols = int(rng.integers(3, 7)), int(rng.integers(2, 5))
            rh, tw = 22, width - 2 * margin
            if y + rows * rh + 20 > height - margin:
                break
            for r in range(rows + 1):
                draw.line([(margin, y + r * rh), (margin + tw, y + r * rh)], fill=ink, width=1)
            for c in range(cols + 1):
                x = margin + c * tw // cols
                draw.line([(x, y), (x, y + rows * rh)], fill=ink, width=1)
            font = _font(rng, 12)
            for r in range(rows):
                for c in range(cols):
                    draw.text((margin + c * tw // cols + 4, y + r * rh + 4), words(2), fill=ink, font=font)
            y += rows * rh + int(rng.integers(20, 40))
    return np.asarray(img)


if __name__ == "__main__":  # python -m tests.calib_material DIR COUNT [calib|heldout]: images for the quick start
    import sys

    folder, count = Path(sys.argv[1]), int(sys.argv[2])
    kind = sys.argv[3] if len(sys.argv) > 3 else "calib"
    pictures = det_images("calib", count) if kind == "calib" else heldout_pages(count)
    print(write_images(pictures, folder))


def material_preset(name: str) -> Preprocess:
    """The preprocessing preset ``name`` as the measurements on this material use it: every image stretched to
    the input's size. Since 2026-11-30 the ``paddleocr-cls`` preset keeps a line's aspect ratio and pads it on
    the right, as rapidocr does; the rendered lines here (aspect 3–6) are still stretched, so that the figures
    in benchmarks/RESULTS.md and the tests' measured values stay what they were measured as."""
    return dataclasses.replace(PRESETS[name], resize="stretch")
