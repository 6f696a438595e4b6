"""`ie-flow reproduce`: the paper's four experiments (workflows/paper/), run as ordinary jobs under one
MLflow parent run, and the generated report (docs/REPRODUCTION.md).

    experiments.py  the experiment files: cells, generated corpora
    runner.py       runs the cells, resumable (reproduction/index.json on storage)
    analysis.py     loads the measurements; intervals of differences; the verdict rule
    claims.py       each claim's test, table and figure
    document.py     the report"""
