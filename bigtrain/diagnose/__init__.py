"""Diagnosis: the run record, the report, and the doctor's findings on data and runs.

Example:
    from bigtrain.diagnose import check_data, check_run, render_doctor, RunRecord
    print(render_doctor(check_data(x_train, y_train, x_test, y_test)))
    print(render_doctor(check_run(RunRecord.load("runs/mnist"))))
"""
from bigtrain.diagnose.data_checks import check_data
from bigtrain.diagnose.findings import SEVERITIES, Finding, render_doctor, sort_findings
from bigtrain.diagnose.label_checks import check_labels, class_ids
from bigtrain.diagnose.lr_finder import lr_range_test
from bigtrain.diagnose.quality_checks import check_history
from bigtrain.diagnose.record import RankMemory, RunRecord, StepTimes
from bigtrain.diagnose.report import render_report
from bigtrain.diagnose.training_checks import check_run, suggested_microbatches

__all__ = [
    "Finding", "RankMemory", "RunRecord", "SEVERITIES", "StepTimes", "check_data",
    "check_history", "check_labels", "check_run", "class_ids", "lr_range_test",
    "render_doctor", "render_report", "sort_findings", "suggested_microbatches",
]
