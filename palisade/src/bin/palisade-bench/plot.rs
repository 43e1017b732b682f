//! A line chart with a logarithmic x axis, written as SVG by hand: axes, grid, one polyline
//! per series with min–max bars, dashed horizontal reference lines, a legend.

use std::fmt::Write as _;

/// One point: its median, its range and an optional note written beside it.
pub struct Point {
    /// `> 0` (log axis).
    pub x: f64,
    pub y: f64,
    pub lo: f64,
    pub hi: f64,
    pub note: Option<String>,
}

/// One line of the chart.
pub struct Series {
    pub label: String,
    pub color: &'static str,
    pub points: Vec<Point>,
}

/// A horizontal line for a value that has no x (the firewall with no rules, the floor).
pub struct Reference {
    pub label: String,
    pub color: &'static str,
    pub y: f64,
}

pub struct Chart<'a> {
    pub title: &'a str,
    pub x_label: &'a str,
    pub y_label: &'a str,
    pub series: Vec<Series>,
    pub references: Vec<Reference>,
    /// A logarithmic y axis, for costs that span several decades (a linear chain against
    /// a hash lookup). Values at or below zero are drawn at the bottom edge.
    pub log_y: bool,
}

const W: f64 = 760.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 48.0;
/// Height of the plot area.
const PH: f64 = 292.0;
/// Legend labels longer than this get a row of their own.
const LEGEND_TWO_COLUMNS_MAX: usize = 50;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A tick step of 1, 2 or 5 times a power of ten giving about five ticks up to `max`.
fn nice_step(max: f64) -> f64 {
    let raw = (max / 5.0).max(1e-9);
    let mag = 10f64.powf(raw.log10().floor());
    let m = raw / mag;
    let nice = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn decade_label(e: i32) -> String {
    match e {
        0 => "1".into(),
        1 => "10".into(),
        2 => "100".into(),
        3 => "1k".into(),
        4 => "10k".into(),
        5 => "100k".into(),
        6 => "1M".into(),
        7 => "10M".into(),
        _ => format!("1e{e}"),
    }
}

impl Chart<'_> {
    pub fn svg(&self) -> String {
        let xs = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.x));
        let (lo, hi) = xs.fold((f64::INFINITY, 0f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
        let (lo, hi) = if lo.is_finite() {
            (lo, hi)
        } else {
            (1.0, 10.0)
        };
        let e_lo = lo.log10().floor() as i32;
        let e_hi = (hi.log10().ceil() as i32).max(e_lo + 1);
        let ys: Vec<f64> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().flat_map(|p| [p.lo, p.y, p.hi]))
            .chain(self.references.iter().map(|r| r.y))
            .filter(|y| y.is_finite())
            .collect();
        let axis = if self.log_y {
            YAxis::log(&ys)
        } else {
            YAxis::linear(&ys)
        };
        let entries: Vec<(&str, &str, bool)> = self
            .series
            .iter()
            .map(|x| (x.label.as_str(), x.color, false))
            .chain(
                self.references
                    .iter()
                    .map(|r| (r.label.as_str(), r.color, true)),
            )
            .collect();
        let columns = if entries
            .iter()
            .all(|e| e.0.chars().count() <= LEGEND_TWO_COLUMNS_MAX)
        {
            2
        } else {
            1
        };
        let rows = entries.len().div_ceil(columns);
        let pw = W - LEFT - RIGHT;
        let ph = PH;
        #[expect(clippy::cast_precision_loss, reason = "a handful of legend rows")]
        let h = TOP + ph + 60.0 + rows as f64 * 18.0;
        let px = |x: f64| LEFT + (x.log10() - f64::from(e_lo)) / f64::from(e_hi - e_lo) * pw;
        let py = |y: f64| TOP + ph - axis.fraction(y) * ph;

        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{W}" height="{h}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="24" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
            W / 2.0,
            escape(self.title)
        );
        // Grid and ticks.
        for (y, label) in axis.ticks() {
            let yy = py(y);
            let _ = writeln!(
                s,
                r##"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e4e4e4"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
                LEFT + pw,
                LEFT - 6.0,
                yy + 4.0,
            );
        }
        for e in e_lo..=e_hi {
            let xx = px(10f64.powi(e));
            let _ = writeln!(
                s,
                r##"<line x1="{xx:.1}" y1="{TOP}" x2="{xx:.1}" y2="{:.1}" stroke="#e4e4e4"/><text x="{xx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                TOP + ph,
                TOP + ph + 18.0,
                decade_label(e)
            );
            if e < e_hi {
                for m in 2..10 {
                    let xm = px(f64::from(m) * 10f64.powi(e));
                    let _ = writeln!(
                        s,
                        r##"<line x1="{xm:.1}" y1="{:.1}" x2="{xm:.1}" y2="{:.1}" stroke="#999"/>"##,
                        TOP + ph,
                        TOP + ph + 4.0
                    );
                }
            }
        }
        let _ = writeln!(
            s,
            r#"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="black"/>"#
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            LEFT + pw / 2.0,
            TOP + ph + 38.0,
            escape(self.x_label)
        );
        let _ = writeln!(
            s,
            r#"<text transform="translate(18 {:.1}) rotate(-90)" text-anchor="middle">{}</text>"#,
            TOP + ph / 2.0,
            escape(self.y_label)
        );
        for r in &self.references {
            let yy = py(r.y);
            let _ = writeln!(
                s,
                r#"<line x1="{LEFT}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="{}" stroke-width="1.5" stroke-dasharray="6 4"/>"#,
                LEFT + pw,
                r.color
            );
        }
        for series in &self.series {
            let pts: Vec<String> = series
                .points
                .iter()
                .map(|p| format!("{:.1},{:.1}", px(p.x), py(p.y)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2.2"/>"#,
                pts.join(" "),
                series.color
            );
            for p in &series.points {
                let (xx, c) = (px(p.x), series.color);
                let _ = writeln!(
                    s,
                    r#"<line x1="{xx:.1}" y1="{:.1}" x2="{xx:.1}" y2="{:.1}" stroke="{c}"/><circle cx="{xx:.1}" cy="{:.1}" r="3.5" fill="{c}"/>"#,
                    py(p.lo),
                    py(p.hi),
                    py(p.y)
                );
                if let Some(note) = &p.note {
                    // Keep notes at the edges inside the plot.
                    let anchor = if xx < LEFT + 30.0 {
                        "start"
                    } else if xx > LEFT + pw - 30.0 {
                        "end"
                    } else {
                        "middle"
                    };
                    let _ = writeln!(
                        s,
                        r#"<text x="{:.1}" y="{:.1}" text-anchor="{anchor}" font-size="10" fill="{c}">{}</text>"#,
                        xx,
                        py(p.hi) - 7.0,
                        escape(note)
                    );
                }
            }
        }
        // Legend below the plot, in one or two columns.
        for (i, (label, color, dashed)) in entries.iter().enumerate() {
            let col = (i % columns) as f64;
            let row = (i / columns) as f64;
            let x = LEFT + col * (pw / 2.0);
            let y = TOP + ph + 60.0 + row * 18.0;
            let dash = if *dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = writeln!(
                s,
                r#"<line x1="{x:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{color}" stroke-width="2.2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
                y - 4.0,
                x + 26.0,
                y - 4.0,
                x + 32.0,
                y,
                escape(label)
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

/// How values map to the height of the plot.
enum YAxis {
    /// From 0 to `max`, ticks every `step`.
    Linear { max: f64, step: f64 },
    /// Whole decades from `10^lo` to `10^hi`.
    Log { lo: i32, hi: i32 },
}

impl YAxis {
    fn linear(ys: &[f64]) -> Self {
        let top = ys.iter().copied().fold(0f64, f64::max) * 1.12;
        let step = nice_step(top.max(1.0));
        Self::Linear {
            max: (top / step).ceil().max(1.0) * step,
            step,
        }
    }

    fn log(ys: &[f64]) -> Self {
        let positive = || ys.iter().copied().filter(|y| *y > 0.0);
        let lo = positive().fold(f64::INFINITY, f64::min);
        let hi = positive().fold(0f64, f64::max);
        if !lo.is_finite() {
            return Self::Log { lo: 0, hi: 1 };
        }
        let lo = lo.log10().floor() as i32;
        Self::Log {
            lo,
            hi: (hi.log10().ceil() as i32).max(lo + 1),
        }
    }

    /// Where `y` sits, from 0 (bottom) to 1 (top).
    fn fraction(&self, y: f64) -> f64 {
        match *self {
            Self::Linear { max, .. } => y / max,
            Self::Log { lo, hi } => {
                if y <= 0.0 {
                    0.0
                } else {
                    ((y.log10() - f64::from(lo)) / f64::from(hi - lo)).clamp(0.0, 1.0)
                }
            }
        }
    }

    fn ticks(&self) -> Vec<(f64, String)> {
        match *self {
            Self::Linear { max, step } => {
                let mut out = Vec::new();
                let mut y = 0.0;
                while y <= max + step / 2.0 {
                    out.push((y, format_tick(y, step)));
                    y += step;
                }
                out
            }
            Self::Log { lo, hi } => (lo..=hi)
                .map(|e| (10f64.powi(e), decade_label(e)))
                .collect(),
        }
    }
}

fn format_tick(y: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{y:.0}")
    } else {
        format!("{y:.1}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_points_and_references() {
        let c = Chart {
            title: "t",
            x_label: "x",
            y_label: "y",
            series: vec![Series {
                label: "a <b>".into(),
                color: "#123456",
                points: vec![
                    Point {
                        x: 1.0,
                        y: 5.0,
                        lo: 4.0,
                        hi: 6.0,
                        note: Some("n".into()),
                    },
                    Point {
                        x: 1000.0,
                        y: 7.0,
                        lo: 6.0,
                        hi: 8.0,
                        note: None,
                    },
                ],
            }],
            references: vec![Reference {
                label: "r".into(),
                color: "#654321",
                y: 3.0,
            }],
            log_y: false,
        };
        let svg = c.svg();
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("<polyline"));
        assert!(svg.contains("a &lt;b&gt;"));
        assert!(svg.contains("stroke-dasharray"));
        assert_eq!(nice_step(23.0), 5.0);
    }

    #[test]
    fn log_axis_spans_whole_decades() {
        let YAxis::Log { lo, hi } = YAxis::log(&[0.0, 45.0, 148_000.0]) else {
            panic!("not a log axis");
        };
        assert_eq!((lo, hi), (1, 6));
        let axis = YAxis::Log { lo, hi };
        assert!(axis.fraction(10.0).abs() < 1e-12);
        assert!((axis.fraction(1e6) - 1.0).abs() < 1e-12);
        assert!((axis.fraction(1e3) - 0.4).abs() < 1e-12);
        assert_eq!(axis.fraction(-3.0), 0.0);
        assert_eq!(axis.ticks().len(), 6);
    }
}
