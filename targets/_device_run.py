"""Run a TVM Relax library once on this machine's CPU: ``python _device_run.py LIB IN.npz OUT.npz``.

A standalone script (numpy and the TVM *runtime* only; no ttgraph, no tvm.relax) so it runs inside
the aarch64 Python under qemu set up by ``.ci/install-tvm-cross.sh``. Inputs are ``arr_0, arr_1, ...``
in graph-input order; outputs are written the same way.
"""

import sys
import time

import numpy as np
import tvm
from tvm.runtime.vm import VirtualMachine


def _flatten(value, out):
    if hasattr(value, "numpy"):
        out.append(value.numpy())
    elif type(value).__name__ in ("Shape", "ShapeTuple"):  # an ONNX Shape output
        out.append(np.asarray([int(d) for d in value], np.int64))
    else:
        for item in value:
            _flatten(item, out)
    return out


def main(lib_path: str, in_path: str, out_path: str) -> None:
    with np.load(in_path) as data:
        inputs = [data[f"arr_{i}"] for i in range(len(data.files))]
    dev = tvm.cpu(0)
    vm = VirtualMachine(tvm.runtime.load_module(lib_path), dev)
    start = time.perf_counter()
    result = vm["main"](*[tvm.runtime.tensor(x, dev) for x in inputs])
    outputs = _flatten(result, [])
    seconds = time.perf_counter() - start
    np.savez(out_path, *outputs)
    print(f"ran {lib_path}: {len(outputs)} output(s) in {seconds:.2f}s", file=sys.stderr)


if __name__ == "__main__":
    main(*sys.argv[1:4])
