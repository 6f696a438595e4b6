"""A quiet terminal: ie-flow's own progress and milestones on stderr; Ray's, MLflow's and
transformers' own logs only with --verbose."""

from __future__ import annotations

import logging
import os
import sys

THIRD_PARTY = ("ray", "mlflow", "transformers", "httpx", "urllib3", "botocore", "s3fs", "fsspec", "alembic",
               "matplotlib", "filelock", "gguf", "accelerate", "torch")


def configure_logging(verbose: bool = False) -> None:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(message)s")
    logging.getLogger("ie_flow").setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    if not verbose:
        # read by transformers and huggingface_hub when they start, here and in Ray workers
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # MLflow sets its loggers' level on import
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
