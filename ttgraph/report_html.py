"""The human view of a compression report: one self-contained HTML file with a table and plots.

Plots (matplotlib, embedded as PNG): every layer's error-vs-cost curve with the chosen point, MACs and params per
layer before/after, calibration vs held-out error per layer, and the end-to-end held-out error. Works from a
:class:`~ttgraph.api.CompressionReport` or from its JSON (``python -m ttgraph.report_html r.json -o r.html``).
matplotlib is imported only here (``pip install matplotlib``).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import sys
from typing import Any

from ttgraph.costs import human
from ttgraph.errors import TTGraphError
from ttgraph.fidelity import METRIC_LABELS, higher_is_better, judged_metric
from ttgraph.files import write_atomic
from ttgraph.process_state import quiet_warnings

__all__ = ["render_html", "write_html"]


def _subplots(*grid: int, figsize: tuple[float, float], **kwargs: Any) -> tuple[Any, Any]:
    """A figure and its axes, drawn off screen without pyplot: the caller's matplotlib backend stays as it is."""
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise TTGraphError("--html", "the HTML report needs matplotlib: pip install matplotlib") from err
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **kwargs)


def _png(fig: Any, tight: bool = True) -> str:
    """The figure as a PNG data URL; ``tight``: cropped to what is drawn (one more draw of the figure)."""
    buf = io.BytesIO()
    with quiet_warnings():  # a layer name in a script the font lacks: a box in the plot, not 20 lines
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight" if tight else None)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


#: the layer table's errors are the allocation's; compensated factors are fitted to the compressed network
LAYER_ERRORS_BEFORE_COMPENSATION = (
    "the table's errors are the allocated factors', before compensation refitted them to the compressed "
    "network's inputs (a refit layer is farther from its original alone and the network closer: see the "
    "compensation's per-layer errors)"
)


def params_as_written(totals: dict[str, Any], folded: int | None) -> tuple[int, float | None] | None:
    """(params, ratio) a count of the written file's 1×1 layers gives: it includes the biases lowering folded in
    from the ops after them, which the budget's figures leave out; None when nothing was folded in."""
    if not folded or totals.get("params_after") is None:
        return None
    written = totals["params_after"] + folded
    return written, written / totals["params_before"] if totals.get("params_before") else None


def as_written_text(totals: dict[str, Any], folded: int | None) -> str:
    """``as written 52.2k params (0.508×): 832 folded in from the ops after them`` (:func:`params_as_written`);
    empty when nothing was folded in."""
    counted = params_as_written(totals, folded)
    if counted is None:
        return ""
    ratio = "" if counted[1] is None else f" ({counted[1]:.3f}×)"
    return f"as written {human(counted[0])} params{ratio}: {folded} folded in from the ops after them"


def whole_model_text(totals: dict[str, Any]) -> str:
    """``weights 13.5M → 13.5M (0.996×), MACs 1.01G → 914M (0.903×)``: the whole model, where the budget's
    figures are the 1×1 layers' alone; empty for a report without them."""
    whole = totals.get("model")
    if not whole:
        return ""
    parts = []
    for key, label in (("params", "weights"), ("macs", "MACs")):
        ratio = whole.get(f"{key}_ratio")
        parts.append(
            f"{label} {human(whole.get(f'{key}_before'))} → {human(whole.get(f'{key}_after'))}"
            + ("" if ratio is None else f" ({ratio:.3f}×)")
        )
    return ", ".join(parts)


FAR_LOSS, FAR_FACTOR = 0.1, 5.0  # a loss beyond both (absolute, and times the noise's) reads as a warning
# a loss beyond this reads as a warning whatever the noise does (and where there is no noise yardstick: arrays):
# IoU or top-1 agreement below 0.8; a rel L2 above 0.3 (ddddocr's CTC logits at 0.35 had changed 14 of 16 strings)
FAR_ALWAYS = {"binary_iou": 0.2, "top1_agreement": 0.2, "match": 0.2, "rel_l2": 0.3}


def far_off(out: dict, noise: dict | None) -> str | None:
    """When ``out`` (the compressed model against the original) lost over :data:`FAR_ALWAYS` of the metric it is
    judged by, or over :data:`FAR_LOSS` and over :data:`FAR_FACTOR` times what input noise costs the original
    (``noise``, None when the calibration had no images), say so: a rel L2 of 0.59 beside the noise's 0.057 was a
    broken OCR model, printed as one number among others."""
    noise = noise or {}
    key = judged_metric(out) or "rel_l2"  # as the keep decision judges
    higher = higher_is_better(key)
    loss = 1 - out[key] if higher else out[key]
    floor = None if noise.get(key) is None else (1 - noise[key] if higher else noise[key])
    if loss > FAR_ALWAYS[key] or (floor is not None and loss > FAR_LOSS and loss > FAR_FACTOR * floor):
        against = "" if floor is None else f", against {noise[key]:.4g} for the original under input noise"
        return f"{METRIC_LABELS[key]} {out[key]:.4g}{against}"
    return None


def blank_text(inputs: list[str]) -> str:
    """What a calibration of blank samples means, for the summary and the HTML report."""
    names = ", ".join(repr(n) for n in inputs)
    return (
        f"every calibration sample of input {names} was blank, one colour per channel or one value throughout "
        "(check the preprocessing): each layer fitted it exactly, so the errors and fidelity reported say nothing of "
        "real inputs"
    )


def held_out(report: Any) -> bool:
    """Whether the verification ran on held-out calibration samples (not a random input's smoke test)."""
    cal = (report.get("calibration") if isinstance(report, dict) else report.calibration) or {}
    return bool(cal.get("heldout_samples"))


def _count(n: Any, noun: str) -> str:
    return f"{n} {noun}{'s' * (n != 1)}"


def _agreement(out: dict) -> float | None:
    """Top-1 agreement of class scores, or the exact match of labels (integer outputs): one column for both."""
    return out.get("top1_agreement", out.get("match"))


def _err(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


SENSITIVITY_TIP = "end-to-end output error per unit of the layer’s own squared error (allocation weight)"


def _sig(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def _as_dict(report: Any) -> dict[str, Any]:
    if isinstance(report, dict):
        return report
    if hasattr(report, "to_dict"):
        return report.to_dict()
    raise TTGraphError("--html", f"expected a compression report or its dict, got {type(report).__name__}")


MAX_CURVES = 48  # per-layer error-vs-cost plots drawn; 301 layers took 56 s and 2.7 MB of PNG for this figure


def _curve_layers(layers: list[dict[str, Any]], metric: str) -> list[dict[str, Any]]:
    """The layers whose error-vs-cost curve is drawn: all, or the :data:`MAX_CURVES` costliest (in model order)."""
    key = "macs" if metric == "macs" else "params"
    with_curves = [layer for layer in layers if layer.get("curve")]
    if len(with_curves) <= MAX_CURVES:
        return with_curves
    costliest = sorted(with_curves, key=lambda layer: -(layer.get(f"{key}_before") or 0))[:MAX_CURVES]
    keep = {id(layer) for layer in costliest}
    return [layer for layer in with_curves if id(layer) in keep]


TITLE_CHARS = 30  # a layer name longer than this overlaps its neighbour's plot


def _tail(name: str) -> str:
    """A layer name short enough for its plot's title: its end, where graph paths keep what tells layers apart."""
    return name if len(name) <= TITLE_CHARS else "…" + name[-(TITLE_CHARS - 1) :]


def _curves_figure(layers: list[dict[str, Any]], metric: str) -> str | None:
    with_curves = _curve_layers(layers, metric)
    if not with_curves:
        return None
    cols = min(6, len(with_curves))
    rows = math.ceil(len(with_curves) / cols)
    fig, axes = _subplots(rows, cols, figsize=(cols * 2.6, rows * 2.2), squeeze=False)
    key = "macs" if metric == "macs" else "params"
    for ax, layer in zip(axes.flat, with_curves, strict=False):
        dense = layer[f"{key}_before"] or 1
        pts = [p for p in layer["curve"] if p.get(key) is not None]
        xs = [p[key] / dense for p in pts]
        ys = [p["error"] for p in pts]
        ax.plot(xs, ys, ".-", ms=3, lw=0.8, color="#4477aa")
        chosen = [(x, y) for x, y, p in zip(xs, ys, pts, strict=True) if p.get("chosen")]
        if chosen:
            ax.plot(*chosen[0], "o", color="#cc3311", ms=6)
        ax.set_title(f"{_tail(layer['name'])}\n{layer['cout']}×{layer['cin']}", fontsize=7)
        ax.tick_params(labelsize=6)
        ax.set_xlim(0, 1.05)
        ax.set_ylim(0, min(1.0, max(ys + [0.05]) * 1.05))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(with_curves) :]:
        ax.axis("off")
    fig.supxlabel(f"{key} / dense {key}", fontsize=9)
    fig.supylabel("calibration output error", fontsize=9)
    # fixed margins (inches) for the two-line titles and small ticks: fitting them (tight_layout, a tight crop)
    # drew every axes twice more, most of the report's time on the detector's 42 layers
    width, height = fig.get_size_inches()
    fig.subplots_adjust(
        left=0.85 / width, right=1 - 0.1 / width, bottom=0.6 / height, top=1 - 0.4 / height, hspace=0.75, wspace=0.3
    )
    return _png(fig, tight=False)


def _bars_figure(layers: list[dict[str, Any]], key: str, title: str) -> str | None:
    before = [layer[f"{key}_before"] for layer in layers]
    after = [layer[f"{key}_after"] for layer in layers]
    if any(v is None for v in before + after):
        return None
    names = [layer["name"] for layer in layers]
    fig, ax = _subplots(figsize=(max(6, 0.28 * len(names)), 3.2))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], before, width=0.4, label="before", color="#bbbbbb")
    ax.bar([i + 0.2 for i in x], after, width=0.4, label="after", color="#4477aa")
    ax.set_xticks(list(x), names, rotation=90, fontsize=6)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _errors_figure(layers: list[dict[str, Any]]) -> str | None:
    rows = [layer for layer in layers if layer.get("calibration_error") is not None]
    if not rows:
        return None
    names = [layer["name"] for layer in rows]
    fig, ax = _subplots(figsize=(max(6, 0.28 * len(names)), 3.0))
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [layer["calibration_error"] for layer in rows], width=0.4, label="calibration")
    held = [layer.get("heldout_error") for layer in rows]
    if any(h is not None for h in held):
        ax.bar([i + 0.2 for i in x], [h or 0.0 for h in held], width=0.4, label="held-out")
    ax.set_xticks(list(x), names, rotation=90, fontsize=6)
    ax.set_title("per-layer output error ‖XWᵀ − XŴᵀ‖/‖XWᵀ‖ of the chosen format", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def _endtoend_figure(verification: dict[str, Any] | None) -> str | None:
    if not verification or not verification.get("outputs"):
        return None
    # an error (lower is better) and an agreement (higher is better) look different; the original's own move
    # under ±1 grey level of input noise, where measured, is the scale each bar is read on
    noise = {o["name"]: o for o in (verification.get("original_under_input_noise") or {}).get("outputs", [])}
    labels, values, colors, scale = [], [], [], []
    for out in verification["outputs"]:
        short = out["name"].rsplit("/", 1)[-1][-24:]
        kinds = [("rel_l2", "rel L2 (lower: better)", "#cc6677")]
        kinds += [("top1_agreement", "top-1 agreement", "#228833"), ("binary_iou", "IoU (higher: better)", "#228833")]
        kinds += [("match", "exact match", "#228833")]
        for key, text, color in kinds:
            if out.get(key) is not None:
                labels.append(f"{short}\n{text}")
                values.append(out[key])
                colors.append(color)
                scale.append(noise.get(out["name"], {}).get(key))
    fig, ax = _subplots(figsize=(max(4, 1.6 * len(labels)), 2.8))
    ax.bar(range(len(values)), values, color=colors)
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.4f}", ha="center", va="bottom", fontsize=7)
    marked = [(i, s) for i, s in enumerate(scale) if s is not None]
    if marked:
        ax.scatter(
            [i for i, _ in marked], [s for _, s in marked], marker="_", s=600, color="black",
            label="the original under ±1 grey level",
        )  # fmt: skip
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.35))
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_title(f"end to end on {verification.get('inputs', 'the verification inputs')}", fontsize=9)
    ax.set_ylim(0, bar_top(values, [s for _, s in marked]))
    return _png(fig)


def bar_top(values: list[float], marks: list[float]) -> float:
    """The top of the end-to-end figure's axis: above every bar and every reference mark (an agreement of 1.0 for
    the original, on the frame line at a top of exactly 1, was clipped out of sight)."""
    return max(1.0, *values, *marks) * 1.15


def _loss_figure(curve: list[float], heldout: list[float], start: float | None = None) -> str | None:
    """The training loss along the steps, and the held-out loss before training (``start``, at step 0) and after
    each epoch (what picks the epoch kept): without the start, epochs all worse than it read as a fall."""
    if not curve or len(curve) + len(heldout) < 2:
        return None
    fig, ax = _subplots(figsize=(5, 2.4))
    ax.plot(range(1, len(curve) + 1), curve, color="#4477aa", label="calibration (per step)")
    if heldout:
        ends = [len(curve) * (e + 1) / len(heldout) for e in range(len(heldout))]
        if start is not None:
            ends, heldout = [0.0, *ends], [start, *heldout]
        ax.plot(ends, heldout, "o--", color="#cc6677", label="held out (before, then per epoch)")
        ax.legend(fontsize=7)
    ax.set_yscale("log")
    ax.set_xlabel("step (averaged)", fontsize=8)
    ax.set_ylabel("loss", fontsize=8)
    ax.set_title("distillation loss", fontsize=9)
    return _png(fig)


def _before_after(ends: dict[str, Any] | None) -> list[str]:
    """A table of each output's held-out fidelity before and after a step (compensation, distillation)."""
    ends = ends or {}
    if not ends.get("before") or not ends.get("after"):
        return []
    e = html.escape
    rows = [
        "<table><tr><th class='l'>output (held out)</th><th>rel L2 before</th><th>rel L2 after</th>"
        "<th>top-1 / match before</th><th>top-1 / match after</th><th>IoU before</th><th>IoU after</th></tr>"
    ]
    for b, a in zip(ends["before"], ends["after"], strict=False):
        rows.append(
            f"<tr><td class='l'>{e(b['name'])}</td><td>{b['rel_l2']:.4g}</td><td>{a['rel_l2']:.4g}</td>"
            f"<td>{_err(_agreement(b))}</td><td>{_err(_agreement(a))}</td>"
            f"<td>{_err(b.get('binary_iou'))}</td><td>{_err(a.get('binary_iou'))}</td></tr>"
        )
    return [*rows, "</table>"]


STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;font-size:12px}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
td.l,th.l{text-align:left}
tr.dense td{color:#777}
h1{font-size:20px} h2{font-size:16px;margin-top:1.5em}
.kv td{text-align:left}
img{max-width:100%}
p.warn{color:#a00;font-weight:bold}
"""


def render_html(report: Any) -> str:
    """The HTML text of a report (a CompressionReport or its dict)."""
    r = _as_dict(report)
    layers = r.get("layers", [])
    alloc = r.get("allocation") or {}
    metric = alloc.get("metric", "macs")
    e = html.escape
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>ttgraph: {e(str(r.get('model')))}</title>"]
    parts.append(f"<style>{STYLE}</style></head><body><h1>ttgraph compression report: {e(str(r.get('model')))}</h1>")
    totals = r.get("totals", {})
    written = as_written_text(totals, (r.get("lowering") or {}).get("params_folded_in"))
    summary = [
        ("layers rewritten", f"{totals.get('layers_rewritten')} of {len(layers)}"),
        (
            "1×1 params",
            f"{human(totals.get('params_before'))} → {human(totals.get('params_after'))}"
            + (f" ({totals['params_ratio']:.3f}×)" if totals.get("params_ratio") is not None else "")
            + (f"; {written}" if written else ""),
        ),
        (
            "1×1 MACs",
            f"{human(totals.get('macs_before'))} → {human(totals.get('macs_after'))}"
            + (f" ({totals['macs_ratio']:.3f}×)" if totals.get("macs_ratio") is not None else ""),
        ),
    ]
    if whole_model_text(totals):
        summary.append(("whole model", whole_model_text(totals)))
    if alloc:
        budget = alloc.get("budget", {})
        wanted = ", ".join(f"{k} {v}" for k, v in budget.items() if v is not None and k != "metric")
        summary.append(("budget", f"{wanted} (allocated in {metric})"))
        summary.append(("objective", f"{alloc.get('objective')}: {alloc.get('objective_value', 0):.4g}"))
    cal = r.get("calibration")
    if cal:
        summary.append(
            (
                "calibration",
                f"{cal.get('samples')} samples to calibrate, {cal.get('heldout_samples')} held out (of "
                f"{cal.get('source')}), {cal.get('seconds')} s, method {cal.get('method')}",
            )
        )
        if cal.get("heldout_names"):
            summary.append(("held out", ", ".join(cal["heldout_names"])))
    rows = "".join(f"<tr><th class='l'>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in summary)
    parts.append(f"<table class='kv'>{rows}</table>")
    if cal and cal.get("blank_inputs"):
        parts.append(f"<p class='warn'>Warning: {e(blank_text(cal['blank_inputs']))}.</p>")
    ver = r.get("verification")
    if ver:
        parts.append(
            f"<h2>End-to-end fidelity</h2><p>on {e(ver.get('inputs', 'the verification inputs'))}</p>"
            "<table><tr><th class='l'>output</th>"
            "<th>rel L2</th><th>max |Δ|</th><th>top-1 agreement / exact match</th><th>binary IoU</th></tr>"
        )
        noisy = ver.get("original_under_input_noise")
        fidelity = [(out["name"], out) for out in ver.get("outputs", [])]
        fidelity += [
            (f"for scale: the original under ±1 grey level, {out['name']}", out)
            for out in (noisy or {}).get("outputs", [])
        ]
        for label, out in fidelity:
            parts.append(
                f"<tr><td class='l'>{e(label)}</td><td>{out['rel_l2']:.4g}</td><td>{out['max_abs']:.4g}</td>"
                f"<td>{_err(_agreement(out))}</td><td>{_err(out.get('binary_iou'))}</td></tr>"
            )
        note = f" The last rows: the original against itself, {noisy['noise']}." if noisy else ""
        chosen = [f"{out['name']} by {out['judged_by']}" for out in ver.get("outputs", []) if "judged_by" in out]
        if chosen:
            note += f" Judged as the options say (judge), not by shape: {', '.join(chosen)}."
        parts.append(f"</table><p>{e(str(ver.get('inputs', '')) + note)}</p>")
        moved = {out["name"]: out for out in (noisy or {}).get("outputs", [])}
        for out in ver.get("outputs", []):
            far = far_off(out, moved.get(out["name"])) if held_out(r) else None
            if far:
                parts.append(
                    f"<p class='warn'>Warning, output {e(out['name'])}: {e(far)}; the model may be broken for its "
                    "task: check it there before deploying.</p>"
                )
        img = _endtoend_figure(ver)
        if img:
            parts.append(f"<img src='{img}' alt='end-to-end error'>")
    comp = r.get("compensation")
    if comp and not comp.get("applied"):
        parts.append(f"<h2>Error compensation</h2><p>not applied: {e(str(comp.get('reason')))}</p>")
    elif comp:
        parts.append(
            f"<h2>Error compensation</h2><p>{e(str(comp.get('method')))}; {comp.get('samples')} calibration samples, "
            f"{comp.get('passes')} passes ({comp.get('passes_from_cut', 0)} from the values kept at the level before), "
            f"{comp.get('seconds')} s. Error: {e(str(comp.get('error')))}.</p>"
        )
        if comp.get("kept") is False:
            parts.append(f"<p><b>Not kept</b>: {e(str(comp.get('reason')))}.</p>")
        if comp.get("checked") is False:  # the summary said so; the page must too
            parts.append("<p class='warn'>Not checked: no samples were held out to judge it on.</p>")
        parts += _before_after(comp.get("end_to_end"))
        parts.append(
            "<table><tr><th class='l'>layer</th><th>calib err before its refit</th><th>calib err after it</th>"
            "<th>held-out err without compensation</th><th>held-out err with it</th></tr>"
        )
        for row in comp.get("layers", []):
            parts.append(
                f"<tr><td class='l'>{e(row['name'])}</td><td>{_err(row.get('calibration_error_before'))}</td>"
                f"<td>{_err(row.get('calibration_error_after'))}</td><td>{_err(row.get('heldout_error_before'))}</td>"
                f"<td>{_err(row.get('heldout_error_after'))}</td></tr>"
            )
        parts.append("</table>")
    dist = r.get("distillation")
    if dist and not dist.get("applied"):
        parts.append(f"<h2>Distillation</h2><p>not applied: {e(str(dist.get('reason')))}</p>")
    elif dist:
        per_epoch = ", ".join(_sig(v) for v in dist.get("heldout_loss_per_epoch") or [])
        kept = "not kept: no epoch lowered the held-out loss" + (f" (after each: {per_epoch})" if per_epoch else "")
        if dist.get("kept"):
            kept = f"kept the factors of epoch {dist.get('best_epoch')} (lowest held-out loss)"
        if dist.get("step_size_reductions"):
            kept += f"; step size divided by ten {dist['step_size_reductions']} time(s) after a worse epoch"
        parts.append(
            f"<h2>Distillation</h2><p>{dist.get('parameters')} parameters ({e(str(dist.get('train')))}), "
            f"{_count(dist.get('epochs'), 'epoch')}, {_count(dist.get('steps'), 'step')} of {dist.get('batch')} "
            "samples over "
            f"{dist.get('samples')} calibration samples, {dist.get('seconds')} s; {kept}. Loss: "
            f"{e(str(dist.get('loss')))}: calibration {_sig(dist.get('calibration_loss_before'))} → "
            f"{_sig(dist.get('calibration_loss_after'))}, held out ({dist.get('heldout_samples')} samples) "
            f"{_sig(dist.get('heldout_loss_before'))} → {_sig(dist.get('heldout_loss_after'))}.</p>"
        )
        parts += _before_after(dist.get("end_to_end"))
        img = _loss_figure(
            dist.get("loss_curve") or [], dist.get("heldout_loss_per_epoch") or [], dist.get("heldout_loss_before")
        )
        if img:
            parts.append(f"<img src='{img}' alt='distillation loss'>")
    weighted = any(layer.get("sensitivity") is not None for layer in layers)
    compensated = (r.get("compensation") or {}).get("kept")
    parts.append(
        "<h2>Layers</h2>"
        + (f"<p>{e(LAYER_ERRORS_BEFORE_COMPENSATION)}.</p>" if compensated else "")
        + "<table><tr><th class='l'>layer</th><th>Cout×Cin</th><th>stride</th>"
        "<th class='l'>format</th><th>ranks</th><th>params</th><th>MACs</th><th>calib err</th>"
        "<th>held-out err</th><th>weight err</th>"
        + (f"<th title='{SENSITIVITY_TIP}'>sensitivity</th>" if weighted else "")
        + "<th class='l'>note</th></tr>"
    )
    for layer in layers:
        cls = " class='dense'" if layer.get("format") == "dense" else ""
        ranks = ",".join(map(str, (layer.get("ranks") or [])[1:-1])) or "–"
        fmt = layer.get("format", "")
        if fmt == "tt":
            fmt += (
                f" d={layer.get('cores')} {'×'.join(map(str, layer.get('modes_out', [])))}|"
                f"{'×'.join(map(str, layer.get('modes_in', [])))}"
            )
        note = layer.get("kept_dense_reason") or layer.get("note") or ""
        parts.append(
            f"<tr{cls}><td class='l'>{e(layer['name'])}</td><td>{layer['cout']}×{layer['cin']}</td>"
            f"<td>{'×'.join(map(str, layer.get('stride', [])))}</td><td class='l'>{e(fmt)}</td><td>{ranks}</td>"
            f"<td>{human(layer.get('params_before'))}→{human(layer.get('params_after'))}</td>"
            f"<td>{human(layer.get('macs_before'))}→{human(layer.get('macs_after'))}</td>"
            f"<td>{_err(layer.get('calibration_error'))}</td><td>{_err(layer.get('heldout_error'))}</td>"
            f"<td>{layer.get('weight_error', 0):.3g}</td>"
            + (f"<td>{_sig(layer.get('sensitivity'))}</td>" if weighted else "")
            + f"<td class='l'>{e(note)}</td></tr>"
        )
    parts.append("</table>")
    drawn, curves = len(_curve_layers(layers, metric)), sum(1 for layer in layers if layer.get("curve"))
    some = "" if drawn == curves else f": the {drawn} costliest of {curves} layers (every curve is in the JSON report)"
    figures = [
        (f"Error vs cost per layer (red: chosen){some}", _curves_figure(layers, metric)),
        ("Output error per layer", _errors_figure(layers)),
        ("MACs per layer", _bars_figure(layers, "macs", "MACs per 1×1 layer, before and after")),
        ("Parameters per layer", _bars_figure(layers, "params", "parameters per 1×1 layer, before and after")),
    ]
    for title, img in figures:
        if img:
            parts.append(f"<h2>{e(title)}</h2><img src='{img}' alt='{e(title)}'>")
    skipped = r.get("skipped") or []
    if skipped:
        parts.append(
            "<h2>Convolutions not rewritten</h2><table><tr><th class='l'>conv</th><th class='l'>reason</th></tr>"
        )
        parts.extend(f"<tr><td class='l'>{e(s['label'])}</td><td class='l'>{e(s['reason'])}</td></tr>" for s in skipped)
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "".join(parts)


def write_html(report: Any, path: str | os.PathLike[str]) -> None:
    """Write :func:`render_html` of ``report`` to ``path`` atomically."""
    write_atomic(path, render_html(report).encode())


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ttgraph.report_html", description="JSON report → HTML")
    parser.add_argument("report", help="a JSON report written by ttgraph compress --report")
    parser.add_argument("-o", "--output", required=True, help="the HTML file to write")
    args = parser.parse_args(argv)
    try:
        with open(args.report, encoding="utf-8") as handle:
            data = json.load(handle)
        write_html(data, args.output)
    except (OSError, ValueError, TTGraphError) as err:
        print(f"ttgraph: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
