"""Argument checks shared by the package's public functions and classes (the checks every
package shares live in :mod:`spt_core.checks`)."""

from __future__ import annotations

import math
import os
import tempfile
from numbers import Real
from typing import Any

import torch
from torch import Tensor

from spt_core.checks import flat_dim, positive_int, string_key
from spt_distance import METRICS

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


def as_rows(x: Any, argument: str, min_rows: int = 0) -> Tensor:
    """``x`` as an ``(N, D)`` tensor (trailing dimensions flattened) of at least ``min_rows``
    rows, else an error naming it.

    Example:
        >>> as_rows(torch.zeros(0, 3), "rows", min_rows=1)
        Traceback (most recent call last):
        ...
        ValueError: rows must hold at least 1 row(s) of shape (N, D), got (0, 3)
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{argument} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"{argument} must have shape (N, D), got {tuple(x.shape)}")
    if x.shape[0] < min_rows:
        raise ValueError(
            f"{argument} must hold at least {min_rows} row(s) of shape (N, D), got {tuple(x.shape)}"
        )
    return x.reshape(x.shape[0], math.prod(x.shape[1:]))


def positive_number(value: Any, argument: str, at_most: float | None = None) -> float:
    """``value`` if it is a finite number ``> 0`` (and ``<= at_most`` when given).

    Raises:
        TypeError: If it is not a number.
        ValueError: If it is out of range.

    Example:
        >>> positive_number(0.0, "floor", at_most=1.0)
        Traceback (most recent call last):
        ...
        ValueError: floor must be a finite number in (0, 1.0], got 0.0
    """
    allowed = "> 0" if at_most is None else f"in (0, {at_most}]"
    message = f"{argument} must be a finite number {allowed}, got {value!r}"
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(message)
    if not (math.isfinite(value) and value > 0 and (at_most is None or value <= at_most)):
        raise ValueError(message)
    return float(value)


def checked_generator(generator: Any, owner: str) -> None:
    """Raise a ``TypeError`` unless ``generator`` is a ``torch.Generator`` or ``None``."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{owner}: generator must be a torch.Generator or None, got {generator!r}")


def check_k(k: Any, n: int, limit: int, allowed: str) -> None:
    """Raise unless ``k`` is an int in ``[1, limit]`` (``allowed`` says why ``limit``).

    Raises:
        TypeError: If ``k`` is not an int.
        ValueError: If it is below 1 or above ``limit``.

    Example:
        >>> check_k(3, 10, 9, "it must be at most N - 1")
        >>> check_k(2.0, 10, 9, "it must be at most N - 1")
        Traceback (most recent call last):
        ...
        TypeError: k must be an integer >= 1, got 2.0
    """
    positive_int(k, "k")
    if k > limit:
        raise ValueError(f"k={k} is too large for {n} points; {allowed}")


def check_map(z: Tensor, n: int, owner: str) -> None:
    """A ``ValueError`` naming ``owner`` unless the projection mapped ``n`` rows to ``(n, 2)``."""
    if z.shape != (n, 2):
        raise ValueError(
            f"{owner}: the projection must map {n} rows to shape ({n}, 2), got {tuple(z.shape)}"
        )


def check_labels(labels: Any, owner: str, key: str) -> None:
    """Refuse string labels before a queue tries to turn them into a tensor (no host sync:
    only Python objects are inspected).

    Example:
        >>> check_labels([0, 1], "LatentViz[name=map]", "label")
        >>> try:
        ...     check_labels(["cat"], "LatentViz[name=map]", "label")
        ... except TypeError as error:
        ...     print(str(error)[:50])
        LatentViz[name=map]: target 'label' holds strings
    """
    if isinstance(labels, Tensor):
        return
    kind = getattr(getattr(labels, "dtype", None), "kind", None)
    first = labels[0] if isinstance(labels, (list, tuple)) and labels else labels
    if isinstance(first, (str, bytes)) or kind in ("U", "S"):
        raise TypeError(
            f"{owner}: target '{key}' holds strings (e.g. {first!r}), but the map is coloured "
            "by numeric labels; map each class name to an index (e.g. with a dict) in the "
            "dataset or the step"
        )


def check_arguments(
    owner: str,
    *,
    name: str,
    input: Any,
    target: Any,
    queue_length: Any,
    k_neighbors: Any,
    n_negatives: Any,
    update_interval: Any,
    warmup_epochs: Any,
    distance_metric: Any,
    plot_interval: Any,
    save_dir: Any,
    input_dim: Any,
) -> None:
    """Check LatentViz's own constructor arguments (``owner`` is its ``state_key``, named in
    every message with the argument).

    Raises:
        TypeError: For a non-string ``input``/``target``/``save_dir``, a count that is not an
            int or an ``input_dim`` that is not an int or a tuple/list of ints.
        ValueError: For an empty key, a count out of range, ``queue_length <= 2 *
            k_neighbors``, an unknown metric, an ``input_dim`` with a size below 1 or a name
            or folder no file system takes.

    Example:
        >>> check_arguments(
        ...     "LatentViz[name=map]", name="map", input="", target=None, queue_length=64,
        ...     k_neighbors=5, n_negatives=5, update_interval=1, warmup_epochs=0,
        ...     distance_metric="euclidean", plot_interval=1, save_dir=None, input_dim=None,
        ... )
        Traceback (most recent call last):
        ...
        ValueError: LatentViz[name=map]: input must be a non-empty string key, got ''
    """
    string_key(input, f"{owner}: input")
    if target is not None:
        string_key(target, f"{owner}: target")
    positive_int(k_neighbors, f"{owner}: k_neighbors")
    positive_int(queue_length, f"{owner}: queue_length")
    if queue_length <= 2 * k_neighbors:
        raise ValueError(
            f"{owner}: queue_length must exceed 2 * k_neighbors = {2 * k_neighbors} "
            f"(trustworthiness at k needs more than 2k rows), got queue_length={queue_length}"
        )
    positive_int(n_negatives, f"{owner}: n_negatives")
    positive_int(update_interval, f"{owner}: update_interval")
    positive_int(warmup_epochs, f"{owner}: warmup_epochs", 0)
    positive_int(plot_interval, f"{owner}: plot_interval")
    if distance_metric not in METRICS:
        raise ValueError(
            f"{owner}: distance_metric must be one of {METRICS}, got {distance_metric!r}"
        )
    if save_dir is not None and not isinstance(save_dir, (str, os.PathLike)):
        raise TypeError(f"{owner}: save_dir must be a str, a path or None, got {save_dir!r}")
    check_name(name, owner, default_folder=save_dir is None)
    if save_dir is not None and "\x00" in str(os.fspath(save_dir)):
        raise ValueError(f"{owner}: save_dir must not contain a NUL character, got {save_dir!r}")
    flat_dim(input_dim, f"{owner}: input_dim")
