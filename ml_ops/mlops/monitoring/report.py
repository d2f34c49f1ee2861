"""The monitoring report: four figures and one self-contained HTML page.

* ``status.png``: a heat map of every window (across) by column (down), coloured by status,
  with the model quality row at the top;
* ``distributions.png``: per column, the reference's quantile curve against the latest
  window's, with that window's PSI and status;
* ``psi.png``: per column, the largest PSI over the windows, the threshold, and the level
  chance reaches at that window's size;
* ``rmse.png``: rmse per window and model version, the limit (reference rmse x
  ``rmse_ratio_threshold``), and the retraining decision.

The HTML leads with the decision, then the heat map and the figures (embedded as base64 PNG, so
it opens anywhere without the MLflow server); the window table and the violations come last.
"""
import base64
import html
import io
import math

from mlops.observability import plots
from mlops.monitoring.rows import Status

plt = plots.plt
FIGURE_NAMES = ("status", "distributions", "psi", "rmse")
ONLINE_FIGURE = "online_comparison"
ARTIFACT_FOLDER = "monitoring"
REPORT_NAME = "report.html"
COLORS = {"reference": "#718096", "current": "#2b6cb0", Status.VIOLATION: "#c53030", Status.OK: "#2f855a",
          Status.EXEMPT: "#cbd5e0"}
# Heat map cells: status -> (colour, position in the colour scale)
STATUS_CELLS = {Status.INSUFFICIENT: ("#f7fafc", 0), Status.EXEMPT: ("#cbd5e0", 1), Status.OK: ("#9ae6b4", 2),
                Status.VIOLATION: ("#c53030", 3)}
QUALITY_ROW = "model quality (rmse)"


def status_figure(profile_rows: list, drift_rows: list):
    """Windows across, columns down, each cell coloured by its worst status over the versions."""
    from matplotlib.colors import ListedColormap

    cells = {}
    rows = [(row.column_name, row.window.start, row.status) for row in drift_rows]
    rows += [(QUALITY_ROW, row.window.start, row.quality_status)
             for row in profile_rows if row.is_table]
    for name, start, status in rows:
        rank = STATUS_CELLS.get(status, STATUS_CELLS[Status.INSUFFICIENT])[1]
        cells[(name, start)] = max(cells.get((name, start), 0), rank)
    starts = sorted({start for _, start in cells})
    names = [QUALITY_ROW, *sorted({name for name, _ in cells} - {QUALITY_ROW})]
    grid = [[cells.get((name, start), 0) for start in starts] for name in names]
    width = min(14, 3 + 0.12 * max(len(starts), 20))
    figure, axes = plt.subplots(figsize=(width, 0.32 * len(names) + 1.8))
    ordered = sorted(STATUS_CELLS.values(), key=lambda cell: cell[1])
    colours = ListedColormap([colour for colour, _ in ordered])
    axes.imshow(grid, aspect="auto", cmap=colours, vmin=0, vmax=len(STATUS_CELLS) - 1,
                interpolation="nearest")
    axes.set_yticks(range(len(names)), names, fontsize=7)
    step = max(1, len(starts) // 12)
    axes.set_xticks(range(0, len(starts), step),
                    [str(start)[:16] for start in starts[::step]], fontsize=7, rotation=30, ha="right")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colour) for colour, _ in STATUS_CELLS.values()]
    axes.legend(handles, list(STATUS_CELLS), fontsize=7, ncol=4, loc="upper center",
                bbox_to_anchor=(0.5, -0.35 if len(names) < 8 else -0.12))
    axes.set_title("Status of every window (across) and column (down)", fontsize=9)
    figure.tight_layout()
    return figure


def _judged(rows: list) -> list:
    return [row for row in rows if row.verdict not in (None, Status.INSUFFICIENT)]


def distributions_figure(profile_rows: list, drift_rows: list, profiles: dict):
    """Reference against the latest judged window, one panel per column."""
    latest = {}
    for row in sorted(_judged(drift_rows), key=lambda row: row.window.start):
        latest[row.column_name] = row
    quantiles = {(row.window.start, row.model_version, row.arm, row.column_name): row.quantiles
                 for row in profile_rows if not row.is_table}
    names = sorted(latest)
    columns = 4
    rows = max(1, math.ceil(len(names) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(4 * columns, 3 * rows), squeeze=False)
    for panel, name in zip(axes.flat, names):
        drift = latest[name]
        reference = profiles[drift.model_version].column(name)
        current = quantiles.get((drift.window.start, drift.model_version, drift.arm, name)) or []
        shown = reference.binned_quantiles()
        levels = [(index + 0.5) / len(shown) for index in range(len(shown))]
        panel.plot(shown, levels, color=COLORS["reference"], label="reference")
        if current:
            panel.plot(current, [(index + 0.5) / len(current) for index in range(len(current))],
                       color=COLORS.get(drift.status, COLORS["current"]), label=drift.window_start_text)
        panel.set_title(f"{name}\nPSI {drift.population_stability_index:.3f} ({drift.status})",
                        fontsize=9)
        panel.set_ylabel("share of rows at or below", fontsize=7)
        panel.tick_params(labelsize=7)
        panel.legend(fontsize=7)
    for panel in list(axes.flat)[len(names):]:
        panel.axis("off")
    figure.suptitle("Reference (version's held-out rows) against the latest window")
    figure.tight_layout()
    return figure


def psi_figure(drift_rows: list, psi_threshold: float):
    """The largest PSI of each judged column over the windows, with the threshold and the chance level.

    Exempt columns are left out: a calendar column's PSI in a short window is large by design and
    would set the scale.
    """
    worst = {}
    for row in _judged(drift_rows):
        if row.status == Status.EXEMPT:
            continue
        if row.column_name not in worst or \
                row.population_stability_index >= worst[row.column_name].population_stability_index:
            worst[row.column_name] = row
    exempt = sorted({row.column_name for row in drift_rows if row.status == Status.EXEMPT})
    names = sorted(worst, key=lambda name: worst[name].population_stability_index)
    figure, axes = plt.subplots(figsize=(8, 0.45 * len(names) + 2.2))
    values = [worst[name].population_stability_index for name in names]
    axes.barh(names, values, color=[COLORS.get(worst[name].status, COLORS["current"]) for name in names])
    axes.scatter([worst[name].psi_by_chance for name in names], names, marker="|", s=200, color="black",
                 label="chance level at the window's size", zorder=3)
    axes.axvline(psi_threshold, color=COLORS[Status.VIOLATION], linestyle="--",
                 label=f"psi_threshold {psi_threshold}")
    axes.set_xlabel("largest PSI over the windows (red: violation, green: ok)", fontsize=8)
    axes.set_title("Not judged (exempt): " + (", ".join(exempt) or "none"), fontsize=8, wrap=True)
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    return figure


def rmse_figure(profile_rows: list, profiles: dict, rmse_ratio_threshold: float, decision):
    """rmse per window, version and arm, with each version's limit and the retraining decision.

    Where the version has an error model, its estimated rmse is drawn too, dashed, with its
    interval as a band: before labels it is the only line; after, it sits beside the realized one.
    """
    figure, axes = plt.subplots(figsize=(9, 4))
    quality = [row for row in profile_rows if row.is_table and (
        row.quality_status not in (None, Status.INSUFFICIENT) or row.estimated_root_mean_squared_error)]
    limits_drawn = set()
    for version, arm in sorted({(row.model_version, row.arm or "") for row in quality}):
        own = sorted((row for row in quality if (row.model_version, row.arm or "") == (version, arm)),
                     key=lambda row: row.window.start)
        name = f"version {version}{f' ({arm})' if arm else ''}"
        realized = [row for row in own if row.root_mean_squared_error is not None]
        axes.plot([row.window.start for row in realized], [row.root_mean_squared_error for row in realized],
                  marker="o", label=f"{name} rmse")
        estimated = [row for row in own if row.estimated_root_mean_squared_error is not None]
        if estimated:
            starts = [row.window.start for row in estimated]
            line, = axes.plot(starts, [row.estimated_root_mean_squared_error for row in estimated],
                              marker="s", linestyle="--", label=f"{name} estimated rmse (no labels needed)")
            axes.fill_between(starts, [row.estimated_rmse_low for row in estimated],
                              [row.estimated_rmse_high for row in estimated], color=line.get_color(),
                              alpha=0.15)
        if version not in limits_drawn:
            limits_drawn.add(version)
            limit = profiles[version].error.get("rmse", math.nan) * rmse_ratio_threshold
            axes.axhline(limit, color=COLORS[Status.VIOLATION], linestyle="--",
                         label=f"version {version} limit {limit:.2f} (reference x {rmse_ratio_threshold})")
        axes.scatter([row.window.start for row in own if row.quality_status == Status.VIOLATION],
                     [row.root_mean_squared_error for row in own if row.quality_status == Status.VIOLATION],
                     color=COLORS[Status.VIOLATION], zorder=3, s=60)
    if not quality:
        axes.text(0.5, 0.5, "no window with enough labelled rows or an estimate", ha="center",
                  transform=axes.transAxes)
    axes.set_ylabel("rmse")
    axes.set_ylim(bottom=0)
    axes.set_title(("RETRAIN: " if decision.retrain_required else "no retraining: ") + decision.reason,
                   fontsize=8, wrap=True)
    axes.legend(fontsize=8)
    figure.autofmt_xdate()
    figure.tight_layout()
    return figure


def build_figures(result, settings, decision) -> dict:
    profiles = result.profiles
    return {"status": status_figure(result.profile_rows, result.drift_rows),
            "distributions": distributions_figure(result.profile_rows, result.drift_rows, profiles),
            "psi": psi_figure(result.drift_rows, settings.psi_threshold),
            "rmse": rmse_figure(result.profile_rows, profiles, settings.rmse_ratio_threshold, decision)}


def png_bytes(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()


def render_html(title: str, images: dict, decision, profile_rows: list, comparison_line: str = "") -> str:
    """One page: the decision, the heat map and figures, then the window table and the violations."""
    escape = html.escape
    online = f"<p><strong>Online comparison</strong>: {escape(comparison_line)}</p>" \
        if comparison_line else ""
    figures = "".join(f'<h2>{escape(name)}</h2><img alt="{escape(name)}" '
                      f'src="data:image/png;base64,{base64.b64encode(data).decode()}">'
                      for name, data in images.items())
    violations = "".join(
        f"<tr><td>{escape(violation.window_start)}</td><td>{escape(violation.model_version)}</td>"
        f"<td>{escape(violation.column_name)}</td><td>{escape(violation.metric)}</td>"
        f"<td>{violation.value:.4g}</td><td>{violation.limit:.4g}</td></tr>"
        for violation in decision.violations)
    table_rows = sorted((row for row in profile_rows if row.is_table),
                        key=lambda row: (row.window.start, row.model_version, row.arm or ""))
    windows = "".join(
        f"<tr><td>{escape(row.window_start_text)}</td><td>{escape(row.model_version)}</td>"
        f"<td>{escape(row.arm or '')}</td>"
        f"<td>{row.count}</td>"
        f"<td>{row.labelled_count or 0}</td><td>{_number(row.root_mean_squared_error)}</td>"
        f"<td>{_number(row.rmse_ratio)}</td>"
        f"<td>{escape(str(row.quality_status or ''))}</td></tr>"
        for row in table_rows)
    over = sum(state == Status.VIOLATION for _, state in decision.windows)
    verdict = "retraining required" if decision.retrain_required else "no retraining"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto}}img{{max-width:100%}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}</style>
</head><body><h1>{escape(title)}</h1>
<p><strong>{verdict}</strong>: {escape(decision.reason)}</p>
<p>{len(decision.windows)} windows, {over} over threshold, {len(decision.violations)} violations.</p>
{online}{figures}
<h2>Model quality per window</h2><table><tr><th>window</th><th>version</th><th>arm</th><th>rows</th>
<th>labelled</th><th>rmse</th><th>rmse ratio</th><th>status</th></tr>{windows}</table>
<h2>Violations</h2><table><tr><th>window</th><th>version</th><th>column</th><th>metric</th><th>value</th>
<th>limit</th></tr>{violations or '<tr><td colspan="6">none</td></tr>'}</table>
</body></html>
"""


def log_report(mlflow_module, result, settings, decision, title: str, comparison=None) -> str:
    """Log the PNGs and the HTML page to the active MLflow run; returns the page's artifact URI.

    ``comparison`` (its ``line`` and ``figure()``), when the Challenger is judged online, adds
    the verdict and the arms' figure.
    """
    figures = build_figures(result, settings, decision)
    if comparison is not None:
        figures[ONLINE_FIGURE] = comparison.figure()
    try:
        images = {name: png_bytes(figure) for name, figure in figures.items()}
        for name, figure in figures.items():
            mlflow_module.log_figure(figure, f"{ARTIFACT_FOLDER}/{name}.png")
    finally:
        for figure in figures.values():
            plots.close(figure)
    mlflow_module.log_text(render_html(title, images, decision, result.profile_rows,
                                       comparison.line if comparison is not None else ""),
                           f"{ARTIFACT_FOLDER}/{REPORT_NAME}")
    return f"{mlflow_module.get_artifact_uri(ARTIFACT_FOLDER)}/{REPORT_NAME}"


def _number(value) -> str:
    return "" if value is None else f"{value:.3f}"
