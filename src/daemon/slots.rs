//! The daemon's job slots (`daemon.max_running_jobs`): a job runs holding one, and waits,
//! queued, while none is free. The next slot freed goes to the waiting job of the highest
//! priority, the oldest among equals, so an artist's urgent download does not wait behind
//! a batch of submissions.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// A job's priority when none is given: the middle of 0 to 100.
pub const DEFAULT_PRIORITY: u8 = 50;
/// The highest priority.
pub const MAX_PRIORITY: u8 = 100;

pub struct Slots {
    state: Mutex<State>,
}

struct State {
    free: usize,
    /// Waiting jobs in arrival order (a queue is a few jobs long: picking by a scan is
    /// cheap, and a priority can change in place).
    waiting: Vec<Waiter>,
}

struct Waiter {
    job: String,
    priority: u8,
    give: oneshot::Sender<Slot>,
}

/// A job's turn: a slot at once, or one to wait for (dropping the wait leaves the queue).
pub enum Turn {
    Now(Slot),
    Later(oneshot::Receiver<Slot>),
}

impl Turn {
    pub async fn slot(self) -> Slot {
        match self {
            Turn::Now(slot) => slot,
            // A slot is handed over before its waiter is dropped from the queue: the sender
            // is never dropped unsent.
            Turn::Later(taken) => taken.await.expect("a waiter is given a slot"),
        }
    }
}

/// A held slot; dropped, it goes to the next waiting job.
pub struct Slot {
    slots: Arc<Slots>,
}

impl Slots {
    pub fn new(count: usize) -> Arc<Slots> {
        Arc::new(Slots {
            state: Mutex::new(State {
                free: count,
                waiting: Vec::new(),
            }),
        })
    }

    /// A slot now if one is free, else a place in the queue: behind the waiting jobs of a
    /// higher priority and those of the same priority that came earlier.
    pub fn take_or_queue(self: &Arc<Self>, job: &str, priority: u8) -> Turn {
        let mut s = self.state.lock().expect("not poisoned");
        if s.free > 0 {
            s.free -= 1;
            return Turn::Now(Slot {
                slots: self.clone(),
            });
        }
        let (give, taken) = oneshot::channel();
        s.waiting.push(Waiter {
            job: job.to_string(),
            priority,
            give,
        });
        Turn::Later(taken)
    }

    /// Changes the priority of a waiting job; false if it is not waiting.
    pub fn set_priority(&self, job: &str, priority: u8) -> bool {
        let mut s = self.state.lock().expect("not poisoned");
        match s.waiting.iter_mut().find(|w| w.job == job) {
            Some(w) => {
                w.priority = priority;
                true
            }
            None => false,
        }
    }

    /// Waiting jobs, in the order they will get a slot (those that left the queue, their
    /// job cancelled, not among them).
    pub fn queue(&self) -> Vec<String> {
        let s = self.state.lock().expect("not poisoned");
        let mut order: Vec<(usize, &Waiter)> = s
            .waiting
            .iter()
            .enumerate()
            .filter(|(_, w)| !w.give.is_closed())
            .collect();
        order.sort_by_key(|(i, w)| (std::cmp::Reverse(w.priority), *i));
        order.into_iter().map(|(_, w)| w.job.clone()).collect()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let next = {
            let mut s = self.slots.state.lock().expect("not poisoned");
            // The highest priority; the first to come among equals.
            let best = s
                .waiting
                .iter()
                .enumerate()
                .max_by_key(|(i, w)| (w.priority, std::cmp::Reverse(*i)))
                .map(|(i, _)| i);
            match best {
                Some(i) => Some(s.waiting.remove(i)),
                None => {
                    s.free += 1;
                    None
                }
            }
        };
        if let Some(w) = next {
            // A waiter that left (its job cancelled while queued) hands it back: dropped
            // here, the slot goes to the next one.
            let _ = w.give.send(Slot {
                slots: self.slots.clone(),
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now(slots: &Arc<Slots>) -> Slot {
        match slots.take_or_queue("now", 1) {
            Turn::Now(slot) => slot,
            Turn::Later(_) => panic!("no slot free"),
        }
    }

    #[tokio::test]
    async fn the_next_slot_goes_to_the_highest_priority_then_the_oldest() {
        let slots = Slots::new(1);
        let held = now(&slots);
        assert!(
            matches!(slots.take_or_queue("x", 1), Turn::Later(_)),
            "none free"
        );
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut tasks = Vec::new();
        for (job, priority) in [("a", 50), ("b", 90), ("c", 50), ("d", 90), ("e", 10)] {
            let (mine, tx) = (slots.clone(), tx.clone());
            tasks.push(tokio::spawn(async move {
                let slot = mine.take_or_queue(job, priority).slot().await;
                tx.send(job).unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                drop(slot);
            }));
            // Arrival order is the order of acquire calls.
            while !slots.queue().contains(&job.to_string()) {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(slots.queue(), ["b", "d", "a", "c", "e"], "x left");
        assert!(slots.set_priority("e", 95));
        assert!(!slots.set_priority("nobody", 1));
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        let mut order = Vec::new();
        while let Ok(job) = rx.try_recv() {
            order.push(job);
        }
        assert_eq!(order, ["e", "b", "d", "a", "c"]);
        now(&slots);
    }

    #[tokio::test]
    async fn a_waiter_that_leaves_passes_its_turn_on() {
        let slots = Slots::new(1);
        let held = now(&slots);
        let leaving = slots.take_or_queue("gone", 99);
        let staying = slots.take_or_queue("stays", 1);
        drop(leaving);
        drop(held);
        let slot = tokio::time::timeout(std::time::Duration::from_secs(5), staying.slot())
            .await
            .expect("the slot was passed on");
        assert!(matches!(slots.take_or_queue("x", 1), Turn::Later(_)));
        drop(slot);
        // "x" (queued above, then dropped) handed it back.
        now(&slots);
    }
}
