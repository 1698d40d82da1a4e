//! Group commit: requests that arrive while a batch is being written go
//! into the next one, so under load one transaction (and one WAL flush)
//! covers many requests, while a lone request is written at once, with no
//! timer to wait for.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use super::StoreError;

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
    /// At most `flushes` batches are written at the same time: more than one
    /// keeps the database busy while another batch's commit is flushed.
    /// Callers of `run` must lock rows in a fixed order (e.g. by id) so that
    /// concurrent batches cannot deadlock. The task ends when every clone of
    /// the batcher is dropped.
    pub fn start<F, Fut>(max_batch: usize, flushes: usize, run: F) -> Batcher<T, R>
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Vec<R>, StoreError>> + Send + 'static,
    {
        let max_batch = max_batch.max(1);
        let (tx, mut rx) = mpsc::channel::<(T, Reply<R>)>(max_batch * flushes.max(1) * 2);
        let flushes = Arc::new(Semaphore::new(flushes.max(1)));
        let run = Arc::new(run);
        tokio::spawn(async move {
            loop {
                let Ok(permit) = flushes.clone().acquire_owned().await else {
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
                    match run(items).await {
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
