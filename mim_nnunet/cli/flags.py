"""One flag convention for every command, nnU-Net's: one dash for a flag that takes a value (``-o DIR``,
``-num_gpus 4``), two for an on/off switch (``--c``, ``--allow_partial``), underscores inside names.

:func:`add_flag` adds a flag under its one spelling; spellings of earlier releases still parse, print a
one-line note naming the new spelling, and are left out of ``--help``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Dict, List

# Spellings accepted without a note: long-standing aliases, not deprecations.
ALIASES_ATTRIBUTE = "aliases"
DEPRECATED_ATTRIBUTE = "deprecated_spellings"


def deprecation_note(prog: str, old: str, new: str) -> str:
    """The one line printed when ``old`` is used."""
    return f"{prog}: note: {old} is deprecated and will be removed in the next release; use {new}"


def _with_note(action_cls: type, new: str, deprecated: List[str]) -> type:
    class Deprecating(action_cls):
        def __call__(self, parser, namespace, values, option_string=None):
            if option_string in deprecated:
                print(deprecation_note(parser.prog, option_string, new), file=sys.stderr)
            super().__call__(parser, namespace, values, option_string)
    Deprecating.__name__ = f"Deprecating{action_cls.__name__}"
    return Deprecating


def add_flag(parser, new: str, *deprecated: str, aliases: tuple = (), **kwargs) -> argparse.Action:
    """``parser.add_argument(new, **kwargs)`` that also parses each ``deprecated`` spelling (with a note on
    stderr) and each of ``aliases`` (silently); ``--help`` shows ``new`` and the aliases only.

    ``parser`` may be an argument group. The destination is ``new``'s (``-num_gpus`` -> ``num_gpus``)
    unless ``dest`` is given.
    """
    action_name = kwargs.pop("action", "store")
    action_cls = parser._registry_get("action", action_name, action_name) if isinstance(action_name, str) \
        else action_name
    if deprecated:
        kwargs["action"] = _with_note(action_cls, new, list(deprecated))
    else:
        kwargs["action"] = action_cls
    if "dest" not in kwargs:
        kwargs["dest"] = new.lstrip("-").replace("-", "_")
    action = parser.add_argument(new, *aliases, *deprecated, **kwargs)
    # The parser maps every spelling to this action; help and error messages name only the current ones.
    action.option_strings = [new, *aliases]
    setattr(action, DEPRECATED_ATTRIBUTE, tuple(deprecated))
    setattr(action, ALIASES_ATTRIBUTE, tuple(aliases))
    return action


def deprecated_spellings(parser: argparse.ArgumentParser) -> Dict[str, str]:
    """Every deprecated spelling of ``parser`` and its sub-commands' parsers, mapped to the current one;
    sub-command keys are ``"<sub-command> <spelling>"``."""
    found: Dict[str, str] = {}
    for action in parser._actions:
        for old in getattr(action, DEPRECATED_ATTRIBUTE, ()):
            found[old] = action.option_strings[0]
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.update({f"{name} {old}": new for old, new in deprecated_spellings(sub).items()})
    return found
