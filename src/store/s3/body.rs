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
use crate::transfer::limiter::Bandwidth;

/// Chunk size of paced request bodies.
pub(super) const BODY_CHUNK: usize = 64 * 1024;

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

/// A request body served from memory, each chunk after the upload limiter allows it.
pub(super) struct PacedBody {
    data: Bytes,
    pacer: Pacer,
    sent: Option<Arc<BodySent>>,
}

impl PacedBody {
    pub(super) fn new(data: Bytes, bandwidth: Arc<Bandwidth>, sent: Option<Arc<BodySent>>) -> Self {
        if let Some(sent) = &sent {
            sent.restart();
        }
        PacedBody {
            data,
            pacer: Pacer::new(bandwidth),
            sent,
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
        if self.data.is_empty() {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        let cut_short = || {
            Poll::Ready(Some(Err(std::io::Error::other(
                "the request was given up before its body was sent",
            ))))
        };
        if this.sent.as_ref().is_some_and(|s| s.given_up()) {
            return cut_short();
        }
        let Poll::Ready(n) = this.pacer.poll_allowed(this.data.len(), cx) else {
            return Poll::Pending;
        };
        let last = n == this.data.len();
        if last && this.sent.as_ref().is_some_and(|s| !s.last_bytes_go()) {
            return cut_short();
        }
        Poll::Ready(Some(Ok(Frame::data(this.data.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.len() as u64)
    }
}

/// A request body read from a file as it is sent ([`FileSource`]), paced like [`PacedBody`].
/// Why the file could not be sent is left in `failure`: the SDK's error only says the body
/// failed, and a retry of a file that changed is not worth reading it again.
pub(super) struct FileBody {
    /// A Mutex so the body is `Sync`, as the SDK wants.
    chunks: Mutex<BoxStream<'static, Result<Bytes, SourceError>>>,
    /// The part of the chunk last read that is not sent yet.
    current: Bytes,
    remaining: u64,
    pacer: Pacer,
    failure: Arc<Mutex<Option<SourceError>>>,
}

impl FileBody {
    pub(super) fn new(
        source: &Arc<FileSource>,
        bandwidth: Arc<Bandwidth>,
        failure: Arc<Mutex<Option<SourceError>>>,
    ) -> Self {
        let chunks = match failure.lock().expect("not poisoned").clone() {
            Some(failed) => futures::stream::once(async move { Err(failed) }).boxed(),
            None => source.chunks().boxed(),
        };
        FileBody {
            chunks: Mutex::new(chunks),
            current: Bytes::new(),
            remaining: source.size,
            pacer: Pacer::new(bandwidth),
            failure,
        }
    }
}

impl http_body::Body for FileBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        while this.current.is_empty() {
            if this.remaining == 0 {
                return Poll::Ready(None);
            }
            let chunks = this.chunks.get_mut().expect("not poisoned");
            match chunks.poll_next_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => this.current = chunk,
                Poll::Ready(Some(Err(e))) => {
                    let message = e.to_string();
                    *this.failure.lock().expect("not poisoned") = Some(e);
                    return Poll::Ready(Some(Err(std::io::Error::other(message))));
                }
                Poll::Ready(None) => {
                    return Poll::Ready(Some(Err(std::io::Error::other(
                        "the file ended before its planned size",
                    ))));
                }
            }
        }
        let Poll::Ready(n) = this.pacer.poll_allowed(this.current.len(), cx) else {
            return Poll::Pending;
        };
        this.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(this.current.split_to(n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// Lets a body's bytes go [`BODY_CHUNK`] at a time, each once the upload limiter allows it.
struct Pacer {
    bandwidth: Arc<Bandwidth>,
    /// The limiter wait of the next chunk (a Mutex so the body is `Sync`, as the SDK wants).
    wait: Mutex<Option<(Wait, usize)>>,
}

impl Pacer {
    fn new(bandwidth: Arc<Bandwidth>) -> Self {
        Pacer {
            bandwidth,
            wait: Mutex::new(None),
        }
    }

    /// How many of the `available` bytes may go now (at least one, at most a chunk).
    fn poll_allowed(&mut self, available: usize, cx: &mut Context<'_>) -> Poll<usize> {
        let wait = self.wait.get_mut().expect("not poisoned");
        if wait.is_none() {
            let n = available.min(BODY_CHUNK);
            let bandwidth = self.bandwidth.clone();
            *wait = Some((
                Box::pin(async move { bandwidth.upload.acquire(n).await }),
                n,
            ));
        }
        let (fut, n) = wait.as_mut().expect("set above");
        match fut.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                let n = *n;
                *wait = None;
                Poll::Ready(n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn body(len: usize, sent: &Arc<BodySent>) -> PacedBody {
        let bandwidth = Arc::new(Bandwidth::new(&Default::default()));
        PacedBody::new(Bytes::from(vec![7; len]), bandwidth, Some(sent.clone()))
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
