"""The edit math and the position tracker, on plain tensors."""

import math

import pytest
import torch

from alignez_tl.hooks import (
    EditTerm,
    PositionTracker,
    edit_delta,
    edit_hook,
    edit_sequential,
    hook_name,
    project_out_hook,
)


def orthonormal(k, d, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    return q.T.contiguous()  # [k, d]


def test_hook_names():
    assert hook_name("resid_post", 3) == "blocks.3.hook_resid_post"
    assert hook_name("mlp_out", 0) == "blocks.0.hook_mlp_out"
    assert hook_name("resid_pre", 2) == "blocks.2.hook_resid_pre"
    assert hook_name("attn_out", 1) == "blocks.1.hook_attn_out"
    with pytest.raises(ValueError, match="unknown site"):
        hook_name("resid_mid_typo", 1)


def test_edit_matches_hand_computation():
    theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    x = torch.tensor([2.0, -3.0, 5.0], dtype=torch.float64)
    scales = torch.tensor([4.0, 0.5], dtype=torch.float64)
    alpha = 1.5
    # by hand: direction 0: <x,θ0>=2 -> 1.5*4*tanh(2/4); direction 1: <x,θ1>=-3 -> 1.5*0.5*tanh(-6)
    expected = torch.tensor(
        [2.0 + 1.5 * 4 * math.tanh(0.5), -3.0 + 1.5 * 0.5 * math.tanh(-6.0), 5.0], dtype=torch.float64
    )
    coef = torch.full((2,), alpha, dtype=torch.float64)
    got = x + edit_delta(x, theta, scales, coef, "boost")
    assert torch.allclose(got, expected, atol=1e-14, rtol=0)
    assert torch.allclose(edit_sequential(x, theta, scales, alpha, "boost"), expected, atol=1e-14, rtol=0)
    # suppress with alpha=-1: only the positive part along each direction is removed
    sup = x + edit_delta(
        x, theta, torch.ones(2, dtype=torch.float64), torch.full((2,), -1.0, dtype=torch.float64), "suppress"
    )
    assert torch.equal(sup, torch.tensor([0.0, -3.0, 5.0], dtype=torch.float64))


def test_vectorised_equals_sequential_for_orthonormal_directions():
    theta = orthonormal(5, 32)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 32, generator=g, dtype=torch.float64) * 10
    scales = torch.rand(5, generator=g, dtype=torch.float64) + 0.1
    for mode, alpha in (("boost", 0.7), ("suppress", -1.0)):
        seq = edit_sequential(x, theta, scales, alpha, mode)
        vec = x + edit_delta(x, theta, scales, torch.full((5,), alpha, dtype=torch.float64), mode)
        assert torch.allclose(seq, vec, atol=1e-12, rtol=0)


def test_paper_scale_is_the_exact_paper_formula():
    """scale s_j = 1 gives x + α·tanh(<x,θ>)·θ per direction, in sequence."""
    theta = orthonormal(3, 16, seed=4)
    x = torch.randn(16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    ref = x.clone()
    for t in theta:  # the authors' update, written out
        ref = ref + 1.0 * torch.tanh(torch.dot(ref, t)) * t
    got = x + edit_delta(x, theta, torch.ones(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64), "boost")
    assert torch.allclose(got, ref, atol=1e-14, rtol=0)


def test_edit_is_bounded_by_alpha_times_scale_per_direction():
    theta = orthonormal(4, 8)
    scales = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64)
    alpha = 2.0
    x = torch.randn(100, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 1e6
    delta = edit_delta(x, theta, scales, torch.full((4,), alpha, dtype=torch.float64), "boost")
    per_dir = (delta @ theta.T).abs()
    assert (per_dir <= alpha * scales + 1e-9).all()
    assert torch.isfinite(delta).all()
    # tanh keeps the sign: a boost grows |<x, θ>| and never flips it;
    # suppress (ReLU, alpha=-1) never leaves the projection positive
    before, after = x @ theta.T, (x + delta) @ theta.T
    assert (after.abs() >= before.abs() - 1e-6).all()
    assert (torch.sign(after) == torch.sign(before)).all()
    sup = x + edit_delta(x, theta, torch.ones(4, dtype=torch.float64), -torch.ones(4, dtype=torch.float64), "suppress")
    assert ((sup @ theta.T) <= 1e-6).all()


def test_edit_hook_per_row_mask_and_dtype():
    theta = orthonormal(2, 8).float()
    act = torch.randn(3, 5, 8).to(torch.bfloat16)
    coef = torch.tensor([[1.0, 1.0], [0.0, 0.0], [0.0, 1.0]])
    fn = edit_hook([EditTerm(theta, torch.ones(2), coef, "boost")], PositionTracker("all"))
    out = fn(act, None)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out[1], act[1])  # a row that selected nothing is untouched, bit for bit
    x = act[2].float()
    want = (x + edit_delta(x, theta, torch.ones(2), coef[2], "boost")).to(torch.bfloat16)
    assert torch.equal(out[2], want)
    assert not torch.equal(out[0], act[0])
    with pytest.raises(ValueError, match="batch of 4"):
        fn(torch.randn(4, 5, 8), None)


def test_position_tracker_generated_with_and_without_cache():
    # KV-cache generation: prompt of 6, then one token per call
    t = PositionTracker("generated", log=[])
    assert t.window(6) == (5, 6)
    assert t.window(1) == (0, 1)
    assert t.window(1) == (0, 1)
    # cache-less: the whole sequence each call; the past keeps its edits
    t = PositionTracker("generated")
    assert t.window(6) == (5, 6)
    assert t.window(7) == (5, 7)
    assert t.window(8) == (5, 8)
    # a new, shorter prompt restarts
    assert t.window(4) == (3, 4)
    # a pinned prompt length
    t = PositionTracker("generated", prompt_len=4)
    assert t.window(4) == (3, 4)
    assert t.window(5) == (3, 5)
    assert PositionTracker("all").window(9) == (0, 9)
    with pytest.raises(ValueError):
        PositionTracker("last")


def test_project_out_removes_the_span():
    theta = orthonormal(3, 10)
    x = torch.randn(2, 4, 10, dtype=torch.float64)
    out = project_out_hook(theta)(x, None)
    assert (out.float() @ theta.float().T).abs().max() < 1e-5


def test_zero_coefficient_rows_are_bit_identical_in_float64():
    theta = orthonormal(2, 8)
    act = torch.randn(2, 3, 8, dtype=torch.float64)
    coef = torch.tensor([[0.0, 0.0], [1.0, 0.0]])
    out = edit_hook([EditTerm(theta.float(), torch.ones(2), coef, "boost")], PositionTracker("all"))(act, None)
    assert out.dtype == torch.float64
    assert torch.equal(out[0], act[0])
    want = act[1] + edit_delta(
        act[1], theta.float().double(), torch.ones(2, dtype=torch.float64), coef[1].double(), "boost"
    )
    assert torch.allclose(out[1], want, atol=1e-12, rtol=0)


# --------------------------------------------------------------------------- the oriented edit


def test_oriented_boost_matches_hand_computation():
    theta = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=torch.float64)
    x = torch.tensor([[-2.0, 0.5, 7.0]], dtype=torch.float64)
    scales = torch.tensor([2.0, 0.5], dtype=torch.float64)
    coef = torch.tensor([[0.3, 0.3]], dtype=torch.float64)
    out = x + edit_delta(x, theta, scales, coef, "boost", "oriented")
    assert out[0, 0].item() == pytest.approx(-2.0 + 0.3 * 2.0 * (1 - math.tanh(-1.0)), abs=1e-12)
    assert out[0, 1].item() == pytest.approx(0.5 + 0.3 * 0.5 * (1 - math.tanh(1.0)), abs=1e-12)
    assert out[0, 2].item() == 7.0
    # unlike the paper's boost it raises a negative projection, where the paper lowers it
    paper = x + edit_delta(x, theta, scales, coef, "boost", "paper")
    assert out[0, 0] > x[0, 0] > paper[0, 0]


def test_oriented_suppress_lifts_only_the_negative_side():
    theta = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    x = torch.tensor([[-4.0, 3.0], [2.0, -1.0]], dtype=torch.float64)
    coef = torch.tensor([[0.75, 0.75]], dtype=torch.float64)
    out = x + edit_delta(x, theta, torch.ones(2, dtype=torch.float64), coef, "suppress", "oriented")
    assert out.tolist() == [[-1.0, 3.0], [2.0, -0.25]]  # (1 − α)·p for p < 0, p ≥ 0 untouched
    full = x + edit_delta(
        x, theta, torch.ones(2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64), "suppress", "oriented"
    )
    assert full.tolist() == [[0.0, 3.0], [2.0, 0.0]]  # α = 1 removes the negative side exactly


@pytest.mark.parametrize("mode", ["boost", "suppress"])
def test_oriented_vectorised_equals_sequential(mode):
    theta = orthonormal(4, 9, seed=2)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 9, generator=g, dtype=torch.float64) * 3
    scales = torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64)
    coef = torch.full((1, 4), 0.4, dtype=torch.float64)
    vec = x + edit_delta(x, theta, scales, coef, mode, "oriented")
    seq = edit_sequential(x, theta, scales, 0.4, mode, "oriented")
    assert torch.allclose(vec, seq, atol=1e-12)


def test_unknown_edit_is_refused():
    theta = orthonormal(1, 3)
    with pytest.raises(ValueError, match="edit must be one of"):
        edit_delta(
            torch.zeros(1, 3, dtype=torch.float64),
            theta,
            torch.ones(1, dtype=torch.float64),
            torch.ones(1, 1, dtype=torch.float64),
            "boost",
            "signed",
        )
    with pytest.raises(ValueError, match="edit must be one of"):
        EditTerm(theta, torch.ones(1), torch.ones(1, 1), "boost", "signed")


def test_monitor_counts_edited_entries_and_negative_projections():
    theta = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    x = torch.tensor([[[-1.0, 2.0], [3.0, -4.0]], [[-5.0, -6.0], [7.0, 8.0]]], dtype=torch.float64)  # [2, 2, 2]
    coef = torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)  # row 0 edits θ₀ only
    monitor: dict = {}
    edit_hook(
        [EditTerm(theta, torch.ones(2, dtype=torch.float64), coef, "boost", "oriented")],
        PositionTracker("all"),
        monitor,
    )(x, None)
    # row 0: θ₀ at 2 positions (p = −1, 3); row 1: both directions at 2 positions (−5, −6, 7, 8)
    assert monitor == {"edited": 6, "negative": 3}


def test_shape_annotations_are_checked_when_make_test_asks(request):
    """Under `make test` (--jaxtyping-packages=alignez_tl.hooks,...) a wrong shape is refused at the call."""
    packages = request.config.getoption("--jaxtyping-packages", default=None) or ""
    if "alignez_tl.hooks" not in packages:
        pytest.skip("runtime shape checks are on under `make test` only")
    import jaxtyping

    x = torch.zeros(2, 5)
    theta = torch.zeros(3, 4)  # d = 4, but x has d = 5
    with pytest.raises(jaxtyping.TypeCheckError):
        edit_delta(x, theta, torch.ones(3), torch.ones(3), "boost")


def test_edit_strength_is_checked_on_the_first_forward_only():
    import warnings as _warnings

    from alignez_tl.errors import EditStrengthError
    from alignez_tl.hooks import EditGuard, EditStrengthWarning, EditTerm, PositionTracker, edit_hook, refuse_edit_ratio

    class Counting(EditGuard):
        calls = 0

        def check(self, name, x, delta):
            Counting.calls += 1
            super().check(name, x, delta)

    theta = torch.eye(8)[:1]
    term = EditTerm(theta, torch.ones(1), torch.full((1, 1), 100.0), "boost", "oriented")
    guard = Counting(alpha=100.0)
    fn = edit_hook([term], PositionTracker(), guard=guard, name="blocks.0.hook_resid_post")
    x = torch.full((1, 5, 8), -1.0)
    with pytest.warns(EditStrengthWarning, match="alpha=100 is probably too large") as record:
        fn(x, None)  # the prompt: measured
        for _ in range(4):
            fn(torch.full((1, 1, 8), -1.0), None)  # KV-cache steps: not measured (no device sync)
    assert Counting.calls == 1 and len(record) == 1
    assert (
        record[0].message.ratio == pytest.approx(guard.ratios["blocks.0.hook_resid_post"])
        and guard.ratios["blocks.0.hook_resid_post"] > 10
    )
    # a second hook sharing the guard measures its own layer but does not warn again
    with _warnings.catch_warnings():
        _warnings.simplefilter("error")
        edit_hook([term], PositionTracker(), guard=guard, name="blocks.1.hook_resid_post")(x, None)
    assert set(guard.ratios) == {"blocks.0.hook_resid_post", "blocks.1.hook_resid_post"}
    with refuse_edit_ratio(10.0), pytest.raises(EditStrengthError, match="far too large"):
        edit_hook([term], PositionTracker(), name="h")(x, None)
    huge = EditTerm(theta, torch.full((1,), 1e30), torch.full((1, 1), 1e30), "boost", "oriented")  # 1e60: inf
    with pytest.raises(EditStrengthError, match="not finite"):
        edit_hook([huge], PositionTracker(), name="h")(x, None)
