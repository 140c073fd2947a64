"""Directory watching with inotify, for TLS material.

Directories are watched rather than files: Kubernetes replaces a secret's
files by swapping a ``..data`` symlink, which a watch on the file itself
would miss. Events are debounced: a change is reported once the directory has
been quiet for ``quiet`` seconds, and never later than ``cap`` seconds after
the first event, so files rewritten every 100 ms still get reloaded.

Reading the inotify descriptor is non-blocking and happens on the control
loop (add_reader); nothing here reads the watched files.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import os
import struct
from collections.abc import Callable

from router.log import get_logger

IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_IGNORED = 0x00008000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

WATCH_MASK = (
    IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
_EVENT = struct.Struct("iIII")
_log = get_logger("TLS")


class InotifyUnavailable(OSError):
    """This system or file system has no inotify; the periodic check remains."""


class _Libc:
    def __init__(self) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self.init1 = libc.inotify_init1
        self.init1.argtypes = [ctypes.c_int]
        self.add_watch = libc.inotify_add_watch
        self.add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.rm_watch = libc.inotify_rm_watch
        self.rm_watch.argtypes = [ctypes.c_int, ctypes.c_int]


class DirectoryWatcher:
    """Calls on_change(directory) after debounced changes in watched directories."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_change: Callable[[str], None],
        quiet: float = 0.05,
        cap: float = 0.2,
    ) -> None:
        self._loop = loop
        self._on_change = on_change
        self._quiet = quiet
        self._cap = cap
        try:
            self._libc = _Libc()
        except (OSError, AttributeError) as e:
            raise InotifyUnavailable(str(e)) from e
        fd = self._libc.init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise InotifyUnavailable(os.strerror(ctypes.get_errno()))
        self._fd = fd
        self._wd_dir: dict[int, str] = {}
        self._dir_wd: dict[str, int] = {}
        self._pending: dict[str, tuple[float, asyncio.TimerHandle]] = {}
        self._missing: set[str] = set()  # wanted but absent: retried by rearm()
        loop.add_reader(fd, self._readable)

    def watch(self, directory: str) -> None:
        if directory in self._dir_wd:
            return
        wd = self._libc.add_watch(self._fd, os.fsencode(directory), WATCH_MASK)
        if wd < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOENT, errno.ENOTDIR):
                self._missing.add(directory)
                return
            raise OSError(err, f"cannot watch {directory}: {os.strerror(err)}")
        self._missing.discard(directory)
        self._wd_dir[wd] = directory
        self._dir_wd[directory] = wd

    def unwatch(self, directory: str) -> None:
        self._missing.discard(directory)
        wd = self._dir_wd.pop(directory, None)
        if wd is not None:
            self._wd_dir.pop(wd, None)
            self._libc.rm_watch(self._fd, wd)

    def watched(self) -> set[str]:
        return set(self._dir_wd) | self._missing

    def rearm(self) -> None:
        """Retries directories that did not exist (or were replaced)."""
        for directory in list(self._missing):
            self.watch(directory)
            if directory in self._dir_wd:
                self._changed(directory)

    def close(self) -> None:
        self._loop.remove_reader(self._fd)
        for _, handle in self._pending.values():
            handle.cancel()
        os.close(self._fd)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size + length
            directory = self._wd_dir.get(wd)
            if directory is None:
                continue
            if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
                # the directory itself went away or was replaced: watch the
                # path again (now, or when it reappears)
                self._wd_dir.pop(wd, None)
                self._dir_wd.pop(directory, None)
                if mask & IN_MOVE_SELF:
                    # a moved directory lives on elsewhere, and so would its
                    # watch (IN_IGNORED comes only when it is deleted)
                    self._libc.rm_watch(self._fd, wd)
                self._missing.add(directory)
                self.rearm()
            self._changed(directory)

    def _changed(self, directory: str) -> None:
        now = self._loop.time()
        first, handle = self._pending.get(directory, (now, None))
        if handle is not None:
            handle.cancel()
        due = min(now + self._quiet, first + self._cap)
        self._pending[directory] = (first, self._loop.call_at(due, self._fire, directory))

    def _fire(self, directory: str) -> None:
        self._pending.pop(directory, None)
        self._on_change(directory)
