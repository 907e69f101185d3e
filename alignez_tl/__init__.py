"""alignez-tl: AlignEZ steering for TransformerLens models.

The model writes its own preference pairs (`generate_preferences`), the SVD of the
differences of their activations gives an alignment subspace (`fit_subspace`), and a
`Steerer` edits the residual stream along it with TransformerLens hooks.
`embed_pairs` turns any pair data into a `PairActivations` that every fit accepts, and
every steering method (`Steerer` and the baselines) is a `SteeringMethod`.
"""

from .versions import check_versions, package_version

check_versions()  # refuse a transformers that silently breaks TransformerLens' KV cache

from .activations import capture  # noqa: E402
from .baselines import DiffMeanSteerer, NoSteerer, PCASteerer, PromptSteerer
from .hooks import SITES, edit_delta, edit_hook, edit_sequential, hook_name, project_out_hook
from .models import DEFAULT_MODEL, EMBEDDED_MODELS, encode, load_hooked, load_model, model_signature, render
from .objectives import Objective, get_objective, list_objectives, register_objective
from .pairs import PairActivations, embed_pairs
from .preferences import PreferencePair, PreferenceSet, generate_preferences
from .protocol import HookSteering, SteeringMethod
from .steering import QuerySelection, Steerer, SteeringTerm
from .subspace import (
    AlignmentSubspace,
    EmptySubspaceError,
    LayerSubspace,
    SubspaceFileError,
    SubspaceMismatchError,
    fit_subspace,
)

__version__ = package_version()

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "SITES",
    "AlignmentSubspace",
    "DiffMeanSteerer",
    "NoSteerer",
    "PCASteerer",
    "PromptSteerer",
    "EmptySubspaceError",
    "HookSteering",
    "LayerSubspace",
    "Objective",
    "PairActivations",
    "PreferencePair",
    "PreferenceSet",
    "QuerySelection",
    "Steerer",
    "SteeringMethod",
    "SteeringTerm",
    "SubspaceFileError",
    "SubspaceMismatchError",
    "__version__",
    "capture",
    "edit_delta",
    "edit_hook",
    "edit_sequential",
    "embed_pairs",
    "encode",
    "fit_subspace",
    "generate_preferences",
    "get_objective",
    "hook_name",
    "list_objectives",
    "load_hooked",
    "load_model",
    "model_signature",
    "project_out_hook",
    "register_objective",
    "render",
]
