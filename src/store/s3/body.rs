//! Request bodies: bytes from memory or read from a file as they are sent, each chunk paced
//! by the upload limiter; a part's body can be cut short before its last bytes.

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use http_body::{Frame, SizeHint};

use crate::store::file_source::{FileSource, SourceError};
use crate::store::sent_bytes::SentBytes;
use crate::transfer::limiter::Bandwidth;

/// Chunk size of paced request bodies.
const BODY_CHUNK: usize = 64 * 1024;

type Wait = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Whether a request body has all been handed to the connection, and whether its request
/// was given up: one atomic, so exactly one of "the last bytes go out" and "cut it short"
/// wins.
#[derive(Default)]
pub(super) struct BodySent(AtomicU8);

const SENDING: u8 = 0;
const ALL_SENT: u8 = 1;
const GIVEN_UP: u8 = 2;

impl BodySent {
    /// A new attempt sends the body again (unless the request was given up).
    pub(super) fn restart(&self) {
        let _ = self
            .0
            .compare_exchange(ALL_SENT, SENDING, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Before the last bytes go out: false when the request was given up (they must not).
    pub(super) fn last_bytes_go(&self) -> bool {
        self.0
            .compare_exchange(SENDING, ALL_SENT, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub(super) fn given_up(&self) -> bool {
        self.0.load(Ordering::Acquire) & GIVEN_UP != 0
    }

    /// Gives the request up; true when its last bytes had not gone out (so it can be cut).
    pub(super) fn give_up(&self) -> bool {
        self.0.fetch_or(GIVEN_UP, Ordering::AcqRel) == SENDING
    }
}

/// A request body, each chunk sent once the upload limiter allows it: bytes from memory, or a
/// file read as it is sent ([`FileSource`]). A part's body (`sent`) can be cut short before its
/// last bytes.
pub(super) struct PacedBody {
    /// Bytes at hand and not sent yet: all of them from memory, the chunk last read of a file.
    current: Bytes,
    /// A file's chunks still to read (a Mutex so the body is `Sync`, as the SDK wants).
    file: Option<Mutex<BoxStream<'static, Result<Bytes, SourceError>>>>,
    remaining: u64,
    bandwidth: Arc<Bandwidth>,
    /// The limiter wait of the next chunk (a Mutex so the body is `Sync`, as the SDK wants).
    wait: Mutex<Option<(Wait, usize)>>,
    sent: Option<Arc<BodySent>>,
    /// Counts the bytes of a body from memory into the progress as they go (a file's
    /// [`FileSource`] counts its own); with the body's size.
    counted: Option<(Arc<SentBytes>, u64)>,
}

impl PacedBody {
    pub(super) fn new(
        data: Bytes,
        bandwidth: Arc<Bandwidth>,
        sent: Option<Arc<BodySent>>,
        counted: Option<Arc<SentBytes>>,
    ) -> Self {
        if let Some(sent) = &sent {
            sent.restart();
        }
        PacedBody {
            remaining: data.len() as u64,
            counted: counted.map(|c| (c, data.len() as u64)),
            current: data,
            file: None,
            bandwidth,
            wait: Mutex::new(None),
            sent,
        }
    }

    /// The file from its start; why it could not all be sent is left in `source` (the SDK's
    /// error only says that the body failed).
    pub(super) fn from_file(source: &Arc<FileSource>, bandwidth: Arc<Bandwidth>) -> Self {
        PacedBody {
            current: Bytes::new(),
            file: Some(Mutex::new(source.chunks().boxed())),
            remaining: source.size,
            bandwidth,
            wait: Mutex::new(None),
            sent: None,
            counted: None,
        }
    }
}

impl http_body::Body for PacedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        let fail = |message: String| Poll::Ready(Some(Err(std::io::Error::other(message))));
        let cut_short = || fail("the request was given up before its body was sent".into());
        if this.sent.as_ref().is_some_and(|s| s.given_up()) {
            return cut_short();
        }
        while this.current.is_empty() {
            let Some(file) = &mut this.file else {
                return fail("the body ended before its planned size".into());
            };
            match file.get_mut().expect("not poisoned").poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => this.current = chunk,
                Poll::Ready(Some(Err(e))) => return fail(e.to_string()),
                Poll::Ready(None) => return fail("the file ended before its planned size".into()),
            }
        }
        let wait = this.wait.get_mut().expect("not poisoned");
        if wait.is_none() {
            let n = this.current.len().min(BODY_CHUNK);
            let bandwidth = this.bandwidth.clone();
            *wait = Some((
                Box::pin(async move { bandwidth.upload.acquire(n).await }),
                n,
            ));
        }
        let (fut, n) = wait.as_mut().expect("set above");
        let Poll::Ready(()) = fut.as_mut().poll(cx) else {
            return Poll::Pending;
        };
        let n = *n;
        *wait = None;
        if n as u64 == this.remaining && this.sent.as_ref().is_some_and(|s| !s.last_bytes_go()) {
            return cut_short();
        }
        this.remaining -= n as u64;
        if let Some((counted, size)) = &this.counted {
            counted.sent_up_to(size - this.remaining);
        }
        Poll::Ready(Some(Ok(Frame::data(this.current.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn body(len: usize, sent: &Arc<BodySent>) -> PacedBody {
        let bandwidth = Arc::new(Bandwidth::new(&Default::default()));
        PacedBody::new(
            Bytes::from(vec![7; len]),
            bandwidth,
            Some(sent.clone()),
            None,
        )
    }

    #[tokio::test]
    async fn a_part_given_up_before_its_last_bytes_never_sends_them() {
        let sent = Arc::new(BodySent::default());
        let mut b = body(BODY_CHUNK + 1, &sent);
        let first = b.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap().len(), BODY_CHUNK);
        assert!(sent.give_up(), "not all sent: the request can be cut");
        assert!(
            b.frame().await.unwrap().is_err(),
            "the last byte must not go"
        );
    }

    #[tokio::test]
    async fn a_part_all_sent_is_not_cut_and_a_retry_sends_it_again() {
        let sent = Arc::new(BodySent::default());
        let mut b = body(BODY_CHUNK + 1, &sent);
        while b.frame().await.is_some() {}
        let mut again = body(10, &sent);
        assert_eq!(
            again
                .frame()
                .await
                .unwrap()
                .unwrap()
                .into_data()
                .unwrap()
                .len(),
            10
        );
        assert!(
            !sent.give_up(),
            "all sent: the request must run to its reply"
        );
        assert!(
            body(10, &sent).frame().await.unwrap().is_err(),
            "no attempt after giving up"
        );
    }
}
