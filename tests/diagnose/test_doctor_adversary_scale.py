"""Raw wine features (proline in the hundreds to thousands) with Adam at 1e-3: huge
first-layer gradients kill ReLUs. The doctor must name the scale first, and the dead units
must point back at it instead of only telling the user to lower a learning rate that is
already the usual one (the dead-unit advice suggested learning_rate=1e-3 to a run at 1e-3).
The same run on standardized features trains clearly better and gets no scale finding."""
from bigtrain.optimizers import Adam
from tests.diagnose.adversary_runs import fit_run, mlp, shown, sklearn_data
from tests.diagnose.real_runs import ranked

SYMPTOMS = ("dead_units", "divergence", "exploding_gradients")


def _wine(scale: bool):
    return fit_run(mlp(13, (32,), 3), sklearn_data("wine", scale=scale),
                   Adam(learning_rate=1e-3), epochs=8)


def test_raw_features_come_first_and_their_symptoms_point_at_them():
    record, raw = _wine(scale=False)
    findings = ranked(record)
    assert findings[0].kind == "feature_scale", shown(findings)
    symptoms = [f for f in findings if f.kind in SYMPTOMS]
    assert "dead_units" in [f.kind for f in symptoms], shown(findings)
    for f in symptoms:
        assert f.advice.startswith("fix feature_scale"), (f.kind, f.advice)
        assert "learning_rate=1e-3)" not in f.advice, (f.kind, f.advice)
    record, scaled = _wine(scale=True)
    assert max(scaled["val_accuracy"]) > max(raw["val_accuracy"]) + 0.1
    assert "feature_scale" not in [f.kind for f in ranked(record)]
