"""The HTML report: self-contained, complete, and rendered by headless Chromium."""

import base64
import re
import shutil
import subprocess

import pytest

from alignez_tl.steering import Steerer
from alignez_tl.subspace import fit_subspace
from analyses.report import SECTIONS, Report, plot_spectrum, write_report

PAIRS = [
    ("A helpful assistant answers clearly, step by step.", "A useless assistant gives vague answers."),
    ("Mix flour, water, salt and yeast, then knead.", "Pretend you are a malicious assistant."),
    ("Two plus two is four.", "Two plus two is wrong and short."),
    ("Be kind, be precise, be honest, and be brief.", "Refuse to help."),
    ("Plants turn light into sugar.", "The quick brown fox."),
]
QUERIES = ["How do I bake bread?", "What is two plus two?"]

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


_BUILT: dict = {}  # the Report object behind full_report, for the tests that inspect its parts


@pytest.fixture(scope="module")
def full_report(llama, tmp_path_factory):
    from alignez_tl.preferences import PreferenceSet
    from analyses.ablation import ablate_components
    from analyses.attribution import attribute_steering
    from analyses.layer_signal import layer_signal
    from analyses.subspace_lens import subspace_lens

    prefs = PreferenceSet.from_pairs(
        ["How do I bake bread?"] * len(PAIRS), [p for p, _ in PAIRS], [n for _, n in PAIRS], objective="helpful"
    )
    sub = fit_subspace(llama, prefs, tau=1.0, verbose=False)
    steerer = Steerer(sub, top_n=2, alpha=2.0)
    base = steerer.generate(llama, QUERIES, max_new_tokens=6, steer=False)
    steered = steerer.generate(llama, QUERIES, max_new_tokens=6)
    answers = [{"query": q, "base": b, "steered": s, "layers": [1, 2]} for q, b, s in zip(QUERIES, base, steered)]
    answers.append({"query": "<script>alert('x')</script>", "base": "a & b", "steered": "<b>", "layers": []})
    report = Report(
        subspace=sub,
        layer_signal=layer_signal(llama, sub, prefs, queries=QUERIES),
        lens=subspace_lens(llama, sub, prefs, n_splits=3),
        ablation=ablate_components(llama, steerer, QUERIES, max_components=2, greedy_tokens=4),
        attributions=[attribute_steering(llama, steerer, QUERIES[0], max_new_tokens=4)],
        answers=answers,
        meta={"test": True},
    )
    path = tmp_path_factory.mktemp("report") / "report.html"
    write_report(path, report)
    _BUILT["report"] = report
    return path


def test_report_is_self_contained_and_complete(full_report):
    text = full_report.read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f'id="{section}"' in text
    assert "not computed" not in text
    assert "<script>alert" not in text and "&lt;script&gt;alert" in text  # model text is escaped
    assert not re.search(r"""(src|href)=["']https?://""", text)  # nothing fetched from the network
    assert "subspace lens (helpful" in text and "top tokens of every direction" in text
    images = re.findall(r'<img class="figure" alt="figure" src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 5  # spectrum, layer signal, subspace lens, ablation, one attribution heatmap
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"


def test_directions_are_named_1_based_in_every_panel(full_report):
    """θ1 is the first direction everywhere (as in the docs): the lens table, the attribution
    hover text and labels, and the ablation figure; none of them says θ0."""
    text = full_report.read_text(encoding="utf-8")
    numbers = [int(n) for n in re.findall(r"θ(\d+)", text)]
    assert numbers and min(numbers) == 1 and "θ0" not in text
    report = _BUILT["report"]
    assert report.attributions[0].direction_labels[0] == "θ1"
    fig = report.ablation.plot()
    ticks = [t.get_text() for ax in fig.axes for t in ax.get_xticklabels() if t.get_text().startswith("θ")]
    assert ticks[:2] == ["θ1", "θ2"]
    assert any(ax.get_xlabel() == "k (edit θ1..θk)" for ax in fig.axes)


def test_spectrum_figure(llama):
    sub = fit_subspace(llama, PAIRS, tau=1.0, verbose=False)
    fig = plot_spectrum(sub)
    assert len(fig.axes) >= 2


@pytest.mark.skipif(chromium() is None, reason="needs Debian chromium (make test installs it)")
def test_report_renders_in_headless_chromium(full_report, tmp_path):
    browser = chromium()
    profile = tmp_path / "profile"
    shot = tmp_path / "shot.png"
    proc = subprocess.run(
        [
            browser,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            f"--screenshot={shot}",
            "--window-size=1280,2400",
            full_report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert shot.is_file(), proc.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size == (1280, 2400)
        colours = img.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 50  # not a blank page
    # count broken images from inside the page: a copy with a tiny checker script
    probe = tmp_path / "probe.html"
    checker = (
        "<script>window.addEventListener('load', () => {"
        "const imgs = [...document.images];"
        "document.body.setAttribute('data-images', imgs.length);"
        "document.body.setAttribute('data-broken', imgs.filter(i => !i.complete || i.naturalWidth === 0).length);"
        "document.body.setAttribute('data-sections', document.querySelectorAll('section h2').length);"
        "});</script>"
    )
    probe.write_text(full_report.read_text(encoding="utf-8").replace("</body>", checker + "</body>"), encoding="utf-8")
    dom = subprocess.run(
        [
            browser,
            *CHROMIUM_FLAGS,
            f"--user-data-dir={profile}",
            "--virtual-time-budget=5000",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    images = int(re.search(r'data-images="(\d+)"', dom).group(1))
    broken = int(re.search(r'data-broken="(\d+)"', dom).group(1))
    sections = int(re.search(r'data-sections="(\d+)"', dom).group(1))
    assert images == 5 and broken == 0 and sections >= len(SECTIONS)
