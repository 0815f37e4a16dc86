"""The one exception type for user mistakes, shared by both packages (torch-free)."""


class UserError(Exception):
    """A mistake the user can fix: bad input, a missing file, an unknown word.

    The message is one sentence naming the problem and the fix. The CLI prints it in
    colour and exits with code 2; `--debug` shows the traceback as well.
    """

    exit_code = 2
    label = "error"


class Interrupted(UserError):
    """The user stopped a run (SIGINT: exit 130, SIGTERM: 143); the message says what was kept."""

    label = "interrupted"

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + int(signum)
