"""The dependency-free SVG plot used by reports."""
import xml.etree.ElementTree as ET

import pytest

from codesign.accel.svgplot import line_plot, nice_ticks


def test_nice_ticks_hand_examples():
    assert nice_ticks(0.013, 0.051) == [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]
    assert nice_ticks(82.1, 93.7) == [80, 85, 90, 95]
    assert nice_ticks(0, 1) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    with pytest.raises(ValueError):
        nice_ticks(0, float("inf"))


def test_line_plot_valid_and_deterministic():
    series = {"a & b": [(0.2, 80.0), (0.1, 70.0)], "c": [(0.3, 90.0)]}
    s1 = line_plot(series, title="t <1>", xlabel="x", ylabel="y")
    assert s1 == line_plot(series, title="t <1>", xlabel="x", ylabel="y")
    root = ET.fromstring(s1)
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == ns + "svg"
    texts = [t.text for t in root.iter(ns + "text")]
    assert "a & b" in texts and "t <1>" in texts
    # the two-point series is one polyline, its points in x order (0.1 left of 0.2)
    (poly,) = list(root.iter(ns + "polyline"))
    xs = [float(p.split(",")[0]) for p in poly.get("points").split()]
    assert xs == sorted(xs) and len(xs) == 2
    with pytest.raises(ValueError):
        line_plot({}, title="", xlabel="", ylabel="")
