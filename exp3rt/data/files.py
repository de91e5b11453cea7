"""Input paths named by a dataset config."""

from __future__ import annotations

from pathlib import Path

from exp3rt.config import ConfigError, Loader


def require_file(path, key: str, cfg) -> Path:
    """``path`` (from config key ``key``) as a file: a folder is a configuration mistake, named with
    the files inside it that could be meant."""
    path = Path(str(path))
    if path.is_dir():
        files = sorted(p.name for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        hint = (
            f"pass {key}={path / files[0]}"
            + (f" (the folder holds {', '.join(files[:5])}" + (", …" if len(files) > 5 else "") + ")")
            if files
            else f"pass {key}=/path/to/the/file (the folder holds no files)"
        )
        raise ConfigError(
            f"config key '{key}' names the folder {path}, but loader '{Loader(cfg.loader).value}' of dataset "
            f"'{cfg.name}' reads one file: {hint}"
        )
    return path
