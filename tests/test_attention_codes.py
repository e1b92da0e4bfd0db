"""The attention maps kept quantised (io.attention.AttentionMaps) and their file: what the
scoring command writes (``--attention-codes``) and the Slicer module loads without ever
holding the float maps."""

from __future__ import annotations

import numpy as np
import pytest

from CoronaryCalciumDINOLib.errors import InputError
from CoronaryCalciumDINOLib.io.attention import AttentionMaps


def _maps(shape=(5, 9, 30, 40), seed=4, sparse=False):
    rng = np.random.default_rng(seed)
    maps = np.zeros(shape, np.float32)
    if sparse:
        maps[:, 1, 2, 3] = 0.7
        maps[:, 7, 25, 33] = 0.2
    else:
        maps[:, 2:6, 5:20, 8:30] = rng.random((shape[0], 4, 15, 22)).astype(np.float32)
    maps[1:] /= maps[1:].max(axis=(1, 2, 3), keepdims=True)
    return maps


@pytest.mark.parametrize("sparse, budget", [(False, None), (True, None), (False, 2000)])
def test_saved_maps_load_as_they_were_kept(tmp_path, sparse, budget):
    maps = _maps(sparse=sparse)
    kept = AttentionMaps(maps) if budget is None else AttentionMaps(maps, budget_bytes=budget)
    assert kept.sparse == sparse and (kept.bits < 8) == (budget is not None)
    path = kept.save(tmp_path / "attention.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["attention.npz"]  # no temporary left
    loaded = AttentionMaps.load(path, grid=maps.shape[1:])
    assert (loaded.count, loaded.grid, loaded.box, loaded.bits, loaded.sparse, loaded.voxels) == (
        kept.count, kept.grid, kept.box, kept.bits, kept.sparse, kept.voxels)
    assert loaded.nbytes == kept.nbytes and np.array_equal(loaded.step, kept.step)
    for h in range(maps.shape[0]):
        assert np.array_equal(loaded.head(h), kept.head(h))
        assert np.abs(loaded.head(h) - maps[h]).max() <= kept.step[h] / 2 + 1e-7


def test_empty_maps_round_trip(tmp_path):
    maps = np.zeros((3, 4, 5, 6), np.float32)
    loaded = AttentionMaps.load(AttentionMaps(maps).save(tmp_path / "a.npz"))
    assert loaded.shape == maps.shape and not loaded.head(2).any()


def test_a_file_that_is_not_such_maps_is_one_clear_error(tmp_path):
    kept = AttentionMaps(_maps())
    path = kept.save(tmp_path / "attention.npz")
    with pytest.raises(InputError, match=r"attention\.npz: attention maps on a \(9, 30, 40\) grid, not the CT's \(9, 30, 41\)"):
        AttentionMaps.load(path, grid=(9, 30, 41))
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(InputError, match="other.npz holds no attention maps"):
        AttentionMaps.load(other)
    text = tmp_path / "text.npz"
    text.write_text("not a zip")
    with pytest.raises(InputError, match="text.npz holds no attention maps"):
        AttentionMaps.load(text)
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["codes2"] = arrays["codes2"][:-5]  # a damaged file
    damaged = tmp_path / "damaged.npz"
    np.savez(damaged, **arrays)
    with pytest.raises(InputError, match="damaged.npz: the attention maps are inconsistent"):
        AttentionMaps.load(damaged)
