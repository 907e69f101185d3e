"""Property tests (hypothesis): the edit, the fit and the files, on generated inputs.

Every property runs 1,000 examples, derandomised (the same examples on every run, so
CI is stable) and without an example database. The domains are stated in each
strategy; the decisions they encode are written up in docs/bad_input.md ("Fuzzing").
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alignez_tl.hooks import EditTerm, PositionTracker, edit_delta, edit_hook, edit_sequential
from alignez_tl.preferences import PreferenceSet
from alignez_tl.subspace import AlignmentSubspace, fit_layer, fit_subspace

EXAMPLES = 1000
PROPERTY = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# |x_i| ≤ 2^50 (≈ 1e15): ⟨x, θ⟩ over up to 24 coordinates then stays far inside float32's range
# (3.4e38), so the only source of inf would be the edit itself. Residual streams of
# real models are below 1e5.
BOUND = 2.0**50  # ≈ 1.1e15, exact in float32


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny tensors: one thread avoids thread-pool wake-ups that cost more than the maths."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _orthonormal(seed: int, k: int, d: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))
    return q.T.contiguous().to(dtype)  # [k, d], orthonormal rows


@st.composite
def edit_cases(draw, alphas=st.floats(-8.0, 8.0, allow_nan=False), modes=st.sampled_from(["boost", "suppress"])):
    d = draw(st.integers(1, 24))
    k = draw(st.integers(1, d))
    rows = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    # Gaussian rows at a drawn magnitude, with up to four coordinates overwritten by
    # extreme finite values (±2^50, subnormals, zero): drawing every coordinate from a
    # float strategy is 20x slower to generate for no extra reach.
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.randn(rows, d, generator=g, dtype=torch.float64) * 10.0 ** draw(st.integers(-6, 12))
    extremes = st.one_of(
        st.floats(-BOUND, BOUND, allow_nan=False, allow_infinity=False, width=32),
        st.sampled_from([BOUND, -BOUND, 0.0, 1e-45, -1e-45, 1e-38]),
    )
    for _ in range(draw(st.integers(0, 4))):
        x[draw(st.integers(0, rows - 1)), draw(st.integers(0, d - 1))] = draw(extremes)
    x = x.clamp(-BOUND, BOUND).to(dtype)
    dirs = _orthonormal(draw(st.integers(0, 2**31 - 1)), k, d, dtype)
    scales = torch.tensor(draw(st.lists(st.floats(1e-3, 1e4), min_size=k, max_size=k)), dtype=dtype)
    return x, dirs, scales, draw(alphas), draw(modes)


def _tol(x: torch.Tensor, alpha: float, scales: torch.Tensor) -> torch.Tensor:
    """Rounding allowance of one projection: a few ulps of the magnitudes involved."""
    eps = torch.finfo(x.dtype).eps
    return 64 * eps * (x.norm(dim=-1, keepdim=True) + abs(alpha) * float(scales.max())) + 1e-30


@PROPERTY
@given(edit_cases())
def test_the_edit_is_finite_for_finite_input(case):
    x, dirs, scales, alpha, mode = case
    coef = torch.full((1, dirs.shape[0]), alpha, dtype=x.dtype)
    assert torch.isfinite(edit_delta(x, dirs, scales, coef, mode)).all()
    assert torch.isfinite(edit_sequential(x, dirs, scales, alpha, mode)).all()
    term = EditTerm(dirs, scales, coef, mode)
    out = edit_hook([term], PositionTracker("all"))(x[:, None, :], None)
    assert out.dtype == x.dtype and torch.isfinite(out).all()


@PROPERTY
@given(edit_cases(modes=st.just("boost")))
def test_the_boost_moves_each_direction_by_at_most_alpha_times_its_scale(case):
    x, dirs, scales, alpha, mode = case
    coef = torch.full((1, dirs.shape[0]), alpha, dtype=x.dtype)
    moved = edit_delta(x, dirs, scales, coef, mode) @ dirs.T  # [rows, k]
    # each direction moves by coef·s·tanh(·), |tanh| ≤ 1; the allowance covers rounding
    # and the float orthonormality (1e-7 in float32) leaking other directions' steps
    eps = torch.finfo(x.dtype).eps
    bound = (
        abs(alpha) * scales * (1 + 4 * eps)
        + 16 * eps * abs(alpha) * float(scales.sum())
        + 4 * torch.finfo(x.dtype).tiny
    )
    assert (moved.abs() <= bound).all()


@PROPERTY
@given(edit_cases(alphas=st.floats(1e-3, 8.0), modes=st.just("boost")))
def test_the_boost_never_decreases_a_non_negative_projection_and_never_shrinks_any(case):
    """The paper's boost, `p + α·s·tanh(p/s)` with α > 0, pushes the projection p away
    from zero: it never decreases ⟨x, θ⟩ where ⟨x, θ⟩ ≥ 0, and where ⟨x, θ⟩ < 0 it makes
    it more negative (tanh keeps the sign: see test_the_boost_follows_the_sign_of_the_projection)."""
    x, dirs, scales, alpha, mode = case
    before = x @ dirs.T
    after = edit_sequential(x, dirs, scales, alpha, mode) @ dirs.T
    tol = _tol(x, alpha, scales)
    assert (after[before >= 0] >= (before - tol)[before >= 0]).all()
    assert (after.abs() >= before.abs() - tol).all()
    assert (after[before > tol] > 0).all() and (after[before < -tol] < 0).all()


def test_the_boost_follows_the_sign_of_the_projection():
    """The decision the property above encodes: for ⟨x, θ⟩ < 0 the boost decreases it."""
    theta = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    x = torch.tensor([[-2.0, 5.0]], dtype=torch.float64)
    after = edit_sequential(x, theta, torch.tensor([1.0], dtype=torch.float64), 1.0, "boost")
    assert after[0, 0].item() == pytest.approx(-2.0 + math.tanh(-2.0))
    assert after[0, 1].item() == 5.0


@PROPERTY
@given(edit_cases(alphas=st.floats(-8.0, -1.0), modes=st.just("suppress")))
def test_the_suppress_never_leaves_a_positive_projection(case):
    x, dirs, scales, alpha, mode = case
    after = edit_sequential(x, dirs, scales, alpha, mode) @ dirs.T
    coef = torch.full((1, dirs.shape[0]), alpha, dtype=x.dtype)
    vectorised = (x + edit_delta(x, dirs, scales, coef, mode)) @ dirs.T
    tol = _tol(x, alpha, scales)
    assert (after <= tol).all() and (vectorised <= tol).all()


@st.composite
def pair_activations(draw):
    """Pairs whose differences have an exact, drawn rank r (0 = all pairs identical)."""
    n = draw(st.integers(1, 10))
    d = draw(st.integers(1, 16))
    r = draw(st.integers(0, min(n, d)))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    magnitude = 10.0 ** draw(st.integers(-3, 5))
    neg = torch.randn(n, d, generator=g, dtype=torch.float64) * magnitude
    diffs = torch.randn(n, r, generator=g, dtype=torch.float64) @ torch.randn(r, d, generator=g, dtype=torch.float64)
    pos = neg + diffs * magnitude
    rank = draw(st.one_of(st.none(), st.integers(1, d)))
    variance = draw(st.floats(0.05, 1.0))
    return pos.float(), neg.float(), r, rank, variance


@PROPERTY
@given(pair_activations())
def test_directions_are_orthonormal_whatever_the_rank_of_the_differences(case):
    pos, neg, r, rank, variance = case
    layer = fit_layer(pos, neg, tau=1.0, rank=rank, variance=variance)
    k = layer.directions.shape[0]
    assert k <= r and (rank is None or k <= rank)
    assert torch.isfinite(layer.directions).all() and torch.isfinite(layer.proj_rms).all()
    gram = layer.directions.double() @ layer.directions.double().T
    assert torch.allclose(gram, torch.eye(k, dtype=torch.float64), atol=1e-5)
    assert (layer.mean_diff_proj >= 0).all()  # oriented negative -> positive


@PROPERTY
@given(pair_activations(), st.integers(1, 3), st.sampled_from(["resid_post", "mlp_out", "resid_pre", "attn_out"]))
def test_save_then_load_is_the_identity(case, n_layers, site):
    pos, neg, r, rank, variance = case
    pos = pos[:, None].expand(-1, n_layers, -1) * torch.arange(1, n_layers + 1)[None, :, None]
    neg = neg[:, None].expand(-1, n_layers, -1) * torch.arange(1, n_layers + 1)[None, :, None]
    try:
        sub = fit_subspace(
            None,
            (pos, neg),
            layers=list(range(n_layers)),
            site=site,
            tau=1.0,
            rank=rank,
            variance=variance,
            verbose=False,
        )
    except ValueError:  # rank 0: nothing to fit (its own error, tested in test_subspace)
        assert r == 0
        return
    with tempfile.TemporaryDirectory() as folder:
        back = AlignmentSubspace.load(sub.save(Path(folder) / "s.safetensors"))
    assert back._metadata() == sub._metadata()
    assert back.layer_indices == sub.layer_indices
    for i in sub.layer_indices:
        for name in type(sub.layers[i])._TENSORS:
            a, b = getattr(sub.layers[i], name), getattr(back.layers[i], name)
            assert a.dtype == b.dtype and torch.equal(a, b), name
        assert (back.layers[i].n_pairs, back.layers[i].n_kept) == (sub.layers[i].n_pairs, sub.layers[i].n_kept)


# Any Unicode scalar value: surrogates are not characters and cannot be UTF-8 encoded.
UNICODE = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=40)


@PROPERTY
@given(
    st.lists(st.tuples(UNICODE, UNICODE, UNICODE), min_size=1, max_size=4), UNICODE.filter(lambda name: name.strip())
)  # a blank objective name is refused
def test_preference_jsonl_round_trips_any_unicode(triples, objective_name):
    queries, positives, negatives = (list(t) for t in zip(*triples))
    prefs = PreferenceSet.from_pairs(queries, positives, negatives, objective=objective_name)
    with tempfile.TemporaryDirectory() as folder:
        back = PreferenceSet.load(prefs.save(Path(folder) / "p.jsonl"))
    assert [(p.query, p.positive, p.negative, p.index) for p in back.pairs] == [
        (p.query, p.positive, p.negative, p.index) for p in prefs.pairs
    ]
    assert back.objective.name == prefs.objective.name


# --------------------------------------------------------------------------- the oriented edit


@PROPERTY
@given(edit_cases(alphas=st.floats(1e-3, 8.0), modes=st.just("boost")))
def test_the_oriented_boost_never_lowers_a_projection_and_is_bounded(case):
    """p' = p + α·s·(1 − tanh(p/s)): never below p, never more than 2·α·s above it."""
    x, dirs, scales, alpha, mode = case
    before = x @ dirs.T
    after = edit_sequential(x, dirs, scales, alpha, mode, "oriented") @ dirs.T
    tol = _tol(x, alpha, scales)
    assert (after >= before - tol).all()
    assert (after - before <= 2 * alpha * scales + tol).all()


@PROPERTY
@given(st.floats(1e-3, 1.0), st.floats(1e-2, 1e3), st.integers(0, 2**31 - 1))
def test_the_oriented_boost_is_monotone_in_the_projection_for_alpha_at_most_one(alpha, s, seed):
    theta = torch.tensor([[1.0]], dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    p = torch.sort(torch.randn(64, generator=g, dtype=torch.float64) * s * 4).values[:, None]
    after = edit_sequential(p, theta, torch.tensor([s], dtype=torch.float64), alpha, "boost", "oriented")
    assert (after[1:] >= after[:-1] - 1e-12 * s).all()


def test_the_oriented_boost_fades_once_the_direction_is_expressed():
    theta = torch.tensor([[1.0]], dtype=torch.float64)
    s = torch.tensor([1.0], dtype=torch.float64)
    steps = [
        float(edit_sequential(torch.tensor([[p]], dtype=torch.float64), theta, s, 1.0, "boost", "oriented") - p)
        for p in (-3.0, 0.0, 3.0, 10.0)
    ]
    assert steps[0] > 1.99 and steps[1] == 1.0 and steps[2] < 0.005 and steps[3] < 1e-8
    # and it is not the same edit for θ and −θ (the paper's boost is)
    x = torch.tensor([[0.7, 0.2]], dtype=torch.float64)
    t = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    for edit, same in (("paper", True), ("oriented", False)):
        plus = edit_sequential(x, t, s, 1.0, "boost", edit)
        minus = edit_sequential(x, -t, s, 1.0, "boost", edit)
        assert torch.allclose(plus, minus) is same


@PROPERTY
@given(edit_cases(alphas=st.floats(1e-3, 1.0), modes=st.just("suppress")))
def test_the_oriented_suppress_lifts_negative_projections_towards_zero_only(case):
    """p' = p + α·relu(−p): p ≥ 0 is left alone, p < 0 becomes (1 − α)·p ∈ [p, 0]."""
    x, dirs, scales, alpha, mode = case
    before = x @ dirs.T
    after = edit_sequential(x, dirs, scales, alpha, mode, "oriented") @ dirs.T
    tol = _tol(x, alpha, scales)
    assert (after >= before - tol).all()
    assert ((after - before).abs()[before >= 0] <= tol.expand_as(before)[before >= 0]).all()
    assert (after[before < 0] <= tol.expand_as(before)[before < 0]).all()
