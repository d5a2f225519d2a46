//! The embedded queue engine: rows in the shared SQLite file.
//!
//! A message is deliverable when it is its group's head (lowest sequence number still in
//! the table) and its `visible_at` has passed; that one rule gives per-group order and one
//! in-flight message per group. A `receipt` column holds the current delivery's handle.

use super::{
    DEDUP_WINDOW, DeadLetter, FailOutcome, NewMessage, Queue, QueueError, QueueStats, Receipt,
    ReceivedMessage, Sent, observe_received, validate_receive, validate_send,
};
use crate::sqlite::{Db, DbError};
use crate::time::{from_millis, now_millis};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queue_messages (
    seq INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    id TEXT NOT NULL,
    group_id TEXT NOT NULL,
    dedup_id TEXT NOT NULL,
    body BLOB NOT NULL,
    sent_at INTEGER NOT NULL,
    visible_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS queue_messages_group ON queue_messages (queue, group_id, seq);
CREATE INDEX IF NOT EXISTS queue_messages_visible ON queue_messages (queue, visible_at);
CREATE TABLE IF NOT EXISTS queue_dedup (
    queue TEXT NOT NULL,
    dedup_id TEXT NOT NULL,
    message_id TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (queue, dedup_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS queue_dedup_expiry ON queue_dedup (queue, expires_at);
CREATE TABLE IF NOT EXISTS queue_dead_letters (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    queue TEXT NOT NULL,
    id TEXT NOT NULL,
    group_id TEXT NOT NULL,
    dedup_id TEXT NOT NULL,
    body BLOB NOT NULL,
    sent_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL,
    reason TEXT NOT NULL,
    dead_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS queue_dead_letters_queue ON queue_dead_letters (queue, seq);
";

/// How often a long poll checks for messages committed by other processes: soon after it
/// starts waiting, then less often while nothing changes, so an idle consumer costs little
/// and a busy one hears of new messages within milliseconds.
const POLL_INTERVAL: Duration = Duration::from_millis(5);
const MAX_POLL_INTERVAL: Duration = Duration::from_millis(25);
/// Expired dedup ids are pruned at most this often.
const PRUNE_EVERY_MS: i64 = 10_000;

#[derive(Clone)]
pub struct SqliteQueue {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    name: String,
    /// Signalled after every change that can make a message deliverable.
    changed: Arc<Notify>,
    max_receives: u32,
    last_prune: AtomicI64,
}

impl SqliteQueue {
    pub async fn open(db: Db, name: &str, max_receives: u32) -> Result<Self, QueueError> {
        if name.is_empty() {
            return Err(QueueError::InvalidArgument("queue name is empty".into()));
        }
        db.migrate(SCHEMA).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                changed: db.topic(&format!("queue:{name}")),
                db,
                name: name.to_owned(),
                max_receives: max_receives.max(1),
                last_prune: AtomicI64::new(0),
            }),
        })
    }

    /// A write that may make a message deliverable: waiting receivers are woken after it.
    async fn mutate<T, F>(&self, f: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, QueueError> + Send + 'static,
    {
        let result = self.inner.db.write(f).await;
        if result.is_ok() {
            self.inner.changed.notify_waiters();
        }
        result
    }

    async fn try_receive(
        &self,
        max: usize,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        let name = self.inner.name.clone();
        let max_receives = self.inner.max_receives;
        self.inner
            .db
            .write(move |c| receive_now(c, &name, max, visibility, max_receives))
            .await
    }
}

impl From<DbError> for QueueError {
    fn from(e: DbError) -> Self {
        if e.is_unavailable() {
            QueueError::Unavailable(e.to_string())
        } else {
            QueueError::Backend(e.to_string())
        }
    }
}

impl From<rusqlite::Error> for QueueError {
    fn from(e: rusqlite::Error) -> Self {
        DbError::from(e).into()
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

struct Row {
    seq: i64,
    id: String,
    group_id: String,
    dedup_id: String,
    body: Vec<u8>,
    sent_at: i64,
    receive_count: u32,
    last_error: Option<String>,
}

fn receive_now(
    c: &Connection,
    queue: &str,
    max: usize,
    visibility: Duration,
    max_receives: u32,
) -> Result<Vec<ReceivedMessage>, QueueError> {
    let now = now_millis();
    let mut out = Vec::new();
    let mut heads = c.prepare_cached(
        "SELECT seq, id, group_id, dedup_id, body, sent_at, receive_count, last_error
         FROM queue_messages m
         WHERE queue = ?1 AND visible_at <= ?2
           AND NOT EXISTS (SELECT 1 FROM queue_messages p
                           WHERE p.queue = ?1 AND p.group_id = m.group_id AND p.seq < m.seq)
         ORDER BY seq LIMIT ?3",
    )?;
    // Moving an exhausted head to the dead letters frees its group's next message, so look
    // again until the batch is full or nothing moved.
    loop {
        let want = (max - out.len()) as i64;
        let rows = heads
            .query_map(params![queue, now, want], |r| {
                Ok(Row {
                    seq: r.get(0)?,
                    id: r.get(1)?,
                    group_id: r.get(2)?,
                    dedup_id: r.get(3)?,
                    body: r.get(4)?,
                    sent_at: r.get(5)?,
                    receive_count: r.get(6)?,
                    last_error: r.get(7)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        if rows.is_empty() {
            break;
        }
        let mut moved = false;
        for row in rows {
            if row.receive_count >= max_receives {
                let reason = format!(
                    "received {} times without success; last error: {}",
                    row.receive_count,
                    row.last_error
                        .as_deref()
                        .unwrap_or("none recorded (the consumer crashed or timed out)")
                );
                move_to_dead_letters(c, queue, row.seq, &reason, now)?;
                moved = true;
                continue;
            }
            // The row's sequence number leads the receipt, so receipts are found by primary
            // key and need no index of their own; the random part makes each one unique.
            let receipt = format!("{}.{}", row.seq, uuid::Uuid::new_v4().simple());
            c.prepare_cached(
                "UPDATE queue_messages SET receive_count = receive_count + 1, receipt = ?1,
                 visible_at = ?2 WHERE seq = ?3",
            )?
            .execute(params![receipt, now + ms(visibility), row.seq])?;
            out.push(ReceivedMessage {
                message_id: row.id,
                group_id: row.group_id,
                dedup_id: row.dedup_id,
                body: row.body,
                receive_count: row.receive_count + 1,
                sent_at: from_millis(row.sent_at),
                receipt: Receipt(receipt),
                last_error: row.last_error,
            });
        }
        if !moved || out.len() >= max {
            break;
        }
    }
    Ok(out)
}

fn move_to_dead_letters(
    c: &Connection,
    queue: &str,
    seq: i64,
    reason: &str,
    now: i64,
) -> Result<(), QueueError> {
    c.prepare_cached(
        "INSERT INTO queue_dead_letters
           (queue, id, group_id, dedup_id, body, sent_at, receive_count, reason, dead_at)
         SELECT queue, id, group_id, dedup_id, body, sent_at, receive_count, ?2, ?3
         FROM queue_messages WHERE seq = ?1",
    )?
    .execute(params![seq, reason, now])?;
    c.prepare_cached("DELETE FROM queue_messages WHERE seq = ?1")?
        .execute(params![seq])?;
    metrics::counter!("waconnect_queue_dead_lettered_total", "queue" => queue.to_owned())
        .increment(1);
    Ok(())
}

/// The row a receipt names (its leading sequence number); not checked against the row.
fn receipt_seq(receipt: &str) -> Result<i64, QueueError> {
    receipt
        .split_once('.')
        .and_then(|(seq, _)| seq.parse().ok())
        .ok_or(QueueError::StaleReceipt)
}

/// The message's sequence number, receive count and visibility, if `receipt` is its
/// current one.
fn held(c: &Connection, queue: &str, receipt: &str) -> Result<(i64, u32, i64), QueueError> {
    c.prepare_cached(
        "SELECT seq, receive_count, visible_at FROM queue_messages
         WHERE seq = ?1 AND queue = ?2 AND receipt = ?3",
    )?
    .query_row(params![receipt_seq(receipt)?, queue, receipt], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
    .optional()?
    .ok_or(QueueError::StaleReceipt)
}

#[async_trait]
impl Queue for SqliteQueue {
    fn name(&self) -> &str {
        &self.inner.name
    }

    async fn send(&self, message: NewMessage) -> Result<Sent, QueueError> {
        validate_send(&message)?;
        let name = self.inner.name.clone();
        let now = now_millis();
        let prune = now - self.inner.last_prune.load(Ordering::Relaxed) > PRUNE_EVERY_MS;
        if prune {
            self.inner.last_prune.store(now, Ordering::Relaxed);
        }
        let sent = self
            .mutate(move |c| {
                let now = now_millis();
                if prune {
                    c.prepare_cached("DELETE FROM queue_dedup WHERE queue = ?1 AND expires_at <= ?2")?
                        .execute(params![name, now])?;
                }
                let id = uuid::Uuid::new_v4().to_string();
                // Claims the dedup id unless a live claim holds it: one statement on the
                // hot path, the read only for a duplicate.
                let claimed = c
                    .prepare_cached(
                        "INSERT INTO queue_dedup (queue, dedup_id, message_id, expires_at)
                         VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (queue, dedup_id) DO UPDATE
                           SET message_id = excluded.message_id, expires_at = excluded.expires_at
                           WHERE queue_dedup.expires_at <= ?5",
                    )?
                    .execute(params![name, message.dedup_id, id, now + ms(DEDUP_WINDOW), now])?;
                if claimed == 0 {
                    let message_id: String = c
                        .prepare_cached(
                            "SELECT message_id FROM queue_dedup WHERE queue = ?1 AND dedup_id = ?2",
                        )?
                        .query_row(params![name, message.dedup_id], |r| r.get(0))?;
                    return Ok::<_, QueueError>(Sent {
                        message_id,
                        duplicate: Some(true),
                    });
                }
                c.prepare_cached(
                    "INSERT INTO queue_messages (queue, id, group_id, dedup_id, body, sent_at, visible_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
                )?
                .execute(params![name, id, message.group_id, message.dedup_id, message.body, now])?;
                Ok(Sent {
                    message_id: id,
                    duplicate: Some(false),
                })
            })
            .await?;
        let outcome = if sent.duplicate == Some(true) {
            "duplicate"
        } else {
            "new"
        };
        metrics::counter!("waconnect_queue_sent_total", "queue" => self.inner.name.clone(), "outcome" => outcome)
            .increment(1);
        Ok(sent)
    }

    async fn receive(
        &self,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, QueueError> {
        validate_receive(max, visibility, wait)?;
        let deadline = Instant::now() + wait;
        let db = &self.inner.db;
        loop {
            // Registered before looking, so a send that lands meanwhile still wakes us.
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let version = db.data_version().await?;
            let got = self.try_receive(max, visibility).await?;
            if !got.is_empty() || Instant::now() >= deadline {
                observe_received(&self.inner.name, &got);
                return Ok(got);
            }
            // Wait for a change in this process, a commit by another process, or a
            // timed-out delivery (checked once per second), whichever comes first.
            let recheck = Instant::now() + Duration::from_secs(1);
            let mut poll = POLL_INTERVAL;
            loop {
                tokio::select! {
                    _ = changed.as_mut() => break,
                    _ = tokio::time::sleep(poll) => {}
                }
                poll = (poll * 2).min(MAX_POLL_INTERVAL);
                let now = Instant::now();
                if now >= deadline || now >= recheck {
                    break;
                }
                if db.data_version().await? != version {
                    break;
                }
            }
        }
    }

    async fn delete(&self, receipt: &Receipt) -> Result<(), QueueError> {
        let name = self.inner.name.clone();
        let receipt = receipt.0.clone();
        self.mutate(move |c| {
            let n = c
                .prepare_cached(
                    "DELETE FROM queue_messages WHERE seq = ?1 AND queue = ?2 AND receipt = ?3",
                )?
                .execute(params![receipt_seq(&receipt)?, name, receipt])?;
            if n == 0 {
                return Err(QueueError::StaleReceipt);
            }
            Ok(())
        })
        .await
    }

    async fn change_visibility(
        &self,
        receipt: &Receipt,
        timeout: Duration,
    ) -> Result<(), QueueError> {
        super::validate_visibility(timeout)?;
        let name = self.inner.name.clone();
        let receipt = receipt.0.clone();
        self.mutate(move |c| {
            let now = now_millis();
            let (seq, _, visible_at) = held(c, &name, &receipt)?;
            // Like SQS: only a delivery still in flight can be changed.
            if visible_at <= now {
                return Err(QueueError::StaleReceipt);
            }
            c.prepare_cached("UPDATE queue_messages SET visible_at = ?1 WHERE seq = ?2")?
                .execute(params![now + ms(timeout), seq])?;
            Ok(())
        })
        .await
    }

    async fn fail(
        &self,
        receipt: &Receipt,
        reason: &str,
        retry_after: Duration,
    ) -> Result<FailOutcome, QueueError> {
        let name = self.inner.name.clone();
        let receipt = receipt.0.clone();
        let reason = reason.to_owned();
        let max_receives = self.inner.max_receives;
        self.mutate(move |c| {
            let now = now_millis();
            let (seq, receive_count, _) = held(c, &name, &receipt)?;
            if receive_count >= max_receives {
                let why = format!("failed {receive_count} times; last error: {reason}");
                move_to_dead_letters(c, &name, seq, &why, now)?;
                return Ok(FailOutcome::DeadLettered);
            }
            c.prepare_cached(
                "UPDATE queue_messages SET visible_at = ?1, receipt = NULL, last_error = ?2
                     WHERE seq = ?3",
            )?
            .execute(params![now + ms(retry_after), reason, seq])?;
            Ok(FailOutcome::WillRetry)
        })
        .await
    }

    async fn dead_letter(&self, receipt: &Receipt, reason: &str) -> Result<(), QueueError> {
        let name = self.inner.name.clone();
        let receipt = receipt.0.clone();
        let reason = reason.to_owned();
        self.mutate(move |c| {
            let (seq, _, _) = held(c, &name, &receipt)?;
            move_to_dead_letters(c, &name, seq, &reason, now_millis())
        })
        .await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let name = self.inner.name.clone();
        self.inner
            .db
            .read(move |c| {
                c.prepare_cached(
                    "SELECT id, group_id, dedup_id, body, receive_count, reason, sent_at, dead_at
                     FROM queue_dead_letters WHERE queue = ?1 ORDER BY seq LIMIT ?2",
                )?
                .query_map(params![name, limit as i64], |r| {
                    Ok(DeadLetter {
                        message_id: r.get(0)?,
                        group_id: r.get(1)?,
                        dedup_id: r.get(2)?,
                        body: r.get(3)?,
                        receive_count: r.get(4)?,
                        reason: r.get(5)?,
                        sent_at: from_millis(r.get(6)?),
                        dead_at: from_millis(r.get(7)?),
                    })
                })?
                .collect::<Result<Vec<_>, _>>()
                .map_err(QueueError::from)
            })
            .await
    }

    async fn stats(&self) -> Result<QueueStats, QueueError> {
        let name = self.inner.name.clone();
        self.inner
            .db
            .read(move |c| {
                let now = now_millis();
                let (visible, in_flight, delayed, oldest): (i64, i64, i64, Option<i64>) = c
                    .prepare_cached(
                        "SELECT
                           COALESCE(SUM(visible_at <= ?2), 0),
                           COALESCE(SUM(visible_at > ?2 AND receipt IS NOT NULL), 0),
                           COALESCE(SUM(visible_at > ?2 AND receipt IS NULL), 0),
                           MIN(sent_at)
                         FROM queue_messages WHERE queue = ?1",
                    )?
                    .query_row(params![name, now], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })?;
                let dead: i64 = c
                    .prepare_cached("SELECT COUNT(*) FROM queue_dead_letters WHERE queue = ?1")?
                    .query_row(params![name], |r| r.get(0))?;
                Ok(QueueStats {
                    visible: visible as u64,
                    in_flight: in_flight as u64,
                    delayed: delayed as u64,
                    dead_letters: dead as u64,
                    oldest_age: Some(Duration::from_millis(
                        oldest.map_or(0, |sent| (now - sent).max(0)) as u64,
                    )),
                })
            })
            .await
    }
}
