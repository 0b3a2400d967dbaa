"""The doctor on real runs that went wrong for one planted reason each (and healthy runs):
its first finding must name the planted cause, healthy runs get no warning, and the README's
table and precision/recall are the ones this suite produces.

The whole suite trains once per session (the `results` fixture): about 25 tiny fits in this
process and one 2-rank job for the straggler, communication and pipeline runs.
"""
import pytest

from tests.diagnose.scenarios.suite import (README, SCENARIOS, hit, readme_table, run_suite,
                                            scores, table)


@pytest.fixture(scope="module")
def results():
    return run_suite()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_first_finding_names_the_planted_cause(results, scenario):
    findings = results[scenario.name]
    shown = [(f.kind, round(f.impact, 2), f.evidence) for f in findings]
    assert hit(scenario, findings), (scenario.expect, shown)


def test_suite_size_and_scores(results):
    faulty = [s for s in SCENARIOS if s.expect]
    assert len(faulty) >= 20 and len(SCENARIOS) - len(faulty) >= 5
    assert scores(results) == (1.0, 1.0)


def test_readme_shows_the_suite_table(results):
    assert readme_table(README.read_text()) == table(results), (
        "README.md's doctor table is stale: run `python -m tests.diagnose.scenarios.suite`")


def test_every_advice_is_code_to_change(results):
    """Each finding of the suite says what to write, not only what is wrong."""
    code = ("(", "=")
    for name, findings in results.items():
        for f in findings:
            assert any(c in f.advice for c in code), (name, f.kind, f.advice)


@pytest.mark.parametrize("name, planted", [
    ("issue_nan_run", {"unscaled_features", "lr_too_high", "label_noise"}),
    ("issue_low_lr_run", {"unscaled_features", "label_noise", "below_a_baseline"}),
])
def test_the_issues_compound_runs_get_every_planted_finding(results, name, planted):
    """Runs with several faults at once: each one is among the warnings (the model's
    accuracy falls below the majority class or the logistic regression, whichever)."""
    kinds = {f.kind for f in results[name]}
    if kinds & {"below_majority", "below_baseline"}:
        kinds.add("below_a_baseline")
    assert planted <= kinds, [f.kind for f in results[name]]


def test_the_issues_nan_run_stops_on_nan_and_keeps_its_record():
    """The issue's first run really ends in NaN, and its record still says where and why."""
    from tests.diagnose.scenarios.quality import issue_nan_run
    rec = issue_nan_run()
    assert rec.stop["reason"] == "nan_loss" and rec.stop["step"] > 0, rec.stop
    assert rec.step_losses, "the losses of the last epoch up to the NaN are kept"
