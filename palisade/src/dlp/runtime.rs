//! The daemon's side of `[dlp]`: the watcher ([`super::probe::Watcher`]) runs on a thread of
//! its own, with the programs and maps of the daemon's object (loaded once and pinned, see
//! `Datapath::load_dlp`); its JSON lines become `dlp` events on the daemon's stream, and its
//! counters are published for `palisade stats` and `/metrics`.
//!
//! A reload that changes `[dlp]` attaches a new watcher before the old one stops (a policy
//! whose probes cannot be attached is refused and the old watcher goes on); the new one
//! reads the ring buffer they share only once the old one stopped ([`Runtime::resume`]).
//! One that drops the section stops it.

use std::{
    io::Write,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use tokio::sync::broadcast;

use super::{
    Dlp,
    probe::{Placement, Source, Watcher},
};
use crate::{api::server::EventLine, pin::Layout, stats::Named};

/// How often the thread publishes its counters.
pub const PUBLISH: Duration = Duration::from_millis(250);

/// Where the thread's events go.
#[derive(Clone)]
pub struct Output {
    pub events: broadcast::Sender<Arc<EventLine>>,
    pub quiet: bool,
    pub json: bool,
}

/// The running watcher of a `[dlp]` section.
pub struct Runtime {
    policy: Dlp,
    stop: Arc<AtomicBool>,
    counters: Arc<Mutex<Vec<Named>>>,
    /// Set by [`Runtime::resume`]: the thread reads the ring buffer from then on.
    go: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Runtime {
    /// Attaches the probes of `layout`'s pinned programs (on the calling thread, so a failure
    /// is the caller's), then runs the watcher on its own thread, which waits for
    /// [`Runtime::resume`] before it reads anything.
    ///
    /// # Errors
    /// When the probes cannot be opened or attached (`[dlp]` named in the error).
    pub fn start(p: &Dlp, out: Output, layout: &Layout) -> Result<Self> {
        let mut w = Watcher::start_placed(p, Placement::Emulated, Source::Pinned(layout))
            .context("[dlp]: starting the probes")?;
        let stop = Arc::new(AtomicBool::new(false));
        let go = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Mutex::new(named(&w)));
        let (s, c, g) = (Arc::clone(&stop), Arc::clone(&counters), Arc::clone(&go));
        let thread = std::thread::Builder::new()
            .name("palisade-dlp".into())
            .spawn(move || {
                // The watcher before this one may still read the shared ring buffer.
                while !g.load(Ordering::Acquire) {
                    if s.load(Ordering::Relaxed) {
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                w.publish_state();
                let mut sink = EventSink {
                    out,
                    line: Vec::new(),
                };
                let mut last = Instant::now() - super::probe::RESCAN;
                let mut published = Instant::now();
                while !s.load(Ordering::Relaxed) {
                    if let Err(e) = w.tick(&mut last, &mut sink) {
                        eprintln!("palisade: [dlp] watcher stopped: {e:#}");
                        break;
                    }
                    if published.elapsed() >= PUBLISH {
                        *c.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = named(&w);
                        published = Instant::now();
                    }
                }
                let _ = w.drain(&mut sink);
                w.release(Instant::now(), true, &mut sink);
                *c.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = named(&w);
            })
            .context("[dlp]: starting the watcher's thread")?;
        Ok(Self {
            policy: p.clone(),
            stop,
            counters,
            go,
            thread: Some(thread),
        })
    }

    /// Lets the thread read the ring buffer: the caller stopped the watcher before this one,
    /// if any (idempotent).
    pub fn resume(&self) {
        self.go.store(true, Ordering::Release);
    }

    /// The section it runs.
    #[must_use]
    pub fn policy(&self) -> &Dlp {
        &self.policy
    }

    /// Its counters as last published (at most [`PUBLISH`] old).
    #[must_use]
    pub fn named_counters(&self) -> Vec<Named> {
        self.counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn named(w: &Watcher) -> Vec<Named> {
    w.all_counters()
        .into_iter()
        .map(|(name, value)| Named { name, value })
        .collect()
}

/// The watcher's JSON lines, turned into events: `dlp-match` (verdict `drop` when its flow
/// was reset, else `alert`; `--name` matches the detector), `dlp-uncovered` (`alert`, the
/// comm) and `dlp-probed` (`audit`, the library).
struct EventSink {
    out: Output,
    line: Vec<u8>,
}

impl Write for EventSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                let line = std::mem::take(&mut self.line);
                if let Some(ev) = event_line(&line) {
                    self.publish(ev);
                }
            } else {
                self.line.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl EventSink {
    fn publish(&self, line: EventLine) {
        if !self.out.quiet {
            let stdout = std::io::stdout();
            let mut w = stdout.lock();
            let _ = writeln!(
                w,
                "{}",
                if self.out.json {
                    &line.json
                } else {
                    &line.text
                }
            );
            let _ = w.flush();
        }
        if self.out.events.receiver_count() > 0 {
            let _ = self.out.events.send(Arc::new(line));
        }
    }
}

/// One of the watcher's JSON lines as an event (`None` for `dlp-stopped` and anything else).
#[must_use]
pub fn event_line(line: &[u8]) -> Option<EventLine> {
    let mut v: serde_json::Value = serde_json::from_slice(line).ok()?;
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_owned();
    let (verdict, name, text) = match v["event"].as_str()? {
        "dlp-match" => {
            let verdict = if v["action"] == "reset" {
                "drop"
            } else {
                "alert"
            };
            let flow = match &v["flow"] {
                serde_json::Value::Null => "no flow".to_owned(),
                f => format!(
                    "{}:{} -> {}:{}",
                    f["src"].as_str().unwrap_or("-"),
                    f["sport"],
                    f["dst"].as_str().unwrap_or("-"),
                    f["dport"]
                ),
            };
            let text = format!(
                "dlp {verdict} {} {} {} ({}) pid {} {} {flow}",
                s("detector"),
                s("kind"),
                s("excerpt"),
                s("direction"),
                v["pid"],
                s("comm"),
            );
            (verdict, s("detector"), text)
        }
        "dlp-uncovered" => {
            let text = format!(
                "dlp uncovered pid {} {}: {}",
                v["pid"],
                s("comm"),
                s("reason")
            );
            ("alert", s("comm"), text)
        }
        "dlp-probed" => {
            let text = format!(
                "dlp probed {} (pid {} {})",
                s("library"),
                v["pid"],
                s("comm")
            );
            ("audit", s("library"), text)
        }
        _ => return None,
    };
    if let Some(o) = v.as_object_mut() {
        // The stream's `kind` is the event's; a match's kind of secret becomes `secret`.
        if let Some(k) = o.remove("kind") {
            o.insert("secret".into(), k);
        }
        o.insert("kind".into(), "dlp".into());
        o.insert("verdict".into(), verdict.into());
    }
    Some(EventLine {
        kind: "dlp",
        verdict: verdict.to_owned(),
        names: vec![name],
        json: v.to_string(),
        text,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watcher_lines_become_events() {
        let m = br#"{"event":"dlp-match","detector":"card","kind":"visa","excerpt":"4111********1111","direction":"write","pid":7,"tid":7,"comm":"curl","cgroup":1,"flow":{"proto":"tcp","src":"127.0.0.1","sport":4000,"dst":"127.0.0.1","dport":443},"action":"reset"}"#;
        let e = event_line(m).unwrap();
        assert_eq!((e.kind, e.verdict.as_str()), ("dlp", "drop"));
        assert_eq!(e.names, ["card"]);
        assert_eq!(
            e.text,
            "dlp drop card visa 4111********1111 (write) pid 7 curl 127.0.0.1:4000 -> 127.0.0.1:443"
        );
        let j: serde_json::Value = serde_json::from_str(&e.json).unwrap();
        assert_eq!(j["kind"], "dlp");
        assert_eq!(j["secret"], "visa");
        assert_eq!(j["excerpt"], "4111********1111");
        let u = event_line(
            br#"{"event":"dlp-uncovered","pid":9,"comm":"gnutls-cli","reason":"GnuTLS"}"#,
        )
        .unwrap();
        assert_eq!(u.verdict, "alert");
        assert_eq!(u.text, "dlp uncovered pid 9 gnutls-cli: GnuTLS");
        assert!(event_line(br#"{"event":"dlp-stopped","counters":{}}"#).is_none());
        assert!(event_line(b"not json").is_none());
    }
}
