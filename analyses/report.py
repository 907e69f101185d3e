"""One self-contained HTML report: spectrum, layer signal, subspace lens, ablation, attribution, answers.

Every figure is embedded as a base64 PNG and the page carries its own CSS, so the file
opens offline, in any browser, with no network access and no scripts.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from alignez_tl.files import atomic_write_text
from analyses._common import theta_label

__all__ = ["Report", "figure_to_data_uri", "plot_spectrum", "write_report"]

SECTIONS = ("spectrum", "layer-signal", "subspace-lens", "ablation", "attribution", "answers")

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1b1b1f;
       background: #fafafa; }
header { background: #283593; color: white; padding: 1.2rem 2rem; }
header h1 { margin: 0 0 .3rem 0; font-size: 1.5rem; }
header p { margin: 0; opacity: .85; font-size: .9rem; }
nav { padding: .6rem 2rem; background: #e8eaf6; font-size: .9rem; }
nav a { margin-right: 1.2rem; color: #283593; }
main { padding: 0 2rem 3rem 2rem; max-width: 1200px; }
section { background: white; border: 1px solid #ddd; border-radius: 6px; margin: 1.2rem 0;
          padding: 1rem 1.4rem; }
h2 { color: #283593; margin-top: .2rem; }
img.figure { max-width: 100%; height: auto; border: 1px solid #eee; }
table { border-collapse: collapse; width: 100%; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .4rem .6rem; vertical-align: top; text-align: left; }
th { background: #f3f3f7; }
td.answer { white-space: pre-wrap; width: 40%; }
.note { color: #555; font-size: .85rem; }
.warning { background: #fff3e0; border-left: 4px solid #e65100; padding: .5rem .8rem; color: #7f2704; }
.missing { color: #999; font-style: italic; }
details { margin: .4rem 0; }
pre { background: #f6f6f6; padding: .6rem; overflow-x: auto; font-size: .8rem; }
"""


def figure_to_data_uri(fig: Any, dpi: int = 100) -> str:
    """A matplotlib figure as a `data:image/png;base64,...` URI (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def plot_spectrum(subspace: Any, max_components: int = 10) -> Any:
    """Two panels: explained-variance ratio of the first components at every layer
    (heatmap), and the number of kept directions with the variance they explain."""
    import matplotlib.pyplot as plt
    import numpy as np

    layers = subspace.layer_indices
    grid = np.full((max_components, len(layers)), np.nan)
    ranks, kept = [], []
    for i, layer in enumerate(layers):
        sub = subspace.layers[layer]
        ev = sub.explained_variance.numpy()[:max_components]
        grid[: len(ev), i] = ev
        ranks.append(sub.rank)
        kept.append(sub.kept_variance)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    im = top.imshow(
        grid,
        aspect="auto",
        cmap="viridis",
        vmin=0,
        vmax=1,
        origin="lower",
        extent=(min(layers) - 0.5, max(layers) + 0.5, 0.5, max_components + 0.5),
    )
    top.set_ylabel("component j")
    top.set_title("explained variance ratio σ_j² / Σσ² of the difference matrix, per layer")
    fig.colorbar(im, ax=top, fraction=0.03)
    bottom.bar(layers, ranks, color="#5c6bc0", label="kept directions (rank)")
    bottom.set_ylabel("rank")
    twin = bottom.twinx()
    twin.plot(layers, kept, color="#d84315", marker="o", ms=3, label="variance kept")
    twin.set_ylim(0, 1.05)
    twin.set_ylabel("variance kept")
    bottom.set_xlabel("layer")
    fig.tight_layout()
    return fig


@dataclass
class Report:
    """What goes into the page. Every part is optional except the subspace."""

    subspace: Any
    layer_signal: Any = None
    lens: Any = None  # an analyses.subspace_lens.SubspaceLens
    ablation: Any = None
    attributions: Sequence[Any] = field(default_factory=list)
    answers: Sequence[dict] = field(default_factory=list)  # rows with query, base, steered, layers
    title: str = "alignez-tl report"
    meta: dict = field(default_factory=dict)

    def to_html(self) -> str:
        sub = self.subspace
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{_e(self.title)}</title>",
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<style>{CSS}</style></head><body>",
            f"<header><h1>{_e(self.title)}</h1><p>objective <b>{_e(sub.objective_name)}</b> · "
            f"model <b>{_e(sub.model.get('model_id', '?'))}</b> · site <b>{_e(sub.site)}</b> · "
            f"{len(sub.layers)} layers · generated {_e(time.strftime('%Y-%m-%d %H:%M'))}</p></header>",
            "<nav>" + "".join(f'<a href="#{s}">{s.replace("-", " ")}</a>' for s in SECTIONS) + "</nav>",
            "<main>",
            self._section(
                "spectrum",
                "Singular-value spectrum",
                _figure(plot_spectrum(sub)),
                "How much of the pos − neg difference variance each SVD component explains, "
                "and how many directions were kept per layer.",
            ),
            self._layer_signal_section(),
            self._section(
                "subspace-lens",
                "Subspace lens",
                self._lens_html(),
                "What the subspace is: the tokens each direction promotes and suppresses (final norm "
                "and unembedding, scale frozen), its stability over random halves of the pairs against "
                "a sign-flip null and random subspaces, and its relation to DiffMean and to the next layer.",
            ),
            self._section("ablation", "Ablation of subspace components", *self._result_parts(self.ablation)),
            self._section("attribution", "Attribution of steered tokens", self._attribution_html(), ""),
            self._section("answers", "Base vs steered answers", self._answers_html(), ""),
        ]
        if self.meta:
            parts.append(
                "<section><h2>Provenance</h2><pre>"
                + _e(json.dumps(self.meta, indent=2, ensure_ascii=False, default=str))
                + "</pre></section>"
            )
        parts.append("</main></body></html>")
        return "\n".join(parts)

    def edited_layers(self) -> list[int]:
        """The layers the answers were steered at (the union over the answer rows)."""
        return sorted({int(layer) for row in self.answers for layer in (row.get("layers") or [])})

    def reversed_layers(self) -> list[tuple[int, float]]:
        """`(layer, AUROC)` for the edited layers (every layer when the answers do not say)
        whose held-out AUROC along θ1 is below 0.5: the first direction ranks new pairs
        the wrong way round there (0: every held-out pair reversed)."""
        if self.layer_signal is None:
            return []
        edited = set(self.edited_layers())
        out = []
        for layer, auc in zip(self.layer_signal.layers, self.layer_signal.auroc_first, strict=True):
            auc = float(auc)
            if (not edited or layer in edited) and auc == auc and auc < 0.5:  # NaN (no direction) is not flagged
                out.append((int(layer), auc))
        return out

    def _layer_signal_section(self) -> str:
        body, note = self._result_parts(self.layer_signal, "recommended")
        bad = self.reversed_layers()
        if bad:
            where = "edited layer" if self.edited_layers() else "layer"
            listed = ", ".join(
                f"{layer} (AUROC {auc:.2f}{', every held-out pair reversed' if auc == 0 else ''})" for layer, auc in bad
            )
            body = (
                f'<p class="warning"><b>Warning:</b> held-out AUROC along θ1 is below 0.5 at {where}'
                f"{'s' if len(bad) > 1 else ''} {_e(listed)}: there θ1 ranks new pairs the wrong way round "
                "(0.5 is chance), so steering along it there pushes away from the objective. Check the "
                "pairs, or steer at other layers.</p>" + body
            )
        return self._section("layer-signal", "Layer signal", body, note)

    @staticmethod
    def _section(anchor: str, title: str, body: str, note: str) -> str:
        note_html = f'<p class="note">{note}</p>' if note else ""
        return f'<section id="{anchor}"><h2>{_e(title)}</h2>{note_html}{body}</section>'

    @staticmethod
    def _result_parts(result: Any, highlight: Optional[str] = None) -> tuple[str, str]:
        if result is None:
            return '<p class="missing">not computed in this run</p>', ""
        body = _figure(result.plot())
        data = result.to_dict()
        if highlight and highlight in data:
            rule = data.get("rule", "")
            body = (
                f"<p><b>{_e(highlight)}:</b> {_e(data[highlight])}" + (f" — {_e(rule)}" if rule else "") + "</p>" + body
            )
        summary = json.dumps(data, indent=1, ensure_ascii=False, default=str)
        if len(summary) > 20000:
            summary = summary[:20000] + "\n... (truncated; see the JSON files)"
        body += f"<details><summary>numbers</summary><pre>{_e(summary)}</pre></details>"
        return body, (result.__doc__ or "").strip().split("\n")[0]

    def _lens_html(self) -> str:
        if self.lens is None:
            return '<p class="missing">not computed in this run</p>'
        body = _figure(self.lens.plot()) + f"<pre>{_e(self.lens.summary())}</pre>"
        rows = ["<details><summary>top tokens of every direction</summary><table>"]
        rows.append("<tr><th>layer</th><th>direction</th><th>promoted</th><th>suppressed</th></tr>")
        for layer in self.lens.layers:
            for entry in self.lens.vocab.get(layer, []):
                up = ", ".join(repr(t) for t, _, _ in entry["promoted"])
                down = ", ".join(repr(t) for t, _, _ in entry["suppressed"])
                rows.append(
                    f"<tr><td>{layer}</td><td>{theta_label(entry['direction'])}</td><td>{_e(up)}</td><td>{_e(down)}</td></tr>"
                )
        rows.append("</table></details>")
        return body + "\n".join(rows)

    def _attribution_html(self) -> str:
        if not self.attributions:
            return '<p class="missing">not computed in this run</p>'
        out = []
        for att in self.attributions:
            out.append(f"<h3>{_e(att.prompt)}</h3>")
            out.append(att.to_html())
            out.append(_figure(att.plot()))
        return "\n".join(out)

    def _answers_html(self) -> str:
        if not self.answers:
            return '<p class="missing">no answers in this run</p>'
        rows = ["<table><tr><th>query</th><th>edited layers</th><th>base</th><th>steered</th></tr>"]
        for row in self.answers:
            rows.append(
                f"<tr><td>{_e(row['query'])}</td><td>{_e(row.get('layers', ''))}</td>"
                f"<td class='answer'>{_e(row['base'])}</td><td class='answer'>{_e(row['steered'])}</td></tr>"
            )
        rows.append("</table>")
        return "\n".join(rows)


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _figure(fig: Any) -> str:
    return f'<img class="figure" alt="figure" src="{figure_to_data_uri(fig)}">'


def write_report(path: Union[str, Path], report: Report) -> Path:
    """Render `report` and write it atomically to `path` (a `.html` file)."""
    path = Path(path)
    return atomic_write_text(path, report.to_html())
