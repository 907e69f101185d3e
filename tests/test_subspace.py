"""Fitting the alignment subspace: planted directions, filter, rank, sign, files."""

import json

import pytest
import torch

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

    pairs = [("A helpful answer, step by step.", "A useless answer."),
             ("Mix flour and water, then knead.", "Refuse to help."),
             ("Two plus two is four.", "Two plus two is wrong.")]
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
    sub = fit_subspace(llama, (pos[:, None].repeat(1, 2, 1), neg[:, None].repeat(1, 2, 1)),
                       layers=[1, 3], objective="helpful", rank=3, tau=1.0)
    path = sub.save(tmp_path / "sub.safetensors")
    assert [p.name for p in tmp_path.iterdir()] == ["sub.safetensors"]  # no temp file left
    back = AlignmentSubspace.load(path, llama)
    assert back.layer_indices == [1, 3]
    for layer in (1, 3):
        for name in ("directions", "singular_values", "explained_variance", "pair_cos",
                     "proj_mean", "proj_rms", "mean_diff_proj"):
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
    compat = make_model("llama", compatibility_mode=True)
    with pytest.raises(SubspaceMismatchError, match="compatibility mode"):
        sub.check_model(compat, strict=False)
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
