"""Every public entry point on every kind of TransformerLens model a user may hold.

Kinds: `HookedTransformer` (TransformerLens 2.x/3.x; built from a
`HookedTransformerConfig`, nothing downloaded), `TransformerBridge`, and a bridge with
`enable_compatibility_mode()`. The `HookedTransformer` kinds run where TransformerLens
still ships it: `.ci/run` runs this module a second time in an environment with
TransformerLens 3.9 (see `tests/compat_env.sh`); in the main environment (TL 4.x) they
are skipped and the bridge kinds run.
"""

from __future__ import annotations

import json
import math
import warnings
from importlib.metadata import version

import pytest
import torch
from test_steering import PAIRS, QUERIES
from tiny import bridge_available, hooked_transformer_available, make_hooked, make_hooked_from_hf, make_model

import alignez_tl as ez
from alignez_tl.baselines import DiffMeanSteerer, NoSteerer, PCASteerer, PromptSteerer
from alignez_tl.eval import LogprobJudge, generation_stats, pairwise_compare, side_effects
from alignez_tl.generation import generate_plain
from alignez_tl.models import encode, is_bridge, model_signature, render
from alignez_tl.subspace import AlignmentSubspace, SubspaceMismatchError
from analyses.ablation import ablate_components
from analyses.attribution import attribute_steering
from analyses.layer_signal import layer_signal
from analyses.report import Report, write_report

TEXTS = ["How do I bake bread?", "Explain photosynthesis to a child, step by step, with examples.", "Hi"]

HOOKED = pytest.mark.skipif(
    not hooked_transformer_available(),
    reason="this TransformerLens has no HookedTransformer (4.x); .ci/run tests it with TL 3.9",
)
BRIDGE = pytest.mark.skipif(not bridge_available(), reason="this TransformerLens has no TransformerBridge (2.x)")
KINDS = [
    pytest.param("hooked-llama", marks=HOOKED),
    pytest.param("hooked-gpt2", marks=HOOKED),
    pytest.param("bridge-gpt2", marks=BRIDGE),
    pytest.param("compat-llama", marks=BRIDGE),
    pytest.param("compat-gpt2", marks=BRIDGE),
]


def build(kind: str):
    family, arch = kind.split("-")
    if family == "hooked":
        return make_hooked(arch, dtype=torch.float64)
    # the bridge's Llama attention gives NaN for padded rows in float64: float32 there
    dtype = torch.float32 if arch == "llama" else torch.float64
    return make_model(arch, dtype=dtype, compatibility_mode=family == "compat")


def tol(model) -> float:
    return 1e-9 if model.cfg.dtype == torch.float64 else 2e-4


@pytest.fixture(scope="module", params=KINDS)
def kit(request):
    """One model of each kind, with a subspace fitted on the shared pairs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build(request.param)
        sub = ez.fit_subspace(model, PAIRS, tau=1.0, objective="helpful", verbose=False)
    return request.param, model, sub


def _last_real(mask: torch.Tensor) -> torch.Tensor:
    return mask.shape[1] - 1 - mask.flip(-1).argmax(-1)


# ----------------------------------------------------------------------------- models


def test_model_object_passes_through_and_is_described(kit):
    kind, model, _ = kit
    assert ez.load_model(model) is model
    sig = model_signature(model)
    assert sig["model_class"] == ("HookedTransformer" if kind.startswith("hooked") else "TransformerBridge")
    assert sig["compatibility_mode"] is kind.startswith("compat")
    assert is_bridge(model) is not kind.startswith("hooked")
    assert (sig["n_layers"], sig["d_model"]) == (4, 64)


def test_prompts_have_bos_exactly_once(kit):
    _, model, _ = kit
    tok = model.tokenizer
    for text in TEXTS:
        ids = encode(model, [render(model, text)]).input_ids[0].tolist()
        if model.tokenizer.chat_template:  # chat-rendered: the template's first token, once
            assert ids[0] == tok.convert_tokens_to_ids("<|im_start|>")
            assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 2  # user + assistant turns
        else:
            assert ids[0] == tok.bos_token_id and ids[1] != tok.bos_token_id


# -------------------------------------------------------------------------- capture


def test_capture_equals_the_cache_and_batching_changes_nothing(kit):
    _, model, _ = kit
    batched = ez.capture(model, TEXTS)  # left-padded, one forward per batch
    for i, text in enumerate(TEXTS):
        batch = encode(model, [text])
        _, cache = model.run_with_cache(batch.input_ids)
        for layer in range(model.cfg.n_layers):
            want = cache[f"blocks.{layer}.hook_resid_post"][0, -1].to(torch.float32)
            alone = ez.capture(model, [text], layers=[layer])[0, 0]
            assert torch.equal(alone, want)
            assert torch.allclose(batched[i, layer], want, atol=tol(model), rtol=0)


def test_every_site_captures(kit):
    _, model, _ = kit
    for site in ez.SITES:
        acts = ez.capture(model, TEXTS[:2], layers=[1, 2], site=site)
        assert acts.shape == (2, 2, 64) and torch.isfinite(acts).all()


# ---------------------------------------------------------------------- preferences


def test_preferences_are_generated_seeded_and_round_trip(kit, tmp_path):
    _, model, _ = kit
    kw = dict(n_characteristics=1, elicit_tokens=6, response_tokens=6, batch_size=4, verbose=False)
    a = ez.generate_preferences(model, QUERIES[:2], "helpful", seed=3, **kw)
    b = ez.generate_preferences(model, QUERIES[:2], "helpful", seed=3, **kw)
    assert [(p.positive, p.negative) for p in a.pairs] == [(p.positive, p.negative) for p in b.pairs]
    assert a.pairs
    path = a.save(tmp_path / "prefs.jsonl")
    back = ez.PreferenceSet.load(path)
    assert [(p.query, p.positive, p.negative) for p in back.pairs] == [
        (p.query, p.positive, p.negative) for p in a.pairs
    ]


def test_plain_generation_is_row_independent(kit):
    _, model, _ = kit
    prompts = [render(model, q) for q in QUERIES]
    together = generate_plain(model, encode(model, prompts), max_new_tokens=5, do_sample=False)
    alone = [generate_plain(model, encode(model, [p]), max_new_tokens=5, do_sample=False)[0] for p in prompts]
    assert together == alone


# ------------------------------------------------------------------------- subspace


def test_fit_save_load_and_model_checks(kit, tmp_path):
    kind, model, sub = kit
    assert sub.layer_indices == [0, 1, 2, 3] and all(r >= 1 for r in sub.ranks().values())
    for layer in sub.layers.values():
        gram = layer.directions @ layer.directions.T
        assert torch.allclose(gram, torch.eye(gram.shape[0], dtype=gram.dtype), atol=1e-5)
    back = AlignmentSubspace.load(sub.save(tmp_path / "s.safetensors"))
    for layer in sub.layer_indices:
        assert torch.equal(back.layers[layer].directions, sub.layers[layer].directions)
        assert torch.equal(back.layers[layer].proj_rms, sub.layers[layer].proj_rms)
    back.check_model(model)  # same model: accepted
    assert back.model["model_class"] == model_signature(model)["model_class"]


@BRIDGE
def test_compatibility_mode_is_judged_by_the_residual_basis(llama, gpt2, tmp_path):
    """Compatibility mode folds the norms; on a LayerNorm model it also centres the residual
    stream. RMSNorm: the same resid_post, so the subspace travels both ways; LayerNorm:
    refused both ways, naming the centring and the fix."""
    compat = make_model("llama", dtype=torch.float32, compatibility_mode=True)
    compat.cfg.model_name = llama.cfg.model_name  # same weights and name: only the mode differs
    plain_sub = ez.fit_subspace(llama, PAIRS, tau=1.0, verbose=False)
    compat_sub = ez.fit_subspace(compat, PAIRS, tau=1.0, verbose=False)
    for a, b in zip(plain_sub.layers.values(), compat_sub.layers.values()):
        assert torch.allclose(a.directions, b.directions, atol=1e-4)
    for sub, other in ((plain_sub, compat), (compat_sub, llama)):
        loaded = AlignmentSubspace.load(sub.save(tmp_path / "s.safetensors"), other)
        assert ez.Steerer(loaded).generate(other, QUERIES[:1], max_new_tokens=2)
    compat = make_model("gpt2", dtype=torch.float64, compatibility_mode=True)
    compat.cfg.model_name = gpt2.cfg.model_name
    for sub, other, why in (
        (ez.fit_subspace(gpt2, PAIRS, tau=1.0, verbose=False), compat, "not centred \\(subspace\\) vs centred"),
        (ez.fit_subspace(compat, PAIRS, tau=1.0, verbose=False), gpt2, "centred \\(subspace\\) vs not centred"),
    ):
        loaded = AlignmentSubspace.load(sub.save(tmp_path / "s.safetensors"))
        with pytest.raises(SubspaceMismatchError, match=f"residual stream {why}"):
            ez.Steerer(loaded).generate(other, QUERIES[:1], max_new_tokens=2)
        with pytest.raises(SubspaceMismatchError, match="or refit the subspace on this model"):
            loaded.check_model(other, strict=False)  # not a model-id question


# ------------------------------------------------------------------------- steering


def test_steered_generation_batched_equals_alone_and_cache_equals_no_cache(kit):
    _, model, sub = kit
    steerer = ez.Steerer(sub, alpha=4.0, top_n=2)
    batched = steerer.generate(model, QUERIES, max_new_tokens=6, batch_size=4, return_tokens=True)[0]
    alone = [steerer.generate(model, [q], max_new_tokens=6, return_tokens=True)[0][0] for q in QUERIES]
    no_cache = steerer.generate(model, QUERIES, max_new_tokens=6, use_past_kv_cache=False, return_tokens=True)[0]
    assert batched == alone == no_cache
    base = steerer.generate(model, QUERIES, max_new_tokens=6, steer=False, return_tokens=True)[0]
    plain = generate_plain(model, encode(model, [render(model, q) for q in QUERIES]), max_new_tokens=6, do_sample=False)
    assert base == plain
    assert base != batched  # alpha = 4 at two layers moves greedy tokens on these models


def test_backends_agree_and_hf_needs_a_plain_bridge(kit):
    kind, model, sub = kit
    steerer = ez.Steerer(sub, alpha=4.0, top_n=2)
    tl = steerer.generate(model, QUERIES, max_new_tokens=5, backend="tl", return_tokens=True)[0]
    auto = steerer.generate(model, QUERIES, max_new_tokens=5, backend="auto", return_tokens=True)[0]
    # On a HookedTransformer, "tl" is TransformerLens' own generate one row at a time and
    # "auto" the batched loop. TransformerLens 2.16's generate misplaces learned positions
    # when the pad id is 0 (this GPT-2's tokenizer): tests/test_hooked.py checks "auto"
    # against a plain loop there instead.
    if not (kind == "hooked-gpt2" and version("transformer-lens").startswith("2.")):
        assert tl == auto
    if kind.startswith("bridge"):
        assert steerer.generate(model, QUERIES, max_new_tokens=5, backend="hf", return_tokens=True)[0] == tl
    else:
        with pytest.raises(ValueError, match="backend='hf' needs a TransformerBridge"):
            steerer.generate(model, QUERIES, max_new_tokens=5, backend="hf")


def test_apply_and_hooks_work_in_the_users_own_code_and_clean_up(kit):
    _, model, sub = kit
    steerer = ez.Steerer(sub, alpha=4.0, top_n=2)
    ids = encode(model, [render(model, QUERIES[0])]).input_ids
    before = model(ids)
    with steerer.apply(model, query=QUERIES[0]):
        inside = model(ids)
    hooks = steerer.hooks(model, query=QUERIES[0])
    assert torch.equal(model.run_with_hooks(ids, fwd_hooks=hooks), inside)
    assert not torch.equal(inside, before)
    with pytest.raises(KeyError):
        with steerer.apply(model, query=QUERIES[0]):
            raise KeyError("user code failed")
    assert torch.equal(model(ids), before)  # every hook was removed


def test_composition_and_component_restriction(kit):
    _, model, sub = kit
    one = ez.Steerer(sub, alpha=2.0, top_n=2)
    both = ez.Steerer.compose([one, ez.Steerer(sub, alpha=2.0, top_n=2)], weights=[0.5, 0.5])
    assert len(both.generate(model, QUERIES[:2], max_new_tokens=3)) == 2
    only = one.only_components([0])
    assert (
        only.generate(model, QUERIES[:2], max_new_tokens=3, return_tokens=True)[0]
        == one.without_components(list(range(1, max(sub.ranks().values())))).generate(
            model, QUERIES[:2], max_new_tokens=3, return_tokens=True
        )[0]
    )


# ------------------------------------------------------------------------ baselines


def test_baselines_share_the_interface(kit):
    _, model, sub = kit
    unsteered = ez.Steerer(sub).generate(model, QUERIES, max_new_tokens=4, steer=False)
    assert NoSteerer().generate(model, QUERIES, max_new_tokens=4) == unsteered
    for steerer in (
        DiffMeanSteerer.fit(model, PAIRS, layer=2, coef=4.0),
        PCASteerer.fit(model, PAIRS, layer=2, coef=4.0),
        PromptSteerer.fit(objective="helpful"),
    ):
        out = steerer.generate(model, QUERIES, max_new_tokens=4)
        alone = [steerer.generate(model, [q], max_new_tokens=4)[0] for q in QUERIES]
        assert out == alone, type(steerer).__name__


# ------------------------------------------------------------------------- analyses


def test_analyses_and_report(kit, tmp_path):
    _, model, sub = kit
    steerer = ez.Steerer(sub, alpha=4.0, top_n=2)
    sig = layer_signal(model, sub, PAIRS, queries=QUERIES[:2])
    assert len(sig.layers) == 4 and bool(((sig.auroc_first >= 0) & (sig.auroc_first <= 1)).all())
    abl = ablate_components(model, steerer, QUERIES[:2], max_components=2, greedy_tokens=3)
    assert all(math.isfinite(v) for v in abl.variant("full").values())
    att = attribute_steering(model, steerer, QUERIES[0], max_new_tokens=4)
    assert att.base_tokens and att.steered_tokens
    assert len(att.changed) == len(att.logit_diff_steered)
    json.dumps(att.to_dict())
    report = Report(subspace=sub, layer_signal=sig, ablation=abl, attributions=[att], answers=[], meta={})
    path = write_report(tmp_path / "r.html", report)
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


# ----------------------------------------------------------------------- evaluation


def test_evaluation_on_the_model(kit):
    _, model, sub = kit
    steerer = ez.Steerer(sub, alpha=4.0, top_n=2)
    base = steerer.generate(model, QUERIES, max_new_tokens=4, steer=False)
    steered = steerer.generate(model, QUERIES, max_new_tokens=4)
    judge = LogprobJudge(model, batch_size=2)
    comps = pairwise_compare(judge, QUERIES, base, steered, seed=0)
    assert len(comps) == len(QUERIES)
    effects = side_effects(model, steerer, ["The quick brown fox jumps over the lazy dog."] * 3, batch_size=2)
    assert effects["kl"] >= 0 and math.isfinite(effects["kl"])
    stats = generation_stats(base, steered, tokenizer=model.tokenizer)
    assert set(stats) >= {"length_base", "length_steered", "length_change"}


@pytest.mark.skipif(bridge_available(), reason="TransformerLens 2.x only")
def test_load_model_by_name_explains_what_to_do_on_transformer_lens_2(tmp_path):
    with pytest.raises(ez.models.ModelSpecError, match="alignez_tl.load_hooked"):
        ez.load_model(str(tmp_path))  # refused before anything is read or converted


def _resid(model, layer=2):
    toks = model.to_tokens("How do I bake bread?")
    _, cache = model.run_with_cache(toks)
    return cache[f"blocks.{layer}.hook_resid_post"][0].double()


@HOOKED
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_subspaces_travel_between_bridge_and_hooked_transformer_when_the_basis_agrees(arch, tmp_path):
    """The same weights as a bridge (where TransformerLens has one), an unprocessed and a
    processed HookedTransformer (fold_ln, center_writing_weights, center_unembed).
    RMSNorm: one residual basis, every direction accepted. LayerNorm: the processed one
    is centred, refused both ways with the fix; bridge <-> unprocessed accepted."""
    plain = make_hooked_from_hf(arch, processed=False)
    folded = make_hooked_from_hf(arch, processed=True)
    cos = torch.nn.functional.cosine_similarity(_resid(plain), _resid(folded), dim=-1)
    if arch == "llama":  # RMSNorm: folding changes no residual vector
        assert float(cos.min()) > 0.99999
    else:  # LayerNorm: centred writing weights subtract each position's mean
        assert float(cos.min()) < 0.999
        centred = _resid(plain) - _resid(plain).mean(-1, keepdim=True)
        assert torch.allclose(_resid(folded), centred, atol=1e-4)
    models = {"plain": plain, "folded": folded}
    if bridge_available():
        models["bridge"] = make_model(arch, dtype=torch.float32)
        assert torch.allclose(_resid(models["bridge"]), _resid(plain), atol=1e-4)
    subs = {}
    for name, model in models.items():
        fitted = ez.fit_subspace(model, PAIRS, tau=1.0, verbose=False)
        subs[name] = AlignmentSubspace.load(fitted.save(tmp_path / f"{name}.safetensors"))
    for src, sub in subs.items():
        for dst, model in models.items():
            refused = arch == "gpt2" and (src == "folded") != (dst == "folded")
            if not refused:
                sub.check_model(model)  # same name and basis: accepted, also with strict=True
                continue
            why = "centred .subspace. vs not centred" if src == "folded" else "not centred .subspace. vs centred"
            fix = "center_writing_weights=True" if src == "folded" else "fold_ln=False, center_writing_weights=False"
            with pytest.raises(SubspaceMismatchError, match=f"residual stream {why}.*{fix}"):
                sub.check_model(model, strict=False)
