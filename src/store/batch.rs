//! Group commit: requests that arrive while a batch is being written go
//! into the next one, so under load one transaction (and one WAL flush)
//! covers many requests, while a lone request is written at once, with no
//! timer to wait for.
//!
//! Batches are pipelined: the next batch starts once the previous one has
//! run its statements and waits for its commit to be flushed, so that the
//! flush of one overlaps the work of the next while each batch still takes
//! everything that queued behind the one before.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::StoreError;

/// A batch's turn to run statements. The batch passes it on when only its
/// commit is left (dropping it does the same), which starts the next batch.
#[must_use = "dropping the turn starts the next batch at once"]
pub struct Turn(Option<OwnedSemaphorePermit>);

impl Turn {
    /// For a write outside any batcher: nobody waits for the turn.
    pub fn none() -> Turn {
        Turn(None)
    }

    /// Called right before the commit.
    pub fn pass(&mut self) {
        self.0 = None;
    }
}

type Reply<R> = oneshot::Sender<Result<R, StoreError>>;

/// Feeds items to `run` in batches of at most `max_batch`; `run` answers
/// each item of a batch, in order. A failed batch fails each of its items
/// with the same error.
pub struct Batcher<T, R> {
    tx: mpsc::Sender<(T, Reply<R>)>,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Batcher {
            tx: self.tx.clone(),
        }
    }
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// At most `in_flight` batches are written at the same time, and only
    /// one of them runs its statements: `run` gets the [`Turn`] and passes it
    /// right before it commits. With one in flight, batches are written one
    /// after the other. Callers of `run` must lock rows in a fixed order
    /// (e.g. by id) so that concurrent batches cannot deadlock. The task ends
    /// when every clone of the batcher is dropped.
    pub fn start<F, Fut>(max_batch: usize, in_flight: usize, run: F) -> Batcher<T, R>
    where
        F: Fn(Vec<T>, Turn) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<R>, StoreError>> + Send + 'static,
    {
        let max_batch = max_batch.max(1);
        let (tx, mut rx) = mpsc::channel::<(T, Reply<R>)>(max_batch * in_flight.max(1) * 2);
        let in_flight = Arc::new(Semaphore::new(in_flight.max(1)));
        let turn = Arc::new(Semaphore::new(1));
        let run = Arc::new(run);
        tokio::spawn(async move {
            loop {
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    return;
                };
                let Ok(turn) = turn.clone().acquire_owned().await else {
                    return;
                };
                let Some(first) = rx.recv().await else { return };
                let mut batch = vec![first];
                while batch.len() < max_batch {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let run = run.clone();
                tokio::spawn(async move {
                    let (items, replies): (Vec<T>, Vec<Reply<R>>) = batch.into_iter().unzip();
                    let n = items.len();
                    match run(items, Turn(Some(turn))).await {
                        Ok(answers) if answers.len() == n => {
                            for (reply, answer) in replies.into_iter().zip(answers) {
                                let _ = reply.send(Ok(answer));
                            }
                        }
                        Ok(answers) => {
                            let e = Arc::new(StoreError::Corrupt {
                                id: 0,
                                what: format!("a batch of {n} got {} answers", answers.len()),
                            });
                            for reply in replies {
                                let _ = reply.send(Err(StoreError::Batch(e.clone())));
                            }
                        }
                        Err(e) => {
                            let e = Arc::new(e);
                            for reply in replies {
                                let _ = reply.send(Err(StoreError::Batch(e.clone())));
                            }
                        }
                    }
                    drop(permit);
                });
            }
        });
        Batcher { tx }
    }

    /// Waits for the batch holding `item` to be written.
    pub async fn submit(&self, item: T) -> Result<R, StoreError> {
        let closed = || StoreError::Database(sqlx::Error::PoolClosed);
        let (reply, answer) = oneshot::channel();
        self.tx.send((item, reply)).await.map_err(|_| closed())?;
        answer.await.unwrap_or_else(|_| Err(closed()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

    /// An order to a running test batch: pass the turn (then await another
    /// order) or finish; acknowledged once carried out.
    type Order = (bool, oneshot::Sender<()>);

    /// What a test batch does once started: reports its items, then waits
    /// to be told when to pass its turn and when to finish.
    struct Script {
        started: UnboundedSender<Vec<u32>>,
        steps: Arc<tokio::sync::Mutex<UnboundedReceiver<Order>>>,
    }

    type Scripted = (
        Batcher<u32, u32>,
        UnboundedReceiver<Vec<u32>>,
        UnboundedSender<Order>,
    );

    fn scripted(in_flight: usize) -> Scripted {
        let (started, started_rx) = unbounded_channel();
        let (steps_tx, steps) = unbounded_channel();
        let script = Arc::new(Script {
            started,
            steps: Arc::new(tokio::sync::Mutex::new(steps)),
        });
        let batcher = Batcher::start(16, in_flight, move |items: Vec<u32>, mut turn: Turn| {
            let script = script.clone();
            async move {
                script.started.send(items.clone()).unwrap();
                // Each batch takes two orders: pass the turn, then finish.
                for _ in 0..2 {
                    let (pass, done) = script.steps.lock().await.recv().await.unwrap();
                    if pass {
                        turn.pass();
                    }
                    let _ = done.send(());
                    if !pass {
                        break;
                    }
                }
                Ok(items.into_iter().map(|i| i * 10).collect())
            }
        });
        (batcher, started_rx, steps_tx)
    }

    async fn order(steps: &UnboundedSender<Order>, pass: bool) {
        let (done, acted) = oneshot::channel();
        steps.send((pass, done)).unwrap();
        acted.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_batch_starts_when_the_previous_one_passes_its_turn() {
        let (batcher, mut started, steps) = scripted(2);
        let b = batcher.clone();
        let first = tokio::spawn(async move { b.submit(1).await });
        assert_eq!(started.recv().await.unwrap(), vec![1]);
        let b = batcher.clone();
        let second = tokio::spawn(async move { b.submit(2).await });
        let b = batcher.clone();
        let third = tokio::spawn(async move { b.submit(3).await });
        // Holding its turn, the first batch keeps the others queued (time is
        // paused, so this waits only until every task is idle).
        assert!(tokio::time::timeout(Duration::from_secs(5), started.recv())
            .await
            .is_err());
        // Passed at its commit: the next batch starts, with all that queued,
        // while the first is still committing.
        order(&steps, true).await;
        assert_eq!(started.recv().await.unwrap(), vec![2, 3]);
        assert!(!first.is_finished());
        order(&steps, false).await; // the first commits
        assert_eq!(first.await.unwrap().unwrap(), 10);
        order(&steps, false).await; // the second, which never passed its turn
        assert_eq!(second.await.unwrap().unwrap(), 20);
        assert_eq!(third.await.unwrap().unwrap(), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn batches_in_flight_are_bounded_even_when_turns_are_passed() {
        let (batcher, mut started, steps) = scripted(1);
        let b = batcher.clone();
        let first = tokio::spawn(async move { b.submit(1).await });
        assert_eq!(started.recv().await.unwrap(), vec![1]);
        let b = batcher.clone();
        let second = tokio::spawn(async move { b.submit(2).await });
        order(&steps, true).await;
        // One in flight: the pass alone does not start the next batch.
        assert!(tokio::time::timeout(Duration::from_secs(5), started.recv())
            .await
            .is_err());
        order(&steps, false).await;
        assert_eq!(first.await.unwrap().unwrap(), 10);
        assert_eq!(started.recv().await.unwrap(), vec![2]);
        order(&steps, false).await;
        assert_eq!(second.await.unwrap().unwrap(), 20);
    }
}
