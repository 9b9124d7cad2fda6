"""Flags that set a setting, derived from the settings field they set, and the Settings they give.

The help of such a flag is the field's description, its choices the field's allowed values, and a flag
left unset is None, so it never overrides the ``CHUNKLESS_*`` environment.
"""

from __future__ import annotations

import argparse
import typing
from pathlib import Path
from typing import Any

from schemas.errors import SettingsError
from schemas.layout import parse_layout
from schemas.settings import FIELD_GROUP, GROUPS, Settings, env_name

SET = "set__"  # argparse dest prefix of the flags that set a settings field

# flag -> settings field, per group of commands
STORE_FLAGS = {"--store": "store_path", "--collection": "collection", "--url": "url"}
MODEL_FLAGS = {"--model": "model", "--device": "device", "--dtype": "dtype"}
SPAN_FLAGS = {"--top": "top", "--span-method": "span_method", "--recall-k": "recall_k"}
LAYOUT_FLAGS = {"--storage-dtype": "storage_dtype"}
# the flags whose name an invalid value's message adds beside the variable's
SETTING_FLAGS = STORE_FLAGS | MODEL_FLAGS | SPAN_FLAGS | LAYOUT_FLAGS
SERVE_FLAGS = {"--host": "host", "--port": "port"}


def _flag_type(annotation: Any) -> tuple[Any, list[str] | None]:
    """argparse type and choices for a settings field's annotation."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) is typing.Literal:
        return str, [str(a) for a in args]
    if args:  # X | None
        return _flag_type(args[0])
    if annotation in (int, float, Path):
        return annotation, None
    return str, None


def add_setting_flags(p: argparse.ArgumentParser, flags: dict[str, str]) -> None:
    """One flag per settings field: help from the field's description, default None (the environment decides)."""
    for flag, field in flags.items():
        info = GROUPS[FIELD_GROUP[field]].model_fields[field]
        kind, choices = _flag_type(info.annotation)
        default = info.default if info.default is not None and not callable(info.default) else "none"
        desc = (info.description or "").rstrip(".")
        p.add_argument(
            flag,
            dest=SET + field,
            type=kind,
            choices=choices,
            default=None,
            metavar=None if choices else field.upper(),
            help=f"{desc}{'; ' if desc else ''}default: {env_name(field)} or {default}".replace("%", "%%"),
        )


def settings_of(args: argparse.Namespace) -> Settings:
    """Settings from the environment, with the flags given on the command line on top.

    Raises:
        SettingsError: a flag's or variable's value is invalid (names the field, value and range).
    """
    over = {k[len(SET) :]: v for k, v in vars(args).items() if k.startswith(SET) and v is not None}
    storage = getattr(args, "storage", None)
    if storage:  # a whole storage layout by name, e.g. binary or int8-pca128-pool2
        lay = parse_layout(storage)
        over |= {"storage_dtype": lay.dtype, "storage_reduce": lay.reduce, "storage_dim": lay.dim}
        over["storage_pool"] = lay.pool
    try:
        return Settings(**over)
    except SettingsError as e:  # name the flag too when the value came from one
        msg = str(e)
        for flag, field in SETTING_FLAGS.items():
            if field in over:
                msg = msg.replace(
                    f"setting {field} ({env_name(field)})", f"setting {field} ({flag}, {env_name(field)})"
                )
        raise SettingsError(msg) from None
