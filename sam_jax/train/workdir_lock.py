"""One run per work directory: an exclusive lock taken before anything is written.

``WorkdirLock(workdir)`` holds an ``flock`` on ``workdir/.lock`` for the life
of a run. The kernel drops the lock when the holding process exits for any
reason (a crash or ``kill -9`` included), so a dead run never blocks the next
one; the holder's pid, host and start time are written into the file and
cleared on a clean release, so a later run can say that the previous holder
did not end cleanly (it then takes over, saying so). A second process that
finds the lock held gets :class:`WorkdirBusyError` naming the holder, before
it has written anything.

``flock`` is advisory and local-filesystem exact; on NFS (v4 and Linux
clients) it is emulated with byte-range locks, which also exclude across
hosts. It is not available on Windows, where the lock is skipped with a
warning.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import socket
import warnings
from typing import Callable, Optional

try:
  import fcntl
except ImportError:  # Windows
  fcntl = None

LOCK_NAME = ".lock"


class WorkdirBusyError(RuntimeError):
  """Another live process holds the work directory."""


class WorkdirVanishedError(FileNotFoundError):
  """The work directory was removed or replaced while the run held it."""


class WorkdirLock:
  """Context manager: the exclusive lock of one work directory."""

  def __init__(self, workdir: str | pathlib.Path, log: Callable[[str], None] = print):
    self.workdir = pathlib.Path(workdir)
    self.log = log
    self._file = None
    self._created = False

  def acquire(self) -> "WorkdirLock":
    if self.workdir.exists() and not self.workdir.is_dir():
      raise NotADirectoryError(f"work directory {self.workdir} is a file; choose a directory.")
    self._created = not self.workdir.exists()
    self.workdir.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
      warnings.warn("no flock on this platform: the work directory is not locked.", stacklevel=2)
      return self
    handle = open(self.workdir / LOCK_NAME, "a+")
    try:
      fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read(handle)
      handle.close()
      who = (f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('started')}"
             if holder else "another process")
      raise WorkdirBusyError(f"{self.workdir} is in use by {who}; wait for that run to end or "
                             "choose another work directory.") from None
    previous = _read(handle)
    if previous:
      self.log(f"note: the previous run in {self.workdir} (pid {previous.get('pid')} on "
               f"{previous.get('host')}, started {previous.get('started')}) did not end cleanly; "
               "taking over its work directory.")
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": datetime.datetime.now().isoformat(timespec="seconds")}))
    handle.flush()
    self._file = handle
    return self

  def check(self) -> None:
    """Raises :class:`WorkdirVanishedError` if the locked directory was removed or replaced
    (a new directory at the same path, made by a save, is not the run's)."""
    if self._file is None:
      return
    held = os.fstat(self._file.fileno())
    try:
      now = os.stat(self.workdir / LOCK_NAME)
      same = (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)
    except FileNotFoundError:
      same = False
    if not same:
      raise WorkdirVanishedError(f"the work directory {self.workdir} disappeared during the run "
                                 "(removed or replaced); its records are gone, start the run "
                                 "again.")

  def release(self) -> None:
    if self._file is None:
      return
    try:
      self._file.seek(0)
      self._file.truncate()  # an empty file: released cleanly
      self._file.flush()
      fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
    finally:
      self._file.close()
      self._file = None
    # A run that failed before writing anything leaves no trace.
    if (self._created and self.workdir.is_dir()
        and [p.name for p in self.workdir.iterdir()] == [LOCK_NAME]):
      (self.workdir / LOCK_NAME).unlink()
      self.workdir.rmdir()

  def __enter__(self) -> "WorkdirLock":
    return self.acquire()

  def __exit__(self, exc_type, exc, traceback) -> None:
    try:
      if exc_type is not None and issubclass(exc_type, Exception):
        self.check()  # a vanished work directory is the cause of whatever failed
    finally:
      self.release()


def held_by(workdir: str | pathlib.Path) -> Optional[dict]:
  """The holder (pid, host, start) of ``workdir``'s lock if a live process holds it now.

  Only a lock file with a holder written in it is probed (a run writes itself in
  after taking the lock, and clears it on release), so asking never gets in the
  way of a run that is starting.
  """
  path = pathlib.Path(workdir) / LOCK_NAME
  if fcntl is None or not path.is_file():
    return None
  try:
    with open(path, "a+") as handle:
      holder = _read(handle)
      if not holder:
        return None
      try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        return holder
      fcntl.flock(handle.fileno(), fcntl.LOCK_UN)  # its holder died: nobody runs it
      return None
  except OSError:
    return None


def _read(handle) -> Optional[dict]:
  handle.seek(0)
  text = handle.read().strip()
  if not text:
    return None
  try:
    return json.loads(text)
  except json.JSONDecodeError:
    return {"pid": "?", "host": "?", "started": "?"}
