//! A terminal progress bar fed from a job's [`Progress`] counters (not drawn when stderr is not
//! a terminal, so scripts and logs stay clean).

use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::progress::Progress;

pub struct Bar {
    bar: ProgressBar,
    /// Dropping it wakes the ticker at once: the bar must never delay a command's exit.
    stop: Option<mpsc::Sender<()>>,
    ticker: Option<JoinHandle<()>>,
}

impl Bar {
    /// Starts drawing `progress` under `label` (unless `hidden`: then nothing runs at all).
    pub fn start(label: &'static str, progress: Arc<Progress>, hidden: bool) -> Bar {
        if hidden {
            return Bar {
                bar: ProgressBar::hidden(),
                stop: None,
                ticker: None,
            };
        }
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} {msg} ({elapsed}, {eta} left)",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_prefix(label);
        let (stop, stopped) = mpsc::channel::<()>();
        let ticker = {
            let bar = bar.clone();
            std::thread::spawn(move || {
                loop {
                    let s = progress.snapshot();
                    bar.set_length(s.bytes_total);
                    bar.set_position(s.bytes_done);
                    bar.set_message(format!("{}/{} files", s.files_done, s.files_total));
                    if stopped.recv_timeout(Duration::from_millis(100))
                        != Err(mpsc::RecvTimeoutError::Timeout)
                    {
                        return;
                    }
                }
            })
        };
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
