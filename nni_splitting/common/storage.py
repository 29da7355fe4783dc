"""Where trials put checkpoints, how they write them, and how the tuner finds them again.

* Atomic writes: a file is written to a temporary name in its destination folder, flushed,
  ``fsync``-ed and moved over the final name with ``os.replace``, so a reader (the tuner, a child
  trial, a resumed experiment) sees the old file or the whole new one, never a torn one.
* Shared storage: on remote / Kubernetes training services the tuner cannot read a trial's local
  disk.  Trials then write under a folder both sides see, e.g. NNI's ``sharedStorage``, which is
  mounted at ``remoteMountPoint`` on the workers and at ``localMountPoint`` on the machine that
  runs the tuner.  Trials report paths as *they* see them; :class:`StorageMap` turns those into
  paths the tuner can open.  Child trials get the parent's paths unchanged (worker view).
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping, NamedTuple, Optional, Union

__all__ = [
    "CheckpointError",
    "CHECKPOINT_FILE",
    "SPLITS_FILE",
    "INDEX_FILE",
    "StorageMap",
    "atomic_write",
    "atomic_save",
    "atomic_write_json",
    "read_json",
    "trial_output_dir",
]

logger = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, foreign or does not fit its model (names the file)."""


#: File names inside a trial's output folder.
CHECKPOINT_FILE = "checkpoint.pt"   # model name, widths, constructor config and state_dict
SPLITS_FILE = "splits.pt"           # save_splits(): eigenvalues and directions per layer
INDEX_FILE = "splitting.json"       # what the tuner reads: widths, indexes, costs, paths

PathLike = Union[str, os.PathLike]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(str(folder), os.O_RDONLY)
    except OSError:  # e.g. Windows, some network file systems
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save(path: PathLike, save: Callable[[str], None]) -> Path:
    """Run ``save(tmp_path)`` on a temporary file next to ``path``, fsync it, then ``os.replace`` it.

    Parameters
    ----------
    path : path-like
        Final location; its folder is created if needed.
    save : callable
        Writes the content to the path it is given (e.g. ``lambda p: torch.save(obj, p)``).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        save(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the file the usual mode
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write(path: PathLike, data: Union[bytes, str]) -> Path:
    """Atomically write bytes (or UTF-8 text) to ``path``."""
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)

    def save(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()

    return atomic_save(path, save)


def atomic_write_json(path: PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return atomic_write(path, json.dumps(obj, indent=1, sort_keys=True) + "\n")


def read_json(path: PathLike) -> Any:
    """Read a JSON file (raises ``FileNotFoundError`` / ``ValueError`` with the path in the message)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from None


def _is_under(path: PurePosixPath, root: PurePosixPath) -> bool:
    return path == root or root in path.parents


class StorageMap(NamedTuple):
    """Maps a path as a trial sees it to the same file as the tuner sees it.

    Attributes
    ----------
    trial_root : str, optional
        Root of the shared folder on the workers (NNI's ``remoteMountPoint``, or the
        ``storage_path`` classArg).  None: trials and tuner share one file system.
    local_root : str, optional
        The same folder on the tuner's machine (``localMountPoint`` / ``local_storage_path``).
        None: same as ``trial_root``.
    """

    trial_root: Optional[str] = None
    local_root: Optional[str] = None

    @classmethod
    def from_shared_storage(cls, config: Optional[Mapping[str, Any]]) -> "StorageMap":
        """Build from an NNI ``sharedStorage`` config section (camelCase or snake_case keys)."""
        if not config:
            return cls()
        remote = config.get("remoteMountPoint", config.get("remote_mount_point"))
        local = config.get("localMountPoint", config.get("local_mount_point"))
        if not remote or not local:
            raise ValueError(f"sharedStorage needs remoteMountPoint and localMountPoint, got {dict(config)!r}")
        return cls(str(remote), str(Path(local).expanduser()))

    def to_local(self, path: PathLike) -> str:
        """Path on the tuner's machine of a path reported by a trial (unchanged when not under ``trial_root``)."""
        path = str(path)
        if not self.trial_root or not self.local_root:
            return path
        remote, root = PurePosixPath(path), PurePosixPath(self.trial_root)
        if not _is_under(remote, root):
            return path
        return str(Path(self.local_root).joinpath(*remote.relative_to(root).parts))

    def to_trial(self, path: PathLike) -> str:
        """Inverse of :meth:`to_local` (unchanged when not under ``local_root``)."""
        path = str(path)
        if not self.trial_root or not self.local_root:
            return path
        local, root = Path(path), Path(self.local_root)
        if local != root and root not in local.parents:
            return path
        return str(PurePosixPath(self.trial_root).joinpath(*local.relative_to(root).parts))


def trial_output_dir(storage_path: Optional[str] = None, experiment_id: Optional[str] = None,
                     trial_id: Optional[str] = None, nni_output_dir: Optional[str] = None) -> Optional[Path]:
    """Folder a trial writes its checkpoint, splits and index file to.

    ``<storage_path>/<experiment id>/<trial id>`` when a shared ``storage_path`` is given (worker
    view), otherwise NNI's ``$NNI_OUTPUT_DIR``; None when neither is known (standalone run without
    ``--output-dir``).
    """
    if storage_path:
        return Path(storage_path) / (experiment_id or "STANDALONE") / (trial_id or "STANDALONE")
    if nni_output_dir:
        return Path(nni_output_dir)
    return None
