"""Tests of the C-simulation driver (codesign.hls.csim + csim_io.h) itself,
with trivial inline harnesses. Kernel tests live elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from codesign.hls import csim

needs_toolchain = pytest.mark.skipif(csim.available() is not None, reason=str(csim.available()))

I64_MIN = np.iinfo(np.int64).min
I64_MAX = np.iinfo(np.int64).max

# Echoes every input unchanged (any dtype/shape), plus a few derived outputs.
ECHO = r"""
#include "csim_io.h"
int main() {
    csim::In in;
    csim::Out out;
    for (const std::string& name : in.names()) out.put(name, in.get(name));
    out.put_scalar_i64("n_inputs", static_cast<long long>(in.names().size()));
    return 0;
}
"""

# int64 -> ap_int<W> -> int64 round trips, and float doubling.
AP = r"""
#include <ap_int.h>
#include "csim_io.h"
int main() {
    csim::In in;
    csim::Out out;
    const std::vector<long long>& x = in.i64("x64");
    std::vector<long long> y(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) {
        ap_int<64> v = csim::fit_check<64, true>(x[i], "x64");
        y[i] = v.to_int64();
    }
    out.put_i64("x64", in.shape("x64"), y);

    const std::vector<long long>& s = csim::fit_check_all<12, true>(in.i64("s12"), "s12");
    std::vector<ap_int<12>> s_ap(s.begin(), s.end());
    out.put_i64("s12", in.shape("s12"), s_ap);

    const std::vector<long long>& u = csim::fit_check_all<7, false>(in.i64("u7"), "u7");
    std::vector<long long> u_out;
    for (long long e : u) u_out.push_back(ap_uint<7>(e).to_int64());
    out.put_i64("u7", in.shape("u7"), u_out);

    std::vector<float> f = in.f32("f32");
    for (float& e : f) e *= 2.0f;
    out.put_f32("f32x2", in.shape("f32"), f);
    std::vector<double> d = in.f64("f64");
    for (double& e : d) e *= 2.0;
    out.put_f64("f64x2", in.shape("f64"), d);
    out.put_scalar_f64("gain", in.scalar_f64("gain") * 2.0);
    out.put_scalar_f32("gain32", in.scalar_f32("gain32"));
    out.put_scalar_i64("k", in.scalar_i64("k") + 1);
    return 0;
}
"""

# Range checks selected by which inputs are present.
FIT = r"""
#include <ap_int.h>
#include "csim_io.h"
#define CHECK(W, S, NAME) \
    if (in.has(NAME)) csim::fit_check_all<W, S>(in.i64(NAME), NAME);
int main() {
    csim::In in;
    csim::Out out;
    CHECK(1, true, "s1") CHECK(8, true, "s8") CHECK(63, true, "s63") CHECK(64, true, "s64")
    CHECK(70, true, "s70")
    CHECK(1, false, "u1") CHECK(8, false, "u8") CHECK(62, false, "u62") CHECK(63, false, "u63")
    CHECK(64, false, "u64")
    if (in.has("scalar8")) {
        ap_int<8> v = csim::fit_check<8, true>(in.scalar_i64("scalar8"), "scalar8");
        out.put_scalar_i64("scalar8", v.to_int64());
    }
    return 0;
}
"""


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("csim-cache")


@pytest.fixture(autouse=True)
def _isolated_cache(shared_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test builds into a module-private cache (shared across tests so the
    same harness compiles once); tests that inspect the cache override it."""
    monkeypatch.setenv("CODESIGN_CACHE", str(shared_cache))
    yield


def _bits_equal(a: np.ndarray, b: np.ndarray) -> bool:
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, a.shape, b.dtype, b.shape)
    view = {4: np.uint32, 8: np.uint64}[a.dtype.itemsize]
    return np.array_equal(a.view(view), b.view(view))


F32_SPECIAL = np.array(
    [0.0, -0.0, 1.0, -1.5, np.inf, -np.inf, np.finfo(np.float32).max, np.finfo(np.float32).tiny, 1e-45],
    dtype=np.float32,
)
# NaNs with payloads (quiet and signalling), negative NaN.
F32_NANS = np.array([0x7FC00000, 0x7FC12345, 0x7F800001, 0xFFC00001], dtype=np.uint32).view(np.float32)
F64_NANS = np.array([0x7FF8000000000000, 0x7FF0000000000001, 0xFFF8DEADBEEF0001], dtype=np.uint64).view(np.float64)


# --------------------------------------------------------------------------
# Protocol (pure Python, no compiler)
# --------------------------------------------------------------------------


def test_encode_decode_roundtrip() -> None:
    arrays = {
        "i": np.array([I64_MIN, -1, 0, 1, I64_MAX], dtype=np.int64),
        "f": np.concatenate([F32_SPECIAL, F32_NANS]).reshape(13, 1),
        "d": np.concatenate([F64_NANS, [-0.0, 5e-324]]),
        "zero_d": np.array(7, dtype=np.int64),
        "empty": np.zeros((3, 0, 2), dtype=np.float64),
    }
    back = csim.decode(csim.encode(arrays))
    assert list(back) == list(arrays)
    for name, arr in arrays.items():
        assert _bits_equal(back[name], arr), name


def test_encode_layout() -> None:
    data = csim.encode({"ab": np.array([[1, -2]], dtype=np.int16)})
    expected = (
        b"CSIO"
        + (2).to_bytes(4, "little")
        + b"ab"
        + bytes([0])
        + (2).to_bytes(4, "little")
        + (1).to_bytes(8, "little")
        + (2).to_bytes(8, "little")
        + (1).to_bytes(8, "little", signed=True)
        + (-2).to_bytes(8, "little", signed=True)
        + (0).to_bytes(4, "little")
    )
    assert data == expected


def test_encode_input_conversions() -> None:
    back = csim.decode(
        csim.encode(
            {
                "u8": np.array([0, 255], dtype=np.uint8),
                "b": np.array([True, False]),
                "py_int": 5,
                "py_float": 0.1,
                "u64": np.array([I64_MAX], dtype=np.uint64),
                "f_order": np.arange(6, dtype=np.float32).reshape(2, 3).T,
            }
        )
    )
    assert back["u8"].dtype == np.int64 and np.array_equal(back["u8"], [0, 255])
    assert np.array_equal(back["b"], [1, 0])
    assert back["py_int"].shape == () and back["py_int"] == 5
    assert back["py_float"].dtype == np.float64 and back["py_float"] == 0.1
    assert back["u64"][0] == I64_MAX
    assert np.array_equal(back["f_order"], np.arange(6, dtype=np.float32).reshape(2, 3).T)


def test_encode_rejects_unrepresentable() -> None:
    with pytest.raises(ValueError, match="does not fit in int64"):
        csim.encode({"x": np.array([2**63], dtype=np.uint64)})
    with pytest.raises(TypeError, match="float16"):
        csim.encode({"x": np.zeros(2, dtype=np.float16)})
    with pytest.raises(ValueError, match="non-empty"):
        csim.encode({"": np.zeros(2)})


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"XXXX\0\0\0\0", "magic"),
        (b"CSIO\x01\0\0\0a\x00\x00\0\0\0", "truncated"),
        (b"CSIO\x01\0\0\0a\x09\x00\0\0\0\0\0\0\0", "unknown dtype"),
        (b"CSIO\0\0\0\0junk", "trailing"),
    ],
)
def test_decode_rejects_malformed(data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        csim.decode(data)


# --------------------------------------------------------------------------
# Toolchain discovery
# --------------------------------------------------------------------------


def test_include_dirs_exist() -> None:
    assert (csim.support_dir() / "csim_io.h").is_file()
    assert csim.include_dir() == Path(csim.__file__).parent / "include"


def test_ap_types_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODESIGN_AP_TYPES", str(tmp_path))
    with pytest.raises(RuntimeError, match="ap_int.h"):
        csim.ap_types_dir()
    (tmp_path / "ap_int.h").write_text("")
    assert csim.ap_types_dir() == tmp_path


def test_ap_types_missing_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CODESIGN_AP_TYPES", raising=False)
    monkeypatch.setattr(csim.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"pip install --no-deps hls4ml==1\.3\.0"):
        csim.ap_types_dir()


def test_missing_compiler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "no-such-compiler-xyz")
    with pytest.raises(RuntimeError, match="no-such-compiler-xyz"):
        csim.compiler()
    assert csim.available() is not None


# --------------------------------------------------------------------------
# Round trips through a compiled harness
# --------------------------------------------------------------------------


@needs_toolchain
def test_ap_roundtrip_ints_and_floats() -> None:
    rng = np.random.default_rng(0)
    extremes = [I64_MIN, I64_MIN + 1, -1, 0, 1, I64_MAX - 1, I64_MAX]
    x64 = np.concatenate([extremes, rng.integers(I64_MIN, I64_MAX, 100)])
    s12 = np.arange(-2048, 2048).reshape(64, 64)
    u7 = np.arange(128, dtype=np.uint8)
    f32 = np.concatenate([F32_SPECIAL, rng.standard_normal(50).astype(np.float32)])
    f64 = np.concatenate([[0.0, -0.0, np.inf, 5e-324, np.finfo(np.float64).max / 2], rng.standard_normal(50)])
    out = csim.run(
        AP,
        {
            "x64": x64,
            "s12": s12,
            "u7": u7,
            "f32": f32,
            "f64": f64,
            "gain": np.float64(0.1),
            "gain32": np.float32(-0.0),
            "k": np.array([41]),
        },
        name="ap_roundtrip",
    )
    assert set(out) == {"x64", "s12", "u7", "f32x2", "f64x2", "gain", "gain32", "k"}
    assert out["x64"].dtype == np.int64 and np.array_equal(out["x64"], x64)
    assert out["s12"].shape == (64, 64) and np.array_equal(out["s12"], s12)
    assert np.array_equal(out["u7"], u7.astype(np.int64))
    with np.errstate(over="ignore"):  # float32 max * 2 -> inf, in C++ too
        assert _bits_equal(out["f32x2"], f32 * np.float32(2))
    assert _bits_equal(out["f64x2"], f64 * 2.0)
    assert out["gain"].shape == () and out["gain"] == 0.2
    assert _bits_equal(out["gain32"], np.array(-0.0, dtype=np.float32))
    assert out["k"] == 42


@needs_toolchain
@pytest.mark.parametrize(
    "shape",
    [(), (0,), (1,), (5,), (3, 0, 2), (2, 3, 4), (1, 1, 1, 1, 1, 7)],
    ids=lambda s: "x".join(map(str, s)) or "0d",
)
def test_echo_shapes_and_dtypes(shape: tuple[int, ...]) -> None:
    n = int(np.prod(shape))
    inputs = {
        "i": (np.arange(n, dtype=np.int64) * 7919 - 3).reshape(shape),
        "f": np.resize(np.concatenate([F32_SPECIAL, F32_NANS]), n).reshape(shape),
        "d": np.resize(np.concatenate([F64_NANS, [1.0, -0.0]]), n).reshape(shape),
    }
    out = csim.run(ECHO, inputs, name="echo")
    assert out["n_inputs"] == 3
    for name, arr in inputs.items():
        assert out[name].shape == shape
        assert _bits_equal(out[name], arr), name


@needs_toolchain
def test_echo_no_inputs_and_odd_names() -> None:
    assert csim.run(ECHO, {}, name="echo")["n_inputs"] == 0
    name = "layer.0/weight:ü"
    out = csim.run(ECHO, {name: np.array([I64_MIN, I64_MAX])}, name="echo")
    assert np.array_equal(out[name], [I64_MIN, I64_MAX])


# --------------------------------------------------------------------------
# Harness-side errors
# --------------------------------------------------------------------------


@needs_toolchain
def test_missing_input_names_it() -> None:
    with pytest.raises(csim.CsimRunError, match="missing input 'x64'") as info:
        csim.run(AP, {"s12": np.zeros(1)}, name="ap_roundtrip")
    assert info.value.returncode == 3
    assert "'s12'" in info.value.stderr  # lists what was sent


@needs_toolchain
def test_wrong_dtype_is_reported() -> None:
    inputs = {"x64": np.zeros(2, dtype=np.float64)}
    with pytest.raises(csim.CsimRunError, match="'x64' has dtype float64, harness expects int64"):
        csim.run(AP, inputs, name="ap_roundtrip")


@needs_toolchain
def test_scalar_requires_one_element() -> None:
    with pytest.raises(csim.CsimRunError, match=r"'scalar8' has shape \(2,\), harness expects a scalar"):
        csim.run(FIT, {"scalar8": np.array([1, 2])}, name="fit")


@needs_toolchain
@pytest.mark.parametrize(
    ("name", "ok", "bad"),
    [
        ("s1", [-1, 0], [1]),
        ("s8", [-128, 127], [128]),
        ("s8", [-128, 127], [-129]),
        ("s63", [-(2**62), 2**62 - 1], [2**62]),
        ("s64", [I64_MIN, I64_MAX], None),
        ("s70", [I64_MIN, I64_MAX], None),
        ("u1", [0, 1], [2]),
        ("u1", [0, 1], [-1]),
        ("u8", [0, 255], [256]),
        ("u62", [0, 2**62 - 1], [2**62]),
        ("u63", [0, I64_MAX], [-1]),
        ("u64", [0, I64_MAX], [I64_MIN]),
    ],
)
def test_fit_check(name: str, ok: list[int], bad: list[int] | None) -> None:
    csim.run(FIT, {name: np.array(ok, dtype=np.int64)}, name="fit")
    if bad is not None:
        match = rf"fit_check failed for {name}\[1\]: value {bad[0]} "
        with pytest.raises(csim.CsimRunError, match=match) as info:
            csim.run(FIT, {name: np.array([ok[0], *bad], dtype=np.int64)}, name="fit")
        assert info.value.returncode == 3


@needs_toolchain
def test_fit_check_scalar() -> None:
    assert csim.run(FIT, {"scalar8": -128}, name="fit")["scalar8"] == -128
    match = r"scalar8: value 200 does not fit in ap_int<8> \(range \[-128, 127\]\)"
    with pytest.raises(csim.CsimRunError, match=match):
        csim.run(FIT, {"scalar8": 200}, name="fit")


@needs_toolchain
def test_output_shape_mismatch() -> None:
    src = (
        '#include "csim_io.h"\n'
        'int main() { csim::Out out; out.put_i64("y", {2, 2}, std::vector<long long>{1, 2, 3}); }\n'
    )
    with pytest.raises(csim.CsimRunError, match=r"'y': shape \(2, 2\) has 4 elements but 3 were given"):
        csim.run(src, {}, name="shape_mismatch")


@needs_toolchain
def test_nonzero_exit_and_signal() -> None:
    src = '#include <cstdio>\n#include <cstdlib>\nint main() { std::fprintf(stderr, "boom\\n"); return 7; }\n'
    with pytest.raises(csim.CsimRunError, match="exited with status 7") as info:
        csim.run(src, {})
    assert info.value.returncode == 7 and "boom" in info.value.stderr
    src = "#include <cstdlib>\nint main() { std::abort(); }\n"
    with pytest.raises(csim.CsimRunError, match="killed by signal") as info:
        csim.run(src, {})
    assert info.value.returncode is not None and info.value.returncode < 0


@needs_toolchain
def test_stray_stdout_is_a_protocol_error() -> None:
    src = '#include <cstdio>\n#include "csim_io.h"\nint main() { std::printf("debug\\n"); csim::Out out; }\n'
    with pytest.raises(csim.CsimRunError, match="malformed output stream"):
        csim.run(src, {})


@needs_toolchain
def test_timeout() -> None:
    src = "#include <chrono>\n#include <thread>\n"
    src += "int main() { std::this_thread::sleep_for(std::chrono::seconds(30)); }\n"
    with pytest.raises(csim.CsimRunError, match="timed out"):
        csim.run(src, {}, timeout=0.5)


# --------------------------------------------------------------------------
# Build and cache
# --------------------------------------------------------------------------


@needs_toolchain
def test_compile_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODESIGN_CACHE", str(tmp_path))
    src = "#include <ap_int.h>\nint main() { ap_int<8> x = undeclared_thing; return 0; }\n"
    with pytest.raises(csim.CsimCompileError, match="undeclared_thing") as info:
        csim.build(src, name="broken")
    err = info.value
    assert "error" in err.stderr
    assert err.source_path.parent == tmp_path and err.source_path.read_text() == src
    assert str(err.source_path) in str(err)
    assert [p.name for p in tmp_path.iterdir()] == [err.source_path.name]  # no temp files left


@needs_toolchain
def test_compile_error_message_is_capped() -> None:
    src = "int main() {\n" + "".join(f"  undeclared_{i}();\n" for i in range(200)) + "}\n"
    with pytest.raises(csim.CsimCompileError) as info:
        csim.build(src, name="many_errors")
    assert "more lines)" in str(info.value)
    assert len(str(info.value).splitlines()) < 70
    assert "undeclared_199" in info.value.stderr


@needs_toolchain
def test_cache_hit_does_not_recompile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODESIGN_CACHE", str(tmp_path))
    exe = csim.build(ECHO, name="echo")
    assert exe.parent == tmp_path and exe.name.startswith("echo-")
    assert (tmp_path / f"{exe.name}.cpp").read_text() == ECHO
    mtime = exe.stat().st_mtime_ns

    def no_compile(*args: object) -> None:
        raise AssertionError("g++ invoked on a cache hit")

    monkeypatch.setattr(csim, "_compile", no_compile)
    assert csim.build(ECHO, name="echo") == exe
    assert csim.run(ECHO, {"a": np.arange(3)}, name="echo")["a"].tolist() == [0, 1, 2]
    assert exe.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in tmp_path.iterdir()) == [exe.name, f"{exe.name}.cpp"]


@needs_toolchain
def test_key_depends_on_source_headers_and_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODESIGN_CACHE", str(tmp_path / "cache"))
    include = tmp_path / "include"
    (include / "codesign").mkdir(parents=True)
    header = include / "codesign" / "k.h"
    header.write_text("#pragma once\nconstexpr long long K = 1;\n")
    monkeypatch.setattr(csim, "include_dir", lambda: include)
    src = '#include "csim_io.h"\n#include "codesign/k.h"\nint main() { csim::Out out; out.put_scalar_i64("k", K); }\n'

    exe1 = csim.build(src)
    assert csim.run(src, {})["k"] == 1
    assert csim.build(src + "\n") != exe1  # source
    assert csim.build(src, extra_flags=["-DUNUSED=1"]) != exe1  # flags

    header.write_text("#pragma once\nconstexpr long long K = 2;\n")  # header content
    exe2 = csim.build(src)
    assert exe2 != exe1
    assert csim.run(src, {})["k"] == 2
    (include / "codesign" / "new.h").write_text("// new file\n")  # any new header
    assert csim.build(src) not in (exe1, exe2)


_CONCURRENT = textwrap.dedent(
    """
    import sys
    from codesign.hls import csim
    src = sys.stdin.read()
    exe = csim.build(src, name="race")
    out = csim.run(src, {"a": [1, 2, 3]}, name="race")
    assert out["a"].tolist() == [1, 2, 3], out
    print(exe)
    """
)


@needs_toolchain
def test_concurrent_builds_same_key(tmp_path: Path) -> None:
    cache, logs = tmp_path / "cache", tmp_path / "logs"
    logs.mkdir()
    env = {**os.environ, "CODESIGN_CACHE": str(cache)}
    src = ECHO + "// concurrent\n"
    procs = []
    for i in range(4):
        with open(logs / f"{i}.out", "w") as out, open(logs / f"{i}.err", "w") as err:
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _CONCURRENT],
                    stdin=subprocess.PIPE,
                    stdout=out,
                    stderr=err,
                    env=env,
                    text=True,
                )
            )
    for p in procs:  # each child blocks reading stdin: release them together
        assert p.stdin is not None
        p.stdin.write(src)
    for p in procs:
        assert p.stdin is not None
        p.stdin.close()
    codes = [p.wait(timeout=120) for p in procs]
    errors = [(logs / f"{i}.err").read_text() for i in range(len(procs))]
    assert codes == [0] * len(procs), errors
    paths = {(logs / f"{i}.out").read_text().strip() for i in range(len(procs))}
    assert len(paths) == 1
    exe = Path(paths.pop())
    assert sorted(p.name for p in cache.iterdir()) == [exe.name, f"{exe.name}.cpp"]  # no temp leftovers
