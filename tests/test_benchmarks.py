"""The benchmark harness's pieces that must be right for its tables to mean anything:
the roofline model and the machine rates it is fed, the median a case reports, the ratios
and the README tables made from them, the GPS batches, and the case filter (no machine's
speed is asserted: where timing is checked, the clock is scripted)."""

import itertools
import json
import re
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


class _ScriptedClock:
    """A ``time`` stand-in whose ``perf_counter`` calls come in (start, end) pairs, each pair
    lasting the next of ``durations`` seconds."""

    def __init__(self, durations):
        self.durations, self.now, self.started = list(durations), 0.0, False

    def perf_counter(self):
        if self.started:
            self.now += self.durations.pop(0)
        self.started = not self.started
        return self.now


def test_machine_rates_are_bytes_and_flops_over_the_best_of_the_repeats(monkeypatch):
    """The triad moves three arrays of size_mib and the GEMM does 2 * 2048^3 FLOPs; each rate is
    taken from the fastest of the repeats (neither the first, the last nor the mean here)."""
    triad, gemm = [0.003, 0.001, 0.002], [0.4, 0.2, 0.3]
    clock = _ScriptedClock(triad + gemm)
    monkeypatch.setattr(roofline, "time", clock)
    rates = roofline.measure_machine(size_mib=8, repeats=3)
    assert clock.durations == []  # every repeat of both kernels was timed, and nothing else
    n = 8 * 2**20 // 4
    assert rates["triad_gb_s"] == pytest.approx(3 * n * 4 / 0.001 / 1e9, rel=1e-9)
    assert rates["gemm_gflop_s"] == pytest.approx(2 * 2048**3 / 0.2 / 1e9, rel=1e-9)


# The same calls in two orders: the median is then neither always the middle one as measured
# nor always the first or the last.
@pytest.mark.parametrize(
    "timed, setups", [([0.9, 0.5, 0.6, 0.3, 2.0], [0.05, 0.01, 0.02]), ([0.6, 2.0, 0.3, 0.9, 0.5], [0.02, 0.05, 0.01])]
)
def test_child_reports_the_median_of_its_timed_calls(monkeypatch, timed, setups):
    """After one warm-up and one memory call, the case's time is the median of its timed calls
    (0.6 s: the mean is 0.86 s, the fastest 0.3 s), the set-up time the median of three, and
    the output's difference from the dense reference the largest absolute one."""
    import torch

    durations = [5.0, 5.0] + list(timed) + [0.0]  # warm-up, memory, 5 timed, the diff's call
    setups = list(setups)

    class Clock:
        now = 0.0

        def perf_counter(self):
            return self.now

    clock = Clock()

    def fake_run():
        clock.now += durations.pop(0)
        return torch.tensor([1.0, 2.0, 3.0])

    def fake_setup():
        clock.now += setups.pop(0)

    fake_run.setup = fake_setup
    fake_run.reference = lambda: torch.tensor([1.0, 2.5, 3.25])
    monkeypatch.setattr(run, "time", clock)
    monkeypatch.setattr(run, "_build", lambda spec: (fake_run, True))
    res = run.child({"device": "cpu", "repeats": 5, "budget_s": 60, "threads": torch.get_num_threads()})
    assert durations == [] and setups == []  # 5 timed calls (they took over 2 s), 3 set-ups
    assert res["repeats"] == 5
    assert res["time_ms"] == pytest.approx(600.0)
    assert res["setup_ms"] == pytest.approx(20.0)
    assert res["max_abs_diff"] == pytest.approx(0.5)


def _report(rows):
    machine = {"processor": "x86_64", "cpu_count": 2, "torch_threads": 2, "torch": "2.13.0", "graphattn": "0.1.0"}
    return {
        "suite": "cpu",
        "date": "2026-12-03T00:00:00+00:00",
        "command": "python benchmarks/run.py cpu",
        "machine": machine,
        "cases": run.compare(rows),
    }


def test_ratios_are_peer_over_graphattn_and_the_table_prints_them():
    case = {"kind": "gat", "mode": "forward", "N": 10, "E": 90}
    rows = [
        {"impl": "graphattn", **case, "time_ms": 2.0, "peak_mem_mib": 4.0},
        {"impl": "pyg", **case, "time_ms": 7.0, "peak_mem_mib": 10.0},
        {"impl": "pyg_compiled", **case, "error": "compile failed"},
        {"impl": "graphattn", **case, "N": 20, "time_ms": 1.0, "peak_mem_mib": 1.0},
    ]  # another case
    report = _report(rows)
    cases = report["cases"]
    assert [(c["N"], sorted(k for k in c if k in run.PEER_IMPLS)) for c in cases] == [
        (10, ["pyg", "pyg_compiled"]),
        (20, []),
    ]
    pyg, compiled = cases[0]["pyg"], cases[0]["pyg_compiled"]
    assert pyg["speedup"] == pytest.approx(3.5) and pyg["memory_ratio"] == pytest.approx(2.5)
    assert compiled["error"] == "compile failed" and "speedup" not in compiled
    table = [line for line in run.markdown(report).splitlines() if line.startswith("| GATConv")]
    assert table == [
        "| GATConv | forward | 10 | 90 | 2.0 | PyG GATConv | 7.0 | 3.5x | 4.0 | 10.0 | 2.5x | — | — | — |",
        "| GATConv | forward | 10 | 90 | 2.0 | torch.compile(PyG GATConv) | compile failed | — | 4.0 | — "
        "| — | — | — | — |",
    ]


README = Path(__file__).resolve().parents[1] / "README.md"
RESULTS_CITED = re.compile(r"results\s+`(benchmarks/results/[\w.-]+\.json)`")
TABLE_HEADER = "| op | mode | N | E | graphattn ms | peer | peer ms | speed-up |"


def _readme_benchmark_tables():
    """[(results file, table rows)] for each README table in the harness's format, paired with the
    results file cited last before it."""
    text = README.read_text()
    tables = []
    for start in (m.start() for m in re.finditer(re.escape(TABLE_HEADER), text)):
        cited = RESULTS_CITED.findall(text[:start])
        lines = text[start:].splitlines()[2:]  # past the header and the |---| line
        rows = list(itertools.takewhile(lambda line: line.startswith("|"), lines))
        tables.append((cited[-1] if cited else None, rows))
    return tables


def test_readme_benchmark_tables_are_the_harness_rendering_of_the_results_they_cite():
    """Every number of the README's benchmark tables comes from the results file it cites, as
    run.markdown renders it: the JSON has the fields the tables read, and no row was edited by hand."""
    root = README.parent
    tables = _readme_benchmark_tables()
    assert len(tables) >= 2, "the README's benchmark tables were not found"
    for cited, rows in tables:
        assert cited is not None, rows[0]
        report = json.loads((root / cited).read_text())
        rendered = [
            line
            for line in run.markdown(report).splitlines()
            if line.startswith("| ") and not line.startswith("| op |")
        ]
        assert rows == rendered, cited


def test_every_cited_result_has_consistent_ratios_and_positive_medians():
    """In each results file the README cites (those run.py writes), every speed-up and memory ratio is
    the peer's median over graphattn's as recorded, every floor ratio graphattn's time over the floor,
    and every recorded time is positive."""
    root = README.parent
    cited = sorted(set(RESULTS_CITED.findall(README.read_text())))
    reports = {name: json.loads((root / name).read_text()) for name in cited}
    reports = {name: r for name, r in reports.items() if r.get("command", "").startswith("python benchmarks/run.py")}
    assert len(reports) >= 3
    checked = 0
    for name, report in reports.items():
        for case in report["cases"]:
            ours = case["graphattn"]
            if ours.get("time_ms") is not None:
                assert ours["time_ms"] > 0, (name, case["op"])
            if case.get("graphattn_vs_floor") is not None:
                assert case["graphattn_vs_floor"] == pytest.approx(ours["time_ms"] / case["floor_ms"]), name
            for impl in (k for k in case if k in run.PEER_IMPLS):
                peer = case[impl]
                if peer.get("time_ms") is not None:
                    assert peer["time_ms"] > 0, (name, case["op"], impl)
                if peer.get("speedup") is not None:
                    assert peer["speedup"] == pytest.approx(peer["time_ms"] / ours["time_ms"]), (name, case["op"], impl)
                    checked += 1
                if peer.get("memory_ratio") is not None:
                    assert peer["memory_ratio"] == pytest.approx(peer["peak_mem_mib"] / ours["peak_mem_mib"]), name
    assert checked > 50


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

    spec = {
        "kind": "seq_op",
        "pattern": "band",
        "mode": "forward+backward",
        "N": 64,
        "L": 64,
        "w": 8,
        "heads": 2,
        "head_dim": 4,
        "device": "cpu",
    }
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
    dense = F.scaled_dot_product_attention(
        q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=(i[:, None] - i[None, :]).abs() <= w
    ).transpose(0, 1)
    torch.testing.assert_close(run.banded_reference(q, k, v, w, chunk=64), dense)


def test_dense_nonfinite_cost_times_the_band_route_with_and_without_its_check(tmp_path):
    import dense_nonfinite_cost

    out = tmp_path / "cost.json"
    result = dense_nonfinite_cost.main(
        ["--length", "320", "--window", "64", "--reps", "1", "--threads", "1", "--out", str(out)]
    )
    assert json.loads(out.read_text()) == result  # the file holds what was measured
    assert (result["L"], result["window"], result["reps"], result["threads"]) == (320, 64, 1, 1)
    ms = result["median_ms"]
    assert set(ms) == {f"{m}, {how}" for m in ("forward", "forward+backward") for how in ("checked", "route alone")} | {
        "the check alone (3 sums)"
    }
    assert all(t > 0 for t in ms.values())
    for m in ("forward", "forward+backward"):  # the overhead is the checked median over the unchecked one, minus 1
        assert result["overhead"][m] == pytest.approx(ms[f"{m}, checked"] / ms[f"{m}, route alone"] - 1)
