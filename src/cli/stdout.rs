//! Standard output for the commands' results: a reader that goes away early (`| head`) ends
//! the command quietly with exit 0, as with other Unix tools, instead of a panic (`println!`)
//! or an error.

use std::io::{self, Write};

/// The error a write to stdout gives once its reader has gone.
#[derive(Debug, thiserror::Error)]
#[error("stdout was closed")]
pub struct StdoutClosed;

/// Whether `e` (anywhere in its chain) is a write to stdout whose reader had gone.
pub fn closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.is::<StdoutClosed>()
            || c.downcast_ref::<io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.is::<StdoutClosed>())
    })
}

/// Locked stdout whose broken-pipe errors are [`StdoutClosed`].
pub struct Stdout(io::StdoutLock<'static>);

pub fn stdout() -> Stdout {
    Stdout(io::stdout().lock())
}

fn mark(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::BrokenPipe {
        io::Error::new(io::ErrorKind::BrokenPipe, StdoutClosed)
    } else {
        e
    }
}

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf).map_err(mark)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush().map_err(mark)
    }
}

/// `println!` for results: fails (with `?`) instead of panicking when stdout is closed.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!($crate::cli::stdout::stdout(), $($arg)*)?
    }};
}

/// `print!` for results, as [`outln!`].
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!($crate::cli::stdout::stdout(), $($arg)*)?
    }};
}

pub(crate) use {out, outln};
