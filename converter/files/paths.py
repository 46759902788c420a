"""Checks on every path we write, made before any work, so that nothing the user had is lost.

Files are written to ``.<name>.<random>.tmp`` in the target's folder and renamed into place
(save.py). So a target must name a file in an existing folder we may write to, short enough that
the temporary name still fits the file system's NAME_MAX, and whatever is there now must be a
regular file that may be replaced. A symlink, FIFO, device, socket or folder is never replaced
by a regular file (as root, ``-o /dev/null`` would otherwise replace /dev/null); a read-only file
(no write permission bit, whoever we run as) is left alone too.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from converter.errors import InputError

# tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp") adds 8 random characters.
TEMP_PREFIX, TEMP_SUFFIX, TEMP_RANDOM = ".", ".tmp", 8
_TEMP_EXTRA = len(TEMP_PREFIX) + 1 + TEMP_RANDOM + len(TEMP_SUFFIX)

_KINDS = {
    stat.S_IFIFO: "named pipe (FIFO)",
    stat.S_IFCHR: "character device",
    stat.S_IFBLK: "block device",
    stat.S_IFSOCK: "socket",
}


def file_kind(mode: int) -> str:
    """What a non-regular file is, in words ("named pipe (FIFO)", "character device", ...)."""
    return _KINDS.get(stat.S_IFMT(mode), "special file")


def temporary_prefix(target: Path) -> str:
    return f"{TEMP_PREFIX}{target.name}."


def check_target(path: str | os.PathLike[str], what: str = "output") -> Path:
    """``path`` as a Path, after making sure that writing ``what`` there can work and loses nothing."""
    raw = os.fsdecode(os.fspath(path))
    if not raw:
        raise InputError(f"the {what} path is empty")
    if "\0" in raw:
        raise InputError(f"{raw!r}: the {what} path contains a NUL byte")
    target = Path(raw)
    if raw.endswith(("/", os.sep)) or target.name in ("", ".", ".."):
        is_folder = "is a folder" if os.path.isdir(raw) else "names a folder"
        raise InputError(f"{raw}: {is_folder}; the {what} needs a file name")
    check_replaceable(target, what)
    folder = target.parent
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        raise InputError(f"{target}: the {what}'s folder {folder} does not exist") from None
    except NotADirectoryError:
        raise InputError(f"{target}: {_first_file(folder)} is not a folder") from None
    except OSError as e:
        raise InputError(f"{target}: cannot use the {what}'s folder {folder} ({e.strerror})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise InputError(f"{target}: {folder} is not a folder")
    # os.access answers for root too, except that root may write where no write bit is set: honour the bits.
    if not os.access(folder, os.W_OK | os.X_OK) or not st.st_mode & 0o222:
        raise InputError(f"{target}: the {what}'s folder {folder} is not writable")
    name_max = _pathconf(folder, "PC_NAME_MAX", 255)
    name_len = len(os.fsencode(target.name))
    if name_len + _TEMP_EXTRA > name_max:
        needs = f"{name_len} bytes"
        if name_len <= name_max:
            needs += f"; its temporary file needs {name_len + _TEMP_EXTRA}"
        raise InputError(f"{target}: the {what}'s file name is too long ({needs}; the file system allows {name_max})")
    path_max = _pathconf(folder, "PC_PATH_MAX", 4096)
    if len(os.fsencode(str(folder / (target.name + "x" * _TEMP_EXTRA)))) >= path_max:
        raise InputError(f"{target}: the {what}'s path is too long (the file system allows {path_max} bytes)")
    return target


def check_replaceable(target: Path, what: str = "output") -> None:
    """Refuse when something other than a writable regular file is at ``target`` (nothing there is fine)."""
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise InputError(f"{target}: {_first_file(target.parent)} is not a folder") from None
    except OSError as e:
        raise InputError(f"{target}: cannot use this path for the {what} ({e.strerror})") from None
    if stat.S_ISLNK(st.st_mode):
        raise InputError(f"{target}: is a symbolic link; refusing to replace it with the {what} (name the file it points to)")
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{target}: is a folder; the {what} needs a file name")
    if not stat.S_ISREG(st.st_mode):
        kind = file_kind(st.st_mode)
        raise InputError(f"{target}: is a {kind}, not a regular file; refusing to replace it with the {what}")
    if not st.st_mode & 0o222 or not os.access(target, os.W_OK):
        raise InputError(f"{target}: is read-only; refusing to replace it with the {what}")


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: the same resolved path, or the same inode (a hard link)."""
    try:
        if a.resolve() == b.resolve():
            return True
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except (OSError, ValueError, RuntimeError):
        return False


def refuse_overwriting(target: Path, protected: Iterable[tuple[Path, str]], what: str = "output") -> None:
    """Refuse when ``target`` is one of the ``(path, what it is)`` files that must survive."""
    for path, role in protected:
        if same_file(target, path):
            raise InputError(f"{target}: the {what} would overwrite {role}; choose another path")


def refuse_inside(target: Path, folder: Path, role: str, what: str = "output") -> None:
    """Refuse a target inside ``folder`` (an input SavedModel: its files must survive)."""
    try:
        inside = target.resolve().is_relative_to(folder.resolve())
    except (OSError, RuntimeError):
        return
    if inside:
        raise InputError(f"{target}: the {what} would overwrite a file of {role}; choose a path outside {folder}")


def _first_file(folder: Path) -> Path:
    """The first component of ``folder`` that exists and is not a folder (for the message)."""
    for p in reversed([folder, *folder.parents]):
        if p.exists() and not p.is_dir():
            return p
    return folder


def _pathconf(folder: Path, name: str, default: int) -> int:
    try:
        value = os.pathconf(folder, name)
    except (OSError, ValueError):
        return default
    return value if value > 0 else default


def check_output(output: str | os.PathLike[str], source: Path) -> Path:
    """The model output's checks: its own path, what sits where its data file would go, and the input it may not touch."""
    target = check_target(output, "output")
    check_replaceable(target.with_name(target.name + ".data"), "output's data file")
    if source.is_dir():
        refuse_inside(target, source, f"the input SavedModel {source}")
    return target
