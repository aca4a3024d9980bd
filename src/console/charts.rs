//! Chart geometry for the console's SVG charts: the templates draw the shapes (so every label
//! is escaped like any other text); this only computes where they go.

use serde::Serialize;

/// Drawing area (SVG user units); the SVG scales to its container.
pub const WIDTH: f64 = 720.0;
pub const HEIGHT: f64 = 220.0;
const LEFT: f64 = 76.0;
const BOTTOM: f64 = 24.0;
const TOP: f64 = 8.0;

#[derive(Serialize)]
pub struct Bar {
    pub x: f64,
    pub y: f64,
    pub w: f64,
    pub h: f64,
    /// The bucket's label (a date), shown under some bars and in the tooltip.
    pub label: String,
    pub value: String,
    /// Whether the label is drawn under the bar (not every one fits).
    pub show_label: bool,
}

#[derive(Serialize)]
pub struct Tick {
    pub y: f64,
    pub label: String,
}

#[derive(Serialize)]
pub struct BarChart {
    pub width: f64,
    pub height: f64,
    pub left: f64,
    pub base: f64,
    pub bars: Vec<Bar>,
    pub ticks: Vec<Tick>,
    pub empty: bool,
}

/// A bar chart of `(label, value)` points, in order.
pub fn bars(points: &[(String, f64)], fmt: impl Fn(f64) -> String) -> BarChart {
    let max = points.iter().map(|p| p.1).fold(0.0, f64::max);
    let top = nice_ceiling(max);
    let plot_h = HEIGHT - BOTTOM - TOP;
    let plot_w = WIDTH - LEFT - 8.0;
    let n = points.len().max(1) as f64;
    let slot = plot_w / n;
    let every = ((n / 8.0).ceil() as usize).max(1);
    let bars = points
        .iter()
        .enumerate()
        .map(|(i, (label, v))| {
            let h = if top > 0.0 { v / top * plot_h } else { 0.0 };
            Bar {
                x: round(LEFT + i as f64 * slot + slot * 0.12),
                y: round(TOP + plot_h - h),
                w: round((slot * 0.76).max(1.0)),
                h: round(h),
                label: label.clone(),
                value: fmt(*v),
                show_label: i % every == 0,
            }
        })
        .collect();
    let ticks = (0..=4)
        .map(|i| {
            let v = top * i as f64 / 4.0;
            Tick {
                y: round(TOP + plot_h - plot_h * i as f64 / 4.0),
                label: fmt(v),
            }
        })
        .collect();
    BarChart {
        width: WIDTH,
        height: HEIGHT,
        left: LEFT,
        base: TOP + plot_h,
        bars,
        ticks,
        empty: max <= 0.0,
    }
}

fn round(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// The smallest 1, 2 or 5 times a power of ten at or above `v` (the axis' top).
fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if m * p >= v {
            return m * p;
        }
    }
    10.0 * p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_fit_the_plot_and_scale_to_a_round_top() {
        let pts: Vec<(String, f64)> = (0..30).map(|i| (format!("d{i}"), i as f64 * 3.3)).collect();
        let c = bars(&pts, |v| format!("{v:.0}"));
        assert_eq!(c.bars.len(), 30);
        assert_eq!(c.ticks.last().map(|t| t.label.as_str()), Some("100"));
        for b in &c.bars {
            assert!(
                b.y >= TOP - 0.1 && b.y + b.h <= c.base + 0.1,
                "{} {}",
                b.y,
                b.h
            );
            assert!(b.x >= LEFT && b.x + b.w <= WIDTH);
        }
        assert!(c.bars.iter().filter(|b| b.show_label).count() <= 8);
        assert!(bars(&[], |v| v.to_string()).empty);
        assert_eq!(nice_ceiling(0.03), 0.05);
        assert_eq!(nice_ceiling(7.0), 10.0);
    }
}
