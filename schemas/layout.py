"""StorageLayout: how a collection stores token rows. One type for settings, collection metadata and the codec."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from schemas.env import env_name
from schemas.errors import SettingsError

StorageDtype = Literal["float32", "float16", "int8", "int4", "binary"]
StorageReduce = Literal["none", "pca", "truncate"]

SCALE_COLUMNS = 2  # an int4 or binary row ends with its float16 scale's two bytes
_NAME = re.compile(r"^(float32|float16|int8|int4|binary)(?:-(pca|truncate)(\d+))?(?:-pool(\d+))?$")


class StorageLayout(BaseModel, frozen=True):
    """Three choices applied on write in this order and undone on read: pool, reduce, dtype.

    Its `name` (e.g. ``int8-pca128-pool2``) is what `--storage` takes and what messages print.
    """

    dtype: StorageDtype = "float32"
    reduce: StorageReduce = "none"
    dim: int | None = Field(None, ge=8, description="Stored dimensions when reduce is pca or truncate.")
    pool: int = Field(1, ge=1, le=4, description="Adjacent tokens merged into one stored row.")

    @model_validator(mode="after")
    def _dim_iff_reduce(self) -> StorageLayout:
        if (self.reduce == "none") != (self.dim is None):
            raise ValueError("storage_dim is set exactly when storage_reduce is pca or truncate")
        return self

    @classmethod
    def parse(cls, name: str) -> StorageLayout:
        """'int8-pca128-pool2' -> layout (the form `name` prints); ValueError says the accepted form."""
        m = _NAME.match(name)
        if m is None:
            raise ValueError(
                f"storage layout '{name}' is not DTYPE[-pcaN|-truncateN][-poolK] with DTYPE one of float32, float16, "
                "int8, int4, binary, N >= 8 and K in 1..4, e.g. int8-pca128-pool2"
            )
        dtype, reduce, dim, pool = m.groups()
        return cls(dtype=dtype, reduce=reduce or "none", dim=int(dim) if dim else None, pool=int(pool or 1))

    @property
    def name(self) -> str:
        red = f"-{self.reduce}{self.dim}" if self.reduce != "none" else ""
        return f"{self.dtype}{red}" + (f"-pool{self.pool}" if self.pool > 1 else "")

    @property
    def is_plain(self) -> bool:
        """Stored rows are the model's vectors in a plain number format (what Qdrant's MaxSim can score)."""
        return self.dtype in ("float32", "float16") and self.reduce == "none" and self.pool == 1

    @property
    def needs_fit(self) -> bool:
        return self.reduce == "pca" or self.dtype == "binary"

    def stored_dim(self, model_dim: int) -> int:
        """Coordinates kept per row; ValueError when the layout asks for more than the model has."""
        if self.reduce == "none":
            return model_dim
        if self.dim is None or self.dim > model_dim:
            raise ValueError(f"storage_dim {self.dim} must be set and at most the model's {model_dim} dimensions")
        return self.dim

    def columns(self, model_dim: int) -> int:
        """Width of the stored Qdrant multivector."""
        d = self.stored_dim(model_dim)
        if self.dtype == "binary":
            return -(-d // 8) + SCALE_COLUMNS
        return -(-d // 2) + SCALE_COLUMNS if self.dtype == "int4" else d

    @property
    def qdrant_datatype(self) -> str:
        return {"float32": "float32", "float16": "float16"}.get(self.dtype, "uint8")

    def vector_bytes_per_token(self, model_dim: int) -> float:
        """Stored token-vector bytes per *model* token, on paper (int8's payload scales not included)."""
        per_row = self.columns(model_dim) * {"float32": 4, "float16": 2}.get(self.dtype, 1)
        return per_row / self.pool


def parse_layout(name: str, where: str = "--storage") -> StorageLayout:
    """A layout name (e.g. int8-pca128-pool2) given to flag `where`.

    Raises:
        SettingsError: names the flag, the field, the value and the allowed range.
    """
    try:
        return StorageLayout.parse(name)
    except ValidationError as e:
        parts = []
        for err in e.errors():
            field = f"storage_{err['loc'][0]}" if err["loc"] else "storage"
            parts.append(f"{field} ({env_name(field)})={err.get('input')!r}: {err['msg']}")
        raise SettingsError(f"{where} {name}: invalid setting " + "; ".join(parts)) from None
    except ValueError as e:
        raise SettingsError(f"{where}: {e}") from None
