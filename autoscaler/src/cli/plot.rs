//! `events replay --what-if --plot FILE`: the report as a picture (SVG): workers over time,
//! recorded vs what-if, with the decisions as marks, and the pods pending below.

use std::path::Path;

use chrono::{DateTime, Utc};
use handlers::replay::{Decision, Series, WhatIfReport};
use plotters::prelude::*;

/// The picture's size in pixels.
pub const WIDTH: u32 = 1200;
pub const HEIGHT: u32 = 720;

const RECORDED: RGBColor = RGBColor(70, 110, 200);
const WHAT_IF: RGBColor = RGBColor(230, 120, 30);

/// The lines and marks drawn, in minutes since the report's start (tested as values).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PlotData {
    /// Total minutes on the x axis.
    pub minutes: f64,
    pub workers_recorded: Vec<(f64, f64)>,
    pub workers_what_if: Vec<(f64, f64)>,
    pub pending_recorded: Vec<(f64, f64)>,
    pub pending_what_if: Vec<(f64, f64)>,
    /// Decisions: (minute, the workers they aim at or the run's workers then, changed).
    pub decisions_recorded: Vec<(f64, f64, bool)>,
    pub decisions_what_if: Vec<(f64, f64, bool)>,
}

fn minutes(from: DateTime<Utc>, t: DateTime<Utc>) -> f64 {
    (t - from).num_milliseconds() as f64 / 60_000.0
}

/// A step series as the corners of its line, ending at `end` minutes.
fn steps(s: &Series, from: DateTime<Utc>, end: f64) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = Vec::with_capacity(s.len() * 2 + 1);
    for (t, v) in s {
        let x = minutes(from, *t).clamp(0.0, end);
        let y = f64::from(*v);
        if let Some(&(_, prev)) = out.last() {
            out.push((x, prev));
        }
        out.push((x, y));
    }
    if let Some(&(_, last)) = out.last() {
        out.push((end, last));
    }
    out
}

/// The value of a step series at `t` (0 before its first point).
fn at(s: &Series, t: DateTime<Utc>) -> u32 {
    match s.partition_point(|(x, _)| *x <= t) {
        0 => 0,
        i => s[i - 1].1,
    }
}

impl PlotData {
    pub fn of(report: &WhatIfReport) -> Self {
        let (Some(from), Some(to)) = (report.from, report.to) else {
            return Self::default();
        };
        let end = minutes(from, to);
        let mark = |d: &Decision, s: &Series, changed: bool| {
            let y = d.target_workers.unwrap_or_else(|| at(s, d.at));
            (minutes(from, d.at), f64::from(y), changed)
        };
        let (rec, rep) = (&report.recorded_timeline, &report.replayed_timeline);
        Self {
            minutes: end,
            workers_recorded: steps(&rec.workers, from, end),
            workers_what_if: steps(&rep.workers, from, end),
            pending_recorded: steps(&rec.pending_pods, from, end),
            pending_what_if: steps(&rep.pending_pods, from, end),
            decisions_recorded: report
                .pairs
                .iter()
                .filter_map(|p| {
                    p.recorded
                        .as_ref()
                        .map(|d| mark(d, &rec.workers, p.changed))
                })
                .collect(),
            decisions_what_if: report
                .pairs
                .iter()
                .filter_map(|p| {
                    p.replayed
                        .as_ref()
                        .map(|d| mark(d, &rep.workers, p.changed))
                })
                .collect(),
        }
    }
}

/// Draws `report` as SVG.
pub fn svg(report: &WhatIfReport) -> Result<String, String> {
    let data = PlotData::of(report);
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (WIDTH, HEIGHT)).into_drawing_area();
        draw(&root, report, &data).map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Writes the SVG to `path`.
pub fn write(report: &WhatIfReport, path: &Path) -> anyhow::Result<()> {
    let text = svg(report).map_err(|e| anyhow::anyhow!("drawing the plot: {e}"))?;
    std::fs::write(path, text)
        .map_err(|e| anyhow::anyhow!("writing the plot to {}: {e}", path.display()))
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    report: &WhatIfReport,
    d: &PlotData,
) -> Result<(), DrawingAreaErrorKind<DB::ErrorType>> {
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(HEIGHT * 62 / 100);
    let x_end = d.minutes.max(1.0);
    let (x_label, x_scale) = if x_end > 48.0 * 60.0 {
        ("days since the start", 24.0 * 60.0)
    } else if x_end > 180.0 {
        ("hours since the start", 60.0)
    } else {
        ("minutes since the start", 1.0)
    };
    let scaled = |v: &[(f64, f64)]| -> Vec<(f64, f64)> {
        v.iter().map(|(x, y)| (x / x_scale, *y)).collect()
    };
    let x_max = x_end / x_scale;
    let peak = d
        .workers_recorded
        .iter()
        .chain(&d.workers_what_if)
        .map(|p| p.1)
        .chain(
            d.decisions_recorded
                .iter()
                .chain(&d.decisions_what_if)
                .map(|p| p.1),
        )
        .fold(1.0, f64::max);
    let (r, w) = (&report.recorded, &report.replayed);
    let caption = format!(
        "workers: recorded {:.0} node-min, peak {}, {} scale actions; what-if {:.0} node-min, peak {}, {} scale actions",
        r.node_minutes, r.peak_workers, r.scale_actions, w.node_minutes, w.peak_workers, w.scale_actions
    );
    let mut chart = ChartBuilder::on(&top)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..x_max, 0.0..(peak + 1.0))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("workers")
        .draw()?;
    chart
        .draw_series(LineSeries::new(
            scaled(&d.workers_recorded),
            RECORDED.stroke_width(2),
        ))?
        .label("recorded")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RECORDED.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(
            scaled(&d.workers_what_if),
            WHAT_IF.stroke_width(2),
        ))?
        .label("what-if")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], WHAT_IF.stroke_width(2)));
    // Decisions: circles recorded, triangles what-if; filled when the other run decided otherwise.
    chart
        .draw_series(d.decisions_recorded.iter().map(|(x, y, changed)| {
            let style = if *changed {
                RECORDED.filled()
            } else {
                RECORDED.stroke_width(1)
            };
            Circle::new((x / x_scale, *y), 4, style)
        }))?
        .label("recorded decision (filled: changed)")
        .legend(|(x, y)| Circle::new((x + 10, y), 4, RECORDED.filled()));
    chart
        .draw_series(d.decisions_what_if.iter().map(|(x, y, changed)| {
            let style = if *changed {
                WHAT_IF.filled()
            } else {
                WHAT_IF.stroke_width(1)
            };
            TriangleMarker::new((x / x_scale, *y), 5, style)
        }))?
        .label("what-if decision (filled: changed)")
        .legend(|(x, y)| TriangleMarker::new((x + 10, y), 5, WHAT_IF.filled()));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;

    let pending_peak = d
        .pending_recorded
        .iter()
        .chain(&d.pending_what_if)
        .map(|p| p.1)
        .fold(1.0, f64::max);
    let caption = format!(
        "pods pending: recorded {:.0} pod-s, what-if {:.0} pod-s",
        r.pod_pending_seconds, w.pod_pending_seconds
    );
    let mut chart = ChartBuilder::on(&bottom)
        .caption(caption, ("sans-serif", 16))
        .margin(10)
        .x_label_area_size(30)
        .y_label_area_size(45)
        .build_cartesian_2d(0.0..x_max, 0.0..(pending_peak + 1.0))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc("pods pending")
        .draw()?;
    chart.draw_series(LineSeries::new(
        scaled(&d.pending_recorded),
        RECORDED.stroke_width(2),
    ))?;
    chart.draw_series(LineSeries::new(
        scaled(&d.pending_what_if),
        WHAT_IF.stroke_width(2),
    ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(min: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::minutes(min)
    }

    #[test]
    fn steps_draw_each_change_as_a_corner_and_hold_the_last_value_to_the_end() {
        let s: Series = vec![(t(0), 2), (t(10), 3), (t(25), 1)];
        assert_eq!(
            steps(&s, t(0), 60.0),
            vec![
                (0.0, 2.0),
                (10.0, 2.0),
                (10.0, 3.0),
                (25.0, 3.0),
                (25.0, 1.0),
                (60.0, 1.0)
            ]
        );
        assert_eq!(at(&s, t(12)), 3);
        assert_eq!(at(&s, t(10)), 3);
        assert_eq!(at(&s, t(-1)), 0);
    }
}
