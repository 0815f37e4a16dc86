"""The one exception type for user mistakes, shared by both packages (torch-free)."""


class UserError(Exception):
    """A mistake the user can fix: bad input, a missing file, an unknown word.

    The message is one sentence naming the problem and the fix. The CLI prints it in
    colour and exits with code 2; `--debug` shows the traceback as well.
    """
