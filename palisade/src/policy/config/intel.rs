//! The `[intel]` section and its `[[intel.feed]]` tables (see [`crate::intel`] and the
//! module docs of `config`).

use std::time::Duration;

use super::{Checker, Node, Val};
use crate::intel::{
    Action, Column, DEFAULT_MAX_CIDRS, DEFAULT_MAX_IPS, DEFAULT_REFRESH, Feed, Format, Intel,
    MAX_CAPACITY, Source,
};
use palisade_common::intel::MAX_FEEDS;

pub(super) const INTEL_KEYS: &[&str] = &["feed", "max_ips", "max_cidrs", "egress"];
const FEED_KEYS: &[&str] = &["name", "source", "format", "column", "action", "refresh"];

/// Shortest refresh interval, in seconds.
const MIN_REFRESH: i64 = 1;
/// Longest refresh interval (a week), in seconds.
const MAX_REFRESH: i64 = 7 * 86_400;

impl Checker<'_> {
    /// `[intel]`. Problems are recorded; a feed with an error is left out.
    pub(super) fn intel(&mut self, node: &Node) -> Intel {
        let mut intel = Intel {
            max_ips: DEFAULT_MAX_IPS,
            max_cidrs: DEFAULT_MAX_CIDRS,
            ..Intel::default()
        };
        let Some(view) = self.table(node, "`intel`") else {
            return intel;
        };
        self.check_keys(view, "[intel]", INTEL_KEYS);
        if let Some(n) = view.get("max_ips")
            && let Some(v) = self.integer(n, "max_ips", 1, MAX_CAPACITY.into())
        {
            intel.max_ips = v as u32;
        }
        if let Some(n) = view.get("max_cidrs")
            && let Some(v) = self.integer(n, "max_cidrs", 1, MAX_CAPACITY.into())
        {
            intel.max_cidrs = v as u32;
        }
        if let Some(n) = view.get("egress")
            && let Some(on) = self.boolean(n, "egress")
        {
            intel.egress = on;
        }
        let Some(feeds) = view.get("feed") else {
            return intel;
        };
        let Val::Array(items) = &feeds.val else {
            self.err(
                feeds.at,
                format!(
                    "`feed` must be an array of tables (`[[intel.feed]]`), found {}",
                    feeds.val.type_name()
                ),
            );
            return intel;
        };
        if items.len() > MAX_FEEDS as usize {
            self.err(
                feeds.at,
                format!("{} feeds; `[intel]` holds {MAX_FEEDS}", items.len()),
            );
            return intel;
        }
        for item in items {
            if let Some(f) = self.feed(item) {
                if let Some(other) = intel.feeds.iter().find(|o| o.name == f.name) {
                    let msg = format!(
                        "[[intel.feed]]: the name {:?} is taken by the feed of line {}",
                        f.name, other.line
                    );
                    self.err(item.at, msg);
                    continue;
                }
                intel.feeds.push(f);
            }
        }
        intel
    }

    /// One `[[intel.feed]]`; `None` when it has an error (recorded).
    fn feed(&mut self, node: &Node) -> Option<Feed> {
        let view = self.table(node, "`[[intel.feed]]`")?;
        self.check_keys(view, "[[intel.feed]]", FEED_KEYS);
        let errors = self.error_count();
        let line = self.lines.line(node.at);
        let name = match view.get("name") {
            Some(n) => {
                let name = self.string(n, "name").map(str::to_owned);
                if let Some(s) = &name
                    && !super::valid_name(s, b".")
                {
                    self.err(
                        n.at,
                        format!("`name` {s:?}: letters, digits, `_`, `-` and `.` only"),
                    );
                }
                name
            }
            None => {
                self.err(node.at, "[[intel.feed]] needs a `name`");
                None
            }
        };
        let source = match view.get("source") {
            Some(n) => match self.string(n, "source") {
                Some(s) if s.starts_with("http://") => match crate::intel::fetch::split_url(s) {
                    Ok(_) => Some(Source::Http(s.to_owned())),
                    Err(e) => {
                        self.err(n.at, format!("`source`: {e}"));
                        None
                    }
                },
                Some(s) if s.contains("://") => {
                    self.err(
                        n.at,
                        format!("`source` is a file or an http:// URL, found {s:?}"),
                    );
                    None
                }
                Some(s) => Some(Source::File(self.base_dir.join(s))),
                None => None,
            },
            None => {
                self.err(
                    node.at,
                    "[[intel.feed]] needs a `source`, a file or an http:// URL",
                );
                None
            }
        };
        let column = match view.get("column") {
            None => None,
            Some(n) => match &n.val {
                Val::Int(i) if (0..=1023).contains(i) => Some(Column::Index(*i as usize)),
                Val::Str(s) if !s.is_empty() => Some(Column::Name(s.clone())),
                other => {
                    self.err(
                        n.at,
                        format!(
                            "`column` is a 0-based index or a header name, found {}",
                            other.type_name()
                        ),
                    );
                    None
                }
            },
        };
        let format = match view.get("format") {
            None => Some(Format::Plain),
            Some(n) => match self.string(n, "format") {
                Some("plain") => Some(Format::Plain),
                Some("csv") => Some(Format::Csv {
                    column: column.clone().unwrap_or_default(),
                }),
                Some("stix") => Some(Format::Stix),
                Some(other) => {
                    self.err(
                        n.at,
                        format!("`format` is \"plain\", \"csv\" or \"stix\", found {other:?}"),
                    );
                    None
                }
                None => None,
            },
        };
        if let (Some(n), Some(f)) = (view.get("column"), &format)
            && !matches!(f, Format::Csv { .. })
        {
            self.err(n.at, "`column` is only for `format = \"csv\"`");
        }
        let action = match view.get("action") {
            None => Some(Action::Drop),
            Some(n) => match self.string(n, "action") {
                Some("drop") => Some(Action::Drop),
                Some("alert") => Some(Action::Alert),
                Some("tag") => Some(Action::Tag),
                Some(other) => {
                    self.err(
                        n.at,
                        format!("`action` is \"drop\", \"alert\" or \"tag\", found {other:?}"),
                    );
                    None
                }
                None => None,
            },
        };
        let refresh = match view.get("refresh") {
            None => Some(DEFAULT_REFRESH),
            Some(n) => self
                .integer(n, "refresh", MIN_REFRESH, MAX_REFRESH)
                .map(|s| Duration::from_secs(s as u64)),
        };
        if self.error_count() != errors {
            return None;
        }
        Some(Feed {
            name: name?,
            source: source?,
            format: format?,
            action: action?,
            refresh: refresh?,
            line,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::super::parse_policy;
    use crate::intel::{Action, Column, Format, Source};

    fn errors(text: &str) -> Vec<String> {
        match parse_policy(text, "p.toml", Path::new("/etc/palisade")) {
            Ok(p) => panic!("expected errors, parsed {:#?}", p.intel),
            Err(e) => e.errors.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn feeds_parse_to_the_model_with_defaults() {
        let p = parse_policy(
            r#"
[intel]
max_ips = 5000
egress = true

[[intel.feed]]
name = "blocklist.de"
source = "feeds/all.txt"

[[intel.feed]]
name = "abuse"
source = "http://10.0.0.5:8080/abuse.csv"
format = "csv"
column = "ip_address"
action = "alert"
refresh = 300

[[intel.feed]]
name = "cti"
source = "/var/lib/cti/bundle.json"
format = "stix"
action = "tag"
"#,
            "p.toml",
            Path::new("/etc/palisade"),
        )
        .expect("valid");
        let i = &p.intel;
        assert_eq!((i.max_ips, i.max_cidrs, i.egress), (5000, 1 << 18, true));
        assert_eq!(i.feeds.len(), 3);
        assert_eq!(
            i.feeds[0].source,
            Source::File("/etc/palisade/feeds/all.txt".into())
        );
        assert_eq!(
            (i.feeds[0].format.clone(), i.feeds[0].action),
            (Format::Plain, Action::Drop)
        );
        assert_eq!(i.feeds[0].refresh.as_secs(), 3600);
        assert_eq!(
            i.feeds[1].format,
            Format::Csv {
                column: Column::Name("ip_address".into())
            }
        );
        assert_eq!(i.feeds[1].refresh.as_secs(), 300);
        assert_eq!(
            (i.feeds[2].format.clone(), i.feeds[2].action),
            (Format::Stix, Action::Tag)
        );
        assert_eq!(p.intel.sizes().ips, 5000);
        let none = parse_policy("", "p.toml", Path::new("/")).unwrap();
        assert_eq!(
            none.intel.sizes().ips,
            crate::intel::STANDBY_IPS,
            "no feeds: room for a reload that adds [intel]"
        );
    }

    #[test]
    fn mistakes_are_reported_at_their_place() {
        assert_eq!(
            errors(
                "[intel]\nmax_ips = 0\nbogus = 1\n\n[[intel.feed]]\nname = \"a\"\nsource = \"https://x/y\"\n\
                 format = \"xml\"\naction = \"block\"\nrefresh = 0\n\n[[intel.feed]]\nsource = \"f.txt\"\n\
                 column = 2\n\n[[intel.feed]]\nname = \"b\"\nsource = \"b.txt\"\n\n[[intel.feed]]\n\
                 name = \"b\"\nsource = \"c.txt\"\n"
            ),
            [
                "p.toml:2:11: `max_ips` must be between 1 and 33554432, found 0",
                "p.toml:3:1: unknown key `bogus` in [intel]; expected one of `feed`, `max_ips`, \
                 `max_cidrs`, `egress`",
                "p.toml:7:10: `source` is a file or an http:// URL, found \"https://x/y\"",
                "p.toml:8:10: `format` is \"plain\", \"csv\" or \"stix\", found \"xml\"",
                "p.toml:9:10: `action` is \"drop\", \"alert\" or \"tag\", found \"block\"",
                "p.toml:10:11: `refresh` must be between 1 and 604800, found 0",
                "p.toml:12:1: [[intel.feed]] needs a `name`",
                "p.toml:14:10: `column` is only for `format = \"csv\"`",
                "p.toml:20:1: [[intel.feed]]: the name \"b\" is taken by the feed of line 16",
            ]
        );
    }
}
