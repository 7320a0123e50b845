//! The queue from the hashing threads to the uploader: bounded, with room given back in
//! batches.
//!
//! With a plain bounded channel, when hashing is ahead of a slow store (the usual case
//! for small files), every item the uploader took woke a hashing thread blocked on the
//! full queue: a futex wake on the runtime's worker and a context switch per file. Here
//! the uploader gives the room back `batch` items at a time, so the hashing threads wake
//! once per batch. Blocked senders are released when the receiver is dropped.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::{Semaphore, TryAcquireError, mpsc};

/// The receiving side is gone (the upload stopped).
#[derive(Debug, PartialEq, Eq)]
pub struct Closed;

/// At most `capacity` items are queued or taken and not yet given back; `batch`
/// (1..=capacity) is how many taken items give their room back at once.
pub fn channel<T>(capacity: usize, batch: usize) -> (Sender<T>, Receiver<T>) {
    assert!((1..=capacity).contains(&batch), "batch within 1..=capacity");
    let (tx, rx) = mpsc::unbounded_channel();
    let room = Arc::new(Semaphore::new(capacity));
    (
        Sender {
            tx,
            room: room.clone(),
        },
        Receiver {
            rx,
            room,
            taken: 0,
            batch,
        },
    )
}

pub struct Sender<T> {
    tx: mpsc::UnboundedSender<T>,
    room: Arc<Semaphore>,
}

impl<T> Sender<T> {
    /// Queues `item`, blocking the thread while the queue is full. Not for async code.
    pub fn blocking_send(&self, item: T) -> Result<(), Closed> {
        let permit = match self.room.try_acquire() {
            Ok(permit) => permit,
            Err(TryAcquireError::NoPermits) => {
                futures::executor::block_on(self.room.acquire()).map_err(|_| Closed)?
            }
            Err(TryAcquireError::Closed) => return Err(Closed),
        };
        // The receiver gives the room back.
        permit.forget();
        self.tx.send(item).map_err(|_| Closed)
    }
}

pub struct Receiver<T> {
    rx: mpsc::UnboundedReceiver<T>,
    room: Arc<Semaphore>,
    taken: usize,
    batch: usize,
}

impl<T> futures::Stream for Receiver<T> {
    type Item = T;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let this = self.get_mut();
        let next = this.rx.poll_recv(cx);
        if let Poll::Ready(Some(_)) = next {
            this.taken += 1;
            if this.taken == this.batch {
                this.room.add_permits(this.batch);
                this.taken = 0;
            }
        }
        next
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        self.room.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use std::time::Duration;

    /// Spawns a thread sending `0..n`; returns how many sends have returned so far.
    fn sender_thread(
        tx: Sender<usize>,
        n: usize,
    ) -> (
        Arc<AtomicUsize>,
        std::thread::JoinHandle<Vec<Result<(), Closed>>>,
    ) {
        let sent = Arc::new(AtomicUsize::new(0));
        let counter = sent.clone();
        let thread = std::thread::spawn(move || {
            (0..n)
                .map(|i| {
                    let r = tx.blocking_send(i);
                    counter.fetch_add(1, SeqCst);
                    r
                })
                .collect()
        });
        (sent, thread)
    }

    fn wait_for(sent: &AtomicUsize, n: usize) {
        while sent.load(SeqCst) < n {
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_full_queue_blocks_the_sender_until_a_batch_is_taken() {
        let (tx, mut rx) = channel(8, 4);
        let (sent, thread) = sender_thread(tx, 20);
        wait_for(&sent, 8);
        let mut got = Vec::new();
        futures::executor::block_on(async {
            for _ in 0..3 {
                got.push(rx.next().await.unwrap());
            }
        });
        // Three taken, none given back yet: the ninth send still waits.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(sent.load(SeqCst), 8);
        futures::executor::block_on(async { got.push(rx.next().await.unwrap()) });
        wait_for(&sent, 12);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(sent.load(SeqCst), 12, "room for one batch, not more");
        futures::executor::block_on(async {
            while got.len() < 20 {
                got.push(rx.next().await.unwrap());
            }
        });
        assert!(thread.join().unwrap().iter().all(Result::is_ok));
        assert_eq!(got, (0..20).collect::<Vec<_>>(), "every item, in order");
    }

    #[test]
    fn dropping_the_receiver_releases_a_blocked_sender() {
        let (tx, rx) = channel(2, 1);
        let (sent, thread) = sender_thread(tx, 5);
        wait_for(&sent, 2);
        drop(rx);
        let since = std::time::Instant::now();
        while !thread.is_finished() {
            assert!(
                since.elapsed() < Duration::from_secs(10),
                "sender still blocked"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        let results = thread.join().unwrap();
        assert_eq!(results[..2], [Ok(()), Ok(())]);
        assert!(results[2..].iter().all(|r| *r == Err(Closed)));
    }

    #[test]
    fn the_stream_ends_when_every_sender_is_gone() {
        let (tx, rx) = channel(4, 2);
        let (_, thread) = sender_thread(tx, 3);
        let got: Vec<usize> = futures::executor::block_on(rx.collect());
        thread.join().unwrap();
        assert_eq!(got, [0, 1, 2]);
    }
}
