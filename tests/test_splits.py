"""Patient-level splits and the held-out synthetic seeds."""

from __future__ import annotations

import json

import pytest

from CoronaryCalciumDINOLib.data.splits import (
    HELDOUT_SYNTHETIC_SEEDS,
    check_disjoint,
    coca_patient,
    load_splits,
    make_splits,
    save_splits,
)
from CoronaryCalciumDINOLib.errors import InputError

IDS = [f"syn-{i:04d}" for i in range(100)]


def test_splits_disjoint_complete_sizes():
    s = make_splits(IDS, seed=3)
    assert set(s) == {"train", "val", "test"}
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (70, 15, 15)
    allids = s["train"] + s["val"] + s["test"]
    assert sorted(allids) == IDS  # every id exactly once
    assert s["train"] == sorted(s["train"])


def test_splits_deterministic_and_seeded():
    a = make_splits(IDS, seed=1)
    assert make_splits(list(reversed(IDS)), seed=1) == a  # input order does not matter
    b = make_splits(IDS, seed=2)
    assert a != b
    assert make_splits(IDS, (0.8, 0.2, 0.0), seed=0)["test"] == []


def test_small_sets_get_one_group_per_nonzero_split():
    s = make_splits(["a", "b", "c"], seed=0)
    assert [len(s[k]) for k in ("train", "val", "test")] == [1, 1, 1]
    s = make_splits([f"x{i}" for i in range(10)], (0.7, 0.15, 0.15), seed=0)
    assert sum(len(v) for v in s.values()) == 10 and all(len(v) >= 1 for v in s.values())
    with pytest.raises(InputError):
        make_splits(IDS, (0.5, 0.2, 0.2))


def test_group_aware_coca_patients():
    ids = []
    for p in range(40):
        ids.append(f"coca-{p:03d}")
        if p % 3 == 0:  # some patients have two or three series
            ids.append(f"coca-{p:03d}-2")
        if p % 9 == 0:
            ids.append(f"coca-{p:03d}-3")
    s = make_splits(ids, seed=5, group=coca_patient)
    where = {sid: k for k, v in s.items() for sid in v}
    for sid in ids:
        assert where[sid] == where[coca_patient(sid)]
    # the fractions apply to patients: 40 -> 28 / 6 / 6
    pats = {k: {coca_patient(x) for x in v} for k, v in s.items()}
    assert [len(pats[k]) for k in ("train", "val", "test")] == [28, 6, 6]
    assert coca_patient("coca-012-2") == "coca-012" and coca_patient("syn-1") == "syn-1"


def test_save_load_roundtrip(tmp_path):
    s = make_splits(IDS, seed=7)
    p = save_splits(s, tmp_path / "splits.json", seed=7, source="synthetic")
    data = json.loads(p.read_text())
    assert data["version"] == 1 and data["seed"] == 7 and data["source"] == "synthetic"
    back = load_splits(p)
    assert {k: back[k] for k in ("train", "val", "test")} == s
    bad = dict(data, val=data["val"] + [data["train"][0]])
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(InputError, match="both"):
        load_splits(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text(json.dumps(dict(data, version=99)))
    with pytest.raises(InputError, match="version"):
        load_splits(tmp_path / "old.json")
    with pytest.raises(InputError):
        load_splits(tmp_path / "missing.json")


def test_heldout_seeds():
    assert 900000 in HELDOUT_SYNTHETIC_SEEDS and 900199 in HELDOUT_SYNTHETIC_SEEDS
    assert 900200 not in HELDOUT_SYNTHETIC_SEEDS and len(HELDOUT_SYNTHETIC_SEEDS) == 200
    check_disjoint(range(0, 1000))
    check_disjoint([899999, 900200])
    with pytest.raises(InputError, match="900150"):
        check_disjoint([1, 2, 900150])
