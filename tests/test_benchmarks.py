"""The benchmark harness's pieces that must be right for its tables to mean anything:
the roofline model, the GPS batches, and the case filter (no timing is asserted)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import roofline  # noqa: E402
import run  # noqa: E402


def test_roofline_model_counts_the_gathers_and_the_gemms():
    terms = roofline.layer_model("gat", "forward", N=10, E=90, c_in=4, C=2, H=3)
    by_name = {name: (b, f) for name, b, f in terms}
    # 90 edges + 10 self-loops, each gathering H scores and H*C values of float32
    assert by_name["per-edge source rows gathered"][0] == 100 * (3 + 6) * 4
    assert by_name["linear layers: read x, write projections"][1] == 2 * 10 * 4 * 6
    backward = roofline.layer_model("gat", "forward+backward", N=10, E=90, c_in=4, C=2, H=3)
    assert sum(f for _, _, f in backward) == 3 * sum(f for _, _, f in terms)  # grad input + grad weight
    dot = {n: b for n, b, _ in roofline.layer_model("dot", "forward", N=10, E=90, c_in=4, C=2, H=3)}
    assert dot["per-edge source rows gathered"] == 90 * 2 * 6 * 4  # key and value rows, no self-loops


def test_floor_is_the_slower_of_memory_and_compute():
    machine = {"triad_gb_s": 10.0, "gemm_gflop_s": 100.0}
    assert roofline.floor_ms([("a", 1e9, 0.0)], machine) == pytest.approx(100.0)  # 1 GB at 10 GB/s
    assert roofline.floor_ms([("a", 1e6, 1e11)], machine) == pytest.approx(1000.0)  # 100 GFLOP at 100 GFLOP/s


def test_machine_rates_are_measured():
    rates = roofline.measure_machine(size_mib=8, repeats=2)
    assert rates["triad_gb_s"] > 0.1 and rates["gemm_gflop_s"] > 0.1


def test_gps_batches_are_the_ones_the_issue_names():
    assert len(run.gps_sizes("molecules")) == 256 and all(10 <= n <= 40 for n in run.gps_sizes("molecules"))
    assert run.gps_sizes("skewed") == [20] * 60 + [2000] * 4
    cases = run.gps_cases("cpu", quick=False)
    large_peer = next(spec for impl, spec in cases if impl == "pyg" and spec["graphs"] == "large")
    assert "not run" in large_peer["not_run"]["error"] and "149 GiB" in large_peer["not_run"]["error"]


def test_sequence_forward_backward_case_matches_the_dense_mask():
    """The band's forward+backward case (where flex has no CPU backward) runs graphattn and
    the dense-mask peer on the same inputs: their gradients agree."""
    import torch

    spec = {"kind": "seq_op", "pattern": "band", "mode": "forward+backward", "N": 64, "L": 64, "w": 8,
            "heads": 2, "head_dim": 4, "device": "cpu"}
    grads = {}
    for impl in ("graphattn", "sdpa"):
        torch.manual_seed(0)
        fn, trains = run._build_seq({**spec, "impl": impl}, torch.device("cpu"), torch.float64)
        assert trains
        grads[impl] = fn()
    for ours, dense in zip(grads["graphattn"], grads["sdpa"]):
        torch.testing.assert_close(ours, dense)


def test_banded_reference_equals_one_dense_mask():
    """The 32k-token check computes the band a chunk of queries at a time; it must give what
    one L x L mask gives."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    L, w = 300, 7
    q, k, v = (torch.randn(L, 2, 4, dtype=torch.float64) for _ in range(3))
    i = torch.arange(L)
    dense = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                           attn_mask=(i[:, None] - i[None, :]).abs() <= w).transpose(0, 1)
    torch.testing.assert_close(run.banded_reference(q, k, v, w, chunk=64), dense)


def test_dense_nonfinite_cost_times_the_band_route_with_and_without_its_check(tmp_path):
    import dense_nonfinite_cost

    out = tmp_path / "cost.json"
    result = dense_nonfinite_cost.main(["--length", "320", "--window", "64", "--reps", "1", "--threads", "1",
                                        "--out", str(out)])
    assert out.is_file() and set(result["overhead"]) == {"forward", "forward+backward"}
    assert all(t > 0 for t in result["median_ms"].values())
