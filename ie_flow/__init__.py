"""ie-flow: Information Emergence (arXiv 2405.12617) of language models over large corpora."""

__version__ = "0.1.0"


class IEFlowError(Exception):
    """An error the user can fix (bad input, config, data); the CLI prints it as one line, exit 2."""
