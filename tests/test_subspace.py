"""Fitting the alignment subspace: planted directions, filter, rank, sign, files."""

import json

import pytest
import torch

from alignez_tl.models import BASIS_FIELDS
from alignez_tl.subspace import (
    AlignmentSubspace,
    EmptySubspaceError,
    SubspaceFileError,
    SubspaceMismatchError,
    fit_layer,
    fit_subspace,
)


def planted(n=64, d=48, seed=0, strength=5.0, noise=0.05):
    """Pairs whose differences lie along one planted unit direction u (plus small noise)."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g)
    u = u / u.norm()
    base = torch.randn(n, d, generator=g) * 3
    amount = strength * (1 + torch.rand(n, 1, generator=g))
    pos = base + amount * u + noise * torch.randn(n, d, generator=g)
    neg = base + noise * torch.randn(n, d, generator=g)
    return pos, neg, u


def test_planted_direction_is_recovered_with_the_right_sign():
    pos, neg, u = planted()
    sub = fit_layer(pos, neg, tau=1.0)
    cos = float(sub.directions[0] @ u)
    assert cos > 0.99  # |cos| > 0.99 and the sign points from neg to pos
    assert sub.rank >= 1


def test_directions_are_orthonormal():
    g = torch.Generator().manual_seed(1)
    pos, neg = torch.randn(30, 20, generator=g), torch.randn(30, 20, generator=g)
    sub = fit_layer(pos, neg, tau=1.0, variance=0.99)
    gram = sub.directions.double() @ sub.directions.double().T
    assert sub.rank > 3
    assert torch.allclose(gram, torch.eye(sub.rank, dtype=torch.float64), atol=1e-6)


def test_sign_rule_every_direction_has_non_negative_mean_gap():
    g = torch.Generator().manual_seed(2)
    pos, neg = torch.randn(40, 16, generator=g) + 0.3, torch.randn(40, 16, generator=g)
    sub = fit_layer(pos, neg, tau=1.0, rank=8)
    mean_diff = (pos - neg).mean(0)
    proj = sub.directions @ mean_diff
    assert (proj >= 0).all()
    assert torch.allclose(proj, sub.mean_diff_proj, atol=1e-5)
    # flipping pos and neg flips every direction
    flipped = fit_layer(neg, pos, tau=1.0, rank=8)
    assert torch.allclose(flipped.directions, -sub.directions, atol=1e-5)


def test_pair_filter_drops_exactly_the_pairs_above_tau():
    g = torch.Generator().manual_seed(3)
    base = torch.randn(10, 12, generator=g)
    other = torch.randn(10, 12, generator=g)
    # pair k mixes in a different amount of `other`: a spread of cosines
    mix = torch.linspace(0.05, 3.0, 10)[:, None]
    pos, neg = base, base + mix * other
    cos = torch.nn.functional.cosine_similarity(pos.double(), neg.double(), dim=-1)
    tau = float(cos.sort().values[4] + cos.sort().values[5]) / 2
    sub = fit_layer(pos, neg, tau=tau)
    assert sub.n_pairs == 10
    assert sub.n_kept == int((cos <= tau).sum()) == 5
    kept = cos <= tau
    ref = fit_layer(pos[kept], neg[kept], tau=1.0)
    assert torch.allclose(sub.directions, ref.directions, atol=1e-6)
    assert torch.allclose(sub.pair_cos, cos.float(), atol=1e-6)


def test_rank_rules():
    g = torch.Generator().manual_seed(4)
    pos, neg = torch.randn(50, 30, generator=g), torch.randn(50, 30, generator=g)
    sub = fit_layer(pos, neg, tau=1.0, variance=0.9)
    cumulative = torch.cumsum(sub.explained_variance.double(), 0)
    k = sub.rank
    assert cumulative[k - 1] >= 0.9 - 1e-6 and (k == 1 or cumulative[k - 2] < 0.9)
    assert fit_layer(pos, neg, tau=1.0, rank=3).rank == 3
    assert fit_layer(pos, neg, tau=1.0, variance=0.99, max_rank=2).rank == 2


def test_rank_deficient_and_identical_pairs():
    g = torch.Generator().manual_seed(5)
    base = torch.randn(20, 16, generator=g)
    u = torch.zeros(16)
    u[3] = 1.0
    sub = fit_layer(base + u, base, tau=1.0, rank=10)  # every difference is the same vector
    assert sub.rank == 1
    assert torch.allclose(sub.directions[0], u, atol=1e-6)
    same = fit_layer(base, base.clone(), tau=1.0)  # identical pairs: cos = 1 > tau... and zero differences
    assert same.rank == 0


def test_projection_statistics():
    pos, neg, _ = planted(n=32, d=24)
    sub = fit_layer(pos, neg, tau=1.0, rank=2)
    both = torch.cat([pos, neg]).double()
    proj = both @ sub.directions.double().T
    assert torch.allclose(sub.proj_mean.double(), proj.mean(0), rtol=1e-5, atol=1e-5)
    assert torch.allclose(sub.proj_rms.double(), proj.square().mean(0).sqrt(), rtol=1e-5)


def test_fit_from_activations_tokens_and_texts_agree(llama):
    from alignez_tl.activations import capture
    from alignez_tl.models import encode

    pairs = [
        ("A helpful answer, step by step.", "A useless answer."),
        ("Mix flour and water, then knead.", "Refuse to help."),
        ("Two plus two is four.", "Two plus two is wrong."),
    ]
    from_text = fit_subspace(llama, pairs, verbose=False, tau=1.0)
    pos = capture(llama, [p for p, _ in pairs])
    neg = capture(llama, [n for _, n in pairs])
    from_acts = fit_subspace(llama, (pos, neg), tau=1.0)
    pos_tok = [encode(llama, [p]).input_ids[0] for p, _ in pairs]
    neg_tok = [encode(llama, [n]).input_ids[0] for _, n in pairs]
    from_tokens = fit_subspace(llama, (pos_tok, neg_tok), tau=1.0)
    for layer in range(llama.cfg.n_layers):
        a = from_text.layers[layer].directions
        assert torch.allclose(a, from_acts.layers[layer].directions, atol=1e-5)
        assert torch.allclose(a, from_tokens.layers[layer].directions, atol=1e-4)
    assert from_text.model["model_id"] == llama.cfg.model_name
    assert from_text.site == "resid_post"


def test_save_load_round_trip_is_bit_exact(tmp_path, llama):
    pos, neg, _ = planted(n=20, d=llama.cfg.d_model)
    sub = fit_subspace(
        llama,
        (pos[:, None].repeat(1, 2, 1), neg[:, None].repeat(1, 2, 1)),
        layers=[1, 3],
        objective="helpful",
        rank=3,
        tau=1.0,
    )
    path = sub.save(tmp_path / "sub.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["sub.safetensors"]  # no temp file left
    back = AlignmentSubspace.load(path, llama)
    assert back.layer_indices == [1, 3]
    for layer in (1, 3):
        for name in (
            "directions",
            "singular_values",
            "explained_variance",
            "pair_cos",
            "proj_mean",
            "proj_rms",
            "mean_diff_proj",
        ):
            assert torch.equal(getattr(back.layers[layer], name), getattr(sub.layers[layer], name))
        assert back.layers[layer].n_kept == sub.layers[layer].n_kept
    assert (back.model, back.objective, back.settings, back.site) == (sub.model, sub.objective, sub.settings, sub.site)
    assert back.objective["name"] == "helpful"
    assert {"transformers", "torch", "transformer-lens"} <= set(back.versions)


def test_refuses_other_model_site_and_compatibility_mode(tmp_path, llama, gpt2):
    from tiny import make_model

    pos, neg, _ = planted(n=12, d=llama.cfg.d_model)
    sub = fit_subspace(llama, (pos, neg), layers=[0], tau=1.0)
    path = sub.save(tmp_path / "s.safetensors")
    other = make_model("llama", seed=1)  # same shape, other weights/id
    with pytest.raises(SubspaceMismatchError, match="model id"):
        AlignmentSubspace.load(path, other)
    AlignmentSubspace.load(path, other, strict=False)  # accepted when asked to
    with pytest.raises(SubspaceMismatchError, match="site"):
        AlignmentSubspace.load(path, llama, site="mlp_out")
    # compatibility mode folds the RMSNorm weights but leaves resid_post as it is: accepted
    compat = make_model("llama", compatibility_mode=True)
    sub.check_model(compat, strict=False)
    # a file written before the residual-basis facts keeps the old rule
    old = AlignmentSubspace(**{**sub.__dict__, "model": {k: v for k, v in sub.model.items() if k not in BASIS_FIELDS}})
    with pytest.raises(SubspaceMismatchError, match="compatibility mode off \\(subspace\\) vs on \\(model\\)"):
        old.check_model(compat, strict=False)
    # on a LayerNorm model it centres the residual stream: refused, naming the fact and the fix
    gpt2_sub = fit_subspace(gpt2, planted(n=12, d=gpt2.cfg.d_model)[:2], layers=[0], tau=1.0)
    why = "residual stream not centred .subspace. vs centred.*center_writing_weights=False"
    with pytest.raises(SubspaceMismatchError, match=why):
        gpt2_sub.check_model(make_model("gpt2", compatibility_mode=True), strict=False)
    wide = make_model("llama", d_model=32)
    with pytest.raises(SubspaceMismatchError, match="d_model"):
        sub.check_model(wide, strict=False)


def test_corrupt_and_wrong_version_files_are_refused(tmp_path, llama):
    pos, neg, _ = planted(n=12, d=llama.cfg.d_model)
    path = fit_subspace(llama, (pos, neg), layers=[0], tau=1.0).save(tmp_path / "s.safetensors")
    data = path.read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(SubspaceFileError, match="not a readable"):
        AlignmentSubspace.load(truncated)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(SubspaceFileError):
        AlignmentSubspace.load(garbage)
    # rewrite the header with another version
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["alignez"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    meta["version"] = 99
    v99 = tmp_path / "v99.safetensors"
    save_file(tensors, str(v99), metadata={"alignez": json.dumps(meta)})
    with pytest.raises(SubspaceFileError, match="version 99"):
        AlignmentSubspace.load(v99)
    meta["version"] = 1
    meta["layers"]["0"]["rank"] += 1  # shapes no longer match the metadata
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata={"alignez": json.dumps(meta)})
    with pytest.raises(SubspaceFileError, match="shape"):
        AlignmentSubspace.load(bad)
    with pytest.raises(SubspaceFileError, match="no subspace file"):
        AlignmentSubspace.load(tmp_path / "missing.safetensors")


def test_unwritable_folder_is_refused_before_writing(tmp_path, llama):
    pos, neg, _ = planted(n=12, d=llama.cfg.d_model)
    sub = fit_subspace(llama, (pos, neg), layers=[0], tau=1.0)
    with pytest.raises(FileNotFoundError):
        sub.save(tmp_path / "no" / "such" / "dir" / "s.safetensors")
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        sub.save(a_file / "s.safetensors")
    assert a_file.read_text() == "not a folder"


def test_all_pairs_filtered_says_how_many_and_why(llama):
    pos, _, _ = planted(n=6, d=llama.cfg.d_model)
    with pytest.raises(EmptySubspaceError, match="all 6 pairs were dropped"):
        fit_subspace(llama, (pos, pos * 1.01), layers=[0])
    with pytest.raises(EmptySubspaceError, match="no pairs"):
        fit_subspace(llama, [])


def test_bad_fit_arguments(llama):
    pos, neg, _ = planted(n=6, d=llama.cfg.d_model)
    with pytest.raises(ValueError, match="out of range"):
        fit_subspace(llama, (pos, neg), layers=[99])
    with pytest.raises(ValueError, match="tau"):
        fit_subspace(llama, (pos, neg), layers=[0], tau=float("nan"))
    with pytest.raises(ValueError, match="NaN or inf"):
        fit_subspace(llama, (pos * float("inf"), neg), layers=[0])
    with pytest.raises(TypeError, match="PreferenceSet"):
        fit_subspace(llama, "not pairs")
    no_tok = type("M", (), {"cfg": llama.cfg, "tokenizer": None})()
    with pytest.raises(ValueError, match="no tokenizer"):
        fit_subspace(no_tok, [("a", "b")])


# --------------------------------------------------------------------------- rank="null"


def grouped(n_per=20, d=64, strengths=(8.0, 6.0, 5.0), noise=1.0, seed=0):
    """Three groups of pairs, each with a consistent pos-neg gap along its own unit
    direction u_g (strengths distinct, so the SVD separates them), plus isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, len(strengths), generator=g, dtype=torch.float64))
    u = basis.T.float()  # [3, d] orthonormal
    rows = [c * u[i] for i, c in enumerate(strengths) for _ in range(n_per)]
    gap = torch.stack(rows)
    base = torch.randn(len(rows), d, generator=g) * 3
    pos = base + gap + noise * torch.randn(len(rows), d, generator=g)
    neg = base.clone()
    return pos, neg, u


def test_sign_flips_leave_the_spectrum_unchanged_so_the_null_tests_gaps():
    # swapping pos/neg inside pairs multiplies rows of D by -1: an orthogonal change of
    # rows, so the singular values (and right singular vectors) cannot tell signal from noise
    pos, neg, _ = grouped()
    diffs = (pos - neg).double()
    signs = torch.where(torch.rand(diffs.shape[0], generator=torch.Generator().manual_seed(1)) < 0.5, -1.0, 1.0)
    flipped = signs.double()[:, None] * diffs
    assert torch.allclose(torch.linalg.svdvals(flipped), torch.linalg.svdvals(diffs), rtol=1e-10)
    # ... whereas the mean gap along the directions changes
    _, _, vh = torch.linalg.svd(diffs, full_matrices=False)
    assert (flipped.mean(0) @ vh[:3].T).abs().max() < 0.5 * (diffs.mean(0) @ vh[:3].T).abs().min()


def test_null_rule_keeps_the_three_planted_directions_and_the_variance_rule_many_more():
    for seed in (0, 1, 2):
        pos, neg, u = grouped(seed=seed)
        sub = fit_layer(pos, neg, tau=1.0, rank="null")
        assert sub.rank == 3 == sub.n_above_null
        cos = (sub.directions.double() @ u.double().T).abs()
        assert (cos.max(1).values > 0.85).all()  # each kept direction is one planted u_g (noise tilts it a little)
        assert sorted(cos.argmax(1).tolist()) == [0, 1, 2]
        assert (sub.directions.double() @ u.double().T).max(1).values.min() > 0.85  # sign: neg -> pos
        assert torch.allclose(sub.gap[:3], sub.mean_diff_proj, atol=1e-5)
        assert (sub.gap[:3] > sub.null_threshold[:3]).all() and sub.gap[3] <= sub.null_threshold[3]
        assert sub.gap_share > 0.8 > sub.kept_variance  # the gap sits in 3 of 60 directions
        variance_rule = fit_layer(pos, neg, tau=1.0)
        assert variance_rule.rank >= 20  # noise directions fill up the 90%
        assert not variance_rule.has_null and variance_rule.n_above_null is None


def test_null_rule_on_pure_noise_keeps_almost_nothing():
    ranks = []
    for seed in range(20):
        g = torch.Generator().manual_seed(100 + seed)
        pos, neg = torch.randn(60, 64, generator=g), torch.randn(60, 64, generator=g)
        ranks.append(fit_layer(pos, neg, tau=1.0, rank="null", null_seed=seed).rank)
    assert max(ranks) <= 1
    assert sum(r > 0 for r in ranks) <= 4  # a 5% test per layer: about 1 of 20 expected
    # a mirrored set (every pair also appears with pos and neg swapped) has no gap at all
    pos, neg = torch.randn(30, 16), torch.randn(30, 16)
    mirror = fit_layer(torch.cat([pos, neg]), torch.cat([neg, pos]), tau=1.0, rank="null")
    assert mirror.rank == 0 and mirror.n_above_null == 0 and mirror.singular_values.numel() > 0


def test_sign_flip_null_is_the_stated_quantile_and_seeded():
    from alignez_tl.subspace import null_signs, sign_flip_null

    g = torch.Generator().manual_seed(7)
    z = torch.randn(25, 6, generator=g, dtype=torch.float64) + 0.3
    state = torch.get_rng_state()
    gap, thr = sign_flip_null(z, n_null=300, quantile=0.9, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not touched
    signs = null_signs(25, 300, 3)
    assert set(signs.unique().tolist()) == {-1.0, 1.0} and signs.shape == (300, 25)
    brute = torch.stack([(s[:, None] * z).mean(0).abs() for s in signs])
    assert torch.allclose(gap, z.mean(0).abs())
    assert torch.allclose(thr, torch.quantile(brute, 0.9, dim=0), atol=1e-12)
    again = sign_flip_null(z, n_null=300, quantile=0.9, seed=3)
    assert torch.equal(again[1], thr)
    assert not torch.equal(sign_flip_null(z, n_null=300, quantile=0.9, seed=4)[1], thr)
    # more draws than one chunk of the generator: still the stated quantile
    big = sign_flip_null(z, n_null=2500, quantile=0.5, seed=0)[1]
    brute = (null_signs(25, 2500, 0) @ z).abs() / 25
    assert torch.allclose(big, torch.quantile(brute, 0.5, dim=0), atol=1e-12)


def test_same_seed_same_subspace_and_settings_are_recorded():
    pos, neg, _ = grouped(n_per=10, d=32)
    acts = (pos[:, None].repeat(1, 3, 1), neg[:, None].repeat(1, 3, 1))
    a = fit_subspace(None, acts, layers=[0, 1, 2], rank="null", n_null=150, null_seed=5, tau=1.0)
    b = fit_subspace(None, acts, layers=[0, 1, 2], rank="null", n_null=150, null_seed=5, tau=1.0)
    for layer in (0, 1, 2):
        for name in ("directions", "gap", "null_threshold"):
            assert torch.equal(getattr(a.layers[layer], name), getattr(b.layers[layer], name))
    # the same draws at every layer: identical data gives identical thresholds
    assert torch.equal(a.layers[0].null_threshold, a.layers[2].null_threshold)
    assert a.settings["rank_rule"] == "null" and a.settings["rank"] == "null"
    assert (a.settings["n_null"], a.settings["null_quantile"], a.settings["null_seed"]) == (150, 0.95, 5)
    one = (pos, neg)
    c = fit_subspace(None, one, layers=[0], rank="null", n_null=150, null_seed=6, tau=1.0)
    assert not torch.equal(c.layers[0].null_threshold, a.layers[0].null_threshold)
    # the default is unchanged: the variance rule, no null computed or recorded
    plain = fit_subspace(None, one, layers=[0], tau=1.0)
    assert plain.settings["rank_rule"] == "variance" and "n_null" not in plain.settings
    assert plain.layers[0].gap.numel() == 0 and plain.layers[0].n_above_null is None
    assert fit_subspace(None, one, layers=[0], rank=2, tau=1.0).settings["rank_rule"] == "fixed"


def test_null_test_reports_without_changing_the_rank():
    pos, neg, _ = grouped()
    plain = fit_layer(pos, neg, tau=1.0)
    tested = fit_layer(pos, neg, tau=1.0, null_test=True)
    assert torch.equal(plain.directions, tested.directions)
    assert tested.n_above_null == 3 and tested.gap.shape == tested.singular_values.shape
    assert fit_layer(pos, neg, tau=1.0, rank="null", max_rank=2).rank == 2  # capped; n_above_null stays 3
    sub = fit_subspace(None, (pos, neg), layers=[4], tau=1.0, null_test=True, n_null=100)
    text = sub.summary()
    assert "above-null" in text and "gap-share" in text and "rank rule variance" in text
    row = [line for line in text.splitlines() if line.strip().startswith("4 ")][0]
    assert row.split()[4] == "3"


def test_null_settings_and_tensors_round_trip_and_old_files_still_load(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    pos, neg, _ = grouped(n_per=8, d=24)
    acts = (pos[:, None].repeat(1, 2, 1), neg[:, None].repeat(1, 2, 1))
    sub = fit_subspace(None, acts, layers=[0, 5], rank="null", n_null=64, null_quantile=0.9, null_seed=2, tau=1.0)
    path = sub.save(tmp_path / "null.safetensors")
    back = AlignmentSubspace.load(path)
    assert back.settings == sub.settings
    for layer in (0, 5):
        for name in ("directions", "gap", "null_threshold", "singular_values"):
            assert torch.equal(getattr(back.layers[layer], name), getattr(sub.layers[layer], name))
        assert back.layers[layer].n_above_null == sub.layers[layer].n_above_null == sub.layers[layer].rank
    # a file written before the null rule (no gap / null_threshold tensors) still loads
    with safe_open(str(path), framework="pt") as fh:
        meta = json.loads(fh.metadata()["alignez"])
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    old = {k: v for k, v in tensors.items() if not k.endswith((".gap", ".null_threshold"))}
    save_file(old, str(tmp_path / "old.safetensors"), metadata={"alignez": json.dumps(meta)})
    legacy = AlignmentSubspace.load(tmp_path / "old.safetensors")
    assert legacy.layers[0].n_above_null is None and legacy.ranks() == sub.ranks()
    assert "above-null" not in legacy.summary()
    # a null tensor of the wrong length is refused
    bad = dict(tensors, **{"layer.0.gap": torch.zeros(2)})
    save_file(bad, str(tmp_path / "bad.safetensors"), metadata={"alignez": json.dumps(meta)})
    with pytest.raises(SubspaceFileError, match="gap"):
        AlignmentSubspace.load(tmp_path / "bad.safetensors")


def test_bad_rank_rule_arguments_are_refused_before_any_work(llama, monkeypatch):
    import alignez_tl.subspace as subspace_module

    def no_work(*args, **kwargs):
        raise AssertionError("activations were captured before the arguments were checked")

    monkeypatch.setattr(subspace_module, "embed_pairs", no_work)
    pairs = [("a good answer", "a bad answer")] * 3
    cases = [
        (dict(rank="nul"), ValueError, "rank must be a positive int .*'null'"),
        (dict(rank=0), ValueError, "rank must be a positive int"),
        (dict(rank=True), ValueError, "rank must be"),
        (dict(rank="null", n_null=0), ValueError, "n_null must be a positive int"),
        (dict(rank="null", n_null=10.5), ValueError, "n_null"),
        (dict(rank="null", null_quantile=1.0), ValueError, "null_quantile must be a number strictly between 0 and 1"),
        (dict(rank="null", null_quantile=float("nan")), ValueError, "null_quantile"),
        (dict(rank="null", null_seed=1.5), TypeError, "null_seed must be an int"),
        (dict(null_test="yes"), TypeError, "null_test must be True or False"),
        (dict(max_rank=0), ValueError, "max_rank must be a positive int"),
    ]
    for kwargs, error, message in cases:
        with pytest.raises(error, match=message):
            fit_subspace(llama, pairs, **kwargs)
    pos, neg, _ = planted(n=6, d=8)
    with pytest.raises(ValueError, match="n_null"):
        fit_layer(pos, neg, rank="null", n_null=-1)


def test_no_direction_above_the_null_anywhere_says_so():
    pos, neg = torch.randn(12, 2, 16), torch.randn(12, 2, 16)
    mirrored = (torch.cat([pos, neg]), torch.cat([neg, pos]))  # the mean gap is exactly 0
    with pytest.raises(EmptySubspaceError, match="no direction beat the sign-flip null at any of the 2 layers"):
        fit_subspace(None, mirrored, layers=[0, 1], rank="null", tau=1.0)
    assert fit_subspace(None, mirrored, layers=[0, 1], tau=1.0).layers[0].rank > 0  # variance rule: noise kept
