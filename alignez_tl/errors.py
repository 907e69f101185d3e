"""Every exception alignez-tl raises on purpose, in one hierarchy.

`AlignezError` is the base: catch it to handle any refusal of the library, which always
says what was wrong and how to fix it. Each class also derives from the built-in its
callers caught before the hierarchy existed (`ValueError` for bad input, `RuntimeError`
for a judge that failed), so `except ValueError` keeps working. The `alignez` command
prints any of them as one line, `alignez <command>: error: <message>`, exit status 2
(`--debug` shows the traceback).

They live here, imported by nothing else of the package, so that every module can raise
them without an import cycle; the modules that raised them before re-export them.
"""

from __future__ import annotations

__all__ = [
    "AlignezError",
    "ArgumentTypeError",
    "InvalidArgumentError",
    "CLIError",
    "EmptySubspaceError",
    "EvalError",
    "FileFormatError",
    "JudgeError",
    "ModelSpecError",
    "PreferenceFileError",
    "PromptFileError",
    "PromptTooLongError",
    "ResumeError",
    "SubspaceFileError",
    "SubspaceMismatchError",
    "EditStrengthError",
]


class AlignezError(Exception):
    """Base of every error alignez-tl raises on purpose."""


class InvalidArgumentError(AlignezError, ValueError):
    """An argument value the library cannot use (out of range, empty, inconsistent with
    another one); the message names the argument and says what would work."""


class ArgumentTypeError(AlignezError, TypeError):
    """An argument of the wrong type (a string where a list is expected, a float layer, not a
    model); the message names the argument and the type it needs."""


class FileFormatError(AlignezError, ValueError):
    """A file the library reads is missing or malformed (the message names the file)."""


class SubspaceFileError(FileFormatError):
    """A subspace file is missing, corrupt, or of an unknown format version."""


class PreferenceFileError(FileFormatError):
    """A preference file is malformed: the message names the file and the 1-based line."""


class PromptFileError(FileFormatError):
    """A prompts file is missing or malformed (the message names the line)."""


class SubspaceMismatchError(AlignezError, ValueError):
    """A subspace does not fit the model it is used with."""


class EmptySubspaceError(AlignezError, ValueError):
    """No pair survived the filter at any layer, so there is nothing to fit.

    Also raised for pair data that holds no pair at all (`alignez_tl.pairs` checks it).
    """


class ModelSpecError(AlignezError, ValueError):
    """A model spec could not be resolved (unknown key, missing package, bad path)."""


class EvalError(AlignezError, ValueError):
    """Bad `alignez eval` input (reported before any model work)."""


class JudgeError(AlignezError, RuntimeError):
    """A judge could not give a verdict (unreachable, refused, or unparseable replies)."""


class CLIError(AlignezError):
    """A user error of the `alignez` command: printed as one line, exit status 2."""


class ResumeError(AlignezError, ValueError):
    """`--resume` (or `resume=True`) on an output it cannot continue: written with another
    model, objective or settings (the message names the field), or not a streamed file."""


class PromptTooLongError(AlignezError, ValueError):
    """A prompt has more tokens than `max_prompt_tokens` (`--max-prompt-tokens`): refused
    before any generation, naming the query and its token count."""


class EditStrengthError(AlignezError, ValueError):
    """The steering edit is not finite, or (where a limit is set, as on the command line)
    absurdly large next to the activation it edits: alpha is far too large."""
