//! Country sets (`[geoip]`, `@country:XX`): the prefixes of a country, read from a GeoIP
//! country database on disk, become a set like any `[sets.NAME]`.
//!
//! Two formats are read, both CSV:
//!
//! - **MaxMind GeoLite2 Country** (`format = "geolite2"`): the `Blocks-IPv4.csv` and
//!   `Blocks-IPv6.csv` files (`network,geoname_id,registered_country_geoname_id,...`, a header
//!   line first) and `Locations-en.csv` (`geoname_id,...,country_iso_code,...`), which names
//!   the country of each `geoname_id`. A network's country is the one it is **located** in
//!   (`geoname_id`); when the database leaves that empty, the country it is **registered**
//!   in (`registered_country_geoname_id`), as MaxMind advises. The *represented* country
//!   (e.g. a military base abroad) is not used. A network with neither belongs to no country.
//! - **DB-IP lite country** (`format = "dbip"`): `start,end,country` lines, no header; each
//!   range is split into the fewest CIDR prefixes by
//!   [`palisade_common::geoip::range_prefixes`].
//!
//! Files are read line by line and only the prefixes of the countries a policy names are
//! kept, so memory follows what the policy uses, not the size of the database. Every
//! malformed line is reported as `file:line:column: message` (at most
//! [`MAX_ERRORS_PER_FILE`] per file); a database with any bad line is refused whole, and the
//! running policy stays.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    time::Duration,
};

use palisade_common::geoip::{country_code, range_prefixes};

use crate::policy::{
    config::Diagnostic,
    model::{Cidr, IpSet, Policy},
    setfile::parse_cidr,
};

/// How set names of countries start: `@country:CN` is the set `country:CN`.
pub const SET_PREFIX: &str = "country:";

/// Bad lines reported per file before the rest of it is only counted.
pub const MAX_ERRORS_PER_FILE: usize = 20;

/// Shortest and longest `[geoip] refresh`, in seconds.
pub const REFRESH_RANGE: std::ops::RangeInclusive<u64> = 1..=7 * 86_400;

/// The database's format and files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// MaxMind GeoLite2 Country CSV: block files (IPv4, IPv6 or both) and the locations file.
    GeoLite2 {
        blocks: Vec<PathBuf>,
        locations: PathBuf,
    },
    /// DB-IP lite country CSV files (`start,end,country`).
    DbIp { files: Vec<PathBuf> },
}

/// `[geoip]`: where country data comes from and how often it is read again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeoIp {
    pub source: Source,
    /// Read the files again this often and swap the country sets when they changed; `None`:
    /// only on reload.
    pub refresh: Option<Duration>,
}

/// Every ISO 3166-1 alpha-2 code assigned to a country or territory, and `XK` (Kosovo), which
/// both databases use.
const ISO_CODES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ \
BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ \
CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ \
EC EE EG EH ER ES ET FI FJ FK FM FO FR \
GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU \
ID IE IL IM IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ \
LA LB LC LI LK LR LS LT LU LV LY \
MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ \
NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA \
RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ \
TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY UZ \
VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW XK";

/// Whether `code` (upper case) is an assigned ISO 3166-1 alpha-2 code (or `XK`).
#[must_use]
pub fn is_iso_code(code: [u8; 2]) -> bool {
    ISO_CODES.split(' ').any(|c| c.as_bytes() == code)
}

/// Every code [`is_iso_code`] accepts, in a fixed order (new codes are only ever appended).
pub fn iso_codes() -> impl Iterator<Item = [u8; 2]> {
    ISO_CODES
        .split(' ')
        .filter_map(|c| country_code(c.as_bytes()))
}

/// The index of a country in the kernel's country map (`per = "country"` rate buckets): its
/// place in [`iso_codes`] plus one, so stable across reloads and refreshes; `None` for a code
/// outside the list (its sources count as of no country).
#[must_use]
pub fn country_index(code: [u8; 2]) -> Option<u8> {
    iso_codes()
        .position(|c| c == code)
        .and_then(|i| u8::try_from(i + 1).ok())
}

/// The set name for the text after `@` when it names a country (`country:cn` ->
/// `country:CN`); `None` for any other set.
#[must_use]
pub fn canonical_set_name(name: &str) -> Option<String> {
    let code = name.strip_prefix(SET_PREFIX)?;
    Some(format!("{SET_PREFIX}{}", code.to_ascii_uppercase()))
}

/// The country code of a set named by [`canonical_set_name`].
#[must_use]
pub fn set_country(name: &str) -> Option<[u8; 2]> {
    country_code(name.strip_prefix(SET_PREFIX)?.as_bytes())
}

/// The prefixes of the countries asked for, and every country the data names.
#[derive(Debug, Default)]
pub struct Countries {
    pub prefixes: BTreeMap<[u8; 2], Vec<Cidr>>,
    /// Every country code that occurs in the data, wanted or not.
    pub seen: BTreeSet<[u8; 2]>,
    /// Data lines read (header lines and blank lines not counted).
    pub lines: u64,
}

/// Where a line is, for messages.
struct At<'a> {
    file: &'a str,
    line: usize,
}

impl At<'_> {
    fn diag(&self, column: usize, message: impl Into<String>) -> Diagnostic {
        Diagnostic {
            file: self.file.to_owned(),
            line: self.line,
            column,
            message: message.into(),
        }
    }
}

/// CSV fields with their 1-based character columns; quotes around a field are removed
/// (`""` inside one is left as is: no field read here may contain a quote).
fn fields(line: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::with_capacity(8);
    let bytes = line.as_bytes();
    let mut start = 0;
    let mut quoted = false;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => {
                out.push((start, &line[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push((start, &line[start..]));
    out.into_iter()
        .map(|(s, f)| {
            let f = f.trim();
            let f = f
                .strip_prefix('"')
                .and_then(|f| f.strip_suffix('"'))
                .unwrap_or(f);
            (line[..s].chars().count() + 1, f)
        })
        .collect()
}

/// Reads `path` line by line, calling `each(line_number, text)` for each non-blank line;
/// errors it returns are collected (at most [`MAX_ERRORS_PER_FILE`], then a count).
fn each_line(
    path: &Path,
    errors: &mut Vec<Diagnostic>,
    mut each: impl FnMut(&At<'_>, &str) -> Result<(), Diagnostic>,
) {
    let name = path.display().to_string();
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            errors.push(Diagnostic {
                file: name,
                line: 0,
                column: 0,
                message: format!("cannot read the GeoIP file: {e}"),
            });
            return;
        }
    };
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let mut buf = String::new();
    let mut bad = 0usize;
    let mut line = 0usize;
    loop {
        buf.clear();
        match reader.read_line(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                errors.push(Diagnostic {
                    file: name.clone(),
                    line: line + 1,
                    column: 1,
                    message: format!("cannot read the line: {e}"),
                });
                return;
            }
        }
        line += 1;
        let text = buf.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        if let Err(d) = each(&At { file: &name, line }, text) {
            bad += 1;
            if bad <= MAX_ERRORS_PER_FILE {
                errors.push(d);
            }
        }
    }
    if bad > MAX_ERRORS_PER_FILE {
        errors.push(Diagnostic {
            file: name,
            line: 0,
            column: 0,
            message: format!(
                "{} more malformed lines not shown",
                bad - MAX_ERRORS_PER_FILE
            ),
        });
    }
}

/// The column of `key` in a GeoLite2 header line.
fn column_of(header: &[(usize, &str)], key: &str) -> Option<usize> {
    header.iter().position(|(_, f)| *f == key)
}

/// Reads the database, keeping the prefixes of the `wanted` countries (upper case).
///
/// # Errors
///
/// Every malformed line and unreadable file, each located in its own file.
pub fn load(source: &Source, wanted: &BTreeSet<[u8; 2]>) -> Result<Countries, Vec<Diagnostic>> {
    let mut out = Countries::default();
    let mut errors = Vec::new();
    match source {
        Source::GeoLite2 { blocks, locations } => {
            let names = load_locations(locations, &mut errors);
            for file in blocks {
                load_blocks(file, &names, wanted, &mut out, &mut errors);
            }
        }
        Source::DbIp { files } => {
            for file in files {
                load_dbip(file, wanted, &mut out, &mut errors);
            }
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// `geoname_id -> country` from a GeoLite2 locations file; ids of continents (no country
/// code) are left out.
fn load_locations(path: &Path, errors: &mut Vec<Diagnostic>) -> HashMap<u32, [u8; 2]> {
    let mut names = HashMap::new();
    // `None` before the header; `Some(None)` after a wrong one (reported once).
    let mut cols: Option<Option<(usize, usize)>> = None;
    each_line(path, errors, |at, text| {
        let f = fields(text);
        let Some(known) = cols else {
            let (Some(id), Some(code)) = (
                column_of(&f, "geoname_id"),
                column_of(&f, "country_iso_code"),
            ) else {
                cols = Some(None);
                return Err(at.diag(
                    1,
                    "expected a header naming `geoname_id` and `country_iso_code` \
                     (a GeoLite2 Country Locations file)",
                ));
            };
            cols = Some(Some((id, code)));
            return Ok(());
        };
        let Some((id_col, code_col)) = known else {
            return Ok(());
        };
        let get = |c: usize| f.get(c).copied();
        let Some((id_at, id)) = get(id_col) else {
            return Err(at.diag(1, format!("expected at least {} fields", id_col + 1)));
        };
        let id: u32 = id
            .parse()
            .map_err(|_| at.diag(id_at, format!("invalid geoname_id `{id}`")))?;
        let Some((code_at, code)) = get(code_col) else {
            return Err(at.diag(1, format!("expected at least {} fields", code_col + 1)));
        };
        if code.is_empty() {
            return Ok(());
        }
        let code = country_code(code.as_bytes())
            .ok_or_else(|| at.diag(code_at, format!("invalid country_iso_code `{code}`")))?;
        names.insert(id, code);
        Ok(())
    });
    names
}

fn load_blocks(
    path: &Path,
    names: &HashMap<u32, [u8; 2]>,
    wanted: &BTreeSet<[u8; 2]>,
    out: &mut Countries,
    errors: &mut Vec<Diagnostic>,
) {
    // As in `load_locations`.
    let mut cols: Option<Option<(usize, usize, usize)>> = None;
    each_line(path, errors, |at, text| {
        let f = fields(text);
        let Some(known) = cols else {
            let (Some(n), Some(i), Some(r)) = (
                column_of(&f, "network"),
                column_of(&f, "geoname_id"),
                column_of(&f, "registered_country_geoname_id"),
            ) else {
                cols = Some(None);
                return Err(at.diag(
                    1,
                    "expected a header naming `network`, `geoname_id` and \
                     `registered_country_geoname_id` (a GeoLite2 Country Blocks file)",
                ));
            };
            cols = Some(Some((n, i, r)));
            return Ok(());
        };
        let Some((net_col, id_col, reg_col)) = known else {
            return Ok(());
        };
        let need = net_col.max(id_col).max(reg_col) + 1;
        if f.len() < need {
            return Err(at.diag(
                1,
                format!("expected at least {need} fields, found {}", f.len()),
            ));
        }
        let (net_at, net) = f[net_col];
        let cidr = parse_cidr(net)
            .map_err(|e| at.diag(net_at, format!("invalid network `{net}`: {e}")))?;
        let id = |c: usize| -> Result<Option<u32>, Diagnostic> {
            let (a, t) = f[c];
            if t.is_empty() {
                return Ok(None);
            }
            t.parse()
                .map(Some)
                .map_err(|_| at.diag(a, format!("invalid geoname id `{t}`")))
        };
        let located = id(id_col)?;
        let registered = id(reg_col)?;
        let Some(geo) = located.or(registered) else {
            return Ok(());
        };
        let Some(&code) = names.get(&geo) else {
            let col = if located.is_some() {
                f[id_col].0
            } else {
                f[reg_col].0
            };
            return Err(at.diag(
                col,
                format!("geoname id {geo} is not a country of the locations file"),
            ));
        };
        out.lines += 1;
        out.seen.insert(code);
        if wanted.contains(&code) {
            out.prefixes.entry(code).or_default().push(cidr);
        }
        Ok(())
    });
}

fn load_dbip(
    path: &Path,
    wanted: &BTreeSet<[u8; 2]>,
    out: &mut Countries,
    errors: &mut Vec<Diagnostic>,
) {
    each_line(path, errors, |at, text| {
        let f = fields(text);
        let [(start_at, start), (end_at, end), (code_at, code)] = f[..] else {
            return Err(at.diag(
                1,
                format!(
                    "expected `start,end,country` (3 fields), found {} fields",
                    f.len()
                ),
            ));
        };
        let start: IpAddr = start
            .parse()
            .map_err(|_| at.diag(start_at, format!("invalid start address `{start}`")))?;
        let end: IpAddr = end
            .parse()
            .map_err(|_| at.diag(end_at, format!("invalid end address `{end}`")))?;
        let code = country_code(code.as_bytes())
            .ok_or_else(|| at.diag(code_at, format!("invalid country code `{code}`")))?;
        let (lo, hi, bits) = match (start, end) {
            (IpAddr::V4(s), IpAddr::V4(e)) => {
                (u128::from(u32::from(s)), u128::from(u32::from(e)), 32)
            }
            (IpAddr::V6(s), IpAddr::V6(e)) => (u128::from(s), u128::from(e), 128),
            _ => {
                return Err(at.diag(
                    end_at,
                    "the start and end addresses are of different families",
                ));
            }
        };
        if lo > hi {
            return Err(at.diag(end_at, "the end address is before the start address"));
        }
        out.lines += 1;
        out.seen.insert(code);
        if wanted.contains(&code) {
            let list = out.prefixes.entry(code).or_default();
            range_prefixes(lo, hi, bits, |addr, len| {
                let ip = if bits == 32 {
                    // `addr` is within 32 bits: `range_prefixes` emits nothing past `hi`.
                    IpAddr::V4(Ipv4Addr::from(u32::try_from(addr).unwrap_or(u32::MAX)))
                } else {
                    IpAddr::V6(Ipv6Addr::from(addr))
                };
                if let Some(c) = Cidr::new(ip, len) {
                    list.push(c);
                }
            });
        }
        Ok(())
    });
}

/// The country sets `policy` names (`country:XX`), filled from a fresh read of its `[geoip]`
/// files: `Ok(None)` when nothing changed or the policy has no `[geoip]`. Other sets, and
/// live changes to them, are kept; a live change to a country set is replaced by the data.
///
/// # Errors
///
/// The database's problems, one per line; the running sets stay.
pub fn refreshed(policy: &Policy) -> Result<Option<Policy>, Vec<Diagnostic>> {
    let Some(geo) = &policy.geoip else {
        return Ok(None);
    };
    let wanted: BTreeSet<[u8; 2]> = policy
        .sets
        .iter()
        .filter_map(|s| set_country(&s.name))
        .collect();
    if wanted.is_empty() {
        return Ok(None);
    }
    let mut found = load(&geo.source, &wanted)?;
    let mut next = policy.clone();
    let mut changed = false;
    for set in &mut next.sets {
        if let Some(code) = set_country(&set.name) {
            let entries = found.prefixes.remove(&code).unwrap_or_default();
            if entries != set.entries {
                *set = IpSet {
                    name: set.name.clone(),
                    entries,
                };
                changed = true;
            }
        }
    }
    Ok(changed.then_some(next))
}

/// What a file looked like when it was last read: its length and modification time.
type Stamp = Vec<(u64, Option<std::time::SystemTime>)>;

fn stamp(source: &Source) -> Stamp {
    let files: Vec<&PathBuf> = match source {
        Source::GeoLite2 { blocks, locations } => blocks.iter().chain([locations]).collect(),
        Source::DbIp { files } => files.iter().collect(),
    };
    files
        .into_iter()
        .map(|f| match std::fs::metadata(f) {
            Ok(m) => (m.len(), m.modified().ok()),
            Err(_) => (0, None),
        })
        .collect()
}

/// The daemon's side of `[geoip] refresh`: when the interval has passed and the files
/// changed (length or modification time), the country sets are read again.
#[derive(Debug, Default)]
pub struct Refresher {
    /// The section the stamp belongs to; another one (a reload) starts afresh.
    geoip: Option<GeoIp>,
    stamp: Stamp,
    last: Option<std::time::Instant>,
    /// Refreshes that changed the sets, and those that failed.
    pub swapped: u64,
    pub failed: u64,
}

/// What one [`Refresher::tick`] found.
#[derive(Debug)]
pub enum Tick {
    /// Not due, no `[geoip] refresh`, or the files did not change.
    Idle,
    /// The files changed but the country sets did not.
    Unchanged,
    /// The policy with its country sets read again, to install.
    Changed(Box<Policy>),
    /// The files could not be read: the running sets stay.
    Failed(String),
}

impl Refresher {
    /// Called every second or so with the running policy.
    pub fn tick(&mut self, policy: &Policy, now: std::time::Instant) -> Tick {
        let Some(geo) = &policy.geoip else {
            self.geoip = None;
            return Tick::Idle;
        };
        if self.geoip.as_ref() != Some(geo) {
            // A new policy has just read the files.
            self.geoip = Some(geo.clone());
            self.stamp = stamp(&geo.source);
            self.last = Some(now);
            return Tick::Idle;
        }
        let Some(every) = geo.refresh else {
            return Tick::Idle;
        };
        if self.last.is_some_and(|t| now.duration_since(t) < every) {
            return Tick::Idle;
        }
        self.last = Some(now);
        let current = stamp(&geo.source);
        if current == self.stamp {
            return Tick::Idle;
        }
        match refreshed(policy) {
            Ok(Some(next)) => {
                self.stamp = current;
                self.swapped += 1;
                Tick::Changed(Box::new(next))
            }
            Ok(None) => {
                self.stamp = current;
                Tick::Unchanged
            }
            Err(errors) => {
                // The stamp stays old: the next tick tries again.
                self.failed += 1;
                let first = errors.first().map_or_else(String::new, ToString::to_string);
                Tick::Failed(format!(
                    "geoip: the country data could not be read again ({} problems, the first: \
                     {first}); the running country sets stay",
                    errors.len()
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests;
