"""The model card in words: a validation record's figures, each labelled with what it was measured on (the lines
``pneumo info`` prints after the metadata, :meth:`pneumo.modelfile.ModelMeta.figures_summary`)."""

from __future__ import annotations

from pneumo.modelfile.validation import BlockFigures, LungCheck, OperatingPoint, RuleFigures, Validation

# The check of pneumo.evaluation.shifts.TRAINING_CHECKS that hides the image border (a name, not an import: the
# inference path does not load the perturbation suite); tests/test_modelfile.py checks that the suite still has it.
BORDER_HIDDEN_CHECK = "border masked 15%"
_CONDITION_WORDS = {"clean": "clean validation"}


def figures_lines(v: Validation, heading: str, site_in_force: bool) -> list[str]:
    """``heading``, then the figures of ``v`` in words; figures a file does not record are left out."""
    lines, where = [heading], v.where
    if v.sensitivity is not None and v.specificity is not None:
        lines.append(f"  sensitivity {v.sensitivity:.3f}, specificity {v.specificity:.3f} ({where})")
    lines += _block_lines(v.blocks, where) + _lung_lines(v.lung_checks)
    shifts = v.geometry_shift or {}
    if (worst := shifts.get("worst")) is not None:
        names = ", ".join(k for k in shifts if k != "worst")
        lines.append(
            f"  worst case under framing shift: sensitivity {worst.sensitivity:.3f}, specificity "
            f"{worst.specificity:.3f}, ROC AUC {worst.roc_auc:.3f} (validation under {names})"
        )
    if v.bacterial_vs_viral_accuracy is not None:
        line = f"  bacterial vs viral {v.bacterial_vs_viral_accuracy:.3f} ({where}"
        if worst is not None and worst.bacterial_vs_viral is not None:
            line += (f"; worst under framing shift {worst.bacterial_vs_viral:.3f}, "
                     f"{worst.subtype_flipped:.1%} of calls flipped")  # fmt: skip
        lines.append(line + "); indicative only")
    lines += _operating_point_lines(v.operating_point, where, site_in_force)
    if (line := _border_hidden_line(v, where)) is not None:
        lines.append(line)
    lines.append("  expect lower figures on X-rays from other sites or periods")
    return lines


def _block_lines(blocks: BlockFigures | None, where: str) -> list[str]:
    """The worst held-out acquisition block's specificity and sensitivity (a block split's validation)."""
    if blocks is None:
        return []
    lines = []
    for rate, w in (("specificity", blocks.worst_specificity), ("sensitivity", blocks.worst_sensitivity)):
        if w is not None and None not in (w.value, w.block, w.n):
            lines.append(f"  worst held-out acquisition block: {rate} {w.value:.3f} ({w.block}, {w.n} images; "
                         f"{where})")  # fmt: skip
    return lines


def _lung_lines(checks: dict[str, LungCheck] | None) -> list[str]:
    """The lung checks: ROC AUC with the lungs hidden and with only the lungs shown, per set they were measured on.
    A model that reads the lungs loses its AUC with them hidden and keeps it with only them shown."""
    lines = []
    for on, c in (checks or {}).items():
        if None not in (c.clean, c.lungs_hidden, c.only_lungs):
            lines.append(f"  ROC AUC with the lungs hidden {c.lungs_hidden:.3f}, with only the lungs shown "
                         f"{c.only_lungs:.3f}, clean {c.clean:.3f} ({on}; reported, never part of the worst "
                         f"case)")  # fmt: skip
    return lines


def _rule_words(name: str, op: OperatingPoint) -> str:
    """How a threshold rule chose its threshold, in words."""
    sens, spec = op.target_sensitivity, op.target_specificity
    if name == "worst_case" and sens is not None and spec is not None:
        return (f"the worst-case rule (the largest margin to sensitivity {sens:.2f} / specificity {spec:.2f} in the "
                f"worst framing condition)")  # fmt: skip
    if name == "pooled" and sens is not None:
        return (f"the pooled rule (the highest threshold with sensitivity {sens:.2f} on validation pooled with its "
                f"checked copies)")  # fmt: skip
    return f"the {name.replace('_', '-')} rule"


def _rule_figures(rule: RuleFigures, where: str) -> str | None:
    """A rule's sensitivity / specificity in the worst framing condition (naming it) and on validation pooled with
    its checked copies; None unless all of them are recorded."""
    worst, pooled = rule.worst_framing, rule.pooled
    if worst is None or None in (worst.sensitivity, worst.sensitivity_of, worst.specificity, worst.specificity_of):
        return None
    if pooled is None or pooled.sensitivity is None or pooled.specificity is None:
        return None
    of_sens, of_spec = (_CONDITION_WORDS.get(k, k) for k in (worst.sensitivity_of, worst.specificity_of))
    at_worst = (
        f"sensitivity {worst.sensitivity:.3f} / specificity {worst.specificity:.3f} at worst ({of_sens})"
        if of_sens == of_spec
        else f"sensitivity {worst.sensitivity:.3f} at worst ({of_sens}) / specificity "
        f"{worst.specificity:.3f} at worst ({of_spec})"
    )
    return (
        f"{at_worst}; sensitivity {pooled.sensitivity:.3f} / specificity {pooled.specificity:.3f} on "
        f"validation pooled with its checked copies, {where}"
    )


def _operating_point_lines(op: OperatingPoint | None, where: str, site_in_force: bool) -> list[str]:
    """The threshold rule in force and the other one, each with its operating point; none for model files made
    before both rules were recorded."""
    if op is None or op.rules is None or op.rule not in op.rules:
        return []
    in_force = "threshold rule in force"
    if site_in_force:
        in_force = "threshold rule as shipped (a site calibration now sets the threshold)"
    lines = []
    for name in sorted(op.rules, key=lambda n: n != op.rule):  # the rule in force first
        rule = op.rules[name]
        figures = _rule_figures(rule, where)
        if figures is None or rule.threshold is None:
            continue
        said = f"threshold {rule.threshold:.3f} by {_rule_words(name, op)}"
        lines.append(
            f"  {in_force}: {said}: {figures}"
            if name == op.rule
            else f"  the other rule, not in force: {said} would give {figures}"
        )
    return lines


def _border_hidden_line(v: Validation, where: str) -> str | None:
    """The AUC with the image border hidden against the clean one: a model that reads the lungs keeps it."""
    hidden = (v.geometry_shift or {}).get(BORDER_HIDDEN_CHECK)
    if hidden is None or hidden.roc_auc is None:
        return None
    clean = f" against {v.roc_auc:.3f} clean" if v.roc_auc is not None else ""
    return f"  ROC AUC with the image border hidden (outer 15 % flat grey): {hidden.roc_auc:.3f}{clean} ({where})"
