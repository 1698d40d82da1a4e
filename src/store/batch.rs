//! Group commit: requests that arrive while a batch is being written go
//! into the next one, so under load one transaction (and one WAL flush)
//! covers many requests, while a lone request is written at once, with no
//! timer to wait for.
//!
//! Batches are pipelined. While one batch runs its statements, the next
//! opens its transaction as soon as its first request is queued; it takes
//! the rest of what queued when the previous batch hands on its [`Turn`],
//! right before committing. So neither opening a transaction nor flushing a
//! commit holds up the next batch, and each batch still takes everything
//! that queued behind the one before, in arrival order. A writer whose batch
//! is one statement runs it outside any transaction instead
//! ([`Incoming::acquire`]): PostgreSQL commits it as it answers, so the turn
//! passes when the statement is done.

use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};
use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};

use super::StoreError;

/// A batch's turn to run statements. It passes when the batch's
/// [`Holding`] commits or is dropped, which lets the next batch take its
/// requests.
struct Turn(Option<OwnedSemaphorePermit>);

/// The requests of a batch, handed over by [`Incoming::open`] or
/// [`Incoming::acquire`].
pub struct Incoming<T> {
    take: Pin<Box<dyn Future<Output = (Vec<T>, Turn)> + Send>>,
}

impl<T: Send + 'static> Incoming<T> {
    /// A batch written outside any batcher: nobody waits for its turn.
    pub fn ready(items: Vec<T>) -> Incoming<T> {
        Incoming {
            take: Box::pin(async move { (items, Turn(None)) }),
        }
    }

    /// Opens the writer's transaction, then waits for this batch's turn and
    /// takes its requests: everything queued by then, in arrival order.
    pub async fn open(self, pool: &PgPool) -> Result<(Writing, Vec<T>), StoreError> {
        let begun = pool.begin().await;
        self.hold(begun).await
    }

    /// As [`Incoming::open`], for a writer whose batch is, as a rule, one
    /// statement outside any transaction: PostgreSQL commits it before it
    /// answers, one round trip where a transaction takes two (the statement,
    /// then `COMMIT`). The turn is held until the connection is dropped.
    pub async fn acquire(self, pool: &PgPool) -> Result<(Acquired, Vec<T>), StoreError> {
        let acquired = pool.acquire().await;
        self.hold(acquired).await
    }

    /// Takes the requests once it is this batch's turn, even if the
    /// connection failed (the database is down): they then all fail with
    /// that error at once, rather than one connection timeout each.
    async fn hold<C>(
        self,
        conn: Result<C, sqlx::Error>,
    ) -> Result<(Holding<C>, Vec<T>), StoreError> {
        let (items, turn) = self.take.await;
        Ok((Holding { conn: conn?, turn }, items))
    }
}

/// A batch's connection, holding the batch's turn to run statements.
pub struct Holding<C> {
    conn: C,
    turn: Turn,
}

/// A batch's transaction (see [`Incoming::open`]).
pub type Writing = Holding<Transaction<'static, Postgres>>;

/// A batch's connection outside any transaction (see [`Incoming::acquire`]).
pub type Acquired = Holding<PoolConnection<Postgres>>;

impl Writing {
    /// Hands the turn on, so that the next batch runs its statements while
    /// this commit is flushed, and commits.
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        self.turn.0 = None;
        self.conn.commit().await
    }
}

impl<C: DerefMut<Target = PgConnection>> Deref for Holding<C> {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.conn
    }
}

impl<C: DerefMut<Target = PgConnection>> DerefMut for Holding<C> {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.conn
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
    /// the one holding the turn runs statements: `run` calls
    /// [`Incoming::open`] and ends with [`Writing::commit`]. With one in flight, batches are written one after
    /// the other. Callers of `run` must lock rows in a fixed order (e.g. by
    /// id) so that concurrent batches cannot deadlock. The task ends when
    /// every clone of the batcher is dropped.
    pub fn start<F, Fut>(max_batch: usize, in_flight: usize, run: F) -> Batcher<T, R>
    where
        F: Fn(Incoming<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<R>, StoreError>> + Send + 'static,
    {
        let max_batch = max_batch.max(1);
        let (tx, rx) = mpsc::channel::<(T, Reply<R>)>(max_batch * in_flight.max(1) * 2);
        // Held by the batch that is taking requests, until it has taken them.
        let queue = Arc::new(tokio::sync::Mutex::new(rx));
        let in_flight = Arc::new(Semaphore::new(in_flight.max(1)));
        let turn = Arc::new(Semaphore::new(1));
        let run = Arc::new(run);
        tokio::spawn(async move {
            loop {
                let Ok(permit) = in_flight.clone().acquire_owned().await else {
                    return;
                };
                // No transaction is opened before there is work for it.
                let mut queued = queue.clone().lock_owned().await;
                let Some((first, first_reply)) = queued.recv().await else {
                    return;
                };
                // The other requests' replies, filled in when they are taken.
                let replies: Arc<Mutex<Vec<Reply<R>>>> = Arc::default();
                let take = {
                    let (turn, replies) = (turn.clone(), replies.clone());
                    async move {
                        let turn = turn.acquire_owned().await.ok();
                        let mut items = vec![first];
                        let mut taken = Vec::new();
                        while items.len() < max_batch {
                            match queued.try_recv() {
                                Ok((item, reply)) => {
                                    items.push(item);
                                    taken.push(reply);
                                }
                                Err(_) => break,
                            }
                        }
                        drop(queued);
                        *lock(&replies) = taken;
                        (items, Turn(turn))
                    }
                };
                let run = run.clone();
                tokio::spawn(async move {
                    let outcome = run(Incoming {
                        take: Box::pin(take),
                    })
                    .await;
                    let mut all = vec![first_reply];
                    all.append(&mut lock(&replies));
                    answer(all, outcome);
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

/// Answers a batch's requests, in order. A writer that returned without
/// opening its batch fails only the first request, which it was started for;
/// the others go to the next batch.
fn answer<R>(replies: Vec<Reply<R>>, outcome: Result<Vec<R>, StoreError>) {
    let n = replies.len();
    let error = match outcome {
        Ok(answers) if answers.len() == n => {
            for (reply, answer) in replies.into_iter().zip(answers) {
                let _ = reply.send(Ok(answer));
            }
            return;
        }
        Ok(answers) => StoreError::Corrupt {
            id: 0,
            what: format!("a batch of {n} got {} answers", answers.len()),
        },
        Err(e) => e,
    };
    let error = Arc::new(error);
    for reply in replies {
        let _ = reply.send(Err(StoreError::Batch(error.clone())));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
    use tokio::task::JoinHandle;

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
        let batcher = Batcher::start(16, in_flight, move |incoming: Incoming<u32>| {
            let script = script.clone();
            async move {
                // As `open` does, without a database to open a transaction in.
                let (items, mut turn) = incoming.take.await;
                script.started.send(items.clone()).unwrap();
                // Each batch takes two orders: pass the turn, then finish.
                for _ in 0..2 {
                    let (pass, done) = script.steps.lock().await.recv().await.unwrap();
                    if pass {
                        turn.0 = None; // as `Writing::commit` does
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

    /// Submits `item` from a task of its own, as a request handler would.
    fn submit(batcher: &Batcher<u32, u32>, item: u32) -> JoinHandle<Result<u32, StoreError>> {
        let batcher = batcher.clone();
        tokio::spawn(async move { batcher.submit(item).await })
    }

    /// Whether nothing more starts while every task waits (time is paused,
    /// so the timeout passes as soon as all are idle).
    async fn nothing_starts(started: &mut UnboundedReceiver<Vec<u32>>) -> bool {
        tokio::time::timeout(Duration::from_secs(5), started.recv())
            .await
            .is_err()
    }

    async fn order(steps: &UnboundedSender<Order>, pass: bool) {
        let (done, acted) = oneshot::channel();
        steps.send((pass, done)).unwrap();
        acted.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_next_batch_starts_when_the_previous_one_passes_its_turn() {
        let (batcher, mut started, steps) = scripted(2);
        let first = submit(&batcher, 1);
        assert_eq!(started.recv().await.unwrap(), vec![1]);
        let second = submit(&batcher, 2);
        let third = submit(&batcher, 3);
        // Holding its turn, the first batch keeps the others queued.
        assert!(nothing_starts(&mut started).await);
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
        let first = submit(&batcher, 1);
        assert_eq!(started.recv().await.unwrap(), vec![1]);
        let second = submit(&batcher, 2);
        order(&steps, true).await;
        // One in flight: the pass alone does not start the next batch.
        assert!(nothing_starts(&mut started).await);
        order(&steps, false).await;
        assert_eq!(first.await.unwrap().unwrap(), 10);
        assert_eq!(started.recv().await.unwrap(), vec![2]);
        order(&steps, false).await;
        assert_eq!(second.await.unwrap().unwrap(), 20);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_that_cannot_open_its_transaction_fails_all_it_takes_at_once() {
        let (go, gate) = oneshot::channel::<()>();
        let gate = Arc::new(tokio::sync::Mutex::new(Some(gate)));
        let batcher = Batcher::start(16, 2, move |incoming: Incoming<u32>| {
            let gate = gate.clone();
            async move {
                // The first batch finds no database; later ones take their
                // requests as `open` does once a transaction is open.
                if let Some(gate) = gate.lock().await.take() {
                    let _ = gate.await;
                    let nowhere = sqlx::postgres::PgPoolOptions::new()
                        .acquire_timeout(Duration::from_secs(1))
                        .connect_lazy("postgres://postgres@127.0.0.1:1/none")
                        .unwrap();
                    incoming.open(&nowhere).await?;
                    unreachable!("a transaction opened on a closed port");
                }
                let (items, _turn) = incoming.take.await;
                Ok(items)
            }
        });
        let first = submit(&batcher, 1);
        let capacity = batcher.tx.max_capacity();
        let second = submit(&batcher, 2);
        let third = submit(&batcher, 3);
        // Both queued behind the first while its transaction is opening.
        while batcher.tx.capacity() != capacity - 2 {
            tokio::task::yield_now().await;
        }
        go.send(()).unwrap();
        for request in [first, second, third] {
            assert!(matches!(request.await.unwrap(), Err(StoreError::Batch(_))));
        }
        assert_eq!(batcher.submit(4).await.unwrap(), 4);
    }
}
