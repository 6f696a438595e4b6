"""The MLflow UI shows an ie-flow run: headless Chromium opens the run logged by the session's
`ie-flow run` on the live tracking server, waits for the run and its `ie` metric (the overview's
value and the per-layer chart on "Model metrics"), and keeps a screenshot in test-artifacts/."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

WAIT_S = 120  # a loaded 2-core machine renders MLflow's React app slowly; the wait ends as soon as it is up


def _chart_points(driver, metric: str) -> int:
    """Plotted points of the chart card titled `metric` (0 while it is still loading)."""
    from selenium.webdriver.common.by import By

    cards = driver.find_elements(
        By.XPATH, f"//*[@data-testid='experiment-view-compare-runs-card'][.//h4[normalize-space(text())='{metric}']]")
    if len(cards) != 1:
        return 0
    lines = [l for l in cards[0].find_elements(By.CSS_SELECTOR, ".js-plotly-plot .scatterlayer path.js-line")
             if (l.get_attribute("d") or "").startswith("M")]
    return len(cards[0].find_elements(By.CSS_SELECTOR, ".js-plotly-plot .scatterlayer path.point")) if lines else 0


def test_mlflow_ui_shows_run_and_ie_chart(chromium, mlflow_server, mlflow_run, test_artifacts):
    from mlflow import MlflowClient
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    run_id = mlflow_run.result["mlflow_run_id"]
    run = MlflowClient(tracking_uri=mlflow_server.uri).get_run(run_id)
    run_name, exp_id = run.info.run_name, run.info.experiment_id
    layers = mlflow_run.result["layers"]
    last_ie = repr(float(layers[-1]["ie"]))  # the overview shows a metric's latest value (step = last layer)
    page = f"{mlflow_server.uri}/#/experiments/{exp_id}/runs/{run_id}"
    body = lambda d: d.find_element(By.TAG_NAME, "body").text  # noqa: E731

    # overview: run name, and the `ie` metric with its value
    chromium.get(page)
    WebDriverWait(chromium, WAIT_S, poll_frequency=0.5).until(
        lambda d: run_name in body(d) and last_ie in body(d),
        message=f"run {run_name!r} with ie={last_ie} not shown at {page}")
    text = body(chromium)
    assert f"\nie\n{last_ie}\n" in f"\n{text}\n", "the metrics table lists `ie` with its value"

    # model metrics: the `ie` chart, one point per layer
    chromium.get(f"{page}/model-metrics")
    WebDriverWait(chromium, WAIT_S, poll_frequency=0.5).until(
        lambda d: run_name in body(d) and _chart_points(d, "ie") >= len(layers),
        message="the `ie` chart did not render its per-layer points")
    card = chromium.find_element(
        By.XPATH, "//*[@data-testid='experiment-view-compare-runs-card'][.//h4[normalize-space(text())='ie']]")
    chromium.execute_script("arguments[0].scrollIntoView({block: 'center'});", card)
    WebDriverWait(chromium, 30, poll_frequency=0.25).until(lambda d: _chart_points(d, "ie") == len(layers))
    text = body(chromium)
    assert run_name in text and "\nie\n" in f"\n{text}\n" and "Step" in text

    shot = test_artifacts / "mlflow-run.png"
    assert chromium.save_screenshot(str(shot))
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
