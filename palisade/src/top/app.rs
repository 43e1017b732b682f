//! The screen's state (view, sort, filter, pause, selection, drill-in) and what each key does
//! to it. The figures themselves are in [`Model`].

use std::time::Duration;

use super::model::{Model, Row, SortBy, View};

/// A key, as the state machine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    Char(char),
    Enter,
    Esc,
    Backspace,
    Up,
    Down,
    PageUp,
    PageDown,
    Home,
    End,
    Tab,
    BackTab,
    /// Ctrl-C.
    Interrupt,
}

/// Rows a page key moves.
const PAGE: usize = 10;

/// The state of the screen.
#[derive(Debug, Clone)]
pub struct App {
    /// Updated all the time, paused or not.
    pub model: Model,
    /// What the screen shows while paused.
    frozen: Option<Model>,
    pub view: View,
    pub sort: SortBy,
    pub filter: String,
    /// The filter is being typed.
    pub editing: bool,
    pub selected: usize,
    /// The row drilled into: its view and key.
    pub detail: Option<(View, String)>,
    pub help: bool,
    pub quit: bool,
    /// `None` while the daemon answers; the last error otherwise.
    pub error: Option<String>,
    pub interval: Duration,
    /// Events the daemon or the reader skipped.
    pub lost: u64,
}

impl App {
    #[must_use]
    pub fn new(interval: Duration) -> Self {
        Self {
            model: Model::default(),
            frozen: None,
            view: View::Rules,
            sort: SortBy::default(),
            filter: String::new(),
            editing: false,
            selected: 0,
            detail: None,
            help: false,
            quit: false,
            error: None,
            interval,
            lost: 0,
        }
    }

    /// What to show: the live model, or the one frozen by pause.
    #[must_use]
    pub fn shown(&self) -> &Model {
        self.frozen.as_ref().unwrap_or(&self.model)
    }

    #[must_use]
    pub fn paused(&self) -> bool {
        self.frozen.is_some()
    }

    /// The rows of the current view as shown.
    #[must_use]
    pub fn rows(&self) -> Vec<Row> {
        self.shown().rows(self.view, &self.filter, self.sort)
    }

    fn toggle_pause(&mut self) {
        self.frozen = match self.frozen.take() {
            Some(_) => None,
            None => Some(self.model.clone()),
        };
    }

    fn switch(&mut self, v: View) {
        self.view = v;
        self.selected = 0;
        self.detail = None;
    }

    /// Applies one key.
    pub fn key(&mut self, k: Key) {
        if k == Key::Interrupt {
            self.quit = true;
            return;
        }
        if self.editing {
            match k {
                Key::Char(c) if !c.is_control() => {
                    self.filter.push(c);
                    self.selected = 0;
                }
                Key::Backspace => {
                    self.filter.pop();
                }
                Key::Enter => self.editing = false,
                Key::Esc => {
                    self.editing = false;
                    self.filter.clear();
                }
                _ => {}
            }
            return;
        }
        if self.help {
            // Any key closes the help (and `q` still quits).
            self.help = false;
            if k != Key::Char('q') {
                return;
            }
        }
        let n = self.rows().len();
        match k {
            Key::Char('q') => self.quit = true,
            Key::Char('?' | 'h') => self.help = true,
            Key::Char('p' | ' ') => self.toggle_pause(),
            Key::Char('/') => {
                self.editing = true;
                self.detail = None;
            }
            Key::Char('s') => self.sort = self.sort.next(),
            Key::Char(c @ '1'..='7') => {
                let i = (c as usize) - ('1' as usize);
                self.switch(View::ALL[i]);
            }
            Key::Tab => self.switch(self.view.next()),
            Key::BackTab => self.switch(self.view.prev()),
            Key::Esc | Key::Backspace | Key::Char('b') if self.detail.is_some() => {
                self.detail = None;
            }
            Key::Esc => self.filter.clear(),
            Key::Enter if self.detail.is_some() => self.detail = None,
            Key::Enter => {
                if let Some(r) = self.rows().get(self.selected.min(n.saturating_sub(1))) {
                    self.detail = Some((self.view, r.key.clone()));
                }
            }
            Key::Up | Key::Char('k') => self.selected = self.selected.saturating_sub(1),
            Key::Down | Key::Char('j') => self.selected += 1,
            Key::PageUp => self.selected = self.selected.saturating_sub(PAGE),
            Key::PageDown => self.selected += PAGE,
            Key::Home | Key::Char('g') => self.selected = 0,
            Key::End | Key::Char('G') => self.selected = n,
            _ => {}
        }
        self.selected = self.selected.min(n.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::top::model::Seen;

    fn app_with_names() -> App {
        let mut a = App::new(Duration::from_secs(1));
        for (name, n) in [("ads.example", 3), ("cdn.example", 2), ("mail.other", 1)] {
            for _ in 0..n {
                a.model.event(
                    Seen::parse(&format!(
                        r#"{{"kind":"dns","verdict":"drop","reason":"dns-list","name":"{name}","client":"10.0.0.2"}}"#
                    ))
                    .unwrap(),
                );
            }
        }
        a.key(Key::Char('4'));
        assert_eq!(a.view, View::Names);
        a.sort = SortBy::First;
        a
    }

    fn keys(a: &mut App, s: &str) {
        for c in s.chars() {
            a.key(Key::Char(c));
        }
    }

    #[test]
    fn slash_filters_and_escape_clears() {
        let mut a = app_with_names();
        keys(&mut a, "/exa");
        assert!(a.editing);
        a.key(Key::Char('q'));
        assert!(!a.quit, "q is text while typing a filter");
        a.key(Key::Backspace);
        a.key(Key::Enter);
        assert_eq!(a.filter, "exa");
        assert_eq!(a.rows().len(), 2);
        a.key(Key::Esc);
        assert_eq!(a.rows().len(), 3);
    }

    #[test]
    fn pause_freezes_what_is_shown_but_keeps_counting() {
        let mut a = app_with_names();
        a.key(Key::Char('p'));
        assert!(a.paused());
        let ev = Seen::parse(
            r#"{"kind":"dns","verdict":"drop","reason":"dns-list","name":"new.example","client":"10.0.0.2"}"#,
        )
        .unwrap();
        a.model.event(ev);
        assert_eq!(a.rows().len(), 3);
        a.key(Key::Char(' '));
        assert!(!a.paused());
        assert_eq!(a.rows().len(), 4);
    }

    #[test]
    fn enter_drills_into_the_selected_row_and_back() {
        let mut a = app_with_names();
        a.key(Key::Down);
        a.key(Key::Enter);
        assert_eq!(a.detail, Some((View::Names, "cdn.example".into())));
        a.key(Key::Esc);
        assert_eq!(a.detail, None);
        // The selection stays on the rows there are.
        for _ in 0..20 {
            a.key(Key::Down);
        }
        assert_eq!(a.selected, 2);
        a.key(Key::Home);
        assert_eq!(a.selected, 0);
        a.key(Key::Tab);
        assert_eq!(a.view, View::Processes);
        a.key(Key::Enter);
        assert_eq!(a.detail, None, "no row, nothing to drill into");
    }

    #[test]
    fn sort_cycles_help_shows_and_q_quits() {
        let mut a = app_with_names();
        a.key(Key::Char('s'));
        assert_eq!(a.sort, SortBy::Second);
        a.key(Key::Char('?'));
        assert!(a.help);
        a.key(Key::Down);
        assert!(!a.help);
        a.key(Key::Char('q'));
        assert!(a.quit);
        let mut b = App::new(Duration::from_secs(1));
        b.key(Key::Interrupt);
        assert!(b.quit);
    }
}
