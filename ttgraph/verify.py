"""Run the original and the rewritten model side by side in onnxruntime and measure how far apart they are."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx

from ttgraph.errors import TTGraphError
from ttgraph.model_io import (
    ModelSource,
    batch_one,
    default_inputs,
    fits_protobuf,
    graph_inputs,
    input_dims,
    load_model,
    source_name,
    static_dims,
    write_external,
)

Feed = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class OutputError:
    """Distance of one output from the original's, accumulated over all the inputs compared.

    ``max_rel`` is ``max|a−b| / max|a|``; ``rel_l2`` is ``‖a−b‖₂ / ‖a‖₂`` over everything compared;
    ``max_original`` is ``max|a|``: 0 says the comparison proved nothing (an all-zero output matches anything
    that is also zero there).
    """

    name: str
    max_abs: float
    max_rel: float
    rel_l2: float
    max_original: float

    def to_dict(self) -> dict[str, float | str]:
        return asdict(self)


THREADS_ENV = "TTGRAPH_THREADS"


def default_threads() -> int | None:
    """``$TTGRAPH_THREADS``: the onnxruntime threads of every session ttgraph opens (None: onnxruntime's default,
    every core) — a pipeline running several conversions side by side caps each one with it."""
    text = os.environ.get(THREADS_ENV, "").strip()
    if not text:
        return None
    if not text.isdigit() or int(text) < 1:
        raise TTGraphError(THREADS_ENV, f"expected a thread count ≥ 1, got {text!r}")
    return int(text)


def session(model: onnx.ModelProto, threads: int | None = None, name: str = "<model>"):  # -> ort.InferenceSession
    """An onnxruntime CPU session for an in-memory model; a model it rejects is a one-line error. ``threads``:
    onnxruntime's intra-op threads (default ``$TTGRAPH_THREADS``, else onnxruntime's own)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors reach the user as our one line, not as ORT log spam
    threads = threads or default_threads()
    if threads:
        options.intra_op_num_threads = threads
    try:
        if fits_protobuf(model):
            return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        with tempfile.TemporaryDirectory() as tmp:  # over 2 GB: onnxruntime needs a file with external data
            path = write_external(model, tmp, "model.onnx")
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises several unrelated types
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TTGraphError(name, f"onnxruntime cannot load the model: {first}") from err


def check_feed(
    inputs: Sequence[onnx.ValueInfoProto],
    feed: Mapping[str, Any],
    where: str,
    shape_hint: str = "",
    defaults: Collection[str] = (),
) -> None:
    """Raise a one-line :class:`TTGraphError` naming ``where`` unless ``feed`` has exactly the model's inputs,
    each a finite array of the input's element type and rank whose static dims match — before onnxruntime
    fails with a traceback (or NaNs reach an eigensolver). ``defaults``: the model's inputs with an initializer,
    which a feed may not override (ttgraph treats them as the constants they are by default)."""
    names = [i.name for i in inputs]
    if not isinstance(feed, Mapping):
        raise TTGraphError(where, f"expected a feed dict {{input name: array}}, got {type(feed).__name__}")
    extra = [k for k in feed if k not in names]
    missing = [n for n in names if n not in feed]
    if missing or extra:
        found = ", ".join(map(repr, feed)) or "nothing"
        # an input with a default (an initializer: a weight, say) is a constant to ttgraph, which may rewrite it
        held = [k for k in extra if k in defaults]
        fixed = f" ({', '.join(map(repr, held))}: a default the model holds fixed, leave it out)" if held else ""
        raise TTGraphError(where, f"a feed needs the model inputs {names}{fixed}, got {found}")
    for value in inputs:
        dims = input_dims(value)
        shape = tuple(np.shape(feed[value.name]))
        fits = len(shape) == len(dims) and all(d is None or d == s for d, s in zip(dims, shape, strict=True))
        if value.type.tensor_type.HasField("shape") and not fits:  # a declared shape of no dims: a scalar
            got = "×".join(map(str, shape)) or "scalar"
            expected = "×".join("?" if d is None else str(d) for d in dims) or "a scalar"
            raise TTGraphError(where, f"input {value.name!r} has shape {got}, the model expects {expected}{shape_hint}")
        array = np.asarray(feed[value.name])
        dtype, want = array.dtype, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type))
        if dtype != want and dtype.newbyteorder("=") == want:  # same type, other byte order: not readable as is
            raise TTGraphError(
                where,
                f"input {value.name!r} is {want} in the other byte order ({dtype.str}): convert it with "
                f".astype({want.name!r})",
            )
        if dtype != want:
            raise TTGraphError(where, f"input {value.name!r} is {dtype}, the model expects {want}")
        if dtype.kind in "fc" and not np.isfinite(array).all():
            raise TTGraphError(where, f"input {value.name!r} holds NaN or infinite values")


def random_feed(
    model: onnx.ModelProto, seed: int = 0, shapes: Mapping[str, Sequence[int]] | None = None
) -> dict[str, np.ndarray]:
    """One standard-normal input per graph input (uint8 and int8: uniform over the type's range, as an image's
    pixels; a standard normal cast to uint8 is nearly all 0, 1 and 255); an input's dims must be static or
    given in ``shapes`` (the shape the calibration samples had, say)."""
    rng = np.random.default_rng(seed)
    feed = {}
    for value in graph_inputs(model):
        dims = input_dims(value)
        fixed = static_dims(dims)
        if fixed is None and shapes and value.name in shapes:
            fixed = [int(d) for d in shapes[value.name]]
        fixed = batch_one(dims) if fixed is None else fixed  # a scalar's [] is static
        if fixed is None:
            raise TTGraphError("<model>", f"input {value.name!r} has dynamic dims {dims}; fix them with input_shapes")
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type)
        if dtype in (np.uint8, np.int8):
            info = np.iinfo(dtype)
            feed[value.name] = rng.integers(info.min, info.max, fixed, endpoint=True).astype(dtype)
        else:
            feed[value.name] = rng.standard_normal(fixed).astype(dtype)
    return feed


def feed_count(feeds: Any) -> int | None:
    """How many feeds a source holds, where it says (a ``length``, or ``len()``); None for a stream: what sizes a
    progress bar and picks samples spread over a source."""
    known = getattr(feeds, "length", None)
    if known is None and hasattr(feeds, "__len__"):
        known = len(feeds)
    return None if known is None else int(known)


def run_session(sess, names: list[str], feed: Feed, source: str) -> list[np.ndarray]:
    """``sess.run`` with onnxruntime's failure as a one-line error naming ``source`` (its message names the node)."""
    try:
        return sess.run(names, dict(feed))
    except Exception as err:  # onnxruntime's own error types; the message names the node
        raise TTGraphError(source, f"onnxruntime failed to run the model: {first_line(err)}") from err


def first_line(err: BaseException) -> str:
    """A runtime's error in one line: its first (onnxruntime's names the node), or the error's type."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def compare_outputs(
    original: ModelSource, rewritten: ModelSource, feeds: Iterable[Feed], source: str | None = None
) -> list[OutputError]:
    """Run both models (protos, paths or bytes) on every feed; per output, the error of the rewritten against
    the original.

    ``source`` names the original model in error messages (by default its path, or "<model>"). No feeds, or a
    feed the model cannot take, is an error (an empty comparison would read as a perfect one); a NaN in one
    output but not the other is an infinite difference.
    """
    source = source or source_name(original)
    if isinstance(feeds, Mapping) or not isinstance(feeds, Iterable):
        raise TTGraphError(
            source, f"expected a list of feed dicts, got {type(feeds).__name__} (one feed dict: wrap it in a list)"
        )
    if not isinstance(original, onnx.ModelProto):
        original = load_model(original, check=False)
    if not isinstance(rewritten, onnx.ModelProto):
        rewritten = load_model(rewritten, check=False)
    a, b = session(original, name=source), session(rewritten, name=f"{source} (rewritten)")
    names = [o.name for o in a.get_outputs()]
    inputs = graph_inputs(original)
    max_abs = dict.fromkeys(names, 0.0)
    peak = dict.fromkeys(names, 0.0)
    diff_sq = dict.fromkeys(names, 0.0)
    ref_sq = dict.fromkeys(names, 0.0)
    count = 0
    for count, feed in enumerate(feeds, 1):
        where = f"{source}: verification input {count - 1}"
        if not isinstance(feed, Mapping):
            raise TTGraphError(where, f"expected a feed dict {{input name: array}}, got {type(feed).__name__}")
        check_feed(inputs, feed, where, defaults=default_inputs(original))
        refs, gots = run_session(a, names, feed, source), run_session(b, names, feed, f"{source} (rewritten)")
        for name, ref, got in zip(names, refs, gots, strict=True):
            ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
            check_same_shape(name, ref, got, where)
            diff = abs_difference(ref, got)
            ref = np.where(np.isfinite(ref), ref, 0.0)
            max_abs[name] = max(max_abs[name], float(diff.max(initial=0.0)))
            peak[name] = max(peak[name], float(np.abs(ref).max(initial=0.0)))
            diff_sq[name] += float(np.sum(diff**2))
            ref_sq[name] += float(np.sum(ref**2))
    if count == 0:
        raise TTGraphError(source, "no verification inputs: nothing was compared")
    return [
        OutputError(
            name,
            max_abs[name],
            max_abs[name] / peak[name] if peak[name] > 0 else max_abs[name],
            float(np.sqrt(diff_sq[name] / ref_sq[name])) if ref_sq[name] > 0 else float(np.sqrt(diff_sq[name])),
            peak[name],
        )
        for name in names
    ]


def check_same_shape(name: str, ref: np.ndarray, got: np.ndarray, where: str) -> None:
    """Outputs of other shapes are no comparison: numpy would broadcast them into a number (1×1 against 16
    channels: a relative error of 1.24 one way round, 8.5 the other) or fail with its own error."""
    if np.shape(ref) != np.shape(got):
        shapes = [("×".join(map(str, np.shape(a))) or "scalar") for a in (ref, got)]
        raise TTGraphError(where, f"output {name!r} has shape {shapes[0]} in the original, {shapes[1]} in the other")


def abs_difference(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """``|ref − got|`` in float64 where equal values (an infinity of the same sign, NaN against NaN) differ by 0
    and any other NaN or infinity by ``inf``: a model whose outputs hold ±inf by design (a division by a zero
    scale) was infinitely wrong against an exact copy of itself."""
    ref, got = np.asarray(ref, np.float64), np.asarray(got, np.float64)
    with np.errstate(invalid="ignore"):  # inf − inf: handled here, not a warning for the caller
        diff = np.abs(ref - got)
    same = (ref == got) | (np.isnan(ref) & np.isnan(got))
    return np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))  # np.where keeps a scalar an array


def finite_peak(reference: np.ndarray) -> float:
    """``max |reference|`` over its finite values: the scale a relative error is taken against."""
    ref = np.asarray(reference, np.float64)
    return float(np.abs(np.where(np.isfinite(ref), ref, 0.0)).max(initial=0.0))


def relative_errors(reference: Sequence[np.ndarray], got: Sequence[np.ndarray]) -> list[float]:
    """Per output, ``max|got − ref| / max|ref|`` (plain max-abs where the reference is all zero): a compiled
    library against onnxruntime, or a model against itself on a nudged input."""
    if len(reference) != len(got):
        raise TTGraphError("outputs", f"expected {len(reference)} outputs, the library gave {len(got)}")
    errors = []
    for ref, val in zip(reference, got, strict=True):
        ref64, val64 = np.asarray(ref, np.float64), np.asarray(val, np.float64)
        if ref64.shape != val64.shape:
            raise TTGraphError("outputs", f"output shape {val64.shape} differs from onnxruntime's {ref64.shape}")
        diff = float(abs_difference(ref64, val64).max(initial=0.0))
        peak = finite_peak(ref64)
        errors.append(diff / peak if peak > 0 else diff)
    return errors
