"""The error table in `schemas.errors`' docstring is the one the CLI and the service answer with."""

from __future__ import annotations

import inspect

import schemas.errors as errors


def documented_rows() -> dict[str, tuple[int, int]]:
    """class name -> (exit code, HTTP status), read from the module docstring's table."""
    rows = {}
    for line in (errors.__doc__ or "").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].endswith("Error") and parts[1].isdigit() and parts[2].isdigit():
            rows[parts[0]] = (int(parts[1]), int(parts[2]))
    return rows


def test_every_error_class_is_in_the_table_with_its_exit_code_and_http_status() -> None:
    classes = {
        name: cls
        for name, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.ChunklessError) and cls.__module__ == errors.__name__
    }
    assert documented_rows() == {name: (cls.exit_code, cls.http_status) for name, cls in classes.items()}
