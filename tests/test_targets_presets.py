"""Target presets, JSON targets and the compile/bench CLI's input checks: none of this needs TVM."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

import pytest
from tvm_helpers import pointwise_model, resize_model

from targets.cli import add_parser
from targets.compile import compile_model
from targets.presets import PRESETS, list_targets, resolve_target
from ttgraph.errors import TTGraphError

EXPECTED = {
    "x86_64": (".so", None),
    "arm64-linux": (".so", "aarch64-linux-gnu-g++"),
    "arm64-android": (".tar", None),
    "arm64-android-a76": (".tar", None),
    "armv7-android": (".tar", None),
    "armv7-linux": (".so", "arm-linux-gnueabihf-g++"),
    "cuda-sm75": (".so", None),
    "cuda-sm80": (".so", None),
    "cuda-sm90": (".so", None),
}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ttgraph")
    add_parser(parser.add_subparsers(dest="command"))
    return parser


def test_every_preset_has_a_description_a_target_dict_and_an_export_format():
    assert [p.name for p in list_targets()] == list(EXPECTED)
    for preset in list_targets():
        fmt, cross = EXPECTED[preset.name]
        assert preset.description and "\n" not in preset.description
        assert preset.export_format == fmt
        assert preset.cross_compiler == cross
        assert json.loads(preset.target_json())["kind"] in ("llvm", "cuda")
    assert PRESETS["armv7-linux"].target["mfloat-abi"] == "hard"
    assert "+dotprod" in PRESETS["arm64-android-a76"].target["mattr"]
    assert PRESETS["cuda-sm90"].target["host"] == {"kind": "llvm"}
    assert PRESETS["arm64-linux"].cross_package == "g++-aarch64-linux-gnu"
    assert PRESETS["armv7-linux"].cross_package == "g++-arm-linux-gnueabihf"


def test_json_target_dict_gets_its_linker_and_format_from_kind_and_triple():
    a64 = resolve_target('{"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}')
    assert (a64.name, a64.export_format, a64.cross_compiler) == ("custom", ".so", "aarch64-linux-gnu-g++")
    android = resolve_target({"kind": "llvm", "mtriple": "aarch64-linux-android", "mcpu": "cortex-x1"})
    assert android.export_format == ".tar" and android.ndk
    cuda = resolve_target('{"kind": "cuda", "arch": "sm_86", "host": {"kind": "llvm"}}')
    assert cuda.is_cuda and cuda.export_format == ".so"
    assert resolve_target("host").name == "x86_64"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("arm64-iphone", "unknown target preset 'arm64-iphone'"),
        ('{"kind": "llvm", "mtriple": }', "malformed JSON target"),
        ('["llvm"]', 'a JSON target must be an object like {"kind": "llvm"}'),
        ('{"mtriple": "aarch64-linux-gnu"}', 'needs a string "kind"'),
    ],
)
def test_bad_target_is_a_one_line_error(spec, message):
    with pytest.raises(TTGraphError) as info:
        resolve_target(spec)
    assert message in str(info.value)
    assert info.value.source == "target"  # the keyword; the command line names --target
    assert "\n" not in info.value.one_line()


def test_missing_cross_compiler_names_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no cross compiler (nor anything else) on PATH
    model = pointwise_model()
    for preset, package in (("arm64-linux", "g++-aarch64-linux-gnu"), ("armv7-linux", "g++-arm-linux-gnueabihf")):
        with pytest.raises(TTGraphError) as info:
            compile_model(model, preset, tmp_path / "m.so")
        assert package in str(info.value) and info.value.source == preset
    assert list(tmp_path.iterdir()) == []


def test_output_suffix_must_match_the_targets_export_format(tmp_path, monkeypatch):
    model = pointwise_model()
    with pytest.raises(TTGraphError, match=r"exports a \.tar of objects"):
        compile_model(model, "arm64-android", tmp_path / "m.zip")
    monkeypatch.delenv("TVM_NDK_CC", raising=False)
    with pytest.raises(TTGraphError, match="TVM_NDK_CC"):
        compile_model(model, "arm64-android", tmp_path / "m.so")
    with pytest.raises(TTGraphError, match=r"name the output \*\.so"):
        compile_model(model, "x86_64", tmp_path / "m.tar")
    with pytest.raises(TTGraphError, match="does not exist"):
        compile_model(model, "x86_64", tmp_path / "missing" / "m.so")


def test_tuning_a_target_this_machine_cannot_run_is_refused(tmp_path):
    with pytest.raises(TTGraphError, match="tuning measures candidates on this machine"):
        compile_model(pointwise_model(), "armv7-android", tmp_path / "m.tar", tune=8)


def test_list_targets_prints_every_preset(capsys):
    args = _parser().parse_args(["compile", "--list-targets"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    for name in EXPECTED:
        assert name in out


def test_compile_without_a_model_is_an_error():
    args = _parser().parse_args(["compile", "--target", "x86_64"])
    with pytest.raises(TTGraphError, match="expected a MODEL"):
        args.func(args)


def test_bench_needs_one_remote_and_a_key_with_a_tracker(capsys):
    parser = _parser()
    args = parser.parse_args(["bench", "m.onnx", "--target", "arm64-linux"])  # one model: a device is needed
    with pytest.raises(TTGraphError, match="--rpc/--tracker"):
        args.func(args)
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "m.onnx", "--target", "arm64-linux", "--rpc", "a:1", "--tracker", "b:2"])
    args = parser.parse_args(["bench", "m.onnx", "--target", "arm64-linux", "--tracker", "127.0.0.1:9190"])
    with pytest.raises(TTGraphError, match="needs --key"):
        args.func(args)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"input_shapes": {"x": [1, 16, 16.5, 16]}}, r"input_shapes\['x'\]: expected an integer, got 16.5"),
        ({"input_shapes": {"x": [True, 16, 16, 16]}}, r"input_shapes\['x'\]: expected an integer, got True"),
        ({"input_shapes": {"x": "1,16,16,16"}}, "expected a list of integer dims"),
        ({"tune": "2"}, "^tune: expected a number of trials"),
    ],
)
def test_library_options_are_checked_not_truncated(tmp_path, kwargs, needle):
    with pytest.raises(TTGraphError, match=needle):
        compile_model(pointwise_model(), "x86_64", tmp_path / "m.so", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_link_says_what_the_linker_said():
    from targets.compile import _linker_reason

    output = (
        "Compilation error:\n/usr/lib/gcc-cross/arm-linux-gnueabihf/12/../../../../arm-linux-gnueabihf/bin/ld: error: "
        "/tmp/x.so uses VFP register arguments, /tmp/w/lib0.o does not\n"
        "/usr/lib/gcc-cross/arm-linux-gnueabihf/12/../../../../arm-linux-gnueabihf/bin/ld: failed to merge target "
        "specific data of file /tmp/w/lib0.o\ncollect2: error: ld returned 1 exit status\n"
    )
    reason = _linker_reason(RuntimeError(output))
    assert reason.startswith("ld: error: /tmp/x.so uses VFP register arguments, /tmp/w/lib0.o does not; ld: failed")
    assert reason.endswith('(an armv7 hard-float target needs "mfloat-abi": "hard")')
    assert "collect2" not in reason


@pytest.mark.parametrize(
    ("preset", "ndk_cc", "needle"),
    [
        (
            "armv7-android",
            None,
            "TVM_NDK_CC is not set: set it to e.g. .../toolchains/llvm/prebuilt/linux-x86_64/bin/"
            "armv7a-linux-androideabi28-clang++",
        ),
        ("arm64-android", "/missing/clang++", "TVM_NDK_CC='/missing/clang++' is not found"),
        ("arm64-android", "g++", "'g++' is a GNU/host compiler, not the Android NDK's"),
        ("arm64-android", "aarch64-linux-gnu-g++", "is a GNU/host compiler"),
    ],
)
def test_an_android_link_needs_the_ndks_own_compiler_for_its_abi(tmp_path, monkeypatch, preset, ndk_cc, needle):
    """armv7 was told to use aarch64-linux-android28-clang++; a TVM_NDK_CC that was not found was told to set it;
    g++ failed deep in the link, and a glibc cross compiler wrote a .so that needs libc.so.6 (Android has none)."""
    if ndk_cc is None:
        monkeypatch.delenv("TVM_NDK_CC", raising=False)
    else:
        monkeypatch.setenv("TVM_NDK_CC", ndk_cc)
    if ndk_cc and ndk_cc != "/missing/clang++" and not shutil.which(ndk_cc):
        pytest.skip(f"{ndk_cc} is not installed here")
    with pytest.raises(TTGraphError, match=re.escape(needle)):
        compile_model(pointwise_model(), preset, tmp_path / "m.so")
    assert list(tmp_path.iterdir()) == []


def test_an_android_default_output_is_the_so_that_tvm_ndk_cc_links(tmp_path, monkeypatch, capsys):
    """With $TVM_NDK_CC set (even to a path that is not there) a compile without -o wrote the .tar anyway and
    never looked at it; the README promises a .so then."""
    import onnx

    from ttgraph.cli import main

    model = tmp_path / "m.onnx"
    onnx.save(pointwise_model(), model)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TVM_NDK_CC", "/missing/clang++")
    assert main(["compile", str(model), "-t", "arm64-android"]) == 2
    assert (
        "m.arm64-android.so: a .so for arm64-android must be linked by the Android NDK's clang++ and "
        "TVM_NDK_CC='/missing/clang++' is not found" in capsys.readouterr().err
    )
    monkeypatch.delenv("TVM_NDK_CC")
    from targets.cli import _default_output

    assert _default_output("m.onnx", "arm64-android") == Path("m.arm64-android.tar")


def test_a_compile_output_named_by_a_link_is_checked_by_the_file_it_writes(tmp_path):
    """-o tarlink.so → lib.tar: the suffix was checked on the link and TVM exported by the target's, a .tar of
    objects written where a .so was asked for, exit 0."""
    (tmp_path / "tarlink.so").symlink_to(tmp_path / "lib.tar")
    with pytest.raises(TTGraphError, match=re.escape("lib.tar: target x86_64 exports a .so library")):
        compile_model(pointwise_model(), "x86_64", tmp_path / "tarlink.so")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tarlink.so"]


def test_a_cxx_with_arguments_is_refused_before_the_build(tmp_path, monkeypatch):
    """TVM runs $CXX as one program name: 'g++ -O2' (or 'ccache g++') failed after the whole build with
    'cannot write the library: No such file or directory'."""
    monkeypatch.setenv("CXX", "g++ -O2")
    with pytest.raises(TTGraphError, match=re.escape("CXX: 'g++ -O2': TVM runs $CXX as one program")):
        compile_model(pointwise_model(), "x86_64", tmp_path / "m.so")
    monkeypatch.delenv("CXX")
    monkeypatch.setenv("CC", "ccache gcc")  # the variable the user set is the one named
    with pytest.raises(TTGraphError, match=re.escape("CC: 'ccache gcc': TVM runs $CC as one program")):
        compile_model(pointwise_model(), "x86_64", tmp_path / "m.so")


def test_a_failed_link_reports_the_linkers_errors_not_its_warnings():
    from targets.compile import _linker_reason

    err = RuntimeError(
        "Compilation error:\n/usr/bin/ld: warning: lib0.o: missing .note.GNU-stack section implies executable stack\n"
        "/usr/bin/ld: NOTE: This behaviour is deprecated and will be removed in a future version of the linker\n"
        "/usr/bin/ld: lib0.o: in function `main':\nlib0.c:(.text+0x1a): undefined reference to `__chkstk'\n"
        "collect2: error: ld returned 1 exit status"
    )
    assert (
        _linker_reason(err) == "ld: lib0.o: in function `main':; lib0.c:(.text+0x1a): undefined reference to `__chkstk'"
    )


@pytest.mark.parametrize(
    ("triple", "export"),
    [
        ("x86_64-pc-windows-msvc", ".tar"),
        ("x86_64-apple-darwin", ".tar"),
        ("x86_64-unknown-linux-gnu", ".so"),
        ("aarch64-linux-android", ".tar"),
    ],
)
def test_a_json_target_for_another_os_exports_objects_not_a_linux_link(triple, export):
    """An x86-64 Windows or macOS triple was linked as a Linux .so with this machine's g++ (and failed with ld's
    warnings), and its .tar refused."""
    import platform

    if triple.startswith("x86_64") and platform.machine() != "x86_64":
        pytest.skip("the host-linked case is this machine's arch")
    assert resolve_target(json.dumps({"kind": "llvm", "mtriple": triple})).export_format == export


def test_errors_name_keywords_in_the_library_and_flags_on_the_command_line(tmp_path, capsys):
    """``ttgraph.compile`` told a library caller to "give --tune N or --tune-minutes M" and blamed "--tracker" for
    its ``tune_tracker=`` keyword; the command line must still name its own flags for the same mistakes."""
    import onnx

    from ttgraph.cli import main

    model = tmp_path / "m.onnx"
    onnx.save(pointwise_model(), model)
    with pytest.raises(TTGraphError) as info:
        compile_model(model, "x86_64", tmp_path / "a.so", tune_tracker="127.0.0.1:9190", tune_key="k")
    assert (
        info.value.one_line() == "tune_tracker: measures tuning candidates on a device: give tune=N or tune_minutes=M"
    )
    with pytest.raises(TTGraphError, match="^tune_db=False: tuning keeps its records in a database: leave it out$"):
        compile_model(model, "x86_64", tmp_path / "a.so", tune=1, tune_db=False)

    cases = [
        (
            ["--tracker", "127.0.0.1:9190", "--key", "k"],
            "--tracker: measures tuning candidates on a device: give --tune N or --tune-minutes M",
        ),
        (["--tune", "1", "--no-tune-db"], "--no-tune-db: tuning keeps its records in a database: leave it out"),
        (["--target", "x86"], "--target: unknown target preset 'x86'"),
    ]
    for flags, message in cases:
        assert main(["compile", str(model), "-o", str(tmp_path / "a.so"), *flags]) == 2
        assert f"ttgraph: error: {message}" in capsys.readouterr().err
    dynamic = tmp_path / "dynamic.onnx"
    onnx.save(resize_model(), dynamic)
    assert main(["compile", str(dynamic), "-o", str(tmp_path / "d.so")]) == 2
    assert "give a fixed shape, e.g. --input-shape x=1,2,H,W" in capsys.readouterr().err
    with pytest.raises(TTGraphError, match=r"e\.g\. input_shapes=\{'x': \(1, 2, H, W\)\}$"):
        compile_model(dynamic, "x86_64", tmp_path / "d.so")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dynamic.onnx", "m.onnx"]


def test_keywords_given_values_become_flags_only_in_that_form(tmp_path, monkeypatch):
    """Plain words ("tune", "target", "key") stay prose; ``tune=N`` is ``--tune N``, ``tune_db=False``
    ``--no-tune-db``, and a quoted input name is left alone."""
    err = TTGraphError(
        "tune", "tune the target with tune=N, tune_minutes=M or tune_db=False; the key 'tune=3' stays; rpc=H:P key=K"
    )
    assert err.one_line(flags=True) == (
        "--tune: tune the target with --tune N, --tune-minutes M or --no-tune-db; the key 'tune=3' stays; "
        "--rpc H:P --key K"
    )
    # prose, paths and what the user typed stay as they are (they read "expected --key value", "--tune-db/m.onnx")
    for source, what in [
        ("--preprocess", "expected key=value, got 'foo' (a preset goes first)"),
        ("m.onnx", "output path is the input file tune_db/m.onnx; see /tmp/holdout/logs"),
        ("m.onnx", "output path is the input file key=v1/m.onnx"),
        ("--target", "LLVM knows no CPU feature +key=1 here"),
    ]:
        assert TTGraphError(source, what).one_line(flags=True) == f"{source}: {what}"
    # a file named like a keyword is named as it is; a double-quoted value (JSON, a name holding ') is left alone
    assert TTGraphError("holdout", "no such model file").one_line(flags=True) == "--holdout: no such model file"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "holdout").mkdir()
    assert TTGraphError("holdout", "output path is a directory").one_line(flags=True) == (
        "holdout: output path is a directory"
    )
    for what in ['unknown preset "holdout\'s"', 'TVM rejects the target {"kind": "llvm", "key=X": 1}']:
        assert TTGraphError("--target", what).one_line(flags=True) == f"--target: {what}"
    # a shape example's input name is not a keyword, and is quoted for a shell where it must be
    for name, flag in [("tune", "tune=1,3,H,W"), ("holdout", "holdout=1,3,H,W"), ("a b", "'a b=1,3,H,W'")]:
        err = TTGraphError("m.onnx", f"give a fixed shape, e.g. input_shapes={{{name!r}: (1, 3, H, W)}}")
        assert err.one_line(flags=True) == f"m.onnx: give a fixed shape, e.g. --input-shape {flag}"
