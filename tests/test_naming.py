"""Hostile ONNX names still give C++ identifiers that compile, are distinct and deterministic."""
from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codesign.hls import csim
from codesign.hls.naming import CPP_KEYWORDS, Namer, cpp_identifier

HOSTILE = [
    "conv/1", "Conv_1", "conv 1", "conv\t1", 'a"b', "a'b", "a\\b", "$(rm -rf /)", "`id`", "a;b|c&d>e<f",
    "1st_layer", "123", "", " ", "_", "__x", "_X", "int", "class", "main", "std", "Int", "INT",
    "ünïcödé", "名前", "🙂", "a\nb", "a\x00b", "x" * 300, "matmul", "weights", "conv#1", "conv%1",
    "a__b", "a-b", "a.b", "a:b", "a::b", "/", "//", "onnx::MatMul_123", "Gemm_0/Add:0",
]
IDENT = re.compile(r"[a-z][a-z0-9_]*")


def test_plain_names_kept():
    assert cpp_identifier("fc1") == "fc1"
    assert cpp_identifier("layer_2_weight") == "layer_2_weight"


def test_changed_names_carry_a_hash_of_the_original():
    a, b = cpp_identifier("Conv_1"), cpp_identifier("conv/1")
    assert a != b and a.startswith("conv_1_") and b.startswith("conv_1_")
    assert cpp_identifier("int").startswith("int_") and cpp_identifier("int") != "int"


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_name_is_a_safe_identifier(name):
    ident = cpp_identifier(name, prefix="t_")
    assert IDENT.fullmatch(ident), ident
    assert "__" not in ident and ident not in CPP_KEYWORDS and len(ident) <= 48


@given(st.lists(st.text(min_size=0, max_size=40), min_size=1, max_size=40, unique=True))
def test_namer_distinct_and_order_independent(names):
    n1, n2 = Namer(prefix="v_"), Namer(prefix="v_")
    ids1 = [n1(x) for x in names]
    ids2 = {x: n2(x) for x in reversed(names)}
    assert len(set(ids1)) == len(names)
    assert all(IDENT.fullmatch(i) and "__" not in i for i in ids1)
    assert ids1 == [ids2[x] for x in names]
    assert n1(names[0]) == ids1[0]  # stable on repeat


def test_namer_reserved_and_literal_collision():
    n = Namer(reserved={"top"})
    assert n("top") != "top"
    hashed = n("Conv_1")
    assert n(hashed) != hashed  # a hostile name equal to another's identifier
    assert len(set(n.mapping().values())) == 3


@pytest.mark.skipif(csim.available() is not None, reason="no C++ compiler / ap_types")
def test_hostile_names_compile_and_run():
    n = Namer(prefix="t_")
    ids = [n(x) for x in HOSTILE]
    decls = "\n".join(f"static ap_int<9> {i} = {k % 200};" for k, i in enumerate(ids))
    body = " + ".join(f"(long long){i}" for i in ids)
    src = f"""#include <ap_int.h>
#include "csim_io.h"
{decls}
int main() {{
    csim::In in;
    csim::Out out;
    out.put_scalar_i64("sum", {body});
    return 0;
}}
"""
    res = csim.run(src, {}, name="naming")
    assert int(res["sum"]) == sum(k % 200 for k in range(len(ids)))
