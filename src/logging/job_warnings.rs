//! The warnings a daemon job gives, kept for its record: a client following the job (`--daemon`,
//! `status --follow`, a DCC's plugin) shows them as a local run shows its own, in the task's
//! log, not only in the daemon's.
//!
//! A job runs in a span given a [`Warnings`] ([`capture`]); every WARN or ERROR event inside it
//! (in the job's future, and in the blocking work it hands off with [`spawn_blocking`] or the
//! tasks it spawns in its span) is added to it by the [`Layer`] installed with the log output.

use std::sync::{Arc, Mutex};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// A job keeps this many warnings; past them it counts the others (the daemon's log has them
/// all): a job warning for each of 100,000 files must not grow its record without bound.
const KEPT: usize = 100;

/// The warnings of one job, in the order they came.
#[derive(Clone, Default)]
pub struct Warnings(Arc<Mutex<Kept>>);

#[derive(Default)]
struct Kept {
    lines: Vec<String>,
    more: usize,
}

impl Warnings {
    fn push(&self, line: String) {
        let mut k = self.0.lock().expect("not poisoned");
        if k.lines.len() < KEPT {
            k.lines.push(line);
        } else {
            k.more += 1;
        }
    }

    /// Those kept, and a last line for those left out.
    pub fn lines(&self) -> Vec<String> {
        let k = self.0.lock().expect("not poisoned");
        let mut lines = k.lines.clone();
        if k.more > 0 {
            lines.push(format!(
                "… and {} more warnings: see the daemon's log",
                k.more
            ));
        }
        lines
    }
}

/// Makes `span` (a job's) keep the warnings given inside it in `warnings`. Nothing when the
/// span is disabled (a `log.level` of `error` or `off`) or the log output is not installed.
pub fn capture(span: &tracing::Span, warnings: Warnings) {
    span.with_subscriber(|(id, dispatch)| {
        if let Some(registry) = dispatch.downcast_ref::<tracing_subscriber::Registry>()
            && let Some(span) = registry.span(id)
        {
            span.extensions_mut().insert(warnings);
        }
    });
}

/// `tokio::task::spawn_blocking`, in the caller's span (and with its log output, where that is
/// its thread's own): a job's warnings from the blocking work it hands off reach its record.
pub fn spawn_blocking<F, R>(f: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let span = tracing::Span::current();
    // Outside a job (every CLI command) as it is: a million-file sync hands off a copy each.
    if span.is_none() {
        return tokio::task::spawn_blocking(f);
    }
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    tokio::task::spawn_blocking(move || {
        tracing::dispatcher::with_default(&dispatch, || span.in_scope(f))
    })
}

/// The layer that adds WARN and ERROR events to the [`Warnings`] of the job they are in.
pub struct Layer;

impl<S> tracing_subscriber::Layer<S> for Layer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        // WARN and ERROR: the less verbose levels are the lesser ones.
        if *event.metadata().level() > Level::WARN {
            return;
        }
        let Some(scope) = ctx.event_scope(event) else {
            return;
        };
        for span in scope {
            if let Some(warnings) = span.extensions().get::<Warnings>() {
                warnings.push(line_of(event));
                return;
            }
        }
    }
}

/// The event as the text log writes it, without time, level or span: its message, then its
/// other fields as `name=value`.
fn line_of(event: &Event<'_>) -> String {
    #[derive(Default)]
    struct Line {
        message: String,
        fields: String,
    }
    impl Visit for Line {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.message = format!("{value:?}");
            } else {
                self.fields += &format!(" {}={value:?}", field.name());
            }
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "message" {
                self.message = value.to_string();
            } else {
                self.fields += &format!(" {}={value:?}", field.name());
            }
        }
    }
    let mut line = Line::default();
    event.record(&mut line);
    line.message + &line.fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn a_job_keeps_the_warnings_given_in_its_span_and_its_blocking_work() {
        let subscriber = tracing_subscriber::registry().with(Layer);
        let _default = tracing::subscriber::set_default(subscriber);
        let (mine, other) = (Warnings::default(), Warnings::default());
        let span = tracing::warn_span!("job", id = "job-1");
        capture(&span, mine.clone());
        let elsewhere = tracing::warn_span!("job", id = "job-2");
        capture(&elsewhere, other.clone());
        tracing::warn!("before the job: nobody's");
        span.in_scope(|| {
            tracing::info!("not a warning");
            tracing::warn!(path = "/s/a.exr", "input does not exist");
            tracing::info_span!("inner").in_scope(|| tracing::error!("failed {}", 3));
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let _in = span.enter();
        rt.block_on(async { spawn_blocking(|| tracing::warn!("from blocking work")).await })
            .unwrap();
        assert_eq!(
            mine.lines(),
            [
                "input does not exist path=\"/s/a.exr\"",
                "failed 3",
                "from blocking work"
            ]
        );
        assert!(other.lines().is_empty());
    }

    #[test]
    fn a_job_keeps_its_first_warnings_and_counts_the_others() {
        let w = Warnings::default();
        for i in 0..KEPT + 5 {
            w.push(format!("w{i}"));
        }
        let lines = w.lines();
        assert_eq!(lines.len(), KEPT + 1);
        assert_eq!(lines[KEPT - 1], format!("w{}", KEPT - 1));
        assert_eq!(lines[KEPT], "… and 5 more warnings: see the daemon's log");
    }
}
