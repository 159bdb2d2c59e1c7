"""The Airflow UI of the process stack in headless Chromium (Debian's chromium, driven by
Playwright): log in, open fraud_detection's trigger form, see every param with its title and
description, trigger a run with values typed into the form, and read why its failed task failed.
Screenshots go to reports/."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from tests.stack.conftest import DAG_ID, REPO, ProcessStack, wait_for_dag

pytestmark = pytest.mark.stack  # make test-stack

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
REPORTS = REPO / "reports"
# Fractions each within their bounds, together leaving too little to train on: the DAG's first
# task (check_params) fails at once, saying why.
TOO_LITTLE_TO_TRAIN = {"test_fraction": "0.5", "validation_fraction": "0.45"}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    opened = browser.new_page(viewport={"width": 1400, "height": 1000})
    # Actions and assertions alike wait up to a minute: on 2 busy cores the stack's API server can
    # take longer than Playwright's 5 s assertion default to answer a trigger.
    opened.set_default_timeout(60_000)
    expect.set_options(timeout=60_000)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def dag_params(stack: ProcessStack) -> dict[str, dict[str, Any]]:
    """fraud_detection's params as the REST API describes them: {name: {value, schema, description}}."""
    with stack.api() as api:
        wait_for_dag(api, DAG_ID)
        return api.get(f"/dags/{DAG_ID}/details").json()["params"]


def log_in(page: Page, stack: ProcessStack, path: str) -> None:
    page.goto(f"{stack.api_url}{path}")
    username, password = stack.login()
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"**{path}")


def open_trigger_form(page: Page, stack: ProcessStack) -> Locator:
    log_in(page, stack, f"/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text(f"Trigger Dag - {DAG_ID}")).to_be_visible()
    return dialog


def open_section(dialog: Locator, section: str) -> None:
    """The form shows each section of params as an accordion item, one open at a time."""
    header = dialog.get_by_role("button", name=section, exact=True)
    if header.get_attribute("aria-expanded") != "true":
        header.click()
    expect(header).to_have_attribute("aria-expanded", "true")


def named_field(dialog: Locator, name: str) -> Locator:
    """The form's text field or switch of a param (named element_<param>)."""
    return dialog.locator(f'input[name="element_{name}"]')


def flip_switch(dialog: Locator, name: str, on: bool) -> None:
    """A boolean param's switch: its checkbox is hidden, the switch around it takes the click."""
    dialog.locator(f'label[id="switch:element_{name}"]').click()
    expect(named_field(dialog, name)).to_be_checked(checked=on)


def label_text(title: str) -> re.Pattern[str]:
    """A param's label in the form: its title, with a star when the param is required."""
    return re.compile(rf"^{re.escape(title)}\s*\*?$")


def number_field(dialog: Locator, title: str) -> Locator:
    """The form's number field of a param, found by its label."""
    return dialog.get_by_role("spinbutton", name=label_text(title))


def sections(params: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, param in params.items():
        grouped.setdefault(param["schema"]["section"], []).append(name)
    return grouped


def runs(stack: ProcessStack) -> list[dict[str, Any]]:
    with stack.api() as api:
        return api.get(f"/dags/{DAG_ID}/dagRuns", params={"order_by": "-run_after"}).json()["dag_runs"]


@pytest.mark.slow
def test_trigger_form_shows_the_params_and_triggers_a_run(
    stack: ProcessStack, page: Page, dag_params: dict[str, dict[str, Any]]
) -> None:
    REPORTS.mkdir(exist_ok=True)
    dialog = open_trigger_form(page, stack)
    for section, names in sections(dag_params).items():
        open_section(dialog, section)
        for name in names:
            param = dag_params[name]
            expect(dialog.locator("label").filter(has_text=label_text(param["schema"]["title"]))).to_be_visible()
            expect(dialog.get_by_text(param["description"], exact=True)).to_be_visible()
        if section == "Data":
            named_field(dialog, "prefix").fill("ui-run")
        elif section == "Dataset":
            for name, value in TOO_LITTLE_TO_TRAIN.items():
                number_field(dialog, dag_params[name]["schema"]["title"]).fill(value)
        elif section == "Tuning":
            flip_switch(dialog, "tuning", on=False)
            page.screenshot(path=REPORTS / "trigger-form.png")
        elif section == "Registry":
            flip_switch(dialog, "auto_approve", on=True)
    dialog.get_by_test_id("trigger-dag-submit").click()
    expect(page.get_by_text("Dag run has been successfully triggered.").first).to_be_visible()

    run = runs(stack)[0]
    assert run["triggered_by"] == "ui"
    conf = run["conf"]
    assert (conf["prefix"], conf["tuning"], conf["auto_approve"]) == ("ui-run", False, True)
    assert {name: str(conf[name]) for name in TOO_LITTLE_TO_TRAIN} == TOO_LITTLE_TO_TRAIN
    assert set(conf) == set(dag_params)

    # The failed task's log in the UI says what failed and why.
    with stack.api() as api:
        instance = f"/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}/taskInstances/check_params"
        deadline = time.monotonic() + 300
        while (state := api.get(instance).json()["state"]) not in ("up_for_retry", "failed"):
            assert time.monotonic() < deadline, "check_params did not fail"
            time.sleep(2)
        assert state == "failed"  # invalid params fail at once: no retry
        try:
            page.goto(f"{stack.api_url}/dags/{DAG_ID}/runs/{run['dag_run_id']}/tasks/check_params?try_number=1")
            expect(page.get_by_text("InvalidParams", exact=False).first).to_be_visible()
            expect(
                page.get_by_text(
                    "test_fraction (0.5) + validation_fraction (0.45) must leave at least 10% of the rows for training"
                ).first
            ).to_be_visible()
            page.screenshot(path=REPORTS / "failed-task-log.png")
        finally:
            # Free the DAG's one active run for the other tests.
            api.patch(f"/dags/{DAG_ID}/dagRuns/{run['dag_run_id']}", json={"state": "failed"}).raise_for_status()


@pytest.mark.slow
def test_trigger_form_refuses_invalid_params(
    stack: ProcessStack, page: Page, dag_params: dict[str, dict[str, Any]]
) -> None:
    runs_before = len(runs(stack))
    dialog = open_trigger_form(page, stack)
    submit = dialog.get_by_test_id("trigger-dag-submit")
    # A required param left empty: the form says so and will not trigger.
    open_section(dialog, "Dataset")
    test_fraction = number_field(dialog, dag_params["test_fraction"]["schema"]["title"])
    test_fraction.fill("")
    expect(dialog.get_by_text("This field is required")).to_be_visible()
    expect(submit).to_be_disabled()
    test_fraction.fill("0.2")
    expect(submit).to_be_enabled()
    # A value against the param's schema, typed into the run's JSON: refused, naming the param.
    open_section(dialog, "Advanced Options")
    dialog.locator(".monaco-editor").click()
    page.keyboard.press("ControlOrMeta+A")
    page.keyboard.press("Delete")
    page.keyboard.insert_text('{"prefix": "Not_A_Prefix"}')
    submit.click()
    expect(dialog.get_by_text("Invalid input for param prefix:")).to_be_visible()
    page.screenshot(path=REPORTS / "trigger-form-refused.png")
    assert len(runs(stack)) == runs_before
