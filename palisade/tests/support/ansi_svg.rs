//! Turns a terminal screen captured with its colours (`tmux capture-pane -e -p`) into an SVG:
//! one monospace `<text>` per run of cells in the same style, over rectangles for the
//! background colours. Only SGR sequences (`ESC [ ... m`) are understood; other escape
//! sequences are skipped.
//!
//! Included with `#[path]` by the tests that take screenshots.

#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::fmt::Write as _;

/// Width of one cell and height of one row, in SVG units (a 14 px monospace font).
const CELL_W: f64 = 8.4;
const CELL_H: f64 = 18.0;
const FONT_SIZE: f64 = 14.0;
const BACKGROUND: &str = "#1c1c1c";
const FOREGROUND: &str = "#d0d0d0";

/// The 16 basic colours (xterm's, a little softened).
const BASIC: [&str; 16] = [
    "#000000", "#cd3131", "#0dbc79", "#e5e510", "#2472c8", "#bc3fbc", "#11a8cd", "#e5e5e5",
    "#666666", "#f14c4c", "#23d18b", "#f5f543", "#3b8eea", "#d670d6", "#29b8db", "#ffffff",
];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Style {
    fg: Option<String>,
    bg: Option<String>,
    bold: bool,
    reverse: bool,
}

impl Style {
    /// The colours to paint with, reverse video applied.
    fn colours(&self) -> (String, Option<String>) {
        if self.reverse {
            (
                self.bg.clone().unwrap_or_else(|| BACKGROUND.to_string()),
                Some(self.fg.clone().unwrap_or_else(|| FOREGROUND.to_string())),
            )
        } else {
            (
                self.fg.clone().unwrap_or_else(|| FOREGROUND.to_string()),
                self.bg.clone(),
            )
        }
    }
}

/// Colour `n` of the 256-colour palette.
fn palette(n: u16) -> String {
    match n {
        0..=15 => BASIC[usize::from(n)].to_string(),
        16..=231 => {
            let i = n - 16;
            let level = |v: u16| if v == 0 { 0 } else { 55 + v * 40 };
            format!(
                "#{:02x}{:02x}{:02x}",
                level(i / 36),
                level(i / 6 % 6),
                level(i % 6)
            )
        }
        _ => {
            let g = 8 + (n.min(255) - 232) * 10;
            format!("#{g:02x}{g:02x}{g:02x}")
        }
    }
}

/// Applies one SGR parameter list.
fn sgr(style: &mut Style, params: &str) {
    let p: Vec<u16> = if params.is_empty() {
        vec![0]
    } else {
        params.split(';').map(|s| s.parse().unwrap_or(0)).collect()
    };
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            0 => *style = Style::default(),
            1 => style.bold = true,
            22 => style.bold = false,
            7 => style.reverse = true,
            27 => style.reverse = false,
            c @ 30..=37 => style.fg = Some(BASIC[usize::from(c - 30)].to_string()),
            c @ 90..=97 => style.fg = Some(BASIC[usize::from(c - 90 + 8)].to_string()),
            39 => style.fg = None,
            c @ 40..=47 => style.bg = Some(BASIC[usize::from(c - 40)].to_string()),
            c @ 100..=107 => style.bg = Some(BASIC[usize::from(c - 100 + 8)].to_string()),
            49 => style.bg = None,
            c @ (38 | 48) => {
                let colour = match p.get(i + 1) {
                    Some(5) => {
                        i += 2;
                        p.get(i).map(|&n| palette(n))
                    }
                    Some(2) => {
                        i += 4;
                        match (p.get(i - 2), p.get(i - 1), p.get(i)) {
                            (Some(r), Some(g), Some(b)) => Some(format!("#{r:02x}{g:02x}{b:02x}")),
                            _ => None,
                        }
                    }
                    _ => None,
                };
                if c == 38 {
                    style.fg = colour;
                } else {
                    style.bg = colour;
                }
            }
            _ => {}
        }
        i += 1;
    }
}

/// The screen as rows of styled cells.
fn cells(captured: &str) -> Vec<Vec<(char, Style)>> {
    let mut style = Style::default();
    let mut rows = Vec::new();
    for line in captured.lines() {
        let mut row = Vec::new();
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    let mut params = String::new();
                    let mut fin = None;
                    for d in chars.by_ref() {
                        if d.is_ascii_digit() || d == ';' || d == ':' {
                            params.push(if d == ':' { ';' } else { d });
                        } else {
                            fin = Some(d);
                            break;
                        }
                    }
                    if fin == Some('m') {
                        sgr(&mut style, &params);
                    }
                } else {
                    chars.next();
                }
                continue;
            }
            row.push((c, style.clone()));
        }
        rows.push(row);
    }
    rows
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The SVG of a captured screen `cols` cells wide.
#[must_use]
pub fn render(captured: &str, cols: usize, title: &str) -> String {
    let rows = cells(captured);
    let w = cols as f64 * CELL_W + 16.0;
    let h = rows.len() as f64 * CELL_H + 16.0;
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w:.0}" height="{h:.0}" viewBox="0 0 {w:.0} {h:.0}" font-family="'DejaVu Sans Mono', 'Menlo', 'Consolas', monospace" font-size="{FONT_SIZE}">"#
    );
    let _ = writeln!(out, "<title>{}</title>", escape(title));
    let _ = writeln!(
        out,
        r#"<rect width="100%" height="100%" rx="6" fill="{BACKGROUND}"/>"#
    );
    for (y, row) in rows.iter().enumerate() {
        let top = 8.0 + y as f64 * CELL_H;
        let baseline = top + CELL_H * 0.75;
        let mut x = 0;
        while x < row.len().min(cols) {
            let style = &row[x].1;
            let mut end = x;
            let mut text = String::new();
            while end < row.len().min(cols) && row[end].1 == *style {
                text.push(row[end].0);
                end += 1;
            }
            let (fg, bg) = style.colours();
            let left = 8.0 + x as f64 * CELL_W;
            if let Some(bg) = bg {
                let _ = writeln!(
                    out,
                    r#"<rect x="{left:.1}" y="{top:.1}" width="{:.1}" height="{CELL_H}" fill="{bg}"/>"#,
                    (end - x) as f64 * CELL_W
                );
            }
            if !text.trim().is_empty() {
                let weight = if style.bold {
                    r#" font-weight="bold""#
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    r#"<text x="{left:.1}" y="{baseline:.1}" fill="{fg}"{weight} xml:space="preserve" textLength="{:.1}" lengthAdjust="spacingAndGlyphs">{}</text>"#,
                    (end - x) as f64 * CELL_W,
                    escape(&text)
                );
            }
            x = end;
        }
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_runs_and_escapes() {
        let screen = "\u{1b}[1;31mdrop\u{1b}[0m <a>&\n\u{1b}[7mrev\u{1b}[27m \u{1b}[38;5;196mX\u{1b}[48;2;1;2;3mY\u{1b}[?25l\n";
        let svg = render(screen, 10, "t");
        assert!(
            svg.contains(r##"fill="#cd3131" font-weight="bold""##),
            "{svg}"
        );
        assert!(svg.contains(">drop</text>"));
        assert!(svg.contains("&lt;a&gt;&amp;"), "{svg}");
        // Reverse video paints the default foreground as background.
        assert!(svg.contains(&format!(r#"fill="{FOREGROUND}"/>"#)), "{svg}");
        assert!(svg.contains(r##"fill="#ff0000""##), "{svg}");
        assert!(svg.contains(r##"fill="#010203""##), "{svg}");
        assert_eq!(svg.matches("<text").count(), 5, "{svg}");
        assert!(!svg.contains("?25l"));
    }

    #[test]
    fn palette_corners() {
        assert_eq!(palette(16), "#000000");
        assert_eq!(palette(231), "#ffffff");
        assert_eq!(palette(232), "#080808");
        assert_eq!(palette(1), "#cd3131");
    }
}
