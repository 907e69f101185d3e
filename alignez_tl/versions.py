"""The library versions alignez-tl works with, checked when it is imported.

transformers 5.24 changed the cache interface TransformerLens 4.3 relies on: generation
with a KV cache gives one good token and then garbage, with no error. Rather than let
that happen silently, importing alignez-tl (and loading a model) refuses such a
transformers and says which versions work.
"""

from __future__ import annotations

import re
from importlib import metadata
from typing import Optional

__all__ = ["BROKEN_TRANSFORMERS", "MIN_TRANSFORMER_LENS", "TESTED", "check_versions", "package_version"]

#: transformers from this version on breaks TransformerLens' KV cache (silently).
BROKEN_TRANSFORMERS = (5, 24)
#: the oldest TransformerLens this package declares (pyproject) and tests.
MIN_TRANSFORMER_LENS = (2, 16)
#: the environments the test suite runs in (see `.ci/run`).
TESTED = {
    "main": "transformer-lens 4.3.0 (TransformerBridge), transformers 5.23",
    "compat": "transformer-lens 3.9.0 (HookedTransformer and TransformerBridge), transformers 5.23",
}


def package_version() -> str:
    """This package's version: from the installed metadata, else from the checkout's pyproject.toml.

    (The compatibility environments run the checkout through PYTHONPATH, uninstalled.)
    """
    try:
        return metadata.version("alignez-tl")
    except metadata.PackageNotFoundError:
        import tomllib
        from pathlib import Path

        pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
        try:
            return str(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return "0+unknown"


def _major_minor(version: str) -> Optional[tuple[int, int]]:
    match = re.match(r"\s*(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def check_versions(transformers_version: Optional[str] = None, transformer_lens_version: Optional[str] = None) -> None:
    """Raise `ImportError` for a transformers or TransformerLens known not to work.

    The versions default to the installed ones. Unparseable version strings pass.
    """
    if transformers_version is None:
        import transformers

        transformers_version = str(transformers.__version__)
    found = _major_minor(transformers_version)
    if found is not None and found >= BROKEN_TRANSFORMERS:
        raise ImportError(
            f"transformers {transformers_version} silently breaks TransformerLens' KV cache "
            "(one good token, then garbage). alignez-tl works with transformers<5.24 "
            "(tested: 5.23). Install one with:\n    pip install 'transformers<5.24'"
        )
    if transformer_lens_version is None:
        try:
            transformer_lens_version = metadata.version("transformer-lens")
        except metadata.PackageNotFoundError:
            transformer_lens_version = metadata.version("transformer_lens")
    found = _major_minor(transformer_lens_version)
    if found is not None and found < MIN_TRANSFORMER_LENS:
        raise ImportError(
            f"transformer-lens {transformer_lens_version} is older than alignez-tl supports "
            "(>= 2.16; tested: 3.9 and 4.3). Upgrade with:\n    pip install -U 'transformer-lens>=2.16'"
        )
