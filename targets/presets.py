"""Named compile targets: what TVM target dict each name means, how its library is linked and exported.

A preset is data only (this module does not import TVM), so ``ttgraph compile --list-targets`` works
where TVM is not installed. A user may instead give a TVM target dict as JSON; :func:`resolve_target`
then infers the linker and the export format from its ``kind`` and ``mtriple``.

>>> resolve_target("arm64-linux").cross_compiler
'aarch64-linux-gnu-g++'
>>> resolve_target('{"kind": "llvm", "mtriple": "aarch64-linux-android"}').export_format
'.tar'
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ttgraph.errors import TTGraphError

#: Debian package that provides each cross compiler (named in the error when it is missing).
CROSS_PACKAGES: dict[str, str] = {
    "aarch64-linux-gnu-g++": "g++-aarch64-linux-gnu",
    "arm-linux-gnueabihf-g++": "g++-arm-linux-gnueabihf",
}


@dataclass(frozen=True)
class TargetPreset:
    """One way to build: the TVM target, the linker and the library format.

    ``export_format`` is ``".so"`` (a shared library, loadable by the TVM runtime on the device) or
    ``".tar"`` (the object files, to be linked elsewhere, e.g. by an Android NDK). ``cross_compiler``
    is the C++ driver that links the ``.so`` (``None``: the host compiler). ``ndk`` marks Android
    targets: their ``.so`` needs the NDK compiler in ``$TVM_NDK_CC``.
    """

    name: str
    description: str
    target: Mapping[str, Any]
    export_format: str = ".so"
    cross_compiler: str | None = None
    ndk: bool = False
    aliases: tuple[str, ...] = field(default=())

    @property
    def kind(self) -> str:
        return str(self.target["kind"])

    @property
    def is_cuda(self) -> bool:
        return self.kind == "cuda"

    @property
    def cross_package(self) -> str | None:
        """The Debian package that provides :attr:`cross_compiler`, if known."""
        return CROSS_PACKAGES.get(self.cross_compiler or "")

    @property
    def runs_here(self) -> bool:
        """Whether a library for this target can be loaded by this machine's CPU runtime."""
        if self.kind != "llvm" or self.cross_compiler or self.ndk:
            return False
        triple = str(self.target.get("mtriple", ""))
        return not triple or triple.split("-")[0] == platform.machine()

    def target_json(self) -> str:
        return json.dumps(dict(self.target), sort_keys=True)


def _cuda(arch: str, gpus: str) -> TargetPreset:
    return TargetPreset(
        name=f"cuda-{arch.replace('_', '')}",
        description=f"NVIDIA {gpus}; CUDA kernels (dlight default schedules), x86-64 host code",
        # 48 KiB is the static shared-memory limit of every CUDA GPU; dlight warns when it is unset.
        target={"kind": "cuda", "arch": arch, "max_shared_memory_per_block": 49152, "host": {"kind": "llvm"}},
    )


_PRESETS: tuple[TargetPreset, ...] = (
    TargetPreset(
        name="x86_64",
        description="this machine: x86-64 Linux CPU, shared library linked with the host C++ compiler",
        target={"kind": "llvm"},
        aliases=("host",),
    ),
    TargetPreset(
        name="arm64-linux",
        description="64-bit ARM Linux (Raspberry Pi 4/5, Jetson CPU, Graviton), NEON; .so via aarch64 g++",
        target={"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]},
        cross_compiler="aarch64-linux-gnu-g++",
    ),
    TargetPreset(
        name="arm64-android",
        description="64-bit Android phones (arm64-v8a), NEON; .tar of objects to link with the NDK",
        target={"kind": "llvm", "mtriple": "aarch64-linux-android", "mattr": ["+neon"]},
        export_format=".tar",
        ndk=True,
    ),
    TargetPreset(
        name="arm64-android-a76",
        description="Android phones with Cortex-A76 or newer cores: ARMv8.2-A + dotprod; .tar for the NDK",
        target={
            "kind": "llvm",
            "mtriple": "aarch64-linux-android",
            "mcpu": "cortex-a76",
            "mattr": ["+neon", "+v8.2a", "+dotprod"],
        },
        export_format=".tar",
        ndk=True,
    ),
    TargetPreset(
        name="armv7-android",
        # The NDK's armeabi-v7a ABI passes floats in core registers ("softfp"); hard-float objects
        # would not link with it. NEON and VFP instructions are still used inside functions.
        description="32-bit Android (armeabi-v7a), NEON, softfp calling convention; .tar for the NDK",
        target={"kind": "llvm", "mtriple": "armv7a-linux-androideabi", "mattr": ["+neon"]},
        export_format=".tar",
        ndk=True,
    ),
    TargetPreset(
        name="armv7-linux",
        description="32-bit ARM Linux, hard float (armhf), NEON; .so via arm-linux-gnueabihf g++",
        target={"kind": "llvm", "mtriple": "armv7a-linux-gnueabihf", "mattr": ["+neon"], "mfloat-abi": "hard"},
        cross_compiler="arm-linux-gnueabihf-g++",
    ),
    _cuda("sm_75", "Turing GPUs (T4, RTX 20xx)"),
    _cuda("sm_80", "Ampere GPUs (A100, A30)"),
    _cuda("sm_90", "Hopper GPUs (H100, H200)"),
)

PRESETS: dict[str, TargetPreset] = {p.name: p for p in _PRESETS}
_ALIASES: dict[str, str] = {alias: p.name for p in _PRESETS for alias in p.aliases}


def list_targets() -> list[TargetPreset]:
    """All presets, in the order ``--list-targets`` shows them."""
    return list(_PRESETS)


def format_targets() -> str:
    """The ``--list-targets`` table: name, export format, description, TVM target."""
    width = max(len(p.name) for p in _PRESETS)
    lines = []
    for p in _PRESETS:
        lines.append(f"{p.name:<{width}}  {p.export_format:<4}  {p.description}")
        lines.append(f"{'':<{width}}        {p.target_json()}")
    lines.append("")
    lines.append('or a TVM target dict as JSON, e.g. --target \'{"kind": "llvm", "mcpu": "skylake-avx512"}\'')
    return "\n".join(lines)


def resolve_target(spec: str | Mapping[str, Any]) -> TargetPreset:
    """A preset name, a JSON object text or a dict → the :class:`TargetPreset` to build with."""
    if isinstance(spec, Mapping):
        return preset_from_dict(spec)
    if not isinstance(spec, str):
        raise TTGraphError("target", f"expected a preset name or a JSON object, got {type(spec).__name__}")
    text = spec.strip()
    name = _ALIASES.get(text, text)
    if name in PRESETS:
        return PRESETS[name]
    if text.startswith(("{", "[", '"')) or text in ("null", "true", "false") or text[:1].isdigit():
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise TTGraphError(
                "target", f"malformed JSON target: {err.msg} at line {err.lineno} column {err.colno}"
            ) from err
        if not isinstance(value, dict):
            raise TTGraphError("target", f'a JSON target must be an object like {{"kind": "llvm"}}, got {text!r}')
        return preset_from_dict(value)
    known = ", ".join(PRESETS)
    raise TTGraphError("target", f"unknown target preset {text!r}; expected one of {known}, or a JSON target dict")


def preset_from_dict(target: Mapping[str, Any]) -> TargetPreset:
    """A custom preset for a user's TVM target dict; linker and format follow from kind and mtriple."""
    kind = target.get("kind")
    if not isinstance(kind, str) or not kind:
        raise TTGraphError("target", f'JSON target needs a string "kind" (e.g. "llvm"), got {dict(target)}')
    target = json.loads(json.dumps(dict(target)))  # a plain, detached copy; fails early on odd values
    triple = str(target.get("mtriple", "")) if kind == "llvm" else ""
    arch = triple.split("-")[0]
    export_format, cross, ndk = ".so", None, False
    if kind == "llvm" and triple:
        if "android" in triple:
            export_format, ndk = ".tar", True
        elif arch in ("aarch64", "arm64") and "linux" in triple:
            cross = "aarch64-linux-gnu-g++"
        elif arch.startswith(("arm", "thumb")) and "gnueabihf" in triple:
            cross = "arm-linux-gnueabihf-g++"
        elif arch != platform.machine() or "linux" not in triple:
            export_format = ".tar"  # no linker known for it (another arch, or Windows/macOS): hand over the objects
    return TargetPreset(
        name="custom",
        description=f"user target {json.dumps(target, sort_keys=True)}",
        target=target,
        export_format=export_format,
        cross_compiler=cross,
        ndk=ndk,
    )
