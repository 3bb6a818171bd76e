"""Calibration data in, per-layer activation statistics out.

**Sources.** Whatever the user hands us becomes a :class:`CalibrationSource`, an iterable of feed dicts
(``{input name: array}``) that the original model accepts:

- a folder of images (the raster formats of :data:`IMAGE_FORMATS` — jpg, png, bmp, webp, tif, jp2, tga, … —
  searched recursively, sorted by path; other files are counted as skipped) or one image file,
  read with Pillow and turned into a tensor by a :class:`Preprocess` spec (size, RGB/BGR, scale,
  mean/std; presets in :data:`PRESETS`, e.g. ``"imagenet"``, ``"paddleocr-det"``);
- a ``.npy`` file (one array, samples on axis 0, for single-input models; memory-mapped) or a ``.npz``
  file (one array per model input, keyed by input name, samples on axis 0);
- a numpy array in memory (read like a ``.npy`` file);
- any Python iterable of feed dicts (a list is re-iterable, a generator is read once);
- an onnxruntime ``CalibrationDataReader`` (anything with ``get_next()``), used as is: ``get_next()``
  until it returns ``None``.

:func:`split_holdout` sets aside deterministic held-out samples for verification, disjoint from the
calibration samples.

**Statistics.** :func:`collect_statistics` runs the *original* model once over the calibration feeds in
onnxruntime, with the input tensor of every candidate conv exposed as an extra output, and streams per
layer the uncentred Gram matrix ``G = XᵀX`` (``Cin × Cin``, float64; rows of ``X`` are the pixels the conv
reads, after its stride), the channel sums and the row count. Memory is bounded by the statistics plus one
batch of activations, not by the number of samples. With ``G = LLᵀ`` the output error of any replacement
weight ``Ŵ`` on the calibration data is exact without re-running anything::

    ‖XWᵀ − XŴᵀ‖_F² = tr((W − Ŵ) G (W − Ŵ)ᵀ)

:func:`stream_activations` is the reusable part (run a model, yield chosen intermediate tensors per feed).
"""

from __future__ import annotations

import functools
import itertools
import math
import os
import time
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal, Protocol, TypeAlias, runtime_checkable

import numpy as np
import onnx

from ttgraph.errors import TTGraphError
from ttgraph.model_io import default_inputs, graph_inputs, input_defaults, input_dims, static_dims
from ttgraph.process_state import quiet_warnings
from ttgraph.progress import progress_bar
from ttgraph.verify import check_feed

Feed = Mapping[str, np.ndarray]
MODEL = "<model>"  # an error's source the caller's naming() turns into the model's file name
MAX_PIXELS = 1 << 28  # a resize target beyond this is a typo (size=100000x100000 was killed for memory)
# Pillow's raster formats a calibration folder may hold; their file suffixes come from Pillow itself. Not its
# vector, container or stub formats (EPS, PDF, HDF5, MPEG, …): a stray figure or data file among the images is
# skipped (and counted in the summary), not an error.
IMAGE_FORMATS = (
    "BMP",
    "DIB",
    "GIF",
    "ICO",
    "JPEG",
    "JPEG2000",
    "PCX",
    "PNG",
    "PPM",
    "TGA",
    "TIFF",
    "WEBP",
    "AVIF",
    "QOI",
)

__all__ = [
    "PRESETS",
    "CalibrationData",
    "CalibrationDataReaderLike",
    "CalibrationSource",
    "CalibrationStatistics",
    "LayerStatistics",
    "Preprocess",
    "calibration_source",
    "collect_statistics",
    "expose_tensors",
    "holdout_indices",
    "parse_preprocess",
    "remember_sample",
    "split_holdout",
    "stream_activations",
]


# ---------------------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes a model input: ``((pixels · scale) − mean) / std`` per channel, NCHW.

    ``size`` is ``(height, width)`` to resize to (bilinear); ``None`` takes the model input's static height and
    width. ``resize="stretch"`` fills it whatever the aspect ratio; ``"pad"`` is what PaddleOCR does for text
    lines: the height is fitted, the width follows the aspect ratio up to ``width``, and the rest on the right is
    0 after normalization. ``channels`` is the channel order the model expects
    (``"RGB"``, ``"BGR"`` or ``"GRAY"``). ``mean``/``std`` are per channel in that order (one value is
    broadcast). ``layout`` is ``"NCHW"`` or ``"NHWC"``. Transparent pixels are composited onto white, as
    rapidocr's image loader does (dropping the alpha channel would leave what the transparent pixels hold, often
    black: black text on a transparent page became a black page). ``usual_size`` is what the convention feeds a
    model whose height or width is dynamic (rapidocr: 48×192 to its classifier, 48×320 to its recognizer), used
    for those dims only when ``size`` is not given.

    >>> spec = PRESETS["imagenet"]
    >>> spec.channels, spec.scale, spec.mean
    ('RGB', 0.00392156862745098, (0.485, 0.456, 0.406))
    """

    size: tuple[int, int] | None = None
    channels: Literal["RGB", "BGR", "GRAY"] = "RGB"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    resize: Literal["stretch", "pad"] = "stretch"
    usual_size: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.channels not in ("RGB", "BGR", "GRAY"):
            raise TTGraphError("preprocess", f"channels must be RGB, BGR or GRAY, got {self.channels!r}")
        if self.layout not in ("NCHW", "NHWC"):
            raise TTGraphError("preprocess", f"layout must be NCHW or NHWC, got {self.layout!r}")
        if self.resize not in ("stretch", "pad"):
            raise TTGraphError("preprocess", f"resize must be stretch or pad, got {self.resize!r}")
        if self.size is not None and (len(self.size) != 2 or min(self.size) < 1):
            raise TTGraphError("preprocess", f"size must be two positive ints (height, width), got {self.size}")
        if self.size is not None and self.size[0] * self.size[1] > MAX_PIXELS:
            raise TTGraphError(
                "preprocess", f"size {self.size[0]}x{self.size[1]} is over the {MAX_PIXELS:,} pixels of an image"
            )
        nch = 1 if self.channels == "GRAY" else 3
        for key in ("mean", "std"):
            values = getattr(self, key)
            if len(values) not in (1, nch):
                takes = "1 value" if nch == 1 else "1 or 3 values"
                hint = f" (their average: {key}={sum(values) / len(values):.4g})" if nch == 1 else ""
                raise TTGraphError("preprocess", f"{key} has {len(values)} values; {self.channels} takes {takes}{hint}")
        if any(s == 0 for s in self.std):
            raise TTGraphError("preprocess", f"std must be non-zero, got {self.std}")
        if not all(math.isfinite(v) for v in (self.scale, *self.mean, *self.std)):
            raise TTGraphError("preprocess", "scale, mean and std must be finite numbers")
        if self.scale == 0:
            raise TTGraphError("preprocess", "scale must be non-zero: every image would become the same input")
        reach = max(abs((p * self.scale - m) / d) for p in (0.0, 255.0) for m in self.mean for d in self.std)
        if not reach < float(np.finfo(np.float32).max):
            raise TTGraphError("preprocess", f"scale, mean and std take pixels to {reach:.3g}, beyond float32")

    def with_size(self, size: tuple[int, int]) -> Preprocess:
        return replace(self, size=(int(size[0]), int(size[1])))

    def apply(self, image: Any, dtype: np.dtype | type = np.float32) -> np.ndarray:
        """A PIL image (or an HWC/HW uint8 array) → ``1 × C × H × W`` (or ``1 × H × W × C``) array; a photo's EXIF
        rotation is applied, as a viewer (or ``cv2.imread``) shows it."""
        from PIL import Image, ImageOps

        if self.size is None:
            raise TTGraphError("preprocess", "no image size: give size=HxW or fix the model input shape")
        if isinstance(image, np.ndarray):
            image = Image.fromarray(image)
        if image.getexif().get(0x0112, 1) != 1:  # EXIF Orientation
            image = ImageOps.exif_transpose(image)
        with quiet_warnings():  # Pillow's note on palette images with transparency: not the user's concern
            image = _on_white(_eight_bit(image)).convert("L" if self.channels == "GRAY" else "RGB")
        height, width = self.size
        fitted = width
        if self.resize == "pad":  # PaddleOCR's resize_norm_img: ceil(height · aspect ratio), at most width
            fitted = min(width, math.ceil(height * image.size[0] / max(image.size[1], 1)))
        if image.size != (fitted, height):
            image = image.resize((fitted, height), Image.Resampling.BILINEAR)
        x = np.asarray(image, dtype=np.float32)
        if x.ndim == 2:
            x = x[:, :, None]
        if self.channels == "BGR":
            x = x[:, :, ::-1]
        mean, std = np.asarray(self.mean, np.float32), np.asarray(self.std, np.float32)
        x = (x * np.float32(self.scale) - mean) / std
        if fitted < width:
            x = np.concatenate([x, np.zeros((height, width - fitted, x.shape[2]), np.float32)], axis=1)
        if self.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x[None], dtype=dtype)

    def describe(self) -> str:
        """What the preprocessing does, for a report line (a run's images read wrong are no error).

        >>> PRESETS["paddleocr-cls"].with_size((48, 192)).describe()
        'BGR 48×192 NCHW, aspect ratio kept, padded right with 0, (pixels·0.003922 − 0.5) / 0.5'
        """
        size = "?" if self.size is None else f"{self.size[0]}×{self.size[1]}"

        def values(v: tuple[float, ...]) -> str:
            return f"{v[0]:.4g}" if len(v) == 1 else "(" + ", ".join(f"{x:.4g}" for x in v) + ")"

        formula = f"(pixels·{self.scale:.4g} − {values(self.mean)}) / {values(self.std)}"
        fit = ", aspect ratio kept, padded right with 0" if self.resize == "pad" else ""
        return f"{self.channels} {size} {self.layout}{fit}, {formula}"

    def grey_level_noise(self, levels: int = 1, seed: int = 0) -> Callable[[np.ndarray], np.ndarray]:
        """A function adding ±``levels`` grey levels of uniform integer noise to inputs made by :meth:`apply`
        (clipped to what a 0..255 image gives): a change to the image no one would see, and so a yardstick for
        how much any change to the model moves its outputs.

        >>> add = PRESETS["unit"].grey_level_noise(seed=1)
        >>> x = PRESETS["unit"].with_size((2, 2)).apply(np.full((2, 2, 3), 128, np.uint8))
        >>> np.unique(np.round((add(x) - x) * 255)).tolist()
        [-1.0, 0.0, 1.0]
        """
        rng = np.random.default_rng(seed)
        shape = (1, -1, 1, 1) if self.layout == "NCHW" else (1, 1, 1, -1)
        mean, std = np.asarray(self.mean, np.float64), np.asarray(self.std, np.float64)
        step = (self.scale / std).reshape(shape)
        black, white = (-mean / std).reshape(shape), ((255 * self.scale - mean) / std).reshape(shape)
        low, high = np.minimum(black, white), np.maximum(black, white)

        def add(x: np.ndarray) -> np.ndarray:
            noisy = x + rng.integers(-levels, levels + 1, x.shape) * step
            return np.clip(noisy, low, high).astype(x.dtype)

        return add


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PRESETS: dict[str, Preprocess] = {
    # torchvision / timm convention
    "imagenet": Preprocess(channels="RGB", scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    # the same statistics on BGR data (OpenCV-loaded images), as PaddleOCR's detector does
    "imagenet-bgr": Preprocess(channels="BGR", scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    "paddleocr-det": Preprocess(channels="BGR", scale=1 / 255, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    # PaddleOCR recognizer and direction classifier: (x/255 − 0.5)/0.5 on BGR, a line's aspect ratio kept and
    # the input padded on the right (rapidocr's TextClassifier/TextRecognizer.resize_norm_img)
    "paddleocr-cls": Preprocess(
        channels="BGR", scale=1 / 255, mean=(0.5,), std=(0.5,), resize="pad", usual_size=(48, 192)
    ),
    "paddleocr-rec": Preprocess(
        channels="BGR", scale=1 / 255, mean=(0.5,), std=(0.5,), resize="pad", usual_size=(48, 320)
    ),
    # simple ranges
    "unit": Preprocess(channels="RGB", scale=1 / 255),  # [0, 1]
    "symmetric": Preprocess(channels="RGB", scale=1 / 127.5, mean=(1.0,)),  # [−1, 1] (TF/Keras "tf")
    "raw": Preprocess(channels="RGB", scale=1.0),  # [0, 255]
    # Keras/Caffe "caffe" mode: BGR, 0..255, minus per-channel means
    "caffe": Preprocess(channels="BGR", scale=1.0, mean=(103.939, 116.779, 123.68)),
}


def _number(text: str, key: str) -> float:
    try:
        return float(Fraction(text)) if "/" in text else float(text)
    except (ValueError, ZeroDivisionError) as err:
        raise TTGraphError("preprocess", f"{key}: expected a number like 0.5 or 1/255, got {text!r}") from err


def parse_preprocess(spec: str | Preprocess | None) -> Preprocess:
    """Parse ``--preprocess``: an optional preset name, then ``key=value`` items, comma separated.

    Keys: ``size=HxW`` (or one number for a square), ``channels=rgb|bgr|gray``, ``scale=1/255``,
    ``mean=a:b:c``, ``std=a:b:c``, ``layout=nchw|nhwc``, ``resize=stretch|pad``. Without a preset the defaults
    are RGB, scale 1/255, mean 0, std 1, stretch.

    >>> parse_preprocess("paddleocr-det,size=640x640").size
    (640, 640)
    >>> parse_preprocess("channels=bgr,scale=1,mean=104:117:123").mean
    (104.0, 117.0, 123.0)
    """
    if spec is None:
        return Preprocess()
    if isinstance(spec, Preprocess):
        return spec
    items = [s.strip() for s in str(spec).split(",") if s.strip()]
    if not items:
        raise TTGraphError(
            "preprocess", f"empty: give a preset ({', '.join(PRESETS)}) and/or key=value items, or leave it out"
        )
    base = Preprocess()
    if items and "=" not in items[0]:
        name = items.pop(0).lower()
        if name not in PRESETS:
            raise TTGraphError("preprocess", f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
        base = PRESETS[name]
    changes: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip().lower()
        if not sep:
            raise TTGraphError("preprocess", f"expected key=value, got {item!r} (a preset goes first)")
        if key == "size":
            parts = value.lower().replace("×", "x").split("x")
            try:
                dims = [int(p) for p in parts]
            except ValueError:
                dims = []
            if len(dims) == 1:
                dims = dims * 2
            if len(dims) != 2 or min(dims) < 1:
                raise TTGraphError("preprocess", f"size: expected HxW like 640x640, got {value!r}")
            changes["size"] = (dims[0], dims[1])
        elif key == "channels":
            changes["channels"] = value.upper()
        elif key == "layout":
            changes["layout"] = value.upper()
        elif key == "resize":
            changes["resize"] = value.lower()
        elif key == "scale":
            changes["scale"] = _number(value, key)
        elif key in ("mean", "std"):
            changes[key] = tuple(_number(v, key) for v in value.split(":"))
        else:
            raise TTGraphError(
                "preprocess", f"unknown key {key!r}; expected size, channels, scale, mean, std, layout or resize"
            )
    return replace(base, **changes)


# ------------------------------------------------------------------------------------------------ sources


@runtime_checkable
class CalibrationDataReaderLike(Protocol):
    """onnxruntime's ``CalibrationDataReader`` contract: ``get_next()`` returns a feed dict, or ``None``."""

    def get_next(self) -> dict[str, np.ndarray] | None: ...


@dataclass
class CalibrationSource:
    """An iterable of feed dicts, with what is known about it.

    ``open`` makes a fresh iterator; a source that is not ``reiterable`` may be iterated only once
    (a generator, a data reader). ``length`` is the number of feeds when known. ``fetch``, when given, reads
    feed ``i`` alone (files and lists), so a held-out split does not decode what it skips.
    """

    open: Callable[[], Iterator[dict[str, np.ndarray]]]
    length: int | None
    reiterable: bool
    description: str
    fetch: Callable[[int], dict[str, np.ndarray]] | None = field(default=None, repr=False)
    # images: (input name, the preprocessing that made it), so a report can say what a grey level does
    images: tuple[str, Preprocess] | None = field(default=None, repr=False)
    # what each sample is called (image files: their paths in the folder), so a report can say which were held out
    names: list[str] | None = field(default=None, repr=False)
    _used: bool = field(default=False, repr=False)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        if self._used and not self.reiterable:
            raise TTGraphError(self.description, "this calibration source can be read only once and was read")
        self._used = True
        return self.open()

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError(f"{self.description} has no known length")
        return self.length


#: What ``compress(calibration=...)`` accepts: a folder of images or an image, a ``.npy``/``.npz`` file, an
#: array (samples on axis 0), one feed dict, an iterable of feed dicts (a list, a generator), an onnxruntime
#: ``CalibrationDataReader``, or a :class:`CalibrationSource`.
#: A real union, not a string: typing.get_type_hints (pydantic, typer, sphinx) evaluates the hints that use it.
CalibrationData: TypeAlias = (
    str
    | os.PathLike[str]
    | np.ndarray
    | Mapping[str, np.ndarray]
    | Iterable[Mapping[str, np.ndarray]]
    | CalibrationDataReaderLike
    | CalibrationSource
)


def _model_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    return graph_inputs(model)


def _input_dtype(value: onnx.ValueInfoProto) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))


@functools.cache
def image_suffixes() -> frozenset[str]:
    """The file suffixes (lower case) of :data:`IMAGE_FORMATS` that the installed Pillow registers and can open."""
    from PIL import Image

    Image.init()
    return frozenset(
        ext for ext, fmt in Image.registered_extensions().items() if fmt in IMAGE_FORMATS and fmt in Image.OPEN
    )


def _is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in image_suffixes()


def _skipped_note(skipped: Counter[str]) -> str:
    """``; 3 other files skipped (.heic ×2, .txt)``: files in the folder that are not read, so that a data set
    shrunk by a format ttgraph does not take says so."""
    if not skipped:
        return ""
    kinds = ", ".join(f"{ext} ×{n}" if n > 1 else ext for ext, n in sorted(skipped.items()))
    total = sum(skipped.values())
    return f"; {total} other file{'s' if total != 1 else ''} skipped ({kinds})"


def _image_files(path: Path) -> tuple[list[Path], Counter[str]]:
    """The images of a folder and its subfolders, symlinked ones too, sorted, and a count by suffix of the other
    files left out; hidden files and folders (a ``.thumbnails`` cache, macOS ``._name.jpg`` resource forks) are
    not files of the data set. Each real folder is walked once and each real file taken once (a link to ``.``
    would loop, and an image reached twice could land on both sides of the held-out split). A folder that cannot
    be read, or an image link that points nowhere, is an error like an unreadable image: the data set would
    shrink without a word."""
    if path.is_file():
        return [path], Counter()
    found = []
    skipped: Counter[str] = Counter()
    seen_folders: set[tuple[int, int]] = set()

    def unreadable(err: OSError) -> None:
        raise TTGraphError(err.filename or path, f"cannot read this calibration folder: {err.strerror or err}")

    for folder, subfolders, names in os.walk(path, onerror=unreadable, followlinks=True):
        info = os.stat(folder)
        if (info.st_dev, info.st_ino) in seen_folders:
            subfolders[:] = []
            continue
        seen_folders.add((info.st_dev, info.st_ino))
        subfolders[:] = [d for d in subfolders if not d.startswith(".") and d != "__MACOSX"]
        visible = [n for n in names if not n.startswith(".")]
        found += [Path(folder, n) for n in visible if _is_image_name(n)]
        skipped.update(Path(n).suffix.lower() or "(no suffix)" for n in visible if not _is_image_name(n))
    dangling = next((p for p in found if p.is_symlink() and not p.exists()), None)
    if dangling is not None:
        raise TTGraphError(dangling, f"a link to {os.readlink(dangling)}, which does not exist")
    files = []
    seen_files: set[Path] = set()
    for p in sorted((p for p in found if p.is_file()), key=lambda p: p.relative_to(path).as_posix()):
        real = p.resolve()
        if real not in seen_files:
            seen_files.add(real)
            files.append(p)
    if not files:
        formats = ", ".join(f.lower() for f in IMAGE_FORMATS)
        raise TTGraphError(path, f"no image files ({formats}) in this folder{_skipped_note(skipped)}")
    return files, skipped


def _normalises(preprocess: Preprocess | str | None) -> bool:
    """Whether the caller's preprocessing says how to scale pixels: a preset, or scale/mean/std keys."""
    if preprocess is None:
        return False
    if isinstance(preprocess, Preprocess):
        return True
    items = [s.strip() for s in str(preprocess).split(",") if s.strip()]
    return bool(items) and ("=" not in items[0] or any(i.split("=")[0].strip().lower() in _SCALING for i in items))


_SCALING = ("scale", "mean", "std")


def _check_layout(name: str, dims: Sequence[int | None], layout: str) -> None:
    """Refuse a layout the input plainly is not (channels 1 or 3 on the other side, the dim ``layout`` would
    read as channels neither): otherwise the error would speak of a 192-channel input, or of a dynamic height
    that is really the channel count."""
    first, last = dims[1], dims[3]
    image_channels = (1, 3, 4)
    shape = "×".join("?" if d is None else str(d) for d in dims)
    if layout == "NHWC" and first in image_channels and last not in image_channels:
        raise TTGraphError(MODEL, f"input {name!r} is {shape}, channels first (NCHW), but preprocess says layout=nhwc")
    if layout == "NCHW" and last in image_channels and first not in image_channels:
        raise TTGraphError(MODEL, f"input {name!r} is {shape}, channels last (NHWC): add layout=nhwc to preprocess")


def image_source(
    files: Sequence[str | os.PathLike[str]],
    model: onnx.ModelProto,
    preprocess: Preprocess | str | None = None,
    skipped: Counter[str] | None = None,
) -> CalibrationSource:
    """Image files → feeds for the model's single image input (see :class:`Preprocess`); ``skipped`` counts the
    folder's other files, for the description."""
    spec = parse_preprocess(preprocess)
    inputs = _model_inputs(model)
    if len(inputs) != 1:
        input_names = ", ".join(i.name for i in inputs)
        raise TTGraphError(
            "calibration", f"images can feed a model with one input; this model has {len(inputs)}: {input_names}"
        )
    value = inputs[0]
    dims = input_dims(value)
    if len(dims) != 4:
        raise TTGraphError(MODEL, f"images need a 4-D image input; input {value.name!r} has dims {dims}")
    _check_layout(value.name, dims, spec.layout)
    size = spec.size
    if size is None:
        hw = dims[2:4] if spec.layout == "NCHW" else dims[1:3]
        if any(d is None for d in hw) and spec.usual_size is not None:  # the convention's size, where dims are free
            hw = [d if d is not None else u for d, u in zip(hw, spec.usual_size, strict=True)]
        known = static_dims(hw)
        if known is None:
            raise TTGraphError(
                MODEL,
                f"input {value.name!r} has dynamic height/width {dims}: give the image size "
                "(preprocess size=HxW) or fix the input shape (input_shapes)",
            )
        size = (known[0], known[1])
        spec = spec.with_size(size)
    fixed = dims[2:4] if spec.layout == "NCHW" else dims[1:3]
    if None not in fixed and tuple(fixed) != size:  # before any image is resized to a size that cannot run
        raise TTGraphError(
            "preprocess",
            f"size={size[0]}x{size[1]}, but the model input {value.name!r} is "
            f"{fixed[0]}x{fixed[1]}; leave size out or fix a dynamic input with input_shapes",
        )
    channel_dim = dims[1] if spec.layout == "NCHW" else dims[3]
    want = 1 if spec.channels == "GRAY" else 3
    if channel_dim is not None and channel_dim != want:
        hint = {1: ": add channels=gray to preprocess", 3: ": add channels=rgb (or bgr) to preprocess"}
        raise TTGraphError(
            MODEL,
            f"input {value.name!r} has {channel_dim} channel{'s' * (channel_dim != 1)}, preprocessing gives {want}"
            f"{hint.get(channel_dim, '')}",
        )
    dtype = _input_dtype(value)
    if dtype.kind in "iub":  # the model normalises raw pixels itself: feed them as they are
        if not _normalises(preprocess):  # "layout=nhwc" alone says nothing of scale: raw pixels, not 1/255
            spec = replace(spec, scale=1.0)
        if dtype.kind == "b" or np.iinfo(dtype).max < 255:
            raise TTGraphError(MODEL, f"input {value.name!r} is {dtype}, which cannot hold 0..255 pixels")
        if spec.scale != 1 or any(m != 0 for m in spec.mean) or any(d != 1 for d in spec.std):
            raise TTGraphError(
                "preprocess",
                f"the model input {value.name!r} is {dtype}: images feed it raw 0..255 pixels; give the raw preset "
                f"(preprocess raw{',layout=nhwc' if spec.layout == 'NHWC' else ''}), or keys without scale, mean "
                "or std",
            )
    paths = [Path(f) for f in files]
    name = value.name
    batch = dims[0] or 1  # a model with a fixed batch of b takes b consecutive images per feed
    if len(paths) % batch:
        raise TTGraphError(
            "calibration",
            f"{len(paths)} image{'s do' if len(paths) != 1 else ' does'} not fill batches of {batch} (the model "
            f"input {name!r} has batch {batch})",
        )

    def read(path: Path) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        try:
            with quiet_warnings():  # Pillow's notes (a large image, damaged EXIF): not the user's to act on
                with Image.open(path) as img:
                    return spec.apply(img, dtype)
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as err:
            raise TTGraphError(path, f"cannot read as an image: {_unreadable(path, err)}") from err

    def fetch(i: int) -> dict[str, np.ndarray]:
        images = [read(p) for p in paths[i * batch : (i + 1) * batch]]
        return {name: images[0] if batch == 1 else np.concatenate(images)}

    where = (os.path.commonpath([os.fspath(p.parent) for p in paths]) or ".") if paths else "?"
    count = len(paths) // batch
    names = ["+".join(os.path.relpath(p, where) for p in paths[i * batch : (i + 1) * batch]) for i in range(count)]
    return CalibrationSource(
        lambda: (fetch(i) for i in range(count)),
        count,
        True,
        f"{len(paths)} image{'s' if len(paths) != 1 else ''} in {where}{_skipped_note(skipped or Counter())}; "
        f"{spec.describe()}"
        # a third-party model's normalisation is rarely this one: say it was not chosen
        + (
            " (the default: no preprocessing was given; a preset such as imagenet says what the model expects)"
            if preprocess is None
            else ""
        ),
        fetch,
        (name, spec),
        names,
    )


def _unreadable(path: Path, err: Exception) -> str:
    """Why Pillow could not read ``path``, without the path its messages repeat."""
    from PIL import UnidentifiedImageError

    try:
        if path.stat().st_size == 0:
            return "the file is empty"
    except OSError:
        pass
    if isinstance(err, UnidentifiedImageError):
        return "not an image file Pillow can read"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err)


def _stored_sample(image: Any) -> str | None:
    """How an ``I`` image's samples are stored ("signed 16-bit", "32-bit"), read from the decoder's raw mode
    before the pixels load: Pillow opens signed 16-bit TIFFs as 32-bit ``I`` too."""
    for tile in getattr(image, "tile", None) or []:
        args = tile[3]
        raw = args[0] if isinstance(args, tuple) and args else args
        if isinstance(raw, str) and raw.startswith("I;"):
            bits = "".join(ch for ch in raw[2:] if ch.isdigit()) or "32"
            return ("signed " if "S" in raw[2:] else "") + f"{bits}-bit"
    return None


def _on_white(image: Any) -> Any:
    """An image with transparency composited onto white; others as they are."""
    from PIL import Image

    if image.mode not in ("RGBA", "LA", "PA", "RGBa", "La") and "transparency" not in image.info:
        return image
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)


def _eight_bit(image: Any) -> Any:
    """16-bit greyscale scaled to 0..255 (``convert`` would clip every value above 255 to white); 32-bit
    integer and float images have no agreed 0..255 scale, so they are refused rather than guessed. Pillow opens
    some unsigned 16-bit files (a PGM of maxval 65535) as 32-bit ``I``: their decoder's raw mode tells."""
    from PIL import Image

    if image.mode.startswith("I;16") or (image.mode == "I" and _stored_sample(image) == "16-bit"):
        return Image.fromarray((np.asarray(image, np.float64) / 257.0).round().astype(np.uint8))
    if image.mode in ("I", "F"):
        kind = "floating-point" if image.mode == "F" else f"{_stored_sample(image) or '32-bit'} integer"
        raise TTGraphError(
            getattr(image, "filename", "") or "image",
            f"a {kind} image has no 0..255 scale: save it as 8-bit or unsigned 16-bit",
        )
    return image


def array_source(path: str | os.PathLike[str], model: onnx.ModelProto) -> CalibrationSource:
    """A ``.npy`` (single-input models; memory-mapped) or ``.npz`` (keyed by input name) file → feeds.

    Per array, one of two layouts: samples on the input's own batch axis (the array has the input's rank;
    each feed takes as many as the model's static batch dim, 1 if dynamic), or one feed value per entry of
    a new leading axis (rank + 1: for an input whose first dim is no batch, like a ``[8]`` table).
    """
    p = Path(path)
    inputs = _model_inputs(model)
    by_name = {i.name: i for i in inputs}
    if p.suffix.lower() == ".npy":
        if len(inputs) != 1:
            raise TTGraphError(p, f"a .npy file feeds single-input models; this one has {len(inputs)} (use .npz)")
        try:
            arrays = {inputs[0].name: np.load(p, mmap_mode="r", allow_pickle=False)}
        except UNREADABLE_ARRAY as err:
            raise TTGraphError(p, f"cannot read as .npy: {numpy_reason(err)}") from err
        getter: Callable[[str], np.ndarray] = arrays.__getitem__
        shapes = {k: v.shape for k, v in arrays.items()}
    elif p.suffix.lower() == ".npz":
        try:
            archive = np.load(p, allow_pickle=False)
        except UNREADABLE_ARRAY as err:
            raise TTGraphError(p, f"cannot read as .npz: {numpy_reason(err)}") from err
        keys = set(archive.files)
        missing = [n for n in by_name if n not in keys]
        if missing:
            raise TTGraphError(
                p, f"expected one array per model input {sorted(by_name)}, missing {missing} (has {sorted(keys)})"
            )
        extra = sorted(keys - set(by_name))
        if extra:  # a misspelt name beside the right one would be left out without a word
            raise TTGraphError(p, f"arrays {extra} are no input of the model (its inputs: {sorted(by_name)})")
        shapes = {}
        for n in by_name:
            try:
                with np.load(p, mmap_mode="r", allow_pickle=False) as z:
                    shapes[n] = z[n].shape
            except UNREADABLE_ARRAY as err:
                raise TTGraphError(p, f"cannot read array {n!r}: {numpy_reason(err)}") from err

        def getter(name: str) -> np.ndarray:
            return np.load(p, allow_pickle=False)[name]

        archive.close()
    else:
        raise TTGraphError(p, "expected a folder of images, an image, a .npy or a .npz file")
    stacked, rows, feeds = _array_layouts(p, shapes, by_name)
    dtypes = {n: _input_dtype(by_name[n]) for n in by_name}
    for n in shapes:
        array = getter(n)  # a .npz member is read whole: once here
        # real float, complex or integer must match: raw uint8 pixels for a float input, or complex samples
        # (their imaginary part would be dropped), are mistakes a cast would hide
        if _number_kind(array.dtype) != _number_kind(dtypes[n]):
            raise TTGraphError(
                p,
                f"array {n!r} is {array.dtype}, the model input is {dtypes[n]}: save preprocessed samples "
                "of the input's type (or give a folder of images with preprocess)",
            )
        del array

    cache: dict[str, np.ndarray] = {}

    def fetch(i: int) -> dict[str, np.ndarray]:
        if not cache:
            cache.update({n: getter(n) for n in by_name})  # .npy: a memory map; .npz: read once
        taken = {n: cache[n][i] if n in stacked else cache[n][i * rows[n] : (i + 1) * rows[n]] for n in by_name}
        return {n: _cast(value, dtypes[n], f"{p.name}, sample {i}, array {n!r}") for n, value in taken.items()}

    rows_in_file = max(shape[0] for shape in shapes.values())
    return CalibrationSource(
        lambda: (fetch(i) for i in range(feeds)),
        feeds,
        True,
        f"{rows_in_file} sample{'s' * (rows_in_file != 1)} in {p.name}{_batched(rows_in_file, feeds)}",
        fetch,
        names=[_rows_name(p.name, i, rows_in_file // feeds) for i in range(feeds)] if feeds else None,
    )


def _rows_name(file: str, feed: int, rows: int) -> str:
    """``x.npz[7]``, or ``x.npz[14:16]`` for a feed of two rows: which samples a held-out feed is."""
    return f"{file}[{feed * rows}]" if rows == 1 else f"{file}[{feed * rows}:{(feed + 1) * rows}]"


def _array_layouts(
    path: Path | str, shapes: Mapping[str, tuple[int, ...]], inputs: Mapping[str, onnx.ValueInfoProto]
) -> tuple[set[str], dict[str, int], int]:
    """Which arrays stack one feed value per entry (rank + 1), how many rows of the others make one feed,
    and the number of feeds, which every array must agree on. An input with a static first dim takes that
    many rows per feed; one with a dynamic first dim splits its rows evenly over the feeds the others
    define (one row per feed when no other input defines them)."""
    stacked: set[str] = set()
    rows: dict[str, int] = {}
    feeds: dict[str, int] = {}
    dynamic: list[str] = []
    for n, shape in shapes.items():
        value = inputs[n]
        known_rank = value.type.tensor_type.HasField("shape")
        dims = input_dims(value)
        if not shape:
            raise TTGraphError(path, f"array {n!r} is a scalar: samples go on axis 0")
        if known_rank and len(shape) == len(dims) + 1:
            stacked.add(n)
            feeds[n] = shape[0]
        elif known_rank and len(shape) != len(dims):
            raise TTGraphError(
                path,
                f"array {n!r} has rank {len(shape)}, the model input has rank {len(dims)}: give samples on its "
                f"batch axis (rank {len(dims)}) or one feed value per entry of a new axis 0 (rank {len(dims) + 1})",
            )
        elif dims and dims[0] is not None:
            rows[n] = dims[0]
            if shape[0] % rows[n]:
                raise TTGraphError(
                    path, f"array {n!r}: {shape[0]} samples do not fill batches of {rows[n]} (the model's batch dim)"
                )
            feeds[n] = shape[0] // rows[n]
        else:
            dynamic.append(n)
    if len(set(feeds.values())) > 1:
        counts = ", ".join(f"{n}: {k}" for n, k in feeds.items())
        most = Counter(feeds.values()).most_common(1)[0][0]
        odd = [n for n in rows if feeds[n] != most]  # read as batches along a first dim that may be no batch
        hint = "".join(
            f"; if the first dim of {n!r} is no batch (an RNN state's), save it with a new axis 0 of one value "
            f"per feed: {most}×{'×'.join(str(d) for d in input_dims(inputs[n]))}"
            for n in odd[:1]
        )
        raise TTGraphError(path, f"arrays disagree on the number of feeds ({counts}){hint}")
    if not feeds and len({shapes[n][0] for n in dynamic}) > 1:  # nothing fixes a batch: one sample per feed
        counts = ", ".join(f"{n}: {shapes[n][0]}" for n in dynamic)
        raise TTGraphError(path, f"arrays disagree on the number of samples ({counts})")
    count = next(iter(feeds.values())) if feeds else shapes[dynamic[0]][0]
    if count == 0:
        raise TTGraphError(path, "no samples (axis 0 is empty)")
    for n in dynamic:
        if shapes[n][0] % count:
            raise TTGraphError(
                path, f"array {n!r}: {shapes[n][0]} samples do not split evenly over {count} feeds (the other arrays')"
            )
        rows[n] = shapes[n][0] // count
    return stacked, rows, count


def _checked(source: CalibrationSource, model: onnx.ModelProto, shape_hint: str = "") -> CalibrationSource:
    """``source`` with every feed it yields checked against the model's inputs (:func:`check_feed`; ``shape_hint``
    says why the model's dims are what they are)."""
    inputs, defaults = _model_inputs(model), default_inputs(model)
    opened, fetched = source.open, source.fetch

    def open_checked() -> Iterator[dict[str, np.ndarray]]:
        for i, feed in enumerate(opened()):
            check_feed(inputs, feed, f"{source.description}, sample {i}", shape_hint, defaults)
            yield feed

    def fetch_checked(i: int) -> dict[str, np.ndarray]:
        assert fetched is not None
        feed = fetched(i)
        check_feed(inputs, feed, f"{source.description}, sample {i}", shape_hint, defaults)
        return feed

    source.open = open_checked
    source.fetch = fetch_checked if fetched is not None else None
    return source


def _number_kind(dtype: np.dtype) -> str:
    return dtype.kind if dtype.kind in "fc" else "integer"


# what numpy raises on a file it cannot read: empty (EOFError), not a zip (BadZipFile), object arrays (ValueError)
UNREADABLE_ARRAY = (OSError, ValueError, EOFError, zipfile.BadZipFile)


def numpy_reason(err: Exception) -> str:
    """numpy's reason, without its advice to unpickle an untrusted file."""
    return "not a numeric array file (object arrays are not read)" if "pickle" in str(err) else str(err)


def calibration_source(
    data: Any,
    model: onnx.ModelProto,
    preprocess: Preprocess | str | None = None,
    shape_hint: str = "",
) -> CalibrationSource:
    """Every supported calibration input as a :class:`CalibrationSource` whose feeds are checked against the
    model's inputs (names, element types, static dims, finite values: one clear error instead of onnxruntime's
    traceback or NaN statistics)."""
    if isinstance(data, CalibrationSource):  # the caller's own: checked like any other, on a copy
        return _checked(replace(data), model, shape_hint)
    return _checked(_calibration_source(data, model, preprocess), model, shape_hint)


def _calibration_source(
    data: Any,
    model: onnx.ModelProto,
    preprocess: Preprocess | str | None = None,
) -> CalibrationSource:
    """Turn any supported calibration input into a :class:`CalibrationSource` (see the module docstring).

    ``data`` is a path (folder of images, image file, ``.npy``, ``.npz``), a ``CalibrationDataReader``
    (``get_next()``), a :class:`CalibrationSource`, or an iterable of feed dicts. ``preprocess`` applies
    to images only.

    >>> import onnx.helper as h
    >>> m = h.make_model(h.make_graph([h.make_node("Relu", ["x"], ["y"])], "g",
    ...     [h.make_tensor_value_info("x", 1, [1, 2])], [h.make_tensor_value_info("y", 1, [1, 2])]))
    >>> src = calibration_source([{"x": np.ones((1, 2), np.float32)}] * 3, m)
    >>> len(src), src.reiterable
    (3, True)
    """
    if isinstance(data, str | os.PathLike):
        p = Path(data)
        if not p.exists():
            raise TTGraphError(p, "no such file or folder")
        if p.is_dir() or _is_image_name(p.name):
            files, skipped = _image_files(p)
            return image_source(files, model, preprocess, skipped)
        if preprocess is not None and p.suffix.lower() in (".npy", ".npz"):  # samples already tensors
            raise TTGraphError("preprocess", f"applies to images; {p.name} holds samples that are fed as they are")
        return array_source(p, model)
    if preprocess is not None:
        raise TTGraphError("preprocess", f"applies to images; {type(data).__name__} calibration data is fed as it is")
    if isinstance(data, CalibrationDataReaderLike) and not isinstance(data, Mapping):
        reader = data

        def read() -> Iterator[dict[str, np.ndarray]]:
            while True:
                item = reader.get_next()
                if item is None:
                    return
                if not isinstance(item, Mapping):
                    raise TTGraphError(
                        f"data reader {type(reader).__name__}",
                        f"get_next() returned {type(item).__name__}, expected a dict {{input name: array}} or None",
                    )
                yield dict(item)

        return CalibrationSource(read, None, False, f"data reader {type(reader).__name__}")
    if isinstance(data, Mapping):
        return CalibrationSource(lambda: iter([dict(data)]), 1, True, "one feed dict")
    if isinstance(data, np.ndarray):
        return _ndarray_source(data, model)
    if isinstance(data, Sequence) and not isinstance(data, str | bytes):
        items = data
        if isinstance(items, list | tuple):  # in memory: checked now; a lazy dataset is checked as it is read
            for i, f in enumerate(items):
                _feed_item(i, f)
        label = f"{len(items)} feed dict" + ("" if len(items) == 1 else "s")
        return CalibrationSource(
            lambda: (_feed_item(i, f) for i, f in enumerate(items)),
            len(items),
            True,
            label,
            lambda i: _feed_item(i, items[i]),
        )
    if isinstance(data, Iterable):
        iterator = iter(data)
        return CalibrationSource(
            lambda: (_feed_item(i, f) for i, f in enumerate(iterator)), None, False, "an iterable of feed dicts"
        )
    raise TTGraphError(
        "calibration",
        f"expected a path, an iterable of feed dicts or a CalibrationDataReader, got {type(data).__name__}",
    )


def _feed_item(index: int, item: Any) -> dict[str, np.ndarray]:
    """Item ``index`` of a list or iterable of feeds, as a dict; anything else is an error naming it."""
    if not isinstance(item, Mapping):
        raise TTGraphError(
            "calibration", f"item {index} is a {type(item).__name__}, expected a feed dict {{input name: array}}"
        )
    return dict(item)


def _batched(rows: int, feeds: int) -> str:
    """``, run as 12 batches of 2`` where the model's batch dim groups the file's samples: the run's sample
    count (feeds) then differs from the file's."""
    return f", run as {feeds} batches of {rows // feeds}" if feeds and rows != feeds else ""


def _cast(value: np.ndarray, dtype: np.dtype, where: str) -> np.ndarray:
    """``value`` as the input's type; a value the type cannot hold (float32 samples over 65504 for a float16
    input) is an error naming it, not infinities later blamed on the file."""
    if value.dtype == dtype:  # np.asarray, not np.ascontiguousarray: that makes a scalar input's sample 1-D
        return np.asarray(value, order="C")
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.asarray(value, dtype=dtype, order="C")
    if out.dtype.kind == "f" and not np.isfinite(out).all() and np.isfinite(value).all():
        largest = float(np.abs(value).max())
        raise TTGraphError(
            where,
            f"values up to {largest:.4g} do not fit the model input's {dtype} (at most {np.finfo(dtype).max:.5g})",
        )
    return out


def _ndarray_source(data: np.ndarray, model: onnx.ModelProto) -> CalibrationSource:
    """An array in memory, read like a ``.npy`` file: samples on axis 0, single-input models."""
    inputs = _model_inputs(model)
    if len(inputs) != 1:
        raise TTGraphError(
            "calibration", f"an array feeds single-input models; this one has {len(inputs)}: give feed dicts"
        )
    name, dtype = inputs[0].name, _input_dtype(inputs[0])
    stacked, rows, count = _array_layouts("calibration", {name: data.shape}, {name: inputs[0]})
    if _number_kind(data.dtype) != _number_kind(dtype):  # as for a .npy: float64 samples are fine, raw uint8 not
        raise TTGraphError(
            "calibration", f"the array is {data.dtype}, the model input is {dtype}: give preprocessed samples"
        )

    def fetch(i: int) -> dict[str, np.ndarray]:
        value = data[i] if stacked else data[i * rows[name] : (i + 1) * rows[name]]
        return {name: _cast(value, dtype, f"calibration array, sample {i}")}

    return CalibrationSource(
        lambda: (fetch(i) for i in range(count)),
        count,
        True,
        f"{len(data)} sample{'s' * (len(data) != 1)} in an array{_batched(len(data), count)}",
        fetch,
    )


def holdout_indices(n: int, holdout: int | float) -> list[int]:
    """Which of ``n`` samples are held out: ``holdout`` samples (or that fraction, rounded, ≥ 1 when
    ``0 < holdout`` and ``n ≥ 2``) spread evenly, the last sample always among them; deterministic.

    >>> holdout_indices(10, 0.2), holdout_indices(10, 3), holdout_indices(1, 0.5)
    ([4, 9], [3, 6, 9], [])
    """
    if isinstance(holdout, float) and not 0 <= holdout < 1:
        raise TTGraphError("holdout", f"a held-out fraction must be in [0, 1), got {holdout}")
    if isinstance(holdout, int) and holdout < 0:
        raise TTGraphError("holdout", f"a held-out count must be ≥ 0, got {holdout}")
    if holdout == 0 or (n < 2 and not isinstance(holdout, int)):  # a fraction of one sample: none
        return []
    count = holdout if isinstance(holdout, int) else max(1, round(holdout * n))
    if count >= n:
        raise TTGraphError("holdout", f"holding out {count} of {n} samples leaves none for calibration")
    return [math.ceil((k + 1) * n / count) - 1 for k in range(count)]


def split_holdout(source: CalibrationSource, holdout: int | float) -> tuple[CalibrationSource, CalibrationSource]:
    """Split into (calibration, held-out) sources with disjoint samples.

    A re-iterable source of known length holds out the evenly spread samples of :func:`holdout_indices`.
    A single-pass source (generator, data reader) holds out its first feeds (an int ``holdout``, or the
    fraction of a known length): they are read into memory now, the rest streams to calibration. One of
    unknown length with a fraction holds out samples as they stream past (:func:`_split_stream`).
    """
    if source.length is not None and source.reiterable:
        held = holdout_indices(source.length, holdout)
        kept = sorted(set(range(source.length)) - set(held))
        fetch = source.fetch

        def part(indices: list[int]) -> Callable[[], Iterator[dict[str, np.ndarray]]]:
            if fetch is not None:
                return lambda: (fetch(i) for i in indices)
            wanted = set(indices)
            return lambda: (f for i, f in enumerate(source) if i in wanted)

        def picker(indices: list[int]) -> Callable[[int], dict[str, np.ndarray]] | None:
            return None if fetch is None else (lambda k: fetch(indices[k]))

        def named(indices: list[int]) -> list[str] | None:
            return None if source.names is None else [source.names[i] for i in indices]

        calib = CalibrationSource(
            part(kept), len(kept), True, source.description, picker(kept), source.images, named(kept)
        )
        heldout = CalibrationSource(
            part(held),
            len(held),
            True,
            f"{len(held)} held out of {source.description}",
            picker(held),
            source.images,
            named(held),
        )
        return calib, heldout
    if source.length is not None:
        count = len(holdout_indices(source.length, holdout))
    elif isinstance(holdout, int) and not isinstance(holdout, bool):
        if holdout < 0:
            raise TTGraphError("holdout", f"a held-out count must be ≥ 0, got {holdout}")
        count = holdout
    else:
        return _split_stream(source, float(holdout))
    stream = iter(source)
    held_feeds = []
    for _ in range(count):
        feed = next(stream, None)
        if feed is None:
            break
        held_feeds.append(_own_copy(feed))
    after = next(stream, None) if held_feeds else None  # nothing held: the stream was empty, said where it is read
    if held_feeds and after is None:
        raise TTGraphError(
            "holdout", f"holding out {count} samples leaves none for calibration: the data gave {len(held_feeds)}"
        )
    if after is not None:
        stream = itertools.chain([after], stream)
    rest = None if source.length is None else source.length - len(held_feeds)
    calib = CalibrationSource(lambda: stream, rest, False, source.description)
    heldout = CalibrationSource(
        lambda: iter(held_feeds), len(held_feeds), True, f"{len(held_feeds)} held out of {source.description}"
    )
    return calib, heldout


def _split_stream(source: CalibrationSource, fraction: float) -> tuple[CalibrationSource, CalibrationSource]:
    """A single pass of unknown length, ``fraction`` held out: sample ``i`` is held out when
    ``⌊(i+1)·f⌋ > ⌊i·f⌋`` (with 0.1, samples 9, 19, …), kept in memory while the rest streams to calibration.
    A stream too short for that (5 samples at 0.1) holds out its last sample, as :func:`holdout_indices` would
    for a known length: calibration runs one sample behind to keep it back. The held-out source is complete
    once the calibration stream has been read (as compress reads them)."""
    if not 0 <= fraction < 1:
        raise TTGraphError("holdout", f"a held-out fraction must be in [0, 1), got {fraction}")
    held_feeds: list[dict[str, np.ndarray]] = []
    heldout = CalibrationSource(lambda: iter(held_feeds), 0, True, f"held out of {source.description}")

    def calibrate() -> Iterator[dict[str, np.ndarray]]:
        kept_back, count = None, 0
        for i, feed in enumerate(source):
            count += 1
            if math.floor((i + 1) * fraction) > math.floor(i * fraction):
                held_feeds.append(_own_copy(feed))
                continue
            if kept_back is not None:
                yield kept_back
            kept_back = _own_copy(feed)  # held past the next read, which may refill the same arrays
        if kept_back is not None:
            if not held_feeds and fraction > 0 and count >= 2:
                held_feeds.append(kept_back)  # a copy already
            else:
                yield kept_back
        heldout.length = len(held_feeds)
        heldout.description = f"{len(held_feeds)} held out of {source.description}"

    return CalibrationSource(calibrate, None, False, source.description), heldout


def _own_copy(feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A feed kept past the next one is copied: a data reader may hand out the same arrays refilled each time."""
    return {name: np.array(value, copy=True) for name, value in feed.items()}


def remember_sample(
    source: CalibrationSource, count: Callable[[dict[str, np.ndarray]], int], max_bytes: int, seed: int = 0
) -> tuple[CalibrationSource, CalibrationSource]:
    """A one-pass source that keeps some of its samples in memory as they stream past, and those samples, in
    stream order, as a re-iterable source (complete once the stream has been read): what lets a step that reads a
    few samples several times (compensation) run on a generator or a data reader. ``count(first feed)`` says how
    many, no more than ``max_bytes``; they are drawn uniformly from the whole stream (reservoir sampling, seeded:
    the same stream keeps the same samples), not its first ones — a reader over a folder sorted by name would
    otherwise give one kind of image only. A stream no longer than ``count`` keeps every sample."""
    kept: dict[int, dict[str, np.ndarray]] = {}  # stream index → feed
    chosen = CalibrationSource(lambda: iter(ordered()), 0, True, f"samples of {source.description}")

    def ordered() -> list[dict[str, np.ndarray]]:
        return [kept[i] for i in sorted(kept)]

    chosen.fetch = lambda k: ordered()[k]

    def stream() -> Iterator[dict[str, np.ndarray]]:
        rng = np.random.default_rng(seed)
        wanted: int | None = None
        size = 0
        sizes: dict[int, int] = {}  # stream index → bytes of the feed kept
        for index, feed in enumerate(source):
            if wanted is None:
                wanted = count(feed)
            slot = index if len(kept) < wanted else int(rng.integers(0, index + 1))  # Algorithm R
            if slot < wanted:
                nbytes = sum(int(np.asarray(v).nbytes) for v in feed.values())
                evicted = sorted(kept)[slot] if len(kept) >= wanted else None
                freed = sizes.get(evicted, 0) if evicted is not None else 0
                if size - freed + nbytes <= max_bytes:
                    if evicted is not None:
                        del kept[evicted], sizes[evicted]
                    kept[index], sizes[index] = _own_copy(feed), nbytes
                    size += nbytes - freed
                    chosen.length = len(kept)
                    chosen.description = f"{len(kept)} samples drawn over {source.description}"
            yield feed

    return CalibrationSource(stream, source.length, False, source.description), chosen


# --------------------------------------------------------------------------------------------- statistics


@dataclass
class LayerStatistics:
    """Streaming statistics of the rows ``x`` (length ``Cin``) one 1×1 conv multiplies by its weight.

    ``gram = Σ x xᵀ`` (uncentred, float64), ``sum = Σ x``, ``rows`` = number of rows (pixels × batch),
    ``samples`` = number of samples (batch items) seen.
    """

    tensor: str
    stride: tuple[int, ...]
    gram: np.ndarray
    sum: np.ndarray
    rows: int = 0
    samples: int = 0

    @classmethod
    def empty(cls, tensor: str, stride: Sequence[int], cin: int) -> LayerStatistics:
        return cls(tensor, tuple(stride), np.zeros((cin, cin)), np.zeros(cin))

    @property
    def cin(self) -> int:
        return int(self.gram.shape[0])

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.rows, 1)

    def update(self, activation: np.ndarray) -> None:
        """Add one batch of the conv's input (``N × Cin × spatial…``), strided like the conv."""
        a = np.asarray(activation)
        if a.ndim < 2 or a.shape[1] != self.cin:
            raise TTGraphError(self.tensor, f"expected an activation N×{self.cin}×…, got shape {tuple(a.shape)}")
        if any(s != 1 for s in self.stride):
            a = a[(slice(None), slice(None), *(slice(None, None, s) for s in self.stride))]
        for sample in a:
            x = np.ascontiguousarray(sample.reshape(self.cin, -1), dtype=np.float64)
            with np.errstate(over="ignore", invalid="ignore"):  # an overflow is an error after the pass, not a warning
                self.gram += x @ x.T
                self.sum += x.sum(axis=1)
            self.rows += x.shape[1]
        self.samples += a.shape[0]

    def merge(self, other: LayerStatistics) -> LayerStatistics:
        """Statistics of both streams (for parallel or incremental calibration)."""
        if other.gram.shape != self.gram.shape:
            raise TTGraphError(self.tensor, f"cannot merge statistics of {other.cin} and {self.cin} channels")
        return LayerStatistics(
            self.tensor,
            self.stride,
            self.gram + other.gram,
            self.sum + other.sum,
            self.rows + other.rows,
            self.samples + other.samples,
        )

    def output_error(self, weight: np.ndarray, approx: np.ndarray) -> float:
        """``‖XWᵀ − XŴᵀ‖_F / ‖XWᵀ‖_F`` over the rows seen (exact, from the Gram matrix)."""
        return output_error(self.gram, weight, approx)


def output_error(
    gram: np.ndarray, weight: np.ndarray, approx: np.ndarray, reference: np.ndarray | None = None
) -> float:
    """``sqrt(tr(E G Eᵀ) / tr(W R Wᵀ))`` with ``E = W − Ŵ``: the relative output error on the data of ``G``
    (``R = reference`` defaults to ``G``; pass the uncentred Gram when ``G`` is of mean-corrected rows).

    >>> g = np.eye(3); w = np.eye(3)
    >>> round(output_error(g, w, np.diag([1.0, 1.0, 0.0])), 4)
    0.5774
    """
    w = np.asarray(weight, np.float64)
    e = w - np.asarray(approx, np.float64)
    num = float(np.sum((e @ gram) * e))
    den = float(np.sum((w @ (gram if reference is None else reference)) * w))
    num = max(num, 0.0)
    return math.sqrt(num / den) if den > 0 else math.sqrt(num)


@dataclass
class CalibrationStatistics:
    """Per-layer statistics (keyed by conv label) from one pass over calibration data."""

    layers: dict[str, LayerStatistics]
    samples: int
    seconds: float
    source: str = ""
    # model inputs whose every sample held one value throughout (black frames: a preprocessing slip): every layer
    # then fits them exactly at rank 1, and the errors read as perfect
    blank_inputs: list[str] = field(default_factory=list)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write to an ``.npz`` (reload with :meth:`load`; lets one calibration serve many budgets)."""
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {"samples": self.samples, "seconds": self.seconds, "source": self.source, "layers": {}}
        for k, (label, st) in enumerate(self.layers.items()):
            arrays[f"gram{k}"] = st.gram
            arrays[f"sum{k}"] = st.sum
            meta["layers"][label] = {
                "index": k,
                "tensor": st.tensor,
                "stride": list(st.stride),
                "rows": st.rows,
                "samples": st.samples,
            }
        import json

        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        tmp = Path(f"{os.fspath(path)}.tmp.npz")
        np.savez(tmp, **arrays)  # type: ignore[arg-type]  # numpy's stub: **arrays might name allow_pickle; no key does
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> CalibrationStatistics:
        import json

        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta"]).decode())
                layers = {
                    label: LayerStatistics(
                        info["tensor"],
                        tuple(info["stride"]),
                        z[f"gram{info['index']}"],
                        z[f"sum{info['index']}"],
                        int(info["rows"]),
                        int(info["samples"]),
                    )
                    for label, info in meta["layers"].items()
                }
        except (OSError, KeyError, ValueError) as err:
            raise TTGraphError(path, f"not a calibration statistics file: {err}") from err
        return cls(layers, int(meta["samples"]), float(meta["seconds"]), str(meta.get("source", "")))


def expose_tensors(
    model: onnx.ModelProto, tensors: Iterable[tuple[str, np.dtype]]
) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` whose graph also outputs ``tensors`` (name, dtype); returns it and the names to
    fetch. Tensors that already are graph outputs are fetched as they are; graph inputs are not outputs
    (read them from the feed)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    outputs = {o.name for o in exposed.graph.output}
    inputs = {i.name for i in exposed.graph.input}
    fetch: list[str] = []
    for name, dtype in tensors:
        if name in inputs or name in fetch:
            continue
        if name not in outputs:
            elem = onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
            exposed.graph.output.append(onnx.helper.make_tensor_value_info(name, elem, None))
            outputs.add(name)
        fetch.append(name)
    return exposed, fetch


def stream_activations(
    model: onnx.ModelProto,
    tensors: Sequence[tuple[str, np.dtype]],
    feeds: Iterable[Feed],
    *,
    threads: int | None = None,
) -> Iterator[tuple[Feed, dict[str, np.ndarray]]]:
    """Run ``model`` in onnxruntime on each feed; yield ``(feed, {tensor: value})`` for the wanted tensors.

    Intermediate tensors are exposed as extra graph outputs (see :func:`expose_tensors`); tensors that are
    graph inputs come from the feed, or from their initializer when it is a default the feed leaves alone.
    One feed's activations are alive at a time.
    """
    from ttgraph.verify import run_session, session

    exposed, fetch = expose_tensors(model, tensors)
    sess = session(exposed, threads)
    wanted = [name for name, _ in tensors]
    defaults = input_defaults(model, wanted)
    for feed in feeds:
        values = dict(zip(fetch, run_session(sess, fetch, feed, "calibration"), strict=True)) if fetch else {}
        out = {}
        for name in wanted:
            if name in values:
                out[name] = values[name]
            elif name in feed:
                out[name] = np.asarray(feed[name])
            elif name in defaults:
                out[name] = defaults[name]
            else:
                raise TTGraphError(name, "tensor is neither computed by the model nor in the feed")
        yield feed, out


@dataclass(frozen=True)
class ConvInput:
    """What :func:`collect_statistics` needs of a candidate conv (a PointwiseConv has all of it)."""

    label: str
    tensor: str
    stride: tuple[int, ...]
    cin: int
    dtype: np.dtype


def conv_inputs(convs: Iterable[Any]) -> list[ConvInput]:
    """The :class:`ConvInput` of each :class:`~passes.find_pointwise.PointwiseConv`."""
    return [ConvInput(c.label, c.node.inputs[0].name, tuple(c.strides), c.cin, np.dtype(c.weight_dtype)) for c in convs]


def _one_colour(sample: np.ndarray, layout: str) -> bool:
    """Whether an image batch (``N×C×H×W``, or ``N×H×W×C``) holds one value per channel: a black or white frame
    after per-channel normalization."""
    if sample.ndim != 4:
        return False
    corner = sample[:, :, :1, :1] if layout == "NCHW" else sample[:, :1, :1, :]
    return bool(np.all(sample == corner))


def collect_statistics(
    model: onnx.ModelProto,
    convs: Sequence[Any],
    feeds: Iterable[Feed],
    *,
    progress: bool = False,
    desc: str = "calibrate",
    threads: int | None = None,
    total: int | None = None,
) -> CalibrationStatistics:
    """One onnxruntime pass of the original ``model`` over ``feeds``, accumulating per candidate conv the
    :class:`LayerStatistics` of its input. ``convs`` are PointwiseConvs (or :class:`ConvInput`). Convs that
    read the same tensor with the same stride share one accumulator. A tqdm bar shows samples/s.
    """
    specs = [c if isinstance(c, ConvInput) else conv_inputs([c])[0] for c in convs]
    shared: dict[tuple[str, tuple[int, ...]], LayerStatistics] = {}
    for spec in specs:
        key = (spec.tensor, spec.stride)
        if key not in shared:
            shared[key] = LayerStatistics.empty(spec.tensor, spec.stride, spec.cin)
    tensors = list(dict.fromkeys((s.tensor, s.dtype) for s in specs))
    if total is None and hasattr(feeds, "length"):
        total = feeds.length  # type: ignore[union-attr]
    bar = progress_bar(total=total, desc=desc, unit="img", show=progress, leave=False, dynamic_ncols=True)
    start = time.perf_counter()
    samples = 0
    readers = {tensor: next(s.label for s in specs if s.tensor == tensor) for tensor, _ in tensors}
    # blank samples: the images one colour each, or every input one value throughout (a constant second input,
    # a scale factor or an RNN's zero state, is no sign of anything by itself)
    images = getattr(feeds, "images", None)
    flat: dict[str, bool] = {}  # per input of several numbers: has every sample so far been one value throughout?
    coloured = images is not None  # have all the image samples so far been one colour per channel?
    try:
        for feed, values in stream_activations(model, tensors, feeds, threads=threads):
            for name, value in feed.items():
                array = np.asarray(value)
                if array.size > 1 and array.dtype.kind in "biufc" and flat.get(name, True):
                    flat[name] = bool(array.min() == array.max())
                if images is not None and name == images[0] and coloured:
                    coloured = _one_colour(array, images[1].layout)
            for tensor, reader in readers.items():  # the model's own overflow (float16 ends at 65504), named
                if not np.isfinite(values[tensor]).all():
                    dtype = np.asarray(values[tensor]).dtype
                    limit = f" ({dtype} ends at {np.finfo(dtype).max:.5g})" if dtype.kind == "f" else ""
                    raise TTGraphError(
                        getattr(feeds, "description", "") or "calibration",
                        f"sample {samples}: the model's activation {tensor!r} holds inf or NaN{limit}: are the "
                        "samples scaled as the model expects?",
                        reader,
                    )
            for (tensor, _stride), st in shared.items():
                st.update(values[tensor])
            samples += 1
            bar.update(1)
    finally:
        bar.close()
    if samples == 0:
        hint = "" if getattr(feeds, "reiterable", True) else " (a generator or reader already read to its end?)"
        raise TTGraphError("calibration", "the calibration data gave no samples" + hint)
    layers = {s.label: shared[(s.tensor, s.stride)] for s in specs}
    for label, st in layers.items():  # float64 overflows near 1e154 per value: no fit can use such statistics
        if not np.isfinite(st.gram).all():
            raise TTGraphError(
                getattr(feeds, "description", "") or "calibration",
                "the activations overflow float64 statistics: are the samples scaled as the model expects?",
                label,
            )
    blank = list(flat) if flat and all(flat.values()) else [images[0]] if images is not None and coloured else []
    seconds = time.perf_counter() - start
    return CalibrationStatistics(layers, samples, seconds, getattr(feeds, "description", ""), blank)
