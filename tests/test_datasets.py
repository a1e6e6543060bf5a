import os
import stat
from pathlib import Path

import pytest
import torch

from graphattn.train.datasets import contextual_sbm, edge_homophily, load_planetoid

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_contextual_sbm_is_reproducible_and_split_like_planetoid():
    kw = dict(num_nodes=500, num_val=150, num_test=200, seed=3)
    a, b = contextual_sbm(**kw), contextual_sbm(**kw)
    assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.x, b.x)
    assert int(a.train_mask.sum()) == 20 * 5
    assert not (a.train_mask & a.val_mask).any() and not (a.val_mask & a.test_mask).any()
    src, dst = a.edge_index
    assert (src != dst).all()
    # symmetric
    fwd = set(map(tuple, a.edge_index.t().tolist()))
    assert all((d, s) in fwd for s, d in fwd)
    assert 0.4 < edge_homophily(a) < 0.8
    with pytest.raises(ValueError, match="split does not fit"):
        contextual_sbm(num_nodes=600)


def test_missing_planetoid_files_say_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Cora/raw"):
        load_planetoid(str(tmp_path), "cora")
    with pytest.raises(ValueError, match="unknown Planetoid dataset"):
        load_planetoid(str(tmp_path), "Cornell")


@pytest.mark.skipif(not (SHARED / "planetoid" / "Cora" / "raw").exists(), reason="shared Cora not present")
def test_cora_from_read_only_folder_is_copied_not_written(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHATTN_CACHE", str(tmp_path / "cache"))
    ro = tmp_path / "ro"
    (ro / "Cora").mkdir(parents=True)
    import shutil

    shutil.copytree(SHARED / "planetoid" / "Cora" / "raw", ro / "Cora" / "raw")
    for p in [ro / "Cora", ro / "Cora" / "raw"]:
        p.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        data = load_planetoid(str(ro), "Cora")
        assert data.num_nodes == 2708 and data.edge_index.size(1) == 10556 and data.num_classes == 7
        assert int(data.train_mask.sum()) == 140 and int(data.test_mask.sum()) == 1000
        torch.testing.assert_close(data.x.sum(1), torch.ones(2708))
        assert sorted(os.listdir(ro / "Cora")) == ["raw"]
    finally:
        for p in [ro / "Cora", ro / "Cora" / "raw"]:
            p.chmod(stat.S_IRWXU)


def test_ogb_allow_list_is_scoped_and_leaves_torch_load_alone(tmp_path):
    """OGB's numpy split files load inside the loader's allow-list block only; torch.load
    itself is never replaced (tests/test_safe_files.py has the full checks)."""
    pytest.importorskip("torch_geometric")
    import io

    import numpy as np

    from graphattn.train.datasets import _ogb_files_allowed

    buf = io.BytesIO()
    torch.save({"edge": np.zeros((2, 2), dtype=np.int64)}, buf, _use_new_zipfile_serialization=False)
    # numpy 1.x (which wrote OGB's files) names the rebuild function numpy.core.multiarray._reconstruct
    (tmp_path / "split.pt").write_bytes(buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))
    before, allowed = torch.load, set(torch.serialization.get_safe_globals())
    with _ogb_files_allowed(tmp_path, "ogbl-ddi"):
        assert torch.load is before
        assert torch.load(tmp_path / "split.pt")["edge"].shape == (2, 2)
    assert torch.load is before and set(torch.serialization.get_safe_globals()) == allowed
    with pytest.raises(Exception, match="weights_only|Unsupported global|numpy"):
        torch.load(tmp_path / "split.pt")


def test_ogb_loaders_name_missing_files(tmp_path):
    pytest.importorskip("ogb")
    from graphattn.train.datasets import load_ogb_link, load_ogb_node

    with pytest.raises(FileNotFoundError, match="ogbn_arxiv.*RELEASE_v1.txt"):
        load_ogb_node(str(tmp_path), "ogbn-arxiv")
    with pytest.raises(FileNotFoundError, match="split/target/train.pt"):
        load_ogb_link(str(tmp_path), "ogbl-ddi")
    with pytest.raises(ValueError, match="unknown OGB dataset"):
        load_ogb_node(str(tmp_path), "ogbn-papers")
