"""Argument checks shared by the package's public functions and classes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Any


def check_int(value: Any, argument: str, minimum: int) -> int:
    """``value`` if it is an int >= ``minimum``, else a ``ValueError`` naming ``argument``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{argument} must be an int >= {minimum}, got {value!r}")
    return value


def check_input_dim(input_dim: Any) -> int | Sequence[int] | None:
    """``input_dim`` if it is ``None``, a positive int or a non-empty tuple/list of them."""
    dims = [input_dim] if isinstance(input_dim, int) else input_dim
    if input_dim is not None and (
        not isinstance(dims, (list, tuple))
        or not dims
        or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in dims)
    ):
        raise ValueError(
            f"input_dim must be None, a positive int or a tuple of them, got {input_dim!r}"
        )
    return input_dim


# Most file systems (ext4, APFS, NTFS...) take at most 255 bytes per path component.
_MAX_FOLDER_BYTES = 255
_PREFIX = "latent_viz_"


def check_name(name: str, owner: str, default_folder: bool) -> None:
    """Raise a ``ValueError`` for a LatentViz ``name`` that no file system or logger takes.

    A NUL character is never accepted; with ``default_folder`` (no ``save_dir``) the name
    also becomes the folder ``latent_viz_{name}``, which must be one path component of at
    most 255 bytes.

    Example:
        >>> check_name("map", "LatentViz[name=map]", default_folder=True)
        >>> try:
        ...     check_name("a" * 300, "LatentViz", default_folder=True)
        ... except ValueError as error:
        ...     print(str(error)[:60])
        LatentViz: the default save_dir is the folder 'latent_viz_{n
        >>> check_name("a" * 300, "LatentViz", default_folder=False)
    """
    if "\x00" in name:
        raise ValueError(f"{owner}: name must not contain a NUL character, got {name!r}")
    if not default_folder:
        return
    separators = [s for s in (os.sep, os.altsep) if s and s in name]
    if separators:
        raise ValueError(
            f"{owner}: the default save_dir is the folder '{_PREFIX}{{name}}', so name must "
            f"not contain {separators[0]!r}, got {name!r}; pass another name or a save_dir"
        )
    size = len(name.encode("utf-8", errors="surrogatepass"))
    if len(_PREFIX) + size > _MAX_FOLDER_BYTES:
        raise ValueError(
            f"{owner}: the default save_dir is the folder '{_PREFIX}{{name}}', which takes at "
            f"most {_MAX_FOLDER_BYTES} bytes, so name may take {_MAX_FOLDER_BYTES - len(_PREFIX)}"
            f" bytes, got {size}; pass a shorter name or a save_dir"
        )


def unwritable_reason(folder: str) -> str | None:
    """Why files cannot be written to ``folder`` (created if missing), or ``None`` if they can.

    Example:
        >>> import tempfile
        >>> unwritable_reason(os.path.join(tempfile.mkdtemp(), "maps")) is None
        True
    """
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except (OSError, ValueError) as error:
        return f"{type(error).__name__}: {error}"
    return None
