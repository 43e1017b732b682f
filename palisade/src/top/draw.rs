//! Drawing the screen: a header, three sparklines, the totals, a tab bar, the current view's
//! table (or one row's detail) and a footer. Laid out for 80x24; larger terminals get wider
//! columns and more rows.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Block, Borders, Cell, Clear, Paragraph, Row as TRow, Sparkline, Table, Tabs},
};

use super::{
    app::App,
    model::{Conntrack, Model, Row, View},
};

/// Width of the label left of each sparkline.
const LABEL: u16 = 24;
/// Events shown in a drill-in, at most.
const DETAIL_EVENTS: usize = 12;

/// A count in at most eight characters: exact below ten million.
#[must_use]
pub fn count(n: u64) -> String {
    match n {
        0..10_000_000 => n.to_string(),
        10_000_000..10_000_000_000 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{:.1}G", n as f64 / 1e9),
    }
}

fn rate(r: f64) -> String {
    if r >= 100.0 || r == 0.0 {
        count(r.round() as u64)
    } else {
        format!("{r:.1}")
    }
}

fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else {
        format!("{m}m{s:02}s")
    }
}

/// Draws the whole screen.
pub fn draw(f: &mut Frame, app: &App) {
    let [header, sparks, totals, tabs, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(3),
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let m = app.shown();
    draw_header(f, header, app, m);
    draw_sparks(f, sparks, m);
    draw_totals(f, totals, m);
    let titles: Vec<Line> = View::ALL
        .iter()
        .enumerate()
        .map(|(i, v)| Line::from(format!("{} {}", i + 1, v.title())))
        .collect();
    let selected = View::ALL.iter().position(|v| *v == app.view).unwrap_or(0);
    f.render_widget(
        Tabs::new(titles)
            .select(selected)
            .padding("", "")
            .divider("|")
            .style(Style::default().fg(Color::Gray))
            .highlight_style(
                Style::default()
                    .fg(Color::Black)
                    .bg(Color::Cyan)
                    .add_modifier(Modifier::BOLD),
            ),
        tabs,
    );
    match &app.detail {
        Some((v, key)) => draw_detail(f, body, m, *v, key),
        None => draw_table(f, body, app),
    }
    draw_footer(f, footer, app);
    if app.help {
        draw_help(f, body);
    }
}

fn draw_header(f: &mut Frame, area: Rect, app: &App, m: &Model) {
    let mut spans = vec![Span::styled(
        " palisade top ",
        Style::default()
            .fg(Color::Black)
            .bg(Color::Cyan)
            .add_modifier(Modifier::BOLD),
    )];
    if let Some(s) = m.last() {
        let every = if app.interval.subsec_millis() == 0 {
            format!("{}s", app.interval.as_secs())
        } else {
            format!("{}ms", app.interval.as_millis())
        };
        spans.push(Span::raw(format!(
            " gen {}  up {}  every {every}",
            s.generation,
            duration(s.uptime_secs),
        )));
    }
    if app.lost > 0 {
        spans.push(Span::styled(
            format!("  {} events lost", count(app.lost)),
            Style::default().fg(Color::Yellow),
        ));
    }
    if app.paused() {
        spans.push(Span::styled(
            "  PAUSED",
            Style::default()
                .fg(Color::Black)
                .bg(Color::Yellow)
                .add_modifier(Modifier::BOLD),
        ));
    }
    if let Some(e) = &app.error {
        spans.push(Span::styled(
            format!("  disconnected, retrying: {e}"),
            Style::default().fg(Color::White).bg(Color::Red),
        ));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_sparks(f: &mut Frame, area: Rect, m: &Model) {
    let rows = Layout::vertical([Constraint::Length(1); 3]).split(area);
    let series = [
        ("packets/s", &m.packets_rate, Color::Green),
        ("drops/s", &m.drops_rate, Color::Red),
        ("dns queries/s", &m.dns_rate, Color::Blue),
    ];
    for (i, (label, data, color)) in series.into_iter().enumerate() {
        let [l, r] =
            Layout::horizontal([Constraint::Length(LABEL), Constraint::Min(1)]).areas(rows[i]);
        let now = data.back().copied().unwrap_or(0);
        f.render_widget(
            Paragraph::new(Line::from(vec![
                Span::raw(format!(" {label:<14}")),
                Span::styled(
                    format!("{:>8} ", count(now)),
                    Style::default().fg(color).add_modifier(Modifier::BOLD),
                ),
            ])),
            l,
        );
        spark(f, r, data.iter().copied(), color);
    }
}

/// The newest values that fit, scaled to their maximum.
fn spark(f: &mut Frame, area: Rect, data: impl DoubleEndedIterator<Item = u64>, color: Color) {
    let mut tail: Vec<u64> = data.rev().take(usize::from(area.width)).collect();
    tail.reverse();
    f.render_widget(
        Sparkline::default()
            .data(&tail)
            .max(tail.iter().copied().max().unwrap_or(0).max(1))
            .style(Style::default().fg(color)),
        area,
    );
}

fn draw_totals(f: &mut Frame, area: Rect, m: &Model) {
    let Some(s) = m.last() else {
        f.render_widget(Paragraph::new(" connecting..."), area);
        return;
    };
    let mut text = format!(
        " packets {}  dropped {}  dns {} (blocked {})",
        count(s.packets),
        count(s.dropped),
        count(s.dns_queries),
        count(s.dns_blocked)
    );
    match &s.conntrack {
        Some(c) => text.push_str(&occupancy(c)),
        None => text.push_str("  conntrack off"),
    }
    f.render_widget(
        Paragraph::new(text).style(Style::default().add_modifier(Modifier::BOLD)),
        area,
    );
}

/// The tracked connections, with the fuller table's share of its capacity when known.
fn occupancy(c: &Conntrack) -> String {
    let total = count(c.validated + c.unvalidated);
    let Some((v, u)) = c.capacity else {
        return format!("  conntrack {total} ({} new)", count(c.unvalidated));
    };
    let share = |n: u64, cap: u64| n as f64 * 100.0 / cap.max(1) as f64;
    let full = share(c.validated, v).max(share(c.unvalidated, u));
    if full > 0.0 && full < 1.0 {
        format!("  conntrack {total} (<1% full)")
    } else {
        format!("  conntrack {total} ({full:.0}% full)")
    }
}

fn cells(r: &Row) -> [String; 5] {
    [
        r.key.clone(),
        count(r.first),
        r.second.map(count).unwrap_or_default(),
        r.rate.map(rate).unwrap_or_default(),
        r.note.clone(),
    ]
}

fn draw_table(f: &mut Frame, area: Rect, app: &App) {
    let rows = app.rows();
    let headers = app.view.headers();
    let sorted = app.sort.column();
    let header = TRow::new(headers.iter().enumerate().map(|(i, h)| {
        let text = if i == sorted && !h.is_empty() {
            format!("{h}\u{25bc}")
        } else {
            (*h).to_string()
        };
        let cell = if (1..=3).contains(&i) {
            Cell::from(Line::from(text).right_aligned())
        } else {
            Cell::from(text)
        };
        cell.style(
            Style::default()
                .fg(Color::Black)
                .bg(Color::Green)
                .add_modifier(Modifier::BOLD),
        )
    }));
    // Keep the selected row on screen.
    let visible = usize::from(area.height.saturating_sub(1));
    let selected = app.selected.min(rows.len().saturating_sub(1));
    let skip = (selected + 1).saturating_sub(visible);
    let body: Vec<TRow> = rows
        .iter()
        .enumerate()
        .skip(skip)
        .take(visible)
        .map(|(i, r)| {
            let [k, a, b, c, n] = cells(r);
            let blocked = r.second.is_some_and(|s| s > 0) && app.view != View::Rules
                || (app.view == View::Rules && r.note != "allow")
                || app.view == View::Reasons;
            let mut style = if blocked {
                Style::default().fg(Color::Red)
            } else {
                Style::default()
            };
            if i == selected {
                style = style.add_modifier(Modifier::REVERSED);
            }
            TRow::new([
                Cell::from(k),
                Cell::from(Line::from(a).right_aligned()),
                Cell::from(Line::from(b).right_aligned()),
                Cell::from(Line::from(c).right_aligned()),
                Cell::from(n),
            ])
            .style(style)
        })
        .collect();
    let empty = body.is_empty();
    let table = Table::new(
        body,
        [
            Constraint::Fill(3),
            Constraint::Length(9),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Fill(2),
        ],
    )
    .header(header)
    .column_spacing(1);
    f.render_widget(table, area);
    if empty && area.height > 2 {
        let why = match (app.view, app.filter.is_empty()) {
            (_, false) => "no row matches the filter".to_string(),
            (View::Talkers | View::Names | View::Processes | View::Cgroups, true) => {
                "nothing yet: these come from events (logged drops, DNS decisions)".to_string()
            }
            (View::Conntrack, true) => "no tracked connections (or no [conntrack])".to_string(),
            _ => "nothing yet".to_string(),
        };
        f.render_widget(
            Paragraph::new(format!(" {why}")).style(Style::default().fg(Color::DarkGray)),
            Rect {
                y: area.y + 1,
                height: 1,
                ..area
            },
        );
    }
}

fn draw_detail(f: &mut Frame, area: Rect, m: &Model, v: View, key: &str) {
    let block = Block::default()
        .borders(Borders::TOP)
        .title(format!(" {} {key} (Esc: back) ", v.title()));
    let inner = block.inner(area);
    f.render_widget(block, area);
    let headers = v.headers();
    let mut lines = Vec::new();
    match m.entry(v, key) {
        Some(e) => {
            let mut s = format!(" {} {}", headers[1].to_lowercase(), count(e.first));
            if !headers[2].is_empty() {
                s.push_str(&format!(
                    "  {} {}",
                    headers[2].to_lowercase(),
                    count(e.second)
                ));
            }
            if !headers[3].is_empty() {
                s.push_str(&format!("  now {}/s", rate(e.rate)));
            }
            if !e.note.is_empty() {
                s.push_str(&format!("  {} {}", headers[4].to_lowercase(), e.note));
            }
            lines.push(Line::from(s).style(Style::default().add_modifier(Modifier::BOLD)));
        }
        None => lines.push(Line::from(" gone from the view")),
    }
    if v == View::Rules
        && let Some((_, matches)) = m
            .last()
            .and_then(|s| s.rule_matches.iter().find(|(n, _)| n == key))
    {
        lines.push(Line::from(format!(" matches: {matches}")));
    }
    let [text, graph, recent] = Layout::vertical([
        Constraint::Length(lines.len() as u16),
        Constraint::Length(3),
        Constraint::Min(1),
    ])
    .areas(inner);
    f.render_widget(Paragraph::new(lines), text);
    if let Some(e) = m.entry(v, key) {
        let [l, r] =
            Layout::horizontal([Constraint::Length(LABEL), Constraint::Min(1)]).areas(graph);
        f.render_widget(
            Paragraph::new(vec![
                Line::from(format!(" {} per interval", headers[1].to_lowercase())),
                Line::from(format!(
                    " max {} last {}",
                    count(e.history.iter().copied().max().unwrap_or(0)),
                    count(e.history.back().copied().unwrap_or(0))
                )),
            ]),
            l,
        );
        spark(f, r, e.history.iter().copied(), Color::Magenta);
    }
    let events = m.recent_for(v, key, DETAIL_EVENTS);
    let mut ev_lines = vec![Line::from(" recent events:").style(Style::default().fg(Color::Cyan))];
    if events.is_empty() {
        ev_lines.push(Line::from("  none since top started"));
    }
    ev_lines.extend(events.iter().map(|e| {
        let s = if e.count > 1 {
            format!("  {} x{}", e.line, e.count)
        } else {
            format!("  {}", e.line)
        };
        Line::from(s)
    }));
    f.render_widget(Paragraph::new(ev_lines), recent);
}

fn draw_footer(f: &mut Frame, area: Rect, app: &App) {
    let line = if app.editing {
        Line::from(vec![
            Span::styled(
                " filter: ",
                Style::default().fg(Color::Black).bg(Color::Cyan),
            ),
            Span::raw(format!("{}_", app.filter)),
            Span::styled(
                "  Enter keep, Esc clear",
                Style::default().fg(Color::DarkGray),
            ),
        ])
    } else {
        let mut spans = vec![];
        for (k, what) in [
            ("q", "quit"),
            ("?", "help"),
            ("/", "filter"),
            ("s", "sort"),
            ("p", "pause"),
            ("\u{21b5}", "detail"),
            ("Tab", "view"),
        ] {
            spans.push(Span::styled(
                format!(" {k}"),
                Style::default()
                    .fg(Color::Cyan)
                    .add_modifier(Modifier::BOLD),
            ));
            spans.push(Span::raw(format!(" {what}")));
        }
        if !app.filter.is_empty() {
            spans.push(Span::styled(
                format!("  /{}", app.filter),
                Style::default().fg(Color::Yellow),
            ));
        }
        Line::from(spans)
    };
    f.render_widget(Paragraph::new(line), area);
}

fn draw_help(f: &mut Frame, area: Rect) {
    let text = [
        "q, Ctrl-C    quit",
        "Tab, 1-7     change view",
        "Up/Down j/k  select a row",
        "Enter        detail of the row",
        "Esc          back; clear filter",
        "/            filter (substring)",
        "s            next sort column",
        "p, Space     pause / resume",
        "?            this help",
        "",
        "Talkers, names, processes and",
        "cgroups count events since start.",
    ];
    let w = 40.min(area.width);
    let h = (text.len() as u16 + 2).min(area.height);
    let r = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(
            text.iter()
                .map(|l| Line::from(format!(" {l}")))
                .collect::<Vec<_>>(),
        )
        .block(
            Block::default()
                .borders(Borders::ALL)
                .title(" help (any key) "),
        ),
        r,
    );
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::top::{app::Key, model::Snapshot};

    fn screen(app: &App, w: u16, h: u16) -> String {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| draw(f, app)).unwrap();
        super::super::buffer_text(t.backend().buffer())
    }

    #[test]
    fn counts_fit_their_columns() {
        assert_eq!(count(9_999_999), "9999999");
        assert_eq!(count(12_345_678), "12.3M");
        assert_eq!(count(12_345_678_901), "12.3G");
        assert_eq!(duration(3725), "1h02m");
        assert_eq!(rate(2.25), "2.2");
        assert_eq!(rate(1234.4), "1234");
        let mut c = Conntrack {
            validated: 10,
            unvalidated: 5,
            capacity: None,
            by_state: vec![],
        };
        assert_eq!(occupancy(&c), "  conntrack 15 (5 new)");
        c.capacity = Some((1000, 10));
        assert_eq!(occupancy(&c), "  conntrack 15 (50% full)");
        c.capacity = Some((100_000, 100_000));
        assert_eq!(occupancy(&c), "  conntrack 15 (<1% full)");
    }

    #[test]
    fn the_screen_fits_80_by_24_and_shows_the_figures() {
        let mut app = App::new(std::time::Duration::from_secs(1));
        let s = |p: u64| Snapshot {
            packets: p,
            dropped: p / 2,
            dns_queries: 7,
            generation: 2,
            rules: vec![("block-udp-9".into(), "drop".into(), p / 2, p * 30)],
            reasons: vec![("rule".into(), p / 2)],
            rule_matches: vec![("block-udp-9".into(), "proto udp dport 9".into())],
            ..Snapshot::default()
        };
        app.model.apply(s(100), 1.0);
        app.model.apply(s(300), 1.0);
        let text = screen(&app, 80, 24);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 24);
        assert!(
            lines[0].contains("palisade top") && lines[0].contains("gen 2"),
            "{text}"
        );
        assert!(
            lines[1].contains("packets/s") && lines[1].contains("200"),
            "{text}"
        );
        assert!(lines[4].contains("packets 300") && lines[4].contains("dropped 150"));
        assert!(
            text.contains("block-udp-9") && text.contains("150"),
            "{text}"
        );
        assert!(lines[23].contains("q quit"));
        app.key(Key::Enter);
        let text = screen(&app, 80, 24);
        assert!(text.contains("matches: proto udp dport 9"), "{text}");
        app.key(Key::Esc);
        app.key(Key::Char('?'));
        assert!(screen(&app, 80, 24).contains("change view"));
        // Smaller than planned for still draws.
        let _ = screen(&app, 20, 5);
    }
}
