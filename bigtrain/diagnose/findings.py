"""A doctor's finding: what is wrong, the numbers that show it, and one change to make.

Example:
    from bigtrain.diagnose.findings import Finding, render_doctor
    f = Finding("input_bound", "warning", "data loading is 62% of each 80 ms step",
                "raise num_workers of the data loader from 0 to 2")
    print(render_doctor([f]))
"""
from __future__ import annotations

import io
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

SEVERITIES = ("info", "warning", "error")


@dataclass(frozen=True)
class Finding:
    """One diagnosis.

    Attributes:
        kind: short stable identifier ("nan_values", "comm_bound", ...); tests and tools
            match on it.
        severity: "info" (worth knowing), "warning" (costs speed or quality), "error" (the
            run or data is broken).
        evidence: the measured numbers that triggered it.
        advice: one concrete change to make, as the code to write where there is one.
        impact: how much of the problem this finding explains, 0..1: the share of step
            time it costs (slow runs) or how far it goes to explain the gap to the
            baselines (poor runs; a cause ranks above the symptoms it explains). The doctor
            ranks findings by it.
    """
    kind: str
    severity: str
    evidence: str
    advice: str
    impact: float = 0.0

    def __post_init__(self):
        if self.severity not in SEVERITIES:
            raise ValueError(f"Finding.severity must be one of {SEVERITIES}, "
                             f"got {self.severity!r}")
        if not self.kind or not self.evidence or not self.advice:
            raise ValueError("a Finding needs a kind, evidence and advice")


    def to_dict(self) -> dict:
        """JSON-ready fields (what `bigtrain doctor --json` prints)."""
        return {"kind": self.kind, "severity": self.severity, "evidence": self.evidence,
                "advice": self.advice, "impact": round(float(self.impact), 4)}


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Ranked by how much they explain (impact, highest first), then errors before warnings
    before info; stable otherwise. Info findings never outrank a warning or an error."""
    return sorted(findings, key=lambda f: (f.severity == "info", -f.impact,
                                           -SEVERITIES.index(f.severity)))


def render_doctor(findings: list[Finding], *, rich: bool = False, width: int = 100) -> str:
    """Text for the `bigtrain doctor` command.

    Args:
        findings: what the checks returned.
        rich: render a rich table (with box drawing) instead of plain text lines.
        width: console width for the rich table.

    Example:
        >>> render_doctor([])
        'No problems found.'
    """
    if not findings:
        return "No problems found."
    ordered = sort_findings(findings)
    if rich:
        table = Table(title=f"{len(ordered)} finding(s)")
        for col in ("severity", "kind", "evidence", "advice"):
            table.add_column(col, overflow="fold")
        for f in ordered:
            table.add_row(f.severity, f.kind, f.evidence, f.advice)
        console = Console(width=width, record=True, file=io.StringIO())
        console.print(table)
        return console.export_text()
    lines = []
    for f in ordered:
        lines += [f"[{f.severity.upper()}] {f.kind}: {f.evidence}", f"    -> {f.advice}"]
    return "\n".join(lines)
