"""Peak memory of calibration: 256 images of 640×640 through the PP-OCRv4 detector, statistics streamed.

Renders the images (text pages and photo crops, ``tests/calib_material.py``) into a temporary folder, then
runs what ``ttgraph compress --calib FOLDER`` runs before decomposing: the image source with the
``paddleocr-det`` preprocessing and :func:`ttgraph.calibration.collect_statistics` over the 42 candidate
1×1 convs. Prints the peak RSS of this process (``ru_maxrss``) after loading the model and after calibration,
and the size of the statistics themselves. Memory must not grow with the number of images: compare
``--images 32`` with the default 256.

    python benchmarks/calibration_memory.py [--images 256] [--size 640] [--folder DIR]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def render(folder: Path, count: int, size: int) -> None:
    """Write the images one at a time (so they do not inflate this process's peak)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from PIL import Image

    from tests.calib_material import det_image

    start = time.perf_counter()
    for i in range(count):
        Image.fromarray(det_image("calib", i, size)).save(folder / f"img{i:04d}.png")
    print(f"rendered {count} images of {size}×{size} in {time.perf_counter() - start:.1f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=640)
    parser.add_argument("--folder", help="use (or fill, if empty) this folder instead of a temporary one")
    args = parser.parse_args()

    from ttgraph.api import _analyse
    from ttgraph.calibration import calibration_source, collect_statistics
    from ttgraph.examples import example_model
    from ttgraph.model_io import load_model

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder) if args.folder else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        if not any(folder.glob("*.png")):
            render(folder, args.images, args.size)
        model = load_model(example_model("det"), {"x": [1, 3, args.size, args.size]})
        _, found, _ = _analyse(model)
        source = calibration_source(folder, model, "paddleocr-det")
        baseline = peak_rss_mb()
        print(f"model loaded, {len(found.candidates)} candidate convs: peak RSS {baseline:.0f} MiB")
        stats = collect_statistics(model, found.candidates, source, progress=True)
        nbytes = sum(s.gram.nbytes + s.sum.nbytes for s in {id(s): s for s in stats.layers.values()}.values())
        print(
            f"calibrated {stats.samples} images in {stats.seconds:.1f} s "
            f"({stats.samples / stats.seconds:.2f} images/s); statistics hold {nbytes / 2**20:.1f} MiB"
        )
        peak = peak_rss_mb()
        print(f"peak RSS {peak:.0f} MiB (+{peak - baseline:.0f} MiB over the loaded model)")
        print("under 2 GB" if peak < 2048 else "OVER 2 GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
