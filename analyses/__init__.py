"""Analyses of an AlignEZ steering setup, on any TransformerLens model.

Each analysis is one entry function returning one result dataclass with `.to_dict()`
(JSON-ready) and `.plot()` (a matplotlib figure):

* `layer_signal`: per-layer signal strength of the subspace, to choose layers;
* `ablate_components`: what each subspace direction contributes to the steering;
* `attribute_steering`: which steered tokens changed, and which layers and
  directions moved their logits;
* `subspace_lens`: what a fitted subspace is: its directions in vocabulary space, its
  stability over random halves of the pairs, its relation to DiffMean, to the next layer
  and to other objectives.

`report.write_report` puts them together in one self-contained HTML page.
"""
