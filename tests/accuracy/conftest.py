"""Accuracy tier: the estimators against ground truth (docs/METHOD.md sections 5 to 8), in-process.
These train critics on thousands of samples and take minutes on two cores, so they are apart from
the unit tier (which stays under 90 s); `make test` runs both."""
