"""The cost model's resources (accel/engine.py) against Yosys synthesis of the RTL
(bench/yosys_crosscheck.py): for a few small module configurations, synthesised fresh (or
read from the synthesis cache), the model's LUT, FF and DSP counts are within 25 % of
Yosys's, the DSP counts of the multiplier mappings are exact, and the committed
accel/yosys_calibration.json agrees with the fresh synthesis and with the current model,
so that it cannot go stale silently.

Cold (empty cache), the five configurations take about 30 s of Yosys on one core. Without
``yosys`` the synthesis tests skip, except under CI (``CI`` set), where they fail.
"""
from __future__ import annotations

import os

import pytest

from codesign.bench import yosys_crosscheck as X

pytestmark = pytest.mark.rtl

BY_ID = {c.id: c for c in X.CONFIGS}
TOL = X.THRESHOLD


def _need_yosys() -> None:
    from codesign.sim.yosys import yosys_path

    if yosys_path() is None:
        if os.environ.get("CI"):
            pytest.fail("CI: yosys is not installed (`make setup` installs it): the Yosys cross-check cannot run")
        pytest.skip("yosys not installed")


@pytest.fixture(scope="module")
def calibration() -> dict:
    doc = X.load_calibration()
    return {r["id"]: r for r in doc["configs"]}


def _same_yosys() -> bool:
    """The committed counts are for one Yosys version; another maps differently."""
    from codesign.sim.yosys import _version, yosys_path

    return _version(yosys_path()) == X.load_calibration()["yosys"]


def _dsps(cfg: X.Config) -> int:
    """The DSP48E2s the RTL forms: bitsplit_pe dsp2 one per two lanes (a PE pair of M lanes
    each: M), dsp1 one per lane, lut none; requant two (32x16 on 27x18 + cascade);
    softmax_core two per lane (e x R, 8 x 33 bits)."""
    p = cfg.params
    if cfg.top == "bitsplit_pe":
        return {0: p["M"] * p["NPE"] // 2, 1: p["M"] * p["NPE"], 2: 0}[p["PACKING"]]
    return {"requant": 2, "softmax_core": 2 * p.get("L", 0)}[cfg.top]


def test_tested_subset_covers_each_packing():
    assert {BY_ID[c].params.get("PACKING") for c in X.TESTED if c.startswith("bitsplit_pe")} == {0, 1, 2}


@pytest.mark.parametrize("cid", X.TESTED)
def test_model_against_fresh_yosys(cid, calibration):
    _need_yosys()
    (row,) = X.crosscheck((BY_ID[cid],))
    y, m, q = row["yosys"], row["model"], row["ratio"]
    for k in ("lut", "ff", "dsp"):
        assert q[k] is not None and abs(q[k] - 1) <= TOL, (cid, k, y[k], m[k])
    assert m["dsp"] == y["dsp"] == _dsps(BY_ID[cid]), cid  # structural: exact
    # the committed calibration is this synthesis and this model
    committed = calibration[cid]
    assert committed["model"] == m, cid
    if not _same_yosys():
        pytest.skip(f"accel/yosys_calibration.json was written with {X.load_calibration()['yosys']}: "
                    "its counts are compared with that version only")
    assert committed["yosys"] == y, (cid, "accel/yosys_calibration.json is stale: "
                                          "python -m codesign.bench.yosys_crosscheck --write")
    assert committed["ratio"] == q, cid


def test_calibration_file_matches_the_model(calibration):
    """Every committed row (also those not synthesised here) has the current model's counts
    and lies within the threshold: a model change without ``--write`` fails here."""
    assert set(calibration) == set(BY_ID)
    for cid, row in calibration.items():
        assert row["model"] == X.model_counts(BY_ID[cid]), (cid, "rerun bench/yosys_crosscheck.py --write")
        for k in ("lut", "ff", "dsp"):
            assert row["ratio"][k] is not None and abs(row["ratio"][k] - 1) <= TOL, (cid, k, row["ratio"][k])
        assert row["ratio"]["dsp"] == 1.0, cid  # DSPs are structural: exact


def test_calibration_file_is_deterministic():
    """The file is what ``calibration_doc`` writes for its rows (sorted keys, no timestamps)."""
    text = X.CALIBRATION_PATH.read_text(encoding="utf-8")
    doc = X.load_calibration()
    assert X.dump(doc) == text
    assert doc["summary"] == X.summary(doc["configs"])

    def keys(x):
        if isinstance(x, dict):
            for k, v in x.items():
                yield k
                yield from keys(v)
        elif isinstance(x, list):
            for v in x:
                yield from keys(v)

    assert not any(w in k.lower() for k in keys(doc) for w in ("time", "date", "host"))
