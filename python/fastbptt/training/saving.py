"""Saving and loading a layer's or a model's arrays with a description of what holds them, in one ``.npz`` file."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np

FORMAT_VERSION = 1


def save_arrays(path, kind: str, config: dict, arrays: dict[str, np.ndarray]) -> None:
    """Writes ``arrays`` and a JSON description (``kind``, ``config``) into one ``.npz`` file."""
    meta = json.dumps({"format": FORMAT_VERSION, "kind": kind, "config": config})
    np.savez(Path(path), __meta__=np.array(meta), **arrays)


def load_arrays(path, kind: str, config: dict, expected: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Reads what :func:`save_arrays` wrote and checks it against ``kind``, ``config`` and the shapes of
    ``expected``; returns new arrays in the dtypes of ``expected``. Raises ValueError before anything is used."""
    try:
        # Opened here, not by np.load, which leaves the file open when it is not a valid archive.
        with open(Path(path), "rb") as file, np.load(file, allow_pickle=False) as data:
            stored = {name: data[name] for name in data.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        raise ValueError(f"{path}: not a readable .npz file ({error})") from error
    try:
        meta = json.loads(str(stored.pop("__meta__")))
    except (KeyError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not written by fastbptt's save() (no valid __meta__ entry)") from error
    if meta.get("format") != FORMAT_VERSION or meta.get("kind") != kind:
        raise ValueError(f"{path}: holds a {meta.get('kind')!r} (format {meta.get('format')}), expected a {kind!r}")
    if meta.get("config") != config:
        raise ValueError(f"{path}: was saved with {meta.get('config')}, but this {kind} has {config}")
    if set(stored) != set(expected):
        raise ValueError(f"{path}: holds arrays {sorted(stored)}, expected {sorted(expected)}")
    for name, array in stored.items():
        if array.shape != expected[name].shape:
            raise ValueError(f"{path}: {name} has shape {array.shape}, expected {expected[name].shape}")
        if array.dtype.kind != "f":
            raise ValueError(f"{path}: {name} has dtype {array.dtype}, expected a float array")
    return {name: stored[name].astype(expected[name].dtype) for name in expected}
