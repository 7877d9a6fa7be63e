"""How an exception becomes the one line a user reads (the CLI prints one line per error)."""

from __future__ import annotations


def one_line(error: BaseException, limit: int = 300) -> str:
  """``Type: message``: the first line, at most ``limit`` characters (a library's message
  can be a page long, e.g. orbax's or tensorstore's)."""
  return f"{type(error).__name__}: {error}".splitlines()[0][:limit]
