"""One exception type for user mistakes, so launch scripts can print one line and exit non-zero."""

import sys


class UserError(ValueError):
  """Bad input from the user (file, flag, checkpoint); the message names the thing and what was expected."""


def exit_on_user_error(main):
  """Wraps an absl `main` so a UserError prints `error: ...` and exits 2 instead of a traceback."""

  def wrapped(argv):
    try:
      return main(argv)
    except UserError as e:
      print(f"error: {e}", file=sys.stderr)
      sys.exit(2)

  return wrapped
