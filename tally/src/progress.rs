//! Progress of long commands on standard error: a bar that redraws itself
//! for a person at a terminal, and plain lines every few seconds otherwise,
//! so a log file never holds carriage returns or a line per redraw (JSON
//! lines with `--log-format json`).

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::LogFormat;

/// How often a plain line is written when standard error is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// One command's progress: a count towards a total, or a status line.
pub struct Progress {
    label: &'static str,
    total: Option<u64>,
    started: Instant,
    bar: Option<ProgressBar>,
    /// When the last plain line was written (none yet: `None`).
    written: Option<Instant>,
    /// The last status or count.
    last: String,
    /// Whether `last` has not been written yet.
    unwritten: bool,
}

impl Progress {
    /// Progress of `label` (`produced`, `committed`) towards `total` items.
    pub fn counting(label: &'static str, total: u64) -> Progress {
        Progress::new(label, Some(total))
    }

    /// Progress told as status lines (a job's state and counts).
    pub fn status(label: &'static str) -> Progress {
        Progress::new(label, None)
    }

    fn new(label: &'static str, total: Option<u64>) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = match total {
                Some(total) => ProgressBar::new(total).with_style(
                    ProgressStyle::with_template(
                        "  {prefix:>10} [{bar:30}] {pos:>10}/{len} ({per_sec}, {elapsed})",
                    )
                    .expect("a valid template")
                    .progress_chars("=> "),
                ),
                None => ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("  {prefix}: {msg} ({elapsed})")
                        .expect("a valid template"),
                ),
            };
            bar.set_prefix(label);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Progress {
            label,
            total,
            started: Instant::now(),
            bar,
            written: None,
            last: String::new(),
            unwritten: false,
        }
    }

    /// `done` items are done.
    pub fn set(&mut self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
            return;
        }
        let rate = done as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
        let total = self.total.map(|t| format!("/{t}")).unwrap_or_default();
        self.last = format!("  {} {done}{total} ({rate:.0}/s)", self.label);
        self.plain();
    }

    /// The status is now `text`.
    pub fn say(&mut self, text: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(text);
            return;
        }
        self.last = format!(
            "  {}: {text} ({:.0} s)",
            self.label,
            self.started.elapsed().as_secs_f64()
        );
        self.plain();
    }

    /// A line of its own between progress updates (a hint, a warning).
    pub fn note(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => LogFormat::line("INFO", text),
        }
    }

    /// Writes the last plain line if it is due.
    fn plain(&mut self) {
        self.unwritten = true;
        if self.written.is_none_or(|at| at.elapsed() >= PLAIN_EVERY) {
            LogFormat::line("INFO", &self.last);
            self.written = Some(Instant::now());
            self.unwritten = false;
        }
    }

    /// Ends the progress: the bar stays drawn as it ended; without one, the
    /// last state is written (unless it just was).
    pub fn finish(self) {
        match &self.bar {
            Some(bar) => bar.finish(),
            None if self.unwritten => LogFormat::line("INFO", &self.last),
            None => {}
        }
    }
}
