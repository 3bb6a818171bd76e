"""Calibration sources (images, .npy/.npz, iterables, data readers), held-out splits and streamed statistics."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

import ttgraph
from tests.conftest import conv_model
from ttgraph.api import _analyse
from ttgraph.calibration import (
    PRESETS,
    CalibrationStatistics,
    Preprocess,
    calibration_source,
    collect_statistics,
    expose_tensors,
    holdout_indices,
    output_error,
    parse_preprocess,
    remember_sample,
    split_holdout,
)
from ttgraph.errors import TTGraphError


def two_conv_model(hw: tuple[int, int] = (8, 10)) -> onnx.ModelProto:
    """x → Conv 1×1 (6→5) → Relu → r (also a graph output) → Conv 1×1 stride 2 (5→4) → y."""
    rng = np.random.default_rng(3)
    inits = [
        numpy_helper.from_array(rng.standard_normal((5, 6, 1, 1)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal(5).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((4, 5, 1, 1)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c"], name="conv1", kernel_shape=[1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2", kernel_shape=[1, 1], strides=[2, 2]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, *hw])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4),
            helper.make_tensor_value_info("r", TensorProto.FLOAT, [None] * 4),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def feeds(n: int, shape=(1, 6, 8, 10), seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def test_gram_statistics_equal_the_activations_each_conv_reads():
    model = two_conv_model()
    _, found, _ = _analyse(model)
    data = feeds(5)
    stats = collect_statistics(model, found.candidates, calibration_source(data, model))
    w1 = numpy_helper.to_array(model.graph.initializer[0]).reshape(5, 6)
    b1 = numpy_helper.to_array(model.graph.initializer[1])
    x_rows = np.concatenate([f["x"][0].reshape(6, -1).T for f in data]).astype(np.float64)
    r = [np.maximum(np.einsum("oc,chw->ohw", w1, f["x"][0]) + b1[:, None, None], 0) for f in data]
    r_rows = np.concatenate([a[:, ::2, ::2].reshape(5, -1).T for a in r]).astype(np.float64)  # stride 2
    first, second = stats.layers["conv1"], stats.layers["conv2"]
    assert first.rows == 5 * 80 and second.rows == 5 * 20 and stats.samples == 5
    np.testing.assert_allclose(first.gram, x_rows.T @ x_rows, rtol=1e-6)
    np.testing.assert_allclose(second.gram, r_rows.T @ r_rows, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(second.mean, r_rows.mean(axis=0), rtol=1e-4, atol=1e-5)


def test_exposing_tensors_keeps_existing_outputs_and_leaves_graph_inputs_to_the_feed():
    model = two_conv_model()
    exposed, fetch = expose_tensors(model, [("x", np.float32), ("r", np.float32), ("c", np.float32)])
    names = [o.name for o in exposed.graph.output]
    assert names == ["y", "r", "c"]  # r was already an output: not added twice; x is a graph input
    assert fetch == ["r", "c"]
    assert [o.name for o in model.graph.output] == ["y", "r"]  # the original is untouched


def test_output_error_from_the_gram_matrix_is_the_measured_output_error():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 12)) @ rng.standard_normal((12, 12))
    w = rng.standard_normal((7, 12))
    approx = w + 0.1 * rng.standard_normal((7, 12))
    measured = np.linalg.norm(x @ w.T - x @ approx.T) / np.linalg.norm(x @ w.T)
    assert output_error(x.T @ x, w, approx) == pytest.approx(measured, rel=1e-9)


def test_statistics_round_trip_through_a_file(tmp_path):
    model = two_conv_model()
    _, found, _ = _analyse(model)
    stats = collect_statistics(model, found.candidates, feeds(2))
    stats.save(tmp_path / "stats.npz")
    back = CalibrationStatistics.load(tmp_path / "stats.npz")
    assert back.samples == 2 and set(back.layers) == {"conv1", "conv2"}
    np.testing.assert_array_equal(back.layers["conv2"].gram, stats.layers["conv2"].gram)
    assert back.layers["conv2"].stride == (2, 2)


# ------------------------------------------------------------------------------------------------ sources


def image_model(hw=(32, 48), channels=3) -> onnx.ModelProto:
    return conv_model(channels, 4, hw=hw)


def write_images(folder, count, size=(40, 60)):
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(count):
        arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"im{i:02d}.{'png' if i % 2 else 'jpg'}")
    return folder


def test_image_folder_is_read_sorted_resized_and_normalized(tmp_path):
    folder = write_images(tmp_path / "imgs", 5)
    model = image_model()
    source = calibration_source(folder, model, "imagenet")
    batches = list(source)
    assert len(source) == 5 and len(batches) == 5
    x = batches[0]["x"]
    assert x.shape == (1, 3, 32, 48) and x.dtype == np.float32
    img = np.asarray(Image.open(folder / "im00.jpg").convert("RGB").resize((48, 32), Image.BILINEAR), np.float32)
    expected = (img / 255 - np.array(PRESETS["imagenet"].mean)) / np.array(PRESETS["imagenet"].std)
    np.testing.assert_allclose(x[0].transpose(1, 2, 0), expected, rtol=1e-5, atol=1e-5)
    bgr = list(calibration_source(folder, model, "imagenet-bgr"))[0]["x"]
    assert not np.allclose(bgr, x)  # channel order matters


def test_images_fill_a_fixed_batch_in_order(tmp_path):
    folder = write_images(tmp_path / "imgs", 4)
    model = conv_model(3, 4, hw=(32, 48), batch=2)
    feeds_ = list(calibration_source(folder, model, "imagenet"))
    assert len(feeds_) == 2 and feeds_[1]["x"].shape == (2, 3, 32, 48)
    alone = list(calibration_source(folder, image_model(), "imagenet"))  # batch 1: one image per feed
    np.testing.assert_array_equal(feeds_[1]["x"][1], alone[3]["x"][0])
    (folder / "im03.png").unlink()
    with pytest.raises(TTGraphError, match="3 images do not fill batches of 2"):
        calibration_source(folder, model, "imagenet")


def test_images_feed_an_integer_input_raw_pixels(tmp_path):
    """A model that takes uint8 pixels normalises them itself: scaled to 0..1 they would all cast to 0."""
    folder = write_images(tmp_path / "imgs", 2)
    model = image_model()
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.UINT8
    cast = helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT)
    model.graph.node[0].input[0] = "xf"
    model.graph.node.insert(0, cast)
    (x,) = [feed["x"] for feed in calibration_source(folder, model)][:1]
    img = np.asarray(Image.open(folder / "im00.jpg").convert("RGB").resize((48, 32), Image.BILINEAR))
    assert x.dtype == np.uint8
    np.testing.assert_array_equal(x[0].transpose(1, 2, 0), img)
    with pytest.raises(TTGraphError, match=r"'x' is uint8: images feed it raw 0..255 pixels; give the raw preset"):
        calibration_source(folder, model, "imagenet")
    # keys that say nothing of scaling (the layout, the size) leave the pixels raw, as no keys at all do
    (keyed,) = [feed["x"] for feed in calibration_source(folder, model, "channels=rgb,size=32x48")][:1]
    np.testing.assert_array_equal(keyed, x)
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.INT8
    with pytest.raises(TTGraphError, match="^<model>: input 'x' is int8, which cannot hold 0..255 pixels"):
        calibration_source(folder, model)


def test_a_folder_means_its_visible_images_in_every_subfolder_symlinked_ones_too(tmp_path):
    (tmp_path / "data").mkdir()
    write_images(tmp_path / "data" / "a", 2)
    write_images(tmp_path / "elsewhere", 3)
    (tmp_path / "data" / "b").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    write_images(tmp_path / "data" / ".thumbnails", 2)  # a viewer's cache
    (tmp_path / "data" / "a" / "._im00.jpg").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    source = calibration_source(tmp_path / "data", image_model(), "imagenet")
    assert len(source) == 5 and len(list(source)) == 5
    spec = "RGB 32×48 NCHW, (pixels·0.003922 − (0.485, 0.456, 0.406)) / (0.229, 0.224, 0.225)"
    assert source.description == f"5 images in {tmp_path / 'data'}; {spec}"
    # links back up the tree (two of them looped os.walk for good) and a second name for an image: each
    # image once, so none can be both calibration and held-out
    (tmp_path / "data" / "a" / "up").symlink_to(tmp_path / "data", target_is_directory=True)
    (tmp_path / "data" / "self").symlink_to(tmp_path / "data", target_is_directory=True)
    (tmp_path / "data" / "again.jpg").symlink_to(tmp_path / "data" / "a" / "im00.jpg")
    assert len(calibration_source(tmp_path / "data", image_model(), "imagenet")) == 5
    (tmp_path / "data" / "gone.jpg").symlink_to(tmp_path / "moved.jpg")  # not quietly one image fewer
    with pytest.raises(TTGraphError, match=r"gone\.jpg: a link to .*moved\.jpg, which does not exist"):
        calibration_source(tmp_path / "data", image_model(), "imagenet")


def test_a_photo_is_read_the_way_up_its_exif_says():
    from PIL import Image

    stored = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 48, 3), dtype=np.uint8))
    exif = stored.getexif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to view
    import io

    buffer = io.BytesIO()
    stored.save(buffer, format="PNG", exif=exif)
    spec = PRESETS["imagenet"].with_size((48, 32))
    shown = stored.transpose(Image.Transpose.ROTATE_270)  # 32 wide, 48 high, as a viewer shows it
    np.testing.assert_allclose(spec.apply(Image.open(buffer)), spec.apply(shown), atol=1e-6)


@pytest.mark.parametrize(
    "spec", ["paddleocr-det,size=8x12", "imagenet,size=8x12,layout=nhwc", "channels=gray,size=8x12"]
)
def test_grey_level_noise_is_one_grey_level_of_the_image_within_its_range(spec):
    """In the image's own units the noise is -1, 0 or +1 grey level per pixel and channel, and never takes a
    pixel outside 0..255 (a black or white pixel moves one way only)."""
    pre = parse_preprocess(spec)
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (8, 12, 3)).astype(np.uint8)
    img[0], img[1] = 0, 255
    x = pre.apply(img)
    noisy = pre.grey_level_noise(seed=4)(x)
    assert noisy.dtype == x.dtype and noisy.shape == x.shape

    def grey(t):  # the preprocessing undone: channels in the model's order, grey levels
        t = t[0] if pre.layout == "NHWC" else t[0].transpose(1, 2, 0)
        return (t * np.asarray(pre.std) + np.asarray(pre.mean)) / pre.scale

    moved = grey(noisy) - grey(x)
    np.testing.assert_allclose(moved, np.round(moved), atol=1e-3)
    assert set(np.round(moved).ravel().tolist()) == {-1.0, 0.0, 1.0}
    assert grey(noisy).min() > -1e-3 and grey(noisy).max() < 255 + 1e-3
    assert np.all(moved[0] > -1e-3) and np.all(moved[1] < 1e-3)


def nhwc_model(hw=(32, 48)) -> onnx.ModelProto:
    """x (1×H×W×3, channels last, as TensorFlow exports) → Transpose → 1×1 Conv."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 3, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph(
        [
            helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
            helper.make_node("Conv", ["t", "w"], ["y"], kernel_shape=[1, 1]),
        ],
        "nhwc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *hw, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, *hw])],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_an_image_layout_the_input_plainly_is_not_is_named_as_a_layout_error(tmp_path):
    """An NCHW input read as NHWC used to be "the model input has 48 channels" (its width), or "dynamic
    height/width" when the width was dynamic; the error says which layout the input has."""
    folder = write_images(tmp_path / "imgs", 2)
    assert next(iter(calibration_source(folder, nhwc_model(), "imagenet,layout=nhwc")))["x"].shape == (1, 32, 48, 3)
    with pytest.raises(TTGraphError, match=r"^<model>: input 'x' is 1×32×48×3, channels last \(NHWC\): add layout"):
        calibration_source(folder, nhwc_model(), "imagenet")
    for model in (image_model(), conv_model(3, 4, hw=("h", "w"))):
        with pytest.raises(TTGraphError, match=r"^<model>: input 'x' is 1×3×.*channels first \(NCHW\), but"):
            calibration_source(folder, model, "imagenet,layout=nhwc")


def test_a_grey_model_read_with_a_colour_preset_says_to_add_channels_gray(tmp_path):
    folder = write_images(tmp_path / "imgs", 2)
    with pytest.raises(TTGraphError, match="1 channel, preprocessing gives 3: add channels=gray to preprocess"):
        calibration_source(folder, image_model(channels=1), "imagenet")
    grey = next(
        iter(calibration_source(folder, image_model(channels=1), "imagenet,channels=gray,mean=0.449,std=0.226"))
    )
    assert grey["x"].shape == (1, 1, 32, 48)


def test_samples_too_large_for_a_float16_input_are_named_not_blamed_on_the_file(tmp_path):
    """float32 samples over 65504 became infinities in the cast and read as "holds NaN or infinite values"."""
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float16), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"])],
        "half",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4, 4, 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    samples = np.ones((3, 3, 4, 4), np.float32)
    samples[1, 0, 0, 0] = 1e5
    np.save(tmp_path / "big.npy", samples)
    for data, where in (
        (tmp_path / "big.npy", r"big\.npy, sample 1, array 'x'"),
        (samples, "calibration array, sample 1"),
    ):
        source = calibration_source(data, model)
        with pytest.raises(TTGraphError, match=f"{where}: values up to 1e\\+05 do not fit the model input's float16"):
            list(source)
    assert next(iter(calibration_source(samples[:1], model)))["x"].dtype == np.float16


def test_dynamic_image_input_needs_a_size_and_says_so(tmp_path):
    folder = write_images(tmp_path / "imgs", 2)
    model = conv_model(3, 4, hw=("h", "w"))
    with pytest.raises(TTGraphError, match="size=HxW"):
        calibration_source(folder, model, "unit")
    x = list(calibration_source(folder, model, "unit,size=16x24"))[0]["x"]
    assert x.shape == (1, 3, 16, 24) and 0 <= x.min() and x.max() <= 1
    # a text-line preset knows what rapidocr feeds a dynamic model (it was refused: "give the image size"),
    # for the dims the model leaves free only
    assert list(calibration_source(folder, model, "paddleocr-cls"))[0]["x"].shape == (1, 3, 48, 192)
    tall = conv_model(3, 4, hw=(32, "w"))
    assert list(calibration_source(folder, tall, "paddleocr-rec"))[0]["x"].shape == (1, 3, 32, 320)
    assert list(calibration_source(folder, model, "paddleocr-rec,size=48x100"))[0]["x"].shape == (1, 3, 48, 100)


def test_preprocess_spec_parses_presets_and_overrides_and_rejects_nonsense():
    spec = parse_preprocess("paddleocr-det,size=640x640")
    assert spec.size == (640, 640) and spec.channels == "BGR" and spec.mean == PRESETS["imagenet"].mean
    spec = parse_preprocess("channels=gray,scale=1/255,mean=0.5,std=0.5,size=32")
    assert spec == Preprocess(size=(32, 32), channels="GRAY", scale=1 / 255, mean=(0.5,), std=(0.5,))
    for bad in ("nosuch", "size=abc", "scale=x", "color=red", "mean=1:2", "std=0"):
        with pytest.raises(TTGraphError, match="^preprocess: "):
            parse_preprocess(bad)
    with pytest.raises(TTGraphError, match=r"mean has 3 values; GRAY takes 1 value \(their average: mean=0.449\)"):
        parse_preprocess("imagenet,channels=gray")
    with pytest.raises(TTGraphError, match="size 100000x100000 is over the 268,435,456 pixels of an image"):
        parse_preprocess("size=100000x100000")


def test_npy_and_npz_files_feed_samples_along_axis_zero(tmp_path):
    model = conv_model(3, 4, hw=(5, 6), batch="n")
    arr = np.random.default_rng(0).standard_normal((7, 3, 5, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", arr)
    got = list(calibration_source(tmp_path / "x.npy", model))
    assert len(got) == 7 and got[3]["x"].shape == (1, 3, 5, 6)
    np.testing.assert_array_equal(got[3]["x"][0], arr[3])
    np.savez(tmp_path / "x.npz", x=arr)
    assert len(calibration_source(tmp_path / "x.npz", model)) == 7
    np.savez(tmp_path / "bad.npz", y=arr)
    with pytest.raises(TTGraphError, match="missing"):
        calibration_source(tmp_path / "bad.npz", model)
    np.savez(tmp_path / "typo.npz", x=arr, x_mask=arr)  # an extra array was left out without a word
    with pytest.raises(TTGraphError, match=r"typo.npz: arrays \['x_mask'\] are no input of the model"):
        calibration_source(tmp_path / "typo.npz", model)
    with pytest.raises(TTGraphError, match="no such file"):
        calibration_source(tmp_path / "nothere.npy", model)
    with pytest.raises(TTGraphError, match="^preprocess: applies to images; x.npy holds samples"):
        calibration_source(tmp_path / "x.npy", model, "imagenet")


def two_input_model(x_batch: int | str, s_dims: list[int | str]) -> onnx.ModelProto:
    """x[b,3,4,4] scaled per column by an input s (a [4] table, or batched like x), then a 1×1 conv."""
    w = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["m"]), helper.make_node("Conv", ["m", "w"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [x_batch, 3, 4, 4]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, s_dims),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [w],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_npz_arrays_give_samples_on_the_batch_axis_or_one_feed_value_per_leading_entry(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, 4, 4)).astype(np.float32)
    table = rng.standard_normal((6, 4)).astype(np.float32)
    np.savez(tmp_path / "stacked.npz", x=x, s=table)  # s is no batch: [4] per feed, stacked on a new axis 0
    got = list(calibration_source(tmp_path / "stacked.npz", two_input_model(1, [4])))
    assert len(got) == 6 and got[2]["s"].shape == (4,) and got[2]["x"].shape == (1, 3, 4, 4)
    np.testing.assert_array_equal(got[2]["s"], table[2])
    # batch 2 fixed on x, dynamic on s: s's rows split over x's 3 feeds
    np.savez(tmp_path / "batched.npz", x=x, s=x[:, :1])
    got = list(calibration_source(tmp_path / "batched.npz", two_input_model(2, ["n", 1, 4, 4])))
    assert len(got) == 3 and got[1]["s"].shape == (2, 1, 4, 4)
    np.testing.assert_array_equal(got[1]["s"], x[2:4, :1])
    np.savez(tmp_path / "fewer.npz", x=x, s=table[:5])
    with pytest.raises(TTGraphError, match=r"fewer\.npz: arrays disagree on the number of feeds \(x: 6, s: 5\)"):
        calibration_source(tmp_path / "fewer.npz", two_input_model(1, [4]))
    # s = [2, 1, 4] (an RNN state: its first dim is no batch) saved unstacked reads as batches of 2: 1 feed
    np.savez(tmp_path / "state.npz", x=x, s=table[:2, None])
    with pytest.raises(TTGraphError, match=r"the first dim of 's' is no batch .*new axis 0 .*: 6×2×1×4$"):
        calibration_source(tmp_path / "state.npz", two_input_model(1, [2, 1, 4]))
    np.savez(tmp_path / "both.npz", x=x, s=x[:3, :1])  # both batches dynamic: one sample of each per feed
    with pytest.raises(TTGraphError, match=r"arrays disagree on the number of samples \(x: 6, s: 3\)"):
        calibration_source(tmp_path / "both.npz", two_input_model("n", ["n", 1, 4, 4]))
    np.savez(tmp_path / "deep.npz", x=x, s=table[:, None, None])  # rank 4
    with pytest.raises(TTGraphError, match="array 's' has rank 4, the model input has rank 1: give samples"):
        calibration_source(tmp_path / "deep.npz", two_input_model(1, [4]))
    np.savez(tmp_path / "odd.npz", x=x[:5], s=table[:5])
    with pytest.raises(TTGraphError, match="array 'x': 5 samples do not fill batches of 2"):
        calibration_source(tmp_path / "odd.npz", two_input_model(2, [4]))


def test_an_array_in_memory_reads_like_a_npy_file(tmp_path):
    model = conv_model(3, 4, hw=(5, 6), batch="n")
    arr = np.random.default_rng(0).standard_normal((7, 3, 5, 6))  # float64, as numpy makes it
    np.save(tmp_path / "x.npy", arr)
    from_file, in_memory = list(calibration_source(tmp_path / "x.npy", model)), list(calibration_source(arr, model))
    assert [f["x"].dtype for f in in_memory] == [np.dtype(np.float32)] * 7
    for a, b in zip(from_file, in_memory, strict=True):
        np.testing.assert_array_equal(a["x"], b["x"])
    for bad in (arr.astype(np.uint8), arr.astype(np.complex64)):
        with pytest.raises(TTGraphError, match="give preprocessed samples"):
            calibration_source(bad, model)


class Reader:
    """An onnxruntime-style CalibrationDataReader."""

    def __init__(self, data):
        self.items = iter(data)

    def get_next(self):
        return next(self.items, None)


def test_a_data_reader_is_read_with_get_next_until_none():
    model = two_conv_model()
    data = feeds(4)
    source = calibration_source(Reader(data), model)
    assert source.length is None and not source.reiterable
    got = list(source)
    assert len(got) == 4
    np.testing.assert_array_equal(got[2]["x"], data[2]["x"])
    with pytest.raises(TTGraphError, match="only once"):
        list(source)


def test_holdout_is_disjoint_deterministic_and_spread():
    assert holdout_indices(32, 8) == [3, 7, 11, 15, 19, 23, 27, 31]
    assert holdout_indices(10, 0.2) == [4, 9] and holdout_indices(1, 0.5) == []
    for n, count in ((4, 4), (1, 1)):  # a count asked for is held out or refused, never quietly dropped
        with pytest.raises(TTGraphError, match=f"holding out {count} of {n} samples leaves none for calibration"):
            holdout_indices(n, count)
    data = feeds(10)
    calib, held = split_holdout(calibration_source(data, two_conv_model()), 0.2)
    ids = [id(f["x"]) for f in data]
    c = [ids.index(id(f["x"])) for f in calib]
    h = [ids.index(id(f["x"])) for f in held]
    assert h == [4, 9] and sorted(c + h) == list(range(10)) and len(calib) == 8
    assert [ids.index(id(f["x"])) for f in held] == h  # re-iterable, same again


def test_single_pass_sources_hold_out_their_first_feeds():
    data = feeds(6)
    calib, held = split_holdout(calibration_source(iter(data), two_conv_model()), 2)
    assert [np.array_equal(f["x"], d["x"]) for f, d in zip(held, data[:2], strict=True)] == [True, True]
    assert len(list(calib)) == 4
    # unknown length and a fraction: held out as they stream past (the defaults work with a generator)
    calib, held = split_holdout(calibration_source(iter(data), two_conv_model()), 0.5)
    assert held.length == 0
    assert [np.array_equal(f["x"], d["x"]) for f, d in zip(calib, data[0::2], strict=True)] == [True] * 3
    assert (
        held.length == 3
        and [np.array_equal(f["x"], d["x"]) for f, d in zip(held, data[1::2], strict=True)] == [True] * 3
    )
    with pytest.raises(TTGraphError, match="fraction must be in"):
        split_holdout(calibration_source(iter(data), two_conv_model()), 1.5)


def test_a_reader_that_refills_one_array_keeps_distinct_held_out_samples():
    """An onnxruntime data reader may hand out the same array refilled for every sample: the samples kept for
    later (held out, or kept for compensation) are copies, not all the last sample."""

    class Refilling:
        def __init__(self) -> None:
            self.buffer = np.zeros((1, 6, 8, 10), np.float32)
            self.left = 6

        def get_next(self):
            if not self.left:
                return None
            self.left -= 1
            self.buffer[...] = self.left
            return {"x": self.buffer}

    for holdout in (2, 0.5, 0.1):
        calib, held = split_holdout(calibration_source(Refilling(), two_conv_model()), holdout)
        fitted = [float(f["x"].flat[0]) for f in calib]  # read as calibration reads them: before the next sample
        kept = [float(f["x"].flat[0]) for f in held]
        # each sample in one part exactly: with 0.1, the one kept back behind the next read (held out, as the
        # stream was too short) had been overwritten by it, and the first sample fitted twice, the held one too
        assert sorted(fitted + kept) == [0, 1, 2, 3, 4, 5] and sorted(kept) in ([4, 5], [0, 2, 4], [0]), holdout
    calib, kept = remember_sample(calibration_source(Refilling(), two_conv_model()), lambda feed: 3, 1 << 20)
    list(calib)
    values = [float(f["x"].flat[0]) for f in kept]  # the stream counts down from 5: three of them, in its order
    assert len(set(values)) == 3 and values == sorted(values, reverse=True)


def test_samples_kept_from_a_stream_are_drawn_over_all_of_it_in_its_order():
    """A data reader over a folder sorted by name gives one kind of image first: the samples compensation keeps
    from a stream are drawn over the whole of it (the same ones every time), not its first ones; a stream no
    longer than the count keeps them all."""
    data = feeds(60)

    def kept_indices(stream_of: list, count: int) -> list[int]:
        calib, kept = remember_sample(calibration_source(iter(stream_of), two_conv_model()), lambda f: count, 1 << 30)
        assert sum(1 for _ in calib) == len(stream_of)  # the stream itself passes on whole
        return [next(i for i, d in enumerate(stream_of) if d["x"] is not f["x"] and np.array_equal(d["x"], f["x"]))
                for f in kept]  # fmt: skip

    drawn = kept_indices(data, 6)
    assert len(drawn) == 6 and drawn == sorted(drawn) and drawn[-1] >= 30
    assert kept_indices(data, 6) == drawn
    assert kept_indices(data[:5], 6) == [0, 1, 2, 3, 4]


def test_a_short_stream_still_holds_out_its_last_sample():
    """With the default fraction 0.1, a stream of fewer than 10 samples held out none before, and the report
    had no verification at all: like a known length (``holdout_indices(5, 0.1) == [4]``) its last one is."""
    data = feeds(5)
    calib, held = split_holdout(calibration_source(iter(data), two_conv_model()), 0.1)
    assert [np.array_equal(f["x"], d["x"]) for f, d in zip(calib, data[:4], strict=True)] == [True] * 4
    assert held.length == 1 and np.array_equal(next(iter(held))["x"], data[4]["x"])
    calib, held = split_holdout(calibration_source(iter(data[:1]), two_conv_model()), 0.1)
    assert len(list(calib)) == 1 and held.length == 0  # one sample: it calibrates


def test_bad_calibration_inputs_are_one_line_errors(tmp_path):
    model = two_conv_model()
    (tmp_path / "empty").mkdir()
    with pytest.raises(TTGraphError, match="no image files"):
        calibration_source(tmp_path / "empty", model)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(TTGraphError, match="expected a folder of images"):
        calibration_source(tmp_path / "notes.txt", model)
    with pytest.raises(TTGraphError, match="expected a path"):
        calibration_source(42, model)
    with pytest.raises(TTGraphError, match="no samples"):
        collect_statistics(model, _analyse(model)[1].candidates, [])


@pytest.mark.parametrize(
    ("feed", "needle"),
    [
        ({"x": np.ones((1, 6, 8, 9), np.float32)}, r"input 'x' has shape 1×6×8×9, the model expects 1×6×8×10"),
        ({"x": np.ones((6, 8, 10), np.float32)}, r"input 'x' has shape 6×8×10, the model expects 1×6×8×10"),
        ({"x": np.ones((1, 6, 8, 10))}, r"input 'x' is float64, the model expects float32"),
        ({"image": np.ones((1, 6, 8, 10), np.float32)}, r"a feed needs the model inputs \['x'\], got 'image'"),
    ],
)
def test_feeds_that_do_not_fit_the_model_are_one_line_errors_naming_the_sample(feed, needle):
    """Checked before onnxruntime sees them (it would raise a multi-line error from deep in a pass)."""
    model = two_conv_model()
    good = feeds(3)
    source = calibration_source([*good, feed], model)
    with pytest.raises(TTGraphError, match=f"4 feed dicts, sample 3: {needle}"):
        collect_statistics(model, _analyse(model)[1].candidates, source)
    with pytest.raises(TTGraphError, match=needle):  # a held-out split reads single samples with fetch
        list(split_holdout(calibration_source([*good, feed], model), 1)[1])


def test_a_npy_file_of_the_wrong_image_size_names_the_file(tmp_path):
    model = two_conv_model()
    np.save(tmp_path / "lines.npy", np.zeros((4, 6, 8, 12), np.float32))
    source = calibration_source(tmp_path / "lines.npy", model)
    needle = r"lines\.npy, sample 0: input 'x' has shape 1×6×8×12, the model expects 1×6×8×10"
    with pytest.raises(TTGraphError, match=needle):
        collect_statistics(model, _analyse(model)[1].candidates, source)


def test_sixteen_bit_images_are_scaled_and_wider_ones_refused(tmp_path):
    """``convert("RGB")`` alone clips 16-bit grey to 0..255 (every value above 255 white): they are scaled
    instead; 32-bit integer and float images have no agreed scale and are refused, naming the file."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.fromarray(np.array([[0, 257, 1028, 65535]] * 2, np.uint16)).save(folder / "a16.png")
    model = image_model(hw=(2, 4))
    (x,) = [f["x"] for f in calibration_source(folder, model, "unit")]
    np.testing.assert_allclose(x[0, 0, 0], [0, 1 / 255, 4 / 255, 1], atol=1e-6)
    Image.fromarray(np.full((2, 4), 0.5, np.float32)).save(folder / "b.tif")
    with pytest.raises(TTGraphError, match=r"b\.tif: a floating-point image has no 0\.\.255 scale"):
        list(calibration_source(folder, model, "unit"))
    (folder / "b.tif").unlink()
    # Pillow opens a signed 16-bit TIFF as 32-bit "I": the message names what the file holds
    (folder / "c.tif").write_bytes(_signed_16_bit_tiff(4, 2, [-3, -2, -1, 0, 1, 2, 300, 3000]))
    with pytest.raises(TTGraphError, match=r"c\.tif: a signed 16-bit integer image has no 0\.\.255 scale"):
        list(calibration_source(folder, model, "unit"))


def _signed_16_bit_tiff(width: int, height: int, values: list[int]) -> bytes:
    """A one-strip, uncompressed greyscale TIFF of signed 16-bit samples (SampleFormat 2), written by hand:
    Pillow cannot write one."""
    import struct

    data = struct.pack(f"<{len(values)}h", *values)
    entries = [(256, width), (257, height), (258, 16), (259, 1), (262, 1), (273, None), (277, 1)]
    entries += [(278, height), (279, len(data)), (339, 2)]
    start = 8 + 2 + 12 * len(entries) + 4  # the pixels follow the header and the one directory
    out = b"II*\0" + struct.pack("<IH", 8, len(entries))
    for tag, value in entries:
        out += struct.pack("<HHII", tag, 4, 1, start if value is None else value)  # every field a LONG
    return out + struct.pack("<I", 0) + data


def test_an_image_whose_header_claims_a_huge_size_is_a_one_line_error(tmp_path):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    folder = tmp_path / "imgs"
    folder.mkdir()
    header = struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0)  # 9e8 grey pixels: PIL's bomb guard
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")
    (folder / "bomb.png").write_bytes(png)
    with pytest.raises(TTGraphError, match=r"bomb\.png: cannot read as an image: .*decompression bomb"):
        list(calibration_source(folder, image_model(hw=(2, 4)), "unit"))


@pytest.mark.parametrize(
    ("name", "content", "needle"),
    [
        ("empty.npy", b"", r"cannot read as \.npy: No data left"),
        ("empty.npz", b"", r"cannot read as \.npz: No data left"),
        ("zip.npz", b"PK\x03\x04garbage", r"cannot read as \.npz: File is not a zip file"),
        ("objects.npz", None, r"cannot read array 'x': not a numeric array file"),
        ("complex.npy", None, r"array 'x' is complex64, the model input is float32"),
    ],
)
def test_array_files_that_cannot_be_read_are_one_line_errors(tmp_path, name, content, needle):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    elif name == "objects.npz":
        np.savez(path, x=np.array([None] * 4, dtype=object))
    else:
        np.save(path, np.ones((4, 6, 8, 10), np.complex64))
    with pytest.raises(TTGraphError, match=needle):
        list(calibration_source(path, two_conv_model()))


def test_an_image_size_the_fixed_input_cannot_take_is_refused_before_reading_images(tmp_path):
    folder = write_images(tmp_path / "imgs", 2)
    with pytest.raises(TTGraphError, match=r"size=9999x9999, but the model input 'x' is 32x48"):
        calibration_source(folder, image_model(), "unit,size=9999x9999")  # no 400 MB resize first
    assert list(calibration_source(folder, image_model(), "unit,size=32x48"))  # the input's own size is fine


def test_preprocessing_given_with_samples_that_are_not_images_is_refused():
    """The CLI refuses --preprocess with a .npy; the library did the same for paths but ignored it for feed
    dicts and readers, leaving the caller believing it was applied."""
    with pytest.raises(TTGraphError, match=r"preprocess: applies to images; list calibration data is fed as it is"):
        calibration_source(feeds(3), two_conv_model(), "unit")


def test_a_palette_image_with_transparency_is_read_without_warnings(tmp_path):
    import warnings

    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (8, 12, 4), dtype=np.uint8), "RGBA")
    image.convert("RGBA").quantize(16).save(tmp_path / "p.png", transparency=bytes(range(0, 256, 16)))
    assert isinstance(Image.open(tmp_path / "p.png").info.get("transparency"), bytes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's advice on such images would be a second line on stderr
        x = PRESETS["imagenet"].with_size((8, 12)).apply(Image.open(tmp_path / "p.png"))
    assert x.shape == (1, 3, 8, 12)


def test_a_conv_reading_an_input_with_a_default_is_calibrated_on_that_default():
    """IR ≥ 4: an initializer listed as an input too is a default the feeds may leave out; a 1×1 conv that
    reads it sees that value, and so must its statistics and the compensation's."""
    rng = np.random.default_rng(0)
    default = rng.standard_normal((1, 16, 8, 8)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["z", "w"], ["h"], name="a"), helper.make_node("Add", ["h", "x"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 32, 8, 8]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 16, 8, 8]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 32, 8, 8])],
        [
            numpy_helper.from_array(rng.standard_normal((32, 16, 1, 1)).astype(np.float32), "w"),
            numpy_helper.from_array(default, "z"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    calib = [{"x": rng.standard_normal((1, 32, 8, 8)).astype(np.float32)} for _ in range(6)]
    result = ttgraph.compress(model, calibration=calib, macs_ratio=0.5, holdout=2)
    stats = collect_statistics(model, _analyse(model)[1].candidates, calib[:1])
    gram = default.transpose(0, 2, 3, 1).reshape(-1, 16).astype(np.float64)
    np.testing.assert_allclose(stats.layers["a"].gram, gram.T @ gram, rtol=1e-6)
    assert [i.name for i in result.model.graph.input] == ["x", "z"]  # still a default the caller may feed


# ------------------------------------------------- what a deployment engineer's image folder holds (found probing)


def test_transparent_pixels_are_white_not_what_they_happen_to_hold(tmp_path):
    """Black text on a transparent page (RGB all 0, the text only in alpha) read as a black page: the alpha
    channel was dropped. It is composited onto white, as rapidocr's own image loader does."""
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[1:3, 2:4, 3] = 255  # the "text": opaque black; everything else transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    Image.fromarray(rgba[:, :, [0, 3]], "LA").save(tmp_path / "la.png")
    for name in ("t.png", "la.png"):
        x = PRESETS["unit"].with_size((4, 6)).apply(Image.open(tmp_path / name))
        text = np.zeros((4, 6), bool)
        text[1:3, 2:4] = True
        np.testing.assert_array_equal(x[0, 0], np.where(text, 0.0, 1.0))


def test_a_sixteen_bit_pgm_is_scaled_like_a_sixteen_bit_png(tmp_path):
    """Pillow opens a PGM of maxval 65535 as 32-bit "I", which was refused as having no 0..255 scale."""
    values = np.array([[0, 257, 1028, 65535]] * 2, np.uint16)
    header = b"P5\n4 2\n65535\n"
    (tmp_path / "a.pgm").write_bytes(header + values.astype(">u2").tobytes())
    Image.fromarray(values).save(tmp_path / "a.png")
    spec = PRESETS["unit"].with_size((2, 4))
    pgm, png = spec.apply(Image.open(tmp_path / "a.pgm")), spec.apply(Image.open(tmp_path / "a.png"))
    np.testing.assert_array_equal(pgm, png)
    np.testing.assert_allclose(pgm[0, 0, 0], [0, 1 / 255, 4 / 255, 1], atol=1e-6)


def test_a_folder_reads_every_raster_format_pillow_opens_and_counts_the_files_it_skips(tmp_path):
    """.pnm, .jp2 or .tga images were dropped without a word (20 of 22 in one probe: the model was fitted to one
    image). The suffixes now come from Pillow's registry, and the description counts what was left out."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    arr = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    for name in ("a.pnm", "b.tga", "c.jp2", "d.PNG", "e.ppm"):
        Image.fromarray(arr).save(folder / name)
    (folder / "notes.txt").write_text("not an image")
    (folder / "f.heic").write_bytes(b"\0" * 16)
    (folder / "g.heic").write_bytes(b"\0" * 16)
    (folder / ".hidden.png").write_bytes(b"")
    source = calibration_source(folder, image_model(hw=(8, 12)), "unit")
    assert len(list(source)) == 5
    assert source.description.startswith(f"5 images in {folder}; 3 other files skipped (.heic ×2, .txt); RGB 8×12")
    (folder / "a.pnm").rename(folder / "a.pnm.bak")
    only = tmp_path / "none"
    only.mkdir()
    (only / "x.heic").write_bytes(b"\0")
    with pytest.raises(TTGraphError, match=r"none: no image files \(bmp, .*\) in this folder; 1 other file skipped"):
        calibration_source(only, image_model(hw=(8, 12)), "unit")


def test_unreadable_image_files_say_why_without_repeating_the_path(tmp_path):
    folder = tmp_path / "imgs"
    write_images(folder, 2)
    (folder / "z0.png").write_bytes(b"")
    with pytest.raises(TTGraphError) as err:
        list(calibration_source(folder, image_model(), "unit"))
    assert err.value.one_line().endswith("z0.png: cannot read as an image: the file is empty")
    (folder / "z0.png").write_text("<html>not a picture</html>")
    with pytest.raises(TTGraphError) as err:
        list(calibration_source(folder, image_model(), "unit"))
    assert err.value.one_line().endswith("z0.png: cannot read as an image: not an image file Pillow can read")
    assert err.value.one_line().count("z0.png") == 1


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("", "empty: give a preset"),
        (" , ", "empty: give a preset"),
        ("paddleocr-cls,scale=0", "scale must be non-zero"),
        ("scale=nan", "scale, mean and std must be finite"),
        ("mean=inf", "scale, mean and std must be finite"),
        ("std=1e-40", "scale, mean and std take pixels to 1e\\+40, beyond float32"),
    ],
)
def test_preprocessing_that_cannot_make_a_real_input_is_refused_when_parsed(spec, needle):
    """scale=0 made every image the same input (and a report of a perfect compensation); nan/inf failed only at
    the first sample, blaming the sample rather than the option; an empty spec silently meant RGB/255."""
    with pytest.raises(TTGraphError, match=f"^preprocess: {needle}"):
        parse_preprocess(spec)


def test_a_calibration_file_that_is_neither_image_nor_array_is_named_as_such_with_preprocess_too(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(TTGraphError, match="notes.txt: expected a folder of images, an image, a .npy or a .npz"):
        calibration_source(notes, image_model(), "unit")


def test_the_paddleocr_cls_preset_pads_a_line_as_rapidocr_does():
    """Found probing: the preset stretched every line to 48×192, while rapidocr (the pipeline the classifier ships
    in) keeps a line's aspect ratio and pads it on the right; the original's answer differed on 5 of 32 lines
    between the two. Compared with rapidocr's own resize_norm_img (cv2's bilinear resize, not Pillow's: the
    pixels differ a little, the layout not at all)."""
    from types import SimpleNamespace

    from rapidocr_onnxruntime.ch_ppocr_cls.text_cls import TextClassifier

    from tests.calib_material import text_line_image

    line = next(img for img in (text_line_image(s, False) for s in range(50)) if img.shape[1] < 3.5 * img.shape[0])
    ours = PRESETS["paddleocr-cls"].with_size((48, 192)).apply(line)[0]
    theirs = TextClassifier.resize_norm_img(SimpleNamespace(cls_image_shape=[3, 48, 192]), line[:, :, ::-1].copy())
    fitted = int(np.ceil(48 * line.shape[1] / line.shape[0]))
    assert ours.shape == theirs.shape == (3, 48, 192) and fitted < 192
    assert not ours[:, :, fitted:].any() and not theirs[:, :, fitted:].any()
    assert np.abs(ours - theirs).mean() < 0.05
    stretched = dataclasses.replace(PRESETS["paddleocr-cls"], resize="stretch").with_size((48, 192)).apply(line)[0]
    assert np.abs(stretched - theirs).mean() > 4 * np.abs(ours - theirs).mean()
    assert parse_preprocess("paddleocr-cls,resize=stretch").resize == "stretch"
    with pytest.raises(TTGraphError, match="^preprocess: resize must be stretch or pad, got 'crop'"):
        parse_preprocess("unit,resize=crop")


def test_the_report_names_the_held_out_images(tmp_path):
    """Held-out images are picked by sorted name: the report says which, so a fidelity figure can be traced to
    the pages it was measured on (evenly spread picks can land on one kind of image)."""
    from ttgraph.commands.compress import render

    folder = write_images(tmp_path / "imgs", 5)
    result = ttgraph.compress(
        conv_model(3, 16, hw=(32, 48)), calibration=folder, preprocess="imagenet", holdout=2, params_ratio=0.9
    )
    assert result.report.calibration["heldout_names"] == ["im02.jpg", "im04.jpg"]  # holdout_indices(5, 2)
    assert "held out: im02.jpg, im04.jpg" in render(result.report)
    arrays = ttgraph.compress(
        conv_model(3, 16, hw=(8, 8)), calibration=np.ones((4, 1, 3, 8, 8), np.float32), holdout=1, params_ratio=0.9
    )
    assert arrays.report.calibration["heldout_names"] is None  # an array in memory: its samples have no names
    # a file's samples are named by their rows in it: x.npz[3]; [2:4] where the model takes two per feed
    np.savez(tmp_path / "x.npz", x=np.ones((6, 3, 8, 8), np.float32))
    one = ttgraph.compress(conv_model(3, 16, hw=(8, 8)), calibration=tmp_path / "x.npz", holdout=1, params_ratio=0.9)
    two = ttgraph.compress(
        conv_model(3, 16, hw=(8, 8), batch=2), calibration=tmp_path / "x.npz", holdout=1, params_ratio=0.9
    )
    assert one.report.calibration["heldout_names"] == ["x.npz[5]"]
    assert two.report.calibration["heldout_names"] == ["x.npz[4:6]"]


def test_images_read_without_a_preprocessing_say_the_default_was_used(tmp_path):
    """Without --preprocess a folder was read as RGB pixels/255, with no mean or std, and only the formula in
    the summary said so: wrong for most third-party models, and easy to miss."""
    folder = write_images(tmp_path / "imgs", 2)
    described = calibration_source(folder, image_model(), None).description
    assert (
        "(the default: no preprocessing was given; a preset such as imagenet says what the model expects)" in described
    )
    assert "the default" not in calibration_source(folder, image_model(), "imagenet").description


def test_samples_grouped_by_a_fixed_batch_dim_say_how_they_run(tmp_path):
    """'calibration: 12 samples … (24 samples in x.npy)': the model's batch of 2 groups the file's samples."""
    arr = np.zeros((24, 3, 5, 6), np.float32)
    np.save(tmp_path / "x.npy", arr)
    model = conv_model(3, 4, hw=(5, 6), batch=2)
    assert calibration_source(tmp_path / "x.npy", model).description == "24 samples in x.npy, run as 12 batches of 2"
    assert calibration_source(arr, model).description == "24 samples in an array, run as 12 batches of 2"
    assert calibration_source(arr, conv_model(3, 4, hw=(5, 6), batch="n")).description == "24 samples in an array"


def _scaled_conv_model(hw=(8, 8)) -> onnx.ModelProto:
    """A 1×1 conv times a scalar input (an audio model's sample rate, a detector's score threshold)."""
    w = np.random.default_rng(0).standard_normal((16, 16, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Mul", ["c", "s"], ["y"])],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, *hw]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, *hw])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_scalar_input_stays_a_scalar_from_an_npz_file(tmp_path):
    """Each sample of a scalar input is one value of its array: it was read back as shape (1,), and the run
    failed with "input 's' has rank 0, --input-shape gives 1 dims" — a flag nobody had given."""
    rng = np.random.default_rng(1)
    x, s = rng.standard_normal((12, 1, 16, 8, 8)), rng.uniform(0.5, 2, 12)
    np.savez(tmp_path / "c.npz", x=x.astype(np.float32), s=s.astype(np.float32))
    model = _scaled_conv_model(("h", "w"))  # dynamic: the samples' shapes are the ones MACs are counted at
    result = ttgraph.compress(model, calibration=tmp_path / "c.npz", macs_ratio=0.5, holdout=2)
    assert result.report.layers[0].format != "dense"
    assert [d.dim_value for d in result.model.graph.input[1].type.tensor_type.shape.dim] == []


def test_a_feed_of_rank_one_for_a_scalar_input_is_refused():
    model = _scaled_conv_model()
    feed = {"x": np.zeros((1, 16, 8, 8), np.float32), "s": np.ones(1, np.float32)}
    with pytest.raises(TTGraphError, match="input 's' has shape 1, the model expects a scalar"):
        ttgraph.compress(model, rank_ratio=1.0, verify_feeds=[feed])


def test_a_calibration_source_given_as_is_is_checked_like_any_other_and_left_as_it_was():
    """The README lists CalibrationSource among the forms calibration takes: its feeds skipped the checks
    (a NaN sample read 'the activations overflow float64 statistics')."""
    import ttgraph
    from ttgraph.calibration import CalibrationSource

    bad = [{"x": np.full((1, 6, 8, 10), np.nan, np.float32)}] * 4
    mine = CalibrationSource(lambda: iter(bad), 4, True, "my source")
    opened = mine.open
    with pytest.raises(TTGraphError, match=r"my source, sample 0: input 'x' holds NaN or infinite values"):
        ttgraph.compress(two_conv_model(), calibration=mine, macs_ratio=0.5)
    assert mine.open is opened  # not rewired to the check


def test_a_float16_model_whose_activations_overflow_names_the_sample_and_tensor():
    """A loud sample took a float16 model's activation past 65504: the error blamed 'float64 statistics', named
    neither the sample nor the tensor, and a numpy RuntimeWarning reached stderr beside it."""
    import warnings

    import ttgraph

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((8, 8, 1, 1)) * 300).astype(np.float16)
    w2 = rng.standard_normal((8, 8, 1, 1)).astype(np.float16)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["a"], name="conv1"),
            helper.make_node("Relu", ["a"], ["r"]),
            helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2"),
        ],
        "fp16",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 8, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 8, 4, 4])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)])
    data = [{"x": rng.standard_normal((1, 8, 4, 4)).astype(np.float16)} for _ in range(8)]
    data[3]["x"] *= np.float16(60)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails the test
        with pytest.raises(
            TTGraphError, match=r"sample 3: the model's activation 'r' holds inf or NaN \(float16 ends at 65504\)"
        ):
            ttgraph.compress(model, calibration=data, params_ratio=0.5, holdout=0)


def test_a_lazy_dataset_is_read_once_per_pass_not_first_for_a_type_check():
    """A Sequence that decodes on __getitem__ (a dataset class) was read in full once only to check its items
    are dicts: every image decoded twice. A list in memory is still checked before any work."""
    from collections.abc import Sequence

    import ttgraph

    data = feeds(12)

    class Lazy(Sequence):
        def __init__(self) -> None:
            self.loads = 0

        def __len__(self) -> int:
            return len(data)

        def __getitem__(self, i):  # type: ignore[override]
            self.loads += 1
            return data[i] if i != 7 or not broken else [data[i]["x"]]

    broken = False
    lazy = Lazy()
    ttgraph.compress(two_conv_model(), calibration=lazy, params_ratio=0.75, holdout=0, compensate=False)
    assert lazy.loads == 12
    broken = True
    with pytest.raises(TTGraphError, match="calibration: item 7 is a list, expected a feed dict"):
        ttgraph.compress(two_conv_model(), calibration=Lazy(), params_ratio=0.75, holdout=0, compensate=False)
    with pytest.raises(TTGraphError, match="calibration: item 2 is a int, expected a feed dict"):
        calibration_source([data[0], data[1], 5], two_conv_model())


def test_blank_calibration_samples_are_a_warning_not_a_perfect_score(tmp_path):
    """Black or white frames (a preprocessing slip) fit every layer exactly at rank 1: calibration error 0,
    held-out rel L2 1e-7, no note — and 0.39 to 0.61 off on real inputs."""
    import ttgraph
    from ttgraph.commands.compress import render
    from ttgraph.report_html import render_html

    model = conv_model(3, 16, hw=(16, 16))
    for k in range(6):
        Image.new("RGB", (16, 16), (255, 255, 255)).save(tmp_path / f"white{k}.png")
    white = ttgraph.compress(model, calibration=tmp_path, preprocess="imagenet", params_ratio=0.75, holdout=2)
    black = ttgraph.compress(model, calibration=np.zeros((6, 3, 16, 16), np.float32), params_ratio=0.75, holdout=2)
    real = ttgraph.compress(
        model, calibration=np.random.default_rng(0).random((6, 3, 16, 16), np.float32), params_ratio=0.75, holdout=2
    )
    assert white.report.calibration["blank_inputs"] == ["x"] == black.report.calibration["blank_inputs"]
    assert real.report.calibration["blank_inputs"] == []
    # one colour per channel, not one axis of change: a grey gradient or stripes are real images (they were flagged)
    for k in range(6):
        ramp = np.tile(np.linspace(0, 255, 16, dtype=np.uint8)[None, :, None], (16, 1, 3))
        Image.fromarray(ramp if k % 2 else ramp.transpose(1, 0, 2).copy()).save(tmp_path / f"white{k}.png")
    ramps = ttgraph.compress(model, calibration=tmp_path, preprocess="imagenet", params_ratio=0.75, holdout=2)
    assert ramps.report.calibration["blank_inputs"] == []
    rows = np.broadcast_to(np.arange(16, dtype=np.float32)[None, None, :, None], (6, 3, 16, 16)).copy()
    assert (
        ttgraph.compress(model, calibration=rows, params_ratio=0.75, holdout=2).report.calibration["blank_inputs"] == []
    )
    warning = "warning: every calibration sample of input 'x' was blank, one colour per channel or one value"
    assert warning in render(white.report) and warning not in render(real.report)
    assert "Warning: every calibration sample of input &#x27;x&#x27; was blank" in render_html(black.report)


def test_a_constant_second_input_beside_real_samples_is_no_blank_calibration():
    """PaddleDetection's scale_factor, an RNN's zero state: the same value in every sample of one input while the
    images vary. It was a warning that the figures 'say nothing of real inputs'."""
    import ttgraph

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 16, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["xs"]), helper.make_node("Conv", ["xs", "w"], ["y"], name="conv")],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 6, 6]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, [1, 16, 1, 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 6, 6])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_operatorsetid("", 17)])
    rng = np.random.default_rng(1)
    ones = np.ones((1, 16, 1, 1), np.float32)
    real = [{"x": rng.standard_normal((1, 16, 6, 6)).astype(np.float32), "s": ones} for _ in range(8)]
    blank = [{"x": np.zeros((1, 16, 6, 6), np.float32), "s": ones} for _ in range(8)]
    assert ttgraph.compress(model, calibration=real, params_ratio=0.75).report.calibration["blank_inputs"] == []
    assert ttgraph.compress(model, calibration=blank, params_ratio=0.75).report.calibration["blank_inputs"] == [
        "x",
        "s",
    ]
