//! Runs `dig` and parses what it printed.

use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

use crate::support::netns::NetnsPair;

/// What one `dig` run printed, parsed.
#[derive(Debug, Clone)]
pub struct Dig {
    /// The command line, for messages.
    pub args: Vec<String>,
    /// `NOERROR`, `NXDOMAIN`, ...; `None` when no answer arrived.
    pub status: Option<String>,
    /// Header flags (`qr`, `aa`, `rd`, `ra`, ...).
    pub flags: Vec<String>,
    /// The question section line as echoed by the server, e.g. `;BloCked.test.  IN  A`.
    pub question: Option<String>,
    /// The data of each answer record.
    pub answers: Vec<String>,
    /// `;; Query time: N msec`.
    pub query_time: Option<Duration>,
    /// Wall time of the whole run.
    pub elapsed: Duration,
    pub exit_code: Option<i32>,
    pub pid: u32,
    pub stdout: String,
    pub stderr: String,
}

impl Dig {
    /// Parses a finished run.
    #[must_use]
    pub fn parse(args: Vec<String>, out: &Output, elapsed: Duration, pid: u32) -> Self {
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut d = Self {
            args,
            status: None,
            flags: Vec::new(),
            question: None,
            answers: Vec::new(),
            query_time: None,
            elapsed,
            exit_code: out.status.code(),
            pid,
            stdout: stdout.clone(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        };
        let mut section = "";
        for line in stdout.lines() {
            if let Some(rest) = line.strip_prefix(";; ->>HEADER<<-") {
                d.status = rest
                    .split(',')
                    .find_map(|f| f.trim().strip_prefix("status: "))
                    .map(str::to_string);
            } else if let Some(rest) = line.strip_prefix(";; flags:") {
                let flags = rest.split(';').next().unwrap_or_default();
                d.flags = flags.split_whitespace().map(str::to_string).collect();
            } else if let Some(rest) = line.strip_prefix(";; Query time: ") {
                d.query_time = rest
                    .strip_suffix(" msec")
                    .and_then(|n| n.trim().parse().ok())
                    .map(Duration::from_millis);
            } else if line.starts_with(";; ") && line.ends_with(" SECTION:") {
                section = if line.contains("QUESTION") {
                    "question"
                } else if line.contains("ANSWER") {
                    "answer"
                } else {
                    "other"
                };
            } else if line.trim().is_empty() {
                section = "";
            } else if section == "question" {
                d.question = Some(line.to_string());
            } else if section == "answer"
                && !line.starts_with(';')
                && let Some(data) = line.split_whitespace().last()
            {
                d.answers.push(data.to_string());
            }
        }
        d
    }

    /// True when a response arrived.
    #[must_use]
    pub fn answered(&self) -> bool {
        self.status.is_some()
    }

    #[must_use]
    pub fn has_flag(&self, f: &str) -> bool {
        self.flags.iter().any(|x| x == f)
    }
}

impl std::fmt::Display for Dig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "dig {} -> status {:?}, answers {:?}, exit {:?}, {:?}\n{}{}",
            self.args.join(" "),
            self.status,
            self.answers,
            self.exit_code,
            self.elapsed,
            self.stdout,
            self.stderr
        )
    }
}

/// The arguments of one query: `@server name [type] +tries=1 +time=T [extra...]`.
#[must_use]
pub fn args(server: &str, name: &str, qtype: &str, time: u32, extra: &[&str]) -> Vec<String> {
    let mut a = vec![
        format!("@{server}"),
        name.to_string(),
        qtype.to_string(),
        "+tries=1".to_string(),
        format!("+time={time}"),
    ];
    a.extend(extra.iter().map(|s| (*s).to_string()));
    a
}

/// Runs `cmd` (which ends up exec'ing dig) to completion and parses it.
pub fn run(mut cmd: Command, args: Vec<String>) -> Dig {
    let start = Instant::now();
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null())
        .spawn()
        .expect("spawn dig");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait dig");
    Dig::parse(args, &out, start.elapsed(), pid)
}

/// `dig` from namespace `ns`: `@server name qtype +tries=1 +time=T extra...`.
pub fn dig(
    pair: &NetnsPair,
    ns: &str,
    server: &str,
    name: &str,
    qtype: &str,
    time: u32,
    extra: &[&str],
) -> Dig {
    let a = args(server, name, qtype, time, extra);
    let mut cmd = pair.command(ns, "dig");
    cmd.args(&a);
    run(cmd, a)
}
