"""The rule table and the thresholds as markdown (docs/decision-rules.md)."""

from __future__ import annotations

from advisor.decide.rules.table import RULES
from advisor.decide.rules.thresholds import Thresholds


def rules_markdown() -> str:
    """The rule table in evaluation order: id, kind, condition, strategy, rationale template."""
    lines = [
        "| id | kind | fires when | strategy | rationale (template) |",
        "|---|---|---|---|---|",
    ]
    for rule in RULES:
        template = rule.rationale.replace("|", "\\|")
        if rule.retired:
            template = f"**Retired:** {rule.retired}. (Was: {template})"
        kind = f"{rule.kind} (retired)" if rule.retired else rule.kind
        lines.append(
            f"| {rule.id} | {kind} | {rule.when} | {rule.strategy or '-'} | {template} |"
        )
    return "\n".join(lines) + "\n"


def thresholds_markdown() -> str:
    """The thresholds with their defaults and meaning, as a markdown table."""
    lines = ["| threshold | default | meaning |", "|---|---|---|"]
    for name, field in Thresholds.model_fields.items():
        lines.append(f"| `{name}` | {field.default:g} | {field.description} |")
    return "\n".join(lines) + "\n"
