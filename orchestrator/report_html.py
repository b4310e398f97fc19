"""The loop report as one page: charts and tables that open in any browser, offline.

`page(report)` returns the whole HTML document. Plotly draws the charts; its
JavaScript is written into the page itself, so the file needs no network to be
read, can be attached to an email or a ticket, and shows the same thing in a year.
The charts:

- the funnel of each playbook, from eligible users to rewarded ones;
- the K-factor and its parts by cohort week, for the nudged arm and the holdout;
- the loop-time distribution, from activation to the first accepted invite;
- each playbook's lift over its holdout, with its 95% interval.

Every name shown (playbooks, channels, guardrail reasons) is escaped: they come
from playbook files and exports, not from us.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from orchestrator import report as words
from orchestrator.metrics import Arm, Lift, Report, Segment

CHART_IDS = ("funnel", "k-by-week", "loop-time", "lift")
VERDICT_COLOURS = {
    "lift": "#1b7f3b",
    "harm": "#b3261e",
    "not distinguishable yet": "#6b6b6b",
    "too few users yet": "#b58900",
    "no data": "#b0b0b0",
}
ARM_DASH = {"nudged": "solid", "holdout": "dot"}
TEXT_CELL = ' class="text"'
ARM_OPACITY = {"nudged": 1.0, "holdout": 0.45}
SMALL = ' <span class="small">(small sample)</span>'
PARTS = (
    ("k_factor", "K-factor", ".3f"),
    ("invite_rate", "Invite rate", ".1%"),
    ("invites_per_inviter", "Invites per inviter", ".2f"),
    ("acceptance", "Acceptance", ".1%"),
    ("activation", "Activation", ".1%"),
)
FONT = "system-ui, -apple-system, Segoe UI, Roboto, sans-serif"
PLOT_CONFIG = {"displaylogo": False, "responsive": True}

STYLE = """
body { font-family: FONT; margin: 2rem auto; max-width: 1180px; color: #1f1f1f;
       padding: 0 1rem; line-height: 1.45; }
h1 { font-size: 1.6rem; margin-bottom: .2rem; }
h2 { font-size: 1.15rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd; }
p.lead { color: #555; margin-top: 0; }
p.how { color: #555; font-size: .92rem; max-width: 60rem; }
table { border-collapse: collapse; font-size: .9rem; margin: .5rem 0 1rem; }
th, td { padding: .25rem .7rem; border-bottom: 1px solid #eee; text-align: right; }
th:first-child, td:first-child, td.text, th.text {
  text-align: left; white-space: nowrap; }
td.verdict { text-align: left; font-weight: 600; }
.small { color: #b58900; }
.chart { width: 100%; }
footer { color: #777; font-size: .85rem; margin-top: 3rem; }
""".replace("FONT", FONT)


def page(report: Report, title: str = "referloop loop report") -> str:
    """The report as one self-contained HTML document."""
    made = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    span = _span(report)
    sections = [
        _section(
            "Lift over the holdout",
            "Each bar is nudged minus holdout, with its 95% interval. An interval "
            "that does not cross zero is a real lift (green) or harm (red); one that "
            "does is not distinguishable from noise yet (grey); amber means too few "
            "users for the interval to say much.",
            _lift_table(report.playbooks) + _chart("lift", _lift_figure(report)),
        ),
        _section(
            "The funnel",
            "Users at each stage, per playbook: every user a playbook decided "
            "about (eligible), those a guardrail held back, those sent a nudge, "
            "and, within the window, those who invited, whose invite was accepted, "
            "whose invitee activated, and who were rewarded.",
            _chart("funnel", _funnel_figure(report)) + _held_table(report),
        ),
        _section(
            "K-factor and its parts by cohort week",
            "Users are grouped by the week a playbook first decided about them. "
            "K-factor = invite rate x invites per inviter x acceptance x "
            "activation. Solid lines are the nudged arm, dotted the holdout.",
            _chart("k-by-week", _weekly_figure(report)),
        ),
        _section(
            "Loop time",
            "From a user's own activation to the first invite of theirs that was "
            "accepted, over the referrers who got there.",
            _loop_table(report) + _chart("loop-time", _loop_figure(report)),
        ),
        _section(
            "Trigger to send",
            "From the moment a trigger fired (the product event's time, or when "
            "referloop saw the user in the cohort) to the vendor taking the nudge. "
            "Waits a playbook asks for, a delay or quiet hours, are included.",
            _trigger_table(report),
        ),
        _section(
            "The loop, per playbook",
            "Both arms of each playbook, every user followed for the window.",
            _arms_table(report.playbooks),
        ),
    ]
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
<style>{STYLE}</style>
<script>{get_plotlyjs()}</script>
</head>
<body>
<h1>{html.escape(title)}</h1>
<p class="lead">{report.events:,} events{span}; each exposed user followed for
{report.window_days} days. Definitions: docs/metrics.md.</p>
{"".join(sections)}
<footer>Made by referloop report on {made}.</footer>
</body>
</html>
"""


# --- the charts -------------------------------------------------------------------


def _funnel_figure(report: Report) -> go.Figure:
    figure = go.Figure()
    stages = (
        ("eligible", "eligible"),
        ("held back", "held"),
        ("sent", "nudge_sent"),
        ("invited", "invited"),
        ("accepted", "accepted"),
        ("activated", "activated"),
        ("rewarded", "rewarded"),
    )
    for playbook, counts in sorted(report.funnel.items()):
        held = sum(n for stage, n in counts.items() if stage.startswith("held:"))
        values = [held if key == "held" else counts.get(key, 0) for _, key in stages]
        figure.add_trace(
            go.Bar(
                name=playbook,
                x=[label for label, _ in stages],
                y=values,
                text=[f"{v:,}" for v in values],
                textposition="outside",
                hovertemplate="%{x}: %{y:,} users<extra>" + playbook + "</extra>",
            )
        )
    figure.update_layout(barmode="group", yaxis_title="users")
    return _styled(figure, height=420, empty=not report.funnel)


def _weekly_figure(report: Report) -> go.Figure:
    weeks = [s for s in report.slices if s.dimension == "cohort_week"]
    titles = [title for _, title, _ in PARTS] + ["Exposed users"]
    figure = make_subplots(rows=2, cols=3, subplot_titles=titles)
    playbooks = sorted({s.playbook for s in weeks})
    palette = _palette(len(playbooks))
    for colour, playbook in zip(palette, playbooks, strict=True):
        mine = sorted((s for s in weeks if s.playbook == playbook), key=_week)
        x = [s.value for s in mine]
        for arm_name in ("nudged", "holdout"):
            arms = [_arm(s, arm_name) for s in mine]
            for index, (metric, _, fmt) in enumerate(PARTS):
                row, col = divmod(index, 3)
                figure.add_trace(
                    go.Scatter(
                        x=x,
                        y=[_value(getattr(a, metric)) for a in arms],
                        mode="lines+markers",
                        name=f"{playbook} ({arm_name})",
                        legendgroup=f"{playbook}-{arm_name}",
                        showlegend=index == 0,
                        line={"color": colour, "dash": ARM_DASH[arm_name]},
                        hovertemplate=f"week of %{{x}}: %{{y:{fmt}}}"
                        f"<extra>{playbook} {arm_name}</extra>",
                    ),
                    row=row + 1,
                    col=col + 1,
                )
            figure.add_trace(
                go.Bar(
                    x=x,
                    y=[a.users for a in arms],
                    name=f"{playbook} ({arm_name})",
                    legendgroup=f"{playbook}-{arm_name}",
                    showlegend=False,
                    marker={
                        "color": colour,
                        "opacity": 1.0 if arm_name == "nudged" else 0.45,
                    },
                    hovertemplate=f"week of %{{x}}: %{{y:,}} users"
                    f"<extra>{playbook} {arm_name}</extra>",
                ),
                row=2,
                col=3,
            )
    for index, (_, _, fmt) in enumerate(PARTS):
        row, col = divmod(index, 3)
        axis_format = ".0%" if fmt.endswith("%") else fmt
        figure.update_yaxes(tickformat=axis_format, row=row + 1, col=col + 1)
    figure.update_layout(barmode="group")
    return _styled(figure, height=620, empty=not weeks)


def _loop_figure(report: Report) -> go.Figure:
    figure = go.Figure()
    rows = [("all referrers", report.loop_time)]
    if len(report.loop_time_by_playbook) > 1:
        rows += sorted(report.loop_time_by_playbook.items())
    for name, loop in rows:
        if not loop.histogram:
            continue
        figure.add_trace(
            go.Bar(
                name=name,
                x=[label for label, _ in loop.histogram],
                y=[count for _, count in loop.histogram],
                hovertemplate="%{x}: %{y:,} referrers<extra>" + name + "</extra>",
            )
        )
    figure.update_layout(
        barmode="group",
        xaxis_title="activation to first accepted invite",
        yaxis_title="referrers",
    )
    return _styled(figure, height=380, empty=not report.loop_time.histogram)


def _lift_figure(report: Report) -> go.Figure:
    titles = [title for metric, title, _ in PARTS if metric != "invites_per_inviter"]
    figure = make_subplots(rows=1, cols=4, subplot_titles=titles, shared_yaxes=True)
    metrics = [metric for metric, _, _ in PARTS if metric != "invites_per_inviter"]
    drawn = False
    for col, metric in enumerate(metrics, start=1):
        scale = 1.0 if metric == "k_factor" else 100.0
        for segment in report.playbooks:
            lift = _lift(segment, metric)
            if lift is None or math.isnan(lift.difference.estimate):
                continue
            drawn = True
            estimate = lift.difference.estimate * scale
            low, high = lift.difference.low * scale, lift.difference.high * scale
            unit = "" if metric == "k_factor" else " pts"
            figure.add_trace(
                go.Scatter(
                    x=[estimate],
                    y=[segment.playbook],
                    mode="markers",
                    marker={"size": 11, "color": VERDICT_COLOURS[lift.verdict]},
                    error_x={
                        "type": "data",
                        "symmetric": False,
                        "array": [_finite(high - estimate)],
                        "arrayminus": [_finite(estimate - low)],
                        "thickness": 2.5,
                        "width": 6,
                    },
                    showlegend=False,
                    hovertemplate=(
                        f"{html.escape(segment.playbook)}: {estimate:+.3g}{unit} "
                        f"({low:+.3g} to {high:+.3g}); "
                        f"{words.VERDICT_WORDS[lift.verdict]}<extra></extra>"
                    ),
                ),
                row=1,
                col=col,
            )
        figure.add_vline(x=0, line={"color": "#888", "width": 1}, row=1, col=col)
        figure.update_xaxes(
            title_text="difference" if metric == "k_factor" else "points",
            row=1,
            col=col,
        )
    height = 160 + 60 * max(1, len(report.playbooks))
    return _styled(figure, height=height, empty=not drawn)


def _styled(figure: go.Figure, *, height: int, empty: bool) -> go.Figure:
    figure.update_layout(
        height=height,
        template="plotly_white",
        font={"family": FONT, "size": 13},
        margin={"l": 60, "r": 20, "t": 50, "b": 50},
        legend={"orientation": "h", "y": -0.15},
    )
    if empty:
        figure.add_annotation(
            text="nothing to show yet",
            showarrow=False,
            xref="paper",
            yref="paper",
            x=0.5,
            y=0.5,
            font={"size": 16, "color": "#888"},
        )
    return figure


# --- the tables -------------------------------------------------------------------


def _lift_table(segments: Sequence[Segment]) -> str:
    rows = []
    for segment in segments:
        for lift in segment.lifts:
            flag = (
                ' <span class="small">(small sample)</span>'
                if lift.small_sample
                else ""
            )
            colour = VERDICT_COLOURS[lift.verdict]
            rows.append(
                _row(
                    [
                        segment.playbook,
                        words.metric_name(lift.metric),
                        words.signed(lift),
                        words.interval(lift),
                    ],
                    verdict=(words.verdict(lift), colour, flag),
                )
            )
    head = ["playbook", "metric", "nudged - holdout", "95% interval", "verdict"]
    return _table(head, rows)


def _held_table(report: Report) -> str:
    rows = []
    for playbook, counts in sorted(report.funnel.items()):
        for stage, n in sorted(counts.items()):
            if stage.startswith("held:"):
                rows.append(_row([playbook, stage.split(":", 1)[1], f"{n:,}"]))
    if not rows:
        return ""
    return _table(["playbook", "held back by", "users"], rows)


def _loop_table(report: Report) -> str:
    rows = [("all referrers", report.loop_time)]
    rows += sorted(report.loop_time_by_playbook.items())
    return _table(
        ["", "referrers", "median", "90th percentile"],
        [
            _row(
                [
                    name,
                    f"{loop.referrers:,}",
                    words.duration(loop.median_s),
                    words.duration(loop.p90_s),
                ],
                text=1,
            )
            for name, loop in rows
        ],
        text=1,
    )


def _trigger_table(report: Report) -> str:
    rows = [_row(words.trigger_path_cells(p)) for p in report.trigger_paths]
    return _table(["playbook", "trigger", "nudges", "median", "90th percentile"], rows)


def _arms_table(segments: Sequence[Segment]) -> str:
    rows = []
    for segment in segments:
        for arm_name in ("nudged", "holdout"):
            arm = _arm(segment, arm_name)
            rows.append(
                _row(
                    [
                        segment.playbook,
                        arm_name,
                        f"{arm.users:,}",
                        words.percent(arm.invite_rate),
                        words.number(arm.invites_per_inviter),
                        words.percent(arm.acceptance),
                        words.percent(arm.activation),
                        words.number(arm.k_factor, 3),
                    ]
                )
            )
    head = [
        "playbook",
        "arm",
        "users",
        "invite rate",
        "invites/inviter",
        "acceptance",
        "activation",
        "K-factor",
    ]
    return _table(head, rows)


def _table(head: Iterable[str], rows: Sequence[str], text: int = 2) -> str:
    """A table whose first `text` columns (and a verdict) read left to right."""
    if not rows:
        return '<p class="how">No rows yet.</p>'
    cells = "".join(
        f"<th{TEXT_CELL if i < text or h == 'verdict' else ''}>{html.escape(h)}</th>"
        for i, h in enumerate(head)
    )
    return (
        f"<table><thead><tr>{cells}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _row(
    cells: Sequence[str],
    verdict: tuple[str, str, str] | None = None,
    text: int = 2,
) -> str:
    out = "".join(
        f"<td{TEXT_CELL if i < text else ''}>{html.escape(c)}</td>"
        for i, c in enumerate(cells)
    )
    if verdict is not None:
        said, colour, flag = verdict
        out += (
            f'<td class="verdict" style="color:{colour}">{html.escape(said)}{flag}</td>'
        )
    return f"<tr>{out}</tr>"


def _section(title: str, how: str, body: str) -> str:
    return (
        f"<section><h2>{html.escape(title)}</h2>"
        f'<p class="how">{html.escape(how)}</p>{body}</section>'
    )


def _chart(chart_id: str, figure: go.Figure) -> str:
    div = figure.to_html(
        full_html=False,
        include_plotlyjs=False,
        div_id=f"chart-{chart_id}",
        config=PLOT_CONFIG,
    )
    return f'<div class="chart" data-chart="{chart_id}">{div}</div>'


# --- small things -----------------------------------------------------------------


def _arm(segment: Segment, name: str) -> Arm:
    return segment.nudged if name == "nudged" else segment.holdout


def _lift(segment: Segment, metric: str) -> Lift | None:
    return next((lift for lift in segment.lifts if lift.metric == metric), None)


def _week(segment: Segment) -> str:
    return segment.value


def _value(value: float) -> float | None:
    return None if math.isnan(value) else value


def _finite(value: float) -> float:
    return 0.0 if math.isnan(value) or math.isinf(value) else max(0.0, value)


def _span(report: Report) -> str:
    if report.first is None or report.last is None:
        return ""
    return f" from {report.first:%Y-%m-%d} to {report.last:%Y-%m-%d}"


def _palette(count: int) -> list[str]:
    colours = (
        "#1f77b4",
        "#ff7f0e",
        "#2ca02c",
        "#9467bd",
        "#8c564b",
        "#e377c2",
        "#17becf",
        "#bcbd22",
    )
    return [colours[i % len(colours)] for i in range(count)]
