//! Results per kernel, read from libtest's own output (`test NAME ... FAILED`,
//! `test result: ok. N passed; M failed; K ignored; …`) and from /init's markers; the
//! table printed at the end and written to target/vm/results.md.
use std::{fmt::Write as _, time::Duration};

/// One test binary's outcome.
#[derive(Clone, Debug, Default)]
pub struct Binary {
    pub name: String,
    pub exit: Option<i32>,
    pub passed: u32,
    pub failed: u32,
    pub ignored: u32,
    pub failing: Vec<String>,
    /// libtest printed its `test result:` line (a crash prints none).
    pub summary: bool,
    pub output: Vec<String>,
}

impl Binary {
    pub fn new(name: &str) -> Binary {
        Binary { name: name.to_string(), ..Binary::default() }
    }

    /// Feeds one line of libtest's output.
    pub fn line(&mut self, text: &str) {
        self.output.push(text.to_string());
        let t = text.trim();
        if let Some(rest) = t.strip_prefix("test result: ") {
            self.summary = true;
            for part in rest.split(';') {
                let mut words = part.split_whitespace().rev();
                let (Some(what), Some(n)) = (words.next(), words.next()) else { continue };
                let n: u32 = n.parse().unwrap_or(0);
                match what {
                    "passed" => self.passed = n,
                    "failed" => self.failed = n,
                    "ignored" => self.ignored = n,
                    _ => {}
                }
            }
        } else if let Some(name) = t.strip_prefix("test ").and_then(|r| r.strip_suffix(" ... FAILED"))
            && !self.failing.iter().any(|f| f == name)
        {
            self.failing.push(name.to_string());
        }
    }

    /// Failures, counting a binary that died without a summary (or exited non-zero with
    /// nothing failed) as one.
    pub fn failures(&self) -> u32 {
        let crashed = !self.summary || (self.exit.is_some_and(|c| c != 0) && self.failed == 0);
        self.failed + u32::from(crashed)
    }
}

/// One row of the matrix.
#[derive(Clone, Debug, Default)]
pub struct Kernel {
    pub label: String,
    /// `uname -r`.
    pub release: String,
    pub binaries: Vec<Binary>,
    /// `binary::test` of each test not run (with why in `notes`).
    pub skipped: Vec<String>,
    pub boot: Option<Duration>,
    pub run: Option<Duration>,
    /// Problems outside any one test (timeout, no end marker, a module that did not load).
    pub problems: Vec<String>,
    /// Things worth saying that are not failures.
    pub notes: Vec<String>,
    /// Set instead of test counts for a kernel that must refuse eBPF mode.
    pub refusal: Option<Refusal>,
}

#[derive(Clone, Debug)]
pub struct Refusal {
    pub checks_passed: u32,
    pub checks_failed: Vec<String>,
    pub message: String,
}

impl Kernel {
    pub fn passed(&self) -> u32 {
        match &self.refusal {
            Some(r) => r.checks_passed,
            None => self.binaries.iter().map(|b| b.passed).sum(),
        }
    }

    pub fn failed(&self) -> u32 {
        let base = match &self.refusal {
            Some(r) => r.checks_failed.len() as u32,
            None => self.binaries.iter().map(Binary::failures).sum(),
        };
        base + self.problems.len() as u32
    }

    pub fn skipped(&self) -> u32 {
        self.binaries.iter().map(|b| b.ignored).sum::<u32>() + self.skipped.len() as u32
    }

    /// What failed, by name.
    pub fn failing(&self) -> Vec<String> {
        let mut out: Vec<String> = self.problems.clone();
        if let Some(r) = &self.refusal {
            out.extend(r.checks_failed.iter().cloned());
            return out;
        }
        for b in &self.binaries {
            out.extend(b.failing.iter().map(|t| format!("{}::{t}", b.name)));
            if b.failures() > b.failed {
                out.push(format!(
                    "{} (exit {}, no complete libtest summary)",
                    b.name,
                    b.exit.map_or("?".into(), |c| c.to_string())
                ));
            }
        }
        out
    }

    fn result(&self) -> String {
        match (&self.refusal, self.failed()) {
            (Some(_), 0) => "refuses eBPF mode, as it must".into(),
            (Some(_), _) => "FAIL (did not refuse cleanly)".into(),
            (None, 0) => "pass".into(),
            (None, _) => "FAIL".into(),
        }
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("—".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}

/// The matrix as a markdown table, then what failed and what was skipped.
pub fn markdown(rows: &[Kernel]) -> String {
    let mut s = String::from(
        "| kernel | release | result | passed | failed | skipped | boot | run |\n|---|---|---|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            r.release,
            r.result(),
            r.passed(),
            r.failed(),
            r.skipped(),
            secs(r.boot),
            secs(r.run)
        );
    }
    for r in rows {
        let failing = r.failing();
        if !failing.is_empty() {
            let _ = writeln!(s, "\nFailed on {} ({}):", r.label, r.release);
            for f in failing {
                let _ = writeln!(s, "- {f}");
            }
        }
        if !r.skipped.is_empty() {
            let _ = writeln!(s, "\nSkipped on {} ({}):", r.label, r.release);
            for t in &r.skipped {
                let _ = writeln!(s, "- {t}");
            }
        }
        if let Some(rf) = &r.refusal {
            let _ = writeln!(
                s,
                "\n{} ({}) refuses eBPF mode with:\n\n```\n{}\n```",
                r.label,
                r.release,
                rf.message.trim_end()
            );
        }
        for n in &r.notes {
            let _ = writeln!(s, "\nNote on {}: {n}", r.label);
        }
    }
    s
}
