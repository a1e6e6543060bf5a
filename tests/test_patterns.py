"""Every pattern against its dense-mask equivalent."""

import pytest
import torch

from graphattn import Graph, Pattern, patterns
from graphattn.patterns import PatternKind


def dense(g: Graph) -> torch.Tensor:
    m = torch.zeros(g.num_dst, g.num_src, dtype=torch.long)
    m.index_put_((g.row, g.col), torch.ones_like(g.row), accumulate=True)
    return m


def test_complete_causal_cross():
    assert torch.equal(dense(patterns.complete(5)), torch.ones(5, 5, dtype=torch.long))
    assert torch.equal(dense(patterns.causal(6)), torch.tril(torch.ones(6, 6, dtype=torch.long)))
    c = patterns.cross(3, 7)
    assert (c.num_dst, c.num_src) == (3, 7) and torch.equal(dense(c), torch.ones(3, 7, dtype=torch.long))
    assert patterns.causal(4).pattern.kind == "causal" and c.pattern.kind == "cross"
    assert patterns.causal(0).num_edges == 0


def test_builders_record_pattern_kind_members_that_still_compare_and_print_as_strings():
    edge = Graph.from_edge_index(torch.zeros(2, 1, dtype=torch.long), 3)  # records no pattern
    built = {
        PatternKind.COMPLETE: patterns.complete(3),
        PatternKind.CROSS: patterns.cross(2, 3),
        PatternKind.CAUSAL: patterns.causal(3),
        PatternKind.BAND: patterns.sliding_window(5, 1, 1),
        PatternKind.DILATED: patterns.dilated(6, 1, 2),
        PatternKind.GLOBAL_LOCAL: patterns.global_local(6, 1),
        PatternKind.RANDOM: patterns.random(4, 2),
        PatternKind.BIGBIRD: patterns.bigbird(8, 1),
        PatternKind.GRAPH: patterns.batch([3], lambda L: edge),
    }
    for kind, g in built.items():
        assert g.pattern.kind is kind, kind
        assert g.pattern.kind == kind.value and str(g.pattern.kind) == f"{g.pattern.kind}" == kind.value
    assert repr(patterns.causal(2)).endswith("pattern=causal)")
    united = patterns.union(patterns.causal(3), edge).pattern
    assert united == Pattern(PatternKind.UNION, (("of", (PatternKind.CAUSAL, PatternKind.GRAPH)),))


def test_pattern_kind_is_one_of_the_enum_and_a_string_value_converts():
    assert Pattern("band", (("left", 1),)).kind is PatternKind.BAND
    assert Pattern("causal") == Pattern(PatternKind.CAUSAL) and {"causal": 1}[PatternKind.CAUSAL] == 1
    for bad in ("diagonal", "Causal", "", 3, None):
        with pytest.raises(ValueError, match="unknown pattern kind .*'complete', 'causal', 'band', 'cross'"):
            Pattern(bad)
    with pytest.raises(TypeError):
        patterns.sliding_window(4, 1, 1, _kind="causal")  # the private string argument is gone


@pytest.mark.parametrize("left,right", [(0, 0), (2, 0), (1, 3), (10, 10)])
def test_sliding_window(left, right):
    L = 9
    i = torch.arange(L)
    diff = i[None, :] - i[:, None]  # key - query
    ref = ((diff >= -left) & (diff <= right)).long()
    g = patterns.sliding_window(L, left, right)
    assert torch.equal(dense(g), ref) and g.perm is None  # built sorted: no permutation
    assert g.pattern.get("left") == left


def test_dilated():
    L = 12
    i = torch.arange(L)
    diff = i[None, :] - i[:, None]
    ref = ((diff % 3 == 0) & (diff.abs() <= 2 * 3)).long()
    assert torch.equal(dense(patterns.dilated(L, 2, 3)), ref)
    ref_c = ref * (diff <= 0).long()
    assert torch.equal(dense(patterns.dilated(L, 2, 3, causal_only=True)), ref_c)
    with pytest.raises(ValueError, match="dilation"):
        patterns.dilated(L, 2, 0)


def test_global_local():
    L = 10
    i = torch.arange(L)
    ref = (i[None, :] - i[:, None]).abs() <= 1
    ref[:, [0, 5]] = True
    ref[[0, 5], :] = True
    g = patterns.global_local(L, 1, [0, 5])
    assert torch.equal(dense(g), ref.long())
    with pytest.raises(ValueError, match="global token ids"):
        patterns.global_local(L, 1, [12])


def test_random_and_bigbird_are_reproducible():
    a, b = patterns.random(20, 4, seed=3), patterns.random(20, 4, seed=3)
    assert torch.equal(a.col, b.col) and not torch.equal(a.col, patterns.random(20, 4, seed=4).col)
    d = dense(a)
    assert torch.equal(d.sum(1), torch.full((20,), 4)) and d.max() == 1
    bb = dense(patterns.bigbird(30, 2, 2, 3, seed=1))
    assert bb.max() == 1
    assert (bb - dense(patterns.global_local(30, 2, 2))).min() >= 0


def test_union_removes_duplicates():
    u = patterns.union(patterns.causal(6), patterns.sliding_window(6, 1, 1))
    ref = ((dense(patterns.causal(6)) + dense(patterns.sliding_window(6, 1, 1))) > 0).long()
    assert torch.equal(dense(u), ref)
    with pytest.raises(ValueError, match="cannot unite"):
        patterns.union(patterns.causal(3), patterns.causal(4))


def test_batch_is_block_diagonal_and_pack_unpack_round_trip():
    g = patterns.batch([3, 1, 4], patterns.causal)
    d = dense(g)
    ref = torch.block_diag(*(torch.tril(torch.ones(n, n, dtype=torch.long)) for n in (3, 1, 4)))
    assert torch.equal(d, ref) and g.pattern.batch == (3, 1, 4) and g.pattern.kind == "causal"
    gb = patterns.batch([5, 5], patterns.sliding_window, left=2, right=1)
    assert gb.pattern.kind == "band" and gb.pattern.get("left") == 2 and gb.pattern.get("right") == 1
    x = torch.randn(3, 5, 2)
    kpm = torch.arange(5)[None, :] >= torch.tensor([3, 1, 4])[:, None]
    packed, lengths = patterns.pack(x, key_padding_mask=kpm)
    assert packed.shape == (8, 2) and lengths.tolist() == [3, 1, 4]
    back = patterns.unpack(packed, lengths, max_len=5)
    torch.testing.assert_close(back[~kpm], x[~kpm])
    assert torch.equal(back[kpm], torch.zeros_like(back[kpm]))
    with pytest.raises(ValueError, match="suffix"):
        patterns.lengths_from_padding_mask(torch.tensor([[True, False]]))
    cross = patterns.batch([2, 3], patterns.cross, key_lengths=[4, 1])
    assert (cross.num_dst, cross.num_src) == (5, 5)
    assert torch.equal(
        dense(cross), torch.block_diag(torch.ones(2, 4, dtype=torch.long), torch.ones(3, 1, dtype=torch.long))
    )


# ------------------------------------------------ lengths: one rule for every pattern function
BAD_LENGTHS = [  # (lengths, error): non-integers refused, never truncated; negatives refused
    ([2.5, 1], TypeError),
    ([True, 2], TypeError),
    (torch.tensor([2.0, 1.0]), TypeError),
    (torch.tensor([[2, 1]]), TypeError),
    ([2, -1], ValueError),
    (torch.tensor([2, -1]), ValueError),
    ("21", TypeError),
]


@pytest.mark.parametrize("lengths,error", BAD_LENGTHS)
def test_batch_refuses_bad_lengths(lengths, error):
    with pytest.raises(error, match="lengths"):
        patterns.batch(lengths)
    with pytest.raises(error, match="key_lengths"):
        patterns.batch([2, 1], patterns.cross, key_lengths=lengths)


@pytest.mark.parametrize("lengths,error", BAD_LENGTHS)
def test_pack_unpack_refuse_bad_lengths(lengths, error):
    with pytest.raises(error, match="lengths"):
        patterns.pack(torch.randn(2, 3, 4), lengths)
    with pytest.raises(error, match="lengths"):
        patterns.unpack(torch.randn(3, 4), lengths)


def test_lengths_totals_must_match_naming_both_numbers():
    with pytest.raises(ValueError, match=r"lengths.*3 sequences.*x.*2"):
        patterns.pack(torch.randn(2, 3, 4), [1, 1, 1])
    with pytest.raises(ValueError, match=r"lengths.*sum to 4.*packed.*5 rows"):
        patterns.unpack(torch.randn(5, 2), [3, 1])
    with pytest.raises(ValueError, match=r"max_len=2.*longest.*3"):
        patterns.unpack(torch.randn(4, 2), [3, 1], max_len=2)
    with pytest.raises(TypeError, match="max_len"):
        patterns.unpack(torch.randn(4, 2), [3, 1], max_len=3.5)
    with pytest.raises(ValueError, match=r"key_padding_mask.*\(2, 3\).*x.*\(2, 4\)"):
        patterns.pack(torch.randn(2, 4, 1), key_padding_mask=torch.zeros(2, 3, dtype=torch.bool))


def test_good_lengths_in_every_form():
    import numpy as np

    ref = patterns.batch([3, 1, 2])
    for form in (
        [3, 1, 2],
        (3, 1, 2),
        torch.tensor([3, 1, 2]),
        torch.tensor([3, 1, 2], dtype=torch.int32),
        np.array([3, 1, 2]),
        [np.int64(3), 1, torch.tensor(2)],
    ):
        g = patterns.batch(form)
        assert torch.equal(g.col, ref.col) and g.pattern.batch == (3, 1, 2)
        packed, lengths = patterns.pack(torch.randn(3, 4, 2), form)
        assert lengths.tolist() == [3, 1, 2] and lengths.dtype == torch.long
        assert patterns.unpack(packed, form).shape == (3, 3, 2)
    assert patterns.batch([]).num_dst == 0


@pytest.mark.parametrize(
    "call",
    [
        lambda: patterns.global_local(10.0, 1),
        lambda: patterns.global_local(10, 1.5),
        lambda: patterns.global_local(10, 1, 2.5),
        lambda: patterns.global_local(10, 1, True),
        lambda: patterns.global_local(10, 1, [0.5, 3]),
        lambda: patterns.global_local(10, 1, torch.tensor([0.5])),
        lambda: patterns.complete(4.0),
        lambda: patterns.dilated(8, 1, 2.0),
        lambda: patterns.causal(True),
        lambda: patterns.graph_sizes(None, 2.5),
        lambda: patterns.complete_per_graph(None, 2.5),
    ],
)
def test_single_lengths_refuse_non_integers(call):
    with pytest.raises(TypeError, match="integer"):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda: patterns.global_local(10, 1, -1),
        lambda: patterns.global_local(10, 1, [-1, 2]),
        lambda: patterns.global_local(-3, 1),
    ],
)
def test_single_lengths_refuse_negatives(call):
    with pytest.raises(ValueError):
        call()


def test_single_lengths_accept_numpy_and_tensor_ints():
    import numpy as np

    ref = patterns.global_local(10, 1, 2)
    for L, w, gt in ((np.int64(10), np.int32(1), np.int64(2)), (torch.tensor(10), torch.tensor(1), torch.tensor(2))):
        assert torch.equal(patterns.global_local(L, w, gt).col, ref.col)
    assert torch.equal(patterns.dilated(12, 2, np.int64(3)).col, patterns.dilated(12, 2, 3).col)
