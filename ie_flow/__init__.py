"""ie-flow: Information Emergence (arXiv 2405.12617) of language models over large corpora."""

__version__ = "0.2.0"


class IEFlowError(Exception):
    """An error the user can fix (bad input, config, data); the CLI prints it as one line, exit 2."""


class Refused(Exception):
    """Work ran, but what it made is refused (its parts disagree, found only while running); the
    CLI prints one line, exit 1."""


def first_line(error: BaseException) -> str:
    """The first non-empty line of an exception's message (its type name when it has none):
    what one-line error reports show of a library's multi-line message."""
    text = str(error).strip().strip("'\"")
    return text.splitlines()[0] if text else type(error).__name__
