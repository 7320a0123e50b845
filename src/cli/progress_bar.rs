//! A command's progress, fed from its job's [`Progress`] counters: a progress bar when stderr
//! is a terminal; otherwise (a farm's task log, a service, a pipe) a log line every
//! `log.stats`, so that a long transfer shows how far it got and how long it has left.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::config::LogSettings;
use crate::progress::{Progress, ProgressLog};

pub struct Bar {
    bar: ProgressBar,
    /// Dropping it wakes the ticker at once: the display must never delay a command's exit.
    stop: Option<mpsc::Sender<()>>,
    ticker: Option<JoinHandle<()>>,
}

/// How often the bar is redrawn.
const DRAW_EVERY: Duration = Duration::from_millis(100);

impl Bar {
    /// Shows `progress` under `label`: a bar on a terminal, log lines every `log.stats`
    /// elsewhere, or nothing (then no thread runs at all), as with `-q`.
    pub fn start(label: &'static str, progress: Arc<Progress>, log: &LogSettings) -> Bar {
        if log.quiet {
            return Bar::hidden();
        }
        if std::io::stderr().is_terminal() {
            return Bar::draw(label, progress);
        }
        let every = log.stats.0;
        if every.is_zero() {
            return Bar::hidden();
        }
        let mut lines = ProgressLog::new(label, log.format);
        Bar::tick(ProgressBar::hidden(), every, false, move || {
            lines.log(&progress.snapshot())
        })
    }

    fn hidden() -> Bar {
        Bar {
            bar: ProgressBar::hidden(),
            stop: None,
            ticker: None,
        }
    }

    fn draw(label: &'static str, progress: Arc<Progress>) -> Bar {
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {msg} ({elapsed}, {eta} left)",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_prefix(label);
        let b = bar.clone();
        let mut before = 0;
        Bar::tick(bar, DRAW_EVERY, true, move || {
            let s = progress.snapshot();
            // Before the totals are known (hashing, planning) the bar is empty, not full.
            match s.bytes_total {
                0 => b.unset_length(),
                total => b.set_length(total),
            }
            b.set_position(s.bytes_done);
            // Bytes done before the display began (a job followed while it runs) are no
            // part of the rate and time left: they start from here.
            if s.bytes_before != before {
                before = s.bytes_before;
                b.tick(); // the estimator takes the jump in…
                b.reset_eta(); // …and forgets it
            }
            b.set_message(format!("{}/{} files", s.files_done, s.files_total));
        })
    }

    /// Runs `each` every `every` (and first at once if `at_once`) until the `Bar` is dropped.
    fn tick(
        bar: ProgressBar,
        every: Duration,
        at_once: bool,
        mut each: impl FnMut() + Send + 'static,
    ) -> Bar {
        let (stop, stopped) = mpsc::channel::<()>();
        let ticker = std::thread::spawn(move || {
            if at_once {
                each();
            }
            while stopped.recv_timeout(every) == Err(mpsc::RecvTimeoutError::Timeout) {
                each();
            }
        });
        Bar {
            bar,
            stop: Some(stop),
            ticker: Some(ticker),
        }
    }
}

impl Drop for Bar {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.ticker.take() {
            let _ = t.join();
        }
        self.bar.finish_and_clear();
    }
}
