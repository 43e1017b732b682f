//! `palisade top`: a live, keyboard-driven view of what the daemon is doing, read from its
//! control socket only (counters every interval, and the event stream).
//!
//! - [`model`]: the figures (rates, tables, history), computed from snapshots and events;
//! - [`app`]: the screen's state and the keys;
//! - [`draw`]: the layout;
//! - [`source`]: the socket.

pub mod app;
pub mod draw;
pub mod model;
pub mod source;

use std::{
    path::Path,
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use ratatui::{
    Terminal,
    backend::TestBackend,
    buffer::Buffer,
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
};

use self::{
    app::{App, Key},
    source::{Feed, Poller},
};
use crate::cli::TopArgs;

/// The shortest refresh interval accepted.
pub const MIN_INTERVAL_MS: u64 = 100;

/// The rows of a drawn buffer as text, trailing blanks trimmed.
#[must_use]
pub fn buffer_text(b: &Buffer) -> String {
    let mut out = String::new();
    for y in 0..b.area.height {
        let mut line = String::new();
        for x in 0..b.area.width {
            line.push_str(b[(x, y)].symbol());
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Moves what the event reader queued into the model.
fn drain(app: &mut App, rx: &Receiver<Feed>) {
    while let Ok(f) = rx.try_recv() {
        match f {
            Feed::Event(e) => app.model.event(*e),
            Feed::Lost(n) => app.lost = app.lost.saturating_add(n),
        }
    }
}

fn key(k: &event::KeyEvent) -> Option<Key> {
    if k.kind != KeyEventKind::Press {
        return None;
    }
    Some(match k.code {
        KeyCode::Char('c') if k.modifiers.contains(KeyModifiers::CONTROL) => Key::Interrupt,
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Backspace => Key::Backspace,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        KeyCode::Tab => Key::Tab,
        KeyCode::BackTab => Key::BackTab,
        KeyCode::Left => Key::Esc,
        _ => return None,
    })
}

/// Restores the terminal when dropped: on return, on error and while unwinding
/// (`ratatui::init` also restores it in the panic hook, before the message is printed).
struct Screen;

impl Drop for Screen {
    fn drop(&mut self) {
        ratatui::restore();
    }
}

/// Runs `palisade top`.
///
/// # Errors
/// When the daemon cannot be reached at start, or the terminal fails.
pub fn command(socket: &Path, a: &TopArgs) -> Result<()> {
    if a.interval < MIN_INTERVAL_MS {
        bail!("--interval {} is below {MIN_INTERVAL_MS} ms", a.interval);
    }
    let interval = Duration::from_millis(a.interval);
    let mut poller = Poller::new(socket);
    let events = source::events(socket);
    // A daemon that is not there at all is an error, before the screen changes; one that
    // goes away later is shown as such.
    let first = poller.poll()?;
    let mut app = App::new(interval);
    app.model.apply(first, 0.0);
    let mut last = Instant::now();
    if a.once {
        std::thread::sleep(interval);
        drain(&mut app, &events);
        let s = poller.poll()?;
        app.model.apply(s, last.elapsed().as_secs_f64());
        let mut t = Terminal::new(TestBackend::new(a.width, a.height))?;
        t.draw(|f| draw::draw(f, &app))?;
        print!("{}", buffer_text(t.backend().buffer()));
        return Ok(());
    }
    let mut terminal = ratatui::try_init()?;
    let _screen = Screen;
    let mut next = Instant::now() + interval;
    let mut dirty = true;
    while !app.quit {
        if dirty {
            terminal.draw(|f| draw::draw(f, &app))?;
            dirty = false;
        }
        let now = Instant::now();
        if now >= next {
            drain(&mut app, &events);
            match poller.poll() {
                Ok(s) => {
                    app.model.apply(s, last.elapsed().as_secs_f64());
                    last = Instant::now();
                    app.error = None;
                }
                Err(e) => app.error = Some(format!("{e:#}")),
            }
            next += interval;
            if next < now {
                next = now + interval;
            }
            dirty = true;
            continue;
        }
        if event::poll(next - now)? {
            match event::read()? {
                Event::Key(k) => {
                    if let Some(k) = key(&k) {
                        drain(&mut app, &events);
                        app.key(k);
                        dirty = true;
                    }
                }
                Event::Resize(..) => dirty = true,
                _ => {}
            }
        }
    }
    Ok(())
}
