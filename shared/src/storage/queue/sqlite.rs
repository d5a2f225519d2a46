//! The embedded queue engine: rows in the shared SQLite file.
//!
//! Each group is a chain: a message records the group's message sent just before it
//! (`prev_seq`), and `queue_groups` holds every non-empty group's head and tail. Only a
//! head is deliverable, once its `visible_at` has passed; that gives per-group order and
//! one in-flight message per group. When a head leaves (deleted or dead-lettered), its
//! successor is found through `prev_seq` and becomes the head.
//!
//! Why chains and not an index on (queue, group, seq): with a backlog, such an index
//! takes one insert in the middle of a large B-tree per message (a page rewritten per
//! message, in the WAL and again at checkpoint), and a receive had to look at every
//! visible message. A chain's inserts land at the end of their indexes, the group table
//! only holds groups with messages, and a receive looks at group heads only.

use super::{
    DEDUP_WINDOW, DeadLetter, FailOutcome, Limits, NewMessage, Queue, QueueError, QueueStats,
    Receipt, ReceivedMessage, Sent, Take, observe_received, validate_receive, validate_send,
};
use crate::storage::sqlite::{Db, DbError};
use crate::storage::time::{from_millis, now_millis};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS queue_entries (
    seq INTEGER PRIMARY KEY,
    queue TEXT NOT NULL,
    id TEXT NOT NULL,
    group_id TEXT NOT NULL,
    dedup_id TEXT NOT NULL,
    body BLOB NOT NULL,
    sent_at INTEGER NOT NULL,
    prev_seq INTEGER,
    visible_at INTEGER NOT NULL,
    receive_count INTEGER NOT NULL DEFAULT 0,
    receipt TEXT,
    last_error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS queue_entries_next ON queue_entries (prev_seq)
    WHERE prev_seq IS NOT NULL;
CREATE TABLE IF NOT EXISTS queue_groups (
    queue TEXT NOT NULL,
    group_id TEXT NOT NULL,
    head_seq INTEGER NOT NULL,
    tail_seq INTEGER NOT NULL,
    PRIMARY KEY (queue, group_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS queue_groups_heads ON queue_groups (queue, head_seq);
CREATE TABLE IF NOT EXISTS queue_sizes (
    queue TEXT PRIMARY KEY,
    messages INTEGER NOT NULL
) WITHOUT ROWID;
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

/// Files written before the chains kept messages in `queue_messages` with an index per
/// group; their messages move over, in order and with their deliveries, when first
/// opened by this version.
const FROM_GROUP_INDEX: &str = "
INSERT INTO queue_entries (seq, queue, id, group_id, dedup_id, body, sent_at, prev_seq,
                           visible_at, receive_count, receipt, last_error)
    SELECT seq, queue, id, group_id, dedup_id, body, sent_at,
           LAG(seq) OVER (PARTITION BY queue, group_id ORDER BY seq),
           visible_at, receive_count, receipt, last_error
    FROM queue_messages;
INSERT INTO queue_groups (queue, group_id, head_seq, tail_seq)
    SELECT queue, group_id, MIN(seq), MAX(seq) FROM queue_messages GROUP BY queue, group_id;
INSERT INTO queue_sizes (queue, messages)
    SELECT queue, COUNT(*) FROM queue_messages GROUP BY queue;
DROP TABLE queue_messages;
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
    limits: Limits,
    last_prune: AtomicI64,
    /// `waconnect_queue_sent_total` for new and duplicate sends, registered once: a send
    /// is on ingress's hot path, where a registry lookup per call is measurable.
    sent_new: metrics::Counter,
    sent_duplicate: metrics::Counter,
}

impl SqliteQueue {
    pub async fn open(db: Db, name: &str, limits: Limits) -> Result<Self, QueueError> {
        if name.is_empty() {
            return Err(QueueError::InvalidArgument("queue name is empty".into()));
        }
        db.write(|c| {
            c.execute_batch(SCHEMA)?;
            let old: bool = c.query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'queue_messages')",
                [],
                |r| r.get(0),
            )?;
            if old {
                c.execute_batch(FROM_GROUP_INDEX)?;
            }
            // Files from before attempts were counted apart from receives.
            let counted: bool = c.query_row(
                "SELECT EXISTS (SELECT 1 FROM pragma_table_info('queue_entries') WHERE name = 'attempts')",
                [],
                |r| r.get(0),
            )?;
            if !counted {
                c.execute_batch(
                    "ALTER TABLE queue_entries ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0",
                )?;
            }
            Ok::<_, QueueError>(())
        })
        .await?;
        // Handles registered before the recorder exists would count into nothing.
        crate::service::telemetry::metrics();
        let sent = |outcome: &'static str| metrics::counter!("waconnect_queue_sent_total", "queue" => name.to_owned(), "outcome" => outcome);
        Ok(Self {
            inner: Arc::new(Inner {
                changed: db.topic(&format!("queue:{name}")),
                db,
                name: name.to_owned(),
                limits: Limits {
                    max_attempts: limits.max_attempts.max(1),
                    max_receives: limits.max_receives.max(1),
                },
                last_prune: AtomicI64::new(0),
                sent_new: sent("new"),
                sent_duplicate: sent("duplicate"),
            }),
        })
    }

    /// A write that may make a message deliverable: waiting receivers are woken after it.
    async fn mutate<T, F>(&self, f: F) -> Result<T, QueueError>
    where
        T: Send + 'static,
        F: FnMut(&Connection) -> Result<T, QueueError> + Send + 'static,
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
        let max_receives = self.inner.limits.max_receives;
        let (received, dead) = self
            .inner
            .db
            .write(move |c| receive_now(c, &name, max, visibility, max_receives))
            .await?;
        self.dead_lettered(dead);
        Ok(received)
    }

    /// Counted once the write has committed: a write job may run twice.
    fn dead_lettered(&self, messages: u64) {
        if messages > 0 {
            metrics::counter!("waconnect_queue_dead_lettered_total", "queue" => self.inner.name.clone())
                .increment(messages);
        }
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
    attempts: u32,
    last_error: Option<String>,
}

/// The deliverable group heads, oldest first. CROSS JOIN keeps the group table outermost:
/// heads in sequence order, each looked up by key, however long the chains behind them.
const HEADS: &str = "
    SELECT m.seq, m.id, m.group_id, m.dedup_id, m.body, m.sent_at, m.receive_count, m.last_error,
           m.attempts
    FROM queue_groups g CROSS JOIN queue_entries m ON m.seq = g.head_seq
    WHERE g.queue = ?1 AND m.visible_at <= ?2
    ORDER BY g.head_seq LIMIT ?3";

fn receive_now(
    c: &Connection,
    queue: &str,
    max: usize,
    visibility: Duration,
    max_receives: u32,
) -> Result<(Vec<ReceivedMessage>, u64), QueueError> {
    let now = now_millis();
    let mut out = Vec::new();
    let mut dead = 0;
    let mut heads = c.prepare_cached(HEADS)?;
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
                    attempts: r.get(8)?,
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
                move_to_dead_letters(c, queue, row.seq, &row.group_id, &reason, now)?;
                dead += 1;
                moved = true;
                continue;
            }
            // The row's sequence number leads the receipt, so receipts are found by primary
            // key and need no index of their own; the random part makes each one unique.
            let receipt = format!("{}.{}", row.seq, uuid::Uuid::new_v4().simple());
            c.prepare_cached(
                "UPDATE queue_entries SET receive_count = receive_count + 1, receipt = ?1,
                 visible_at = ?2 WHERE seq = ?3",
            )?
            .execute(params![receipt, now + ms(visibility), row.seq])?;
            out.push(ReceivedMessage {
                message_id: row.id,
                group_id: row.group_id,
                dedup_id: row.dedup_id,
                body: row.body,
                receive_count: row.receive_count + 1,
                attempts: row.attempts,
                sent_at: from_millis(row.sent_at),
                receipt: Receipt(receipt),
                last_error: row.last_error,
            });
        }
        if !moved || out.len() >= max {
            break;
        }
    }
    Ok((out, dead))
}

/// Appends `message` to its group's chain, unless its dedup id was claimed within the window.
fn enqueue(c: &Connection, name: &str, message: &NewMessage) -> Result<Sent, QueueError> {
    let now = now_millis();
    let id = uuid::Uuid::new_v4().to_string();
    // Claims the dedup id unless a live claim holds it: one statement on the hot path, the
    // read only for a duplicate.
    let claimed = c
        .prepare_cached(
            "INSERT INTO queue_dedup (queue, dedup_id, message_id, expires_at)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (queue, dedup_id) DO UPDATE
               SET message_id = excluded.message_id, expires_at = excluded.expires_at
               WHERE queue_dedup.expires_at <= ?5",
        )?
        .execute(params![
            name,
            message.dedup_id,
            id,
            now + ms(DEDUP_WINDOW),
            now
        ])?;
    if claimed == 0 {
        let message_id: String = c
            .prepare_cached(
                "SELECT message_id FROM queue_dedup WHERE queue = ?1 AND dedup_id = ?2",
            )?
            .query_row(params![name, message.dedup_id], |r| r.get(0))?;
        return Ok(Sent {
            message_id,
            duplicate: Some(true),
        });
    }
    let tail: Option<i64> = c
        .prepare_cached("SELECT tail_seq FROM queue_groups WHERE queue = ?1 AND group_id = ?2")?
        .query_row(params![name, message.group_id], |r| r.get(0))
        .optional()?;
    c.prepare_cached(
        "INSERT INTO queue_entries
           (queue, id, group_id, dedup_id, body, sent_at, prev_seq, visible_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6)",
    )?
    .execute(params![
        name,
        id,
        message.group_id,
        message.dedup_id,
        message.body,
        now,
        tail
    ])?;
    let seq = c.last_insert_rowid();
    c.prepare_cached(
        "INSERT INTO queue_groups (queue, group_id, head_seq, tail_seq) VALUES (?1, ?2, ?3, ?3)
         ON CONFLICT (queue, group_id) DO UPDATE SET tail_seq = excluded.tail_seq",
    )?
    .execute(params![name, message.group_id, seq])?;
    c.prepare_cached(
        "INSERT INTO queue_sizes (queue, messages) VALUES (?1, 1)
         ON CONFLICT (queue) DO UPDATE SET messages = messages + 1",
    )?
    .execute(params![name])?;
    Ok(Sent {
        message_id: id,
        duplicate: Some(false),
    })
}

/// Takes the head `seq` of `group` out of the queue; its successor, if any, is the head.
fn remove_head(c: &Connection, queue: &str, seq: i64, group: &str) -> Result<(), QueueError> {
    c.prepare_cached("DELETE FROM queue_entries WHERE seq = ?1")?
        .execute(params![seq])?;
    let next: Option<i64> = c
        .prepare_cached("SELECT seq FROM queue_entries WHERE prev_seq = ?1")?
        .query_row(params![seq], |r| r.get(0))
        .optional()?;
    let changed = match next {
        Some(next) => c
            .prepare_cached(
                "UPDATE queue_groups SET head_seq = ?4
                 WHERE queue = ?1 AND group_id = ?2 AND head_seq = ?3",
            )?
            .execute(params![queue, group, seq, next])?,
        None => c
            .prepare_cached(
                "DELETE FROM queue_groups
                 WHERE queue = ?1 AND group_id = ?2 AND head_seq = ?3 AND tail_seq = ?3",
            )?
            .execute(params![queue, group, seq])?,
    };
    // Only a head is ever received, so only a head can leave; anything else is a broken
    // chain, and committing it would strand the group.
    if changed != 1 {
        return Err(QueueError::Backend(format!(
            "message {seq} left its group but was not the group's head"
        )));
    }
    c.prepare_cached("UPDATE queue_sizes SET messages = messages - 1 WHERE queue = ?1")?
        .execute(params![queue])?;
    Ok(())
}

fn move_to_dead_letters(
    c: &Connection,
    queue: &str,
    seq: i64,
    group: &str,
    reason: &str,
    now: i64,
) -> Result<(), QueueError> {
    c.prepare_cached(
        "INSERT INTO queue_dead_letters
           (queue, id, group_id, dedup_id, body, sent_at, receive_count, reason, dead_at)
         SELECT queue, id, group_id, dedup_id, body, sent_at, receive_count, ?2, ?3
         FROM queue_entries WHERE seq = ?1",
    )?
    .execute(params![seq, reason, now])?;
    remove_head(c, queue, seq, group)
}

/// The row a receipt names (its leading sequence number); not checked against the row.
fn receipt_seq(receipt: &str) -> Result<i64, QueueError> {
    receipt
        .split_once('.')
        .and_then(|(seq, _)| seq.parse().ok())
        .ok_or(QueueError::StaleReceipt)
}

/// The delivery a receipt names, if it is the message's current one.
struct Held {
    seq: i64,
    group_id: String,
    attempts: u32,
    visible_at: i64,
}

fn held(c: &Connection, queue: &str, receipt: &str) -> Result<Held, QueueError> {
    c.prepare_cached(
        "SELECT seq, group_id, attempts, visible_at FROM queue_entries
         WHERE seq = ?1 AND queue = ?2 AND receipt = ?3",
    )?
    .query_row(params![receipt_seq(receipt)?, queue, receipt], |r| {
        Ok(Held {
            seq: r.get(0)?,
            group_id: r.get(1)?,
            attempts: r.get(2)?,
            visible_at: r.get(3)?,
        })
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
        let inner = self.inner.clone();
        let now = now_millis();
        let prune = now - self.inner.last_prune.load(Ordering::Relaxed) > PRUNE_EVERY_MS;
        if prune {
            self.inner.last_prune.store(now, Ordering::Relaxed);
        }
        let sent = self
            .mutate(move |c| {
                if prune {
                    c.prepare_cached(
                        "DELETE FROM queue_dedup WHERE queue = ?1 AND expires_at <= ?2",
                    )?
                    .execute(params![inner.name, now_millis()])?;
                }
                enqueue(c, &inner.name, &message)
            })
            .await?;
        if sent.duplicate == Some(true) {
            self.inner.sent_duplicate.increment(1);
        } else {
            self.inner.sent_new.increment(1);
        }
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
            // Stamped before the version is read: a commit in between moves the stamp.
            let mut stamp = db.wal_stamp();
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
                let now_stamp = db.wal_stamp();
                if now_stamp.is_some() && now_stamp == stamp {
                    continue;
                }
                stamp = now_stamp;
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
            let held = held(c, &name, &receipt)?;
            remove_head(c, &name, held.seq, &held.group_id)
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
            let held = held(c, &name, &receipt)?;
            // Like SQS: only a delivery still in flight can be changed.
            if held.visible_at <= now {
                return Err(QueueError::StaleReceipt);
            }
            c.prepare_cached("UPDATE queue_entries SET visible_at = ?1 WHERE seq = ?2")?
                .execute(params![now + ms(timeout), held.seq])?;
            Ok(())
        })
        .await
    }

    /// Unlike SQS, the embedded engine can take the receive back too, so hand-backs never
    /// bring a message nearer the crash backstop.
    async fn release(&self, receipt: &Receipt) -> Result<(), QueueError> {
        let name = self.inner.name.clone();
        let receipt = receipt.0.clone();
        self.mutate(move |c| {
            let now = now_millis();
            let held = held(c, &name, &receipt)?;
            if held.visible_at <= now {
                return Err(QueueError::StaleReceipt);
            }
            c.prepare_cached(
                "UPDATE queue_entries SET visible_at = ?1, receipt = NULL,
                 receive_count = MAX(receive_count - 1, 0) WHERE seq = ?2",
            )?
            .execute(params![now, held.seq])?;
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
        let max_attempts = self.inner.limits.max_attempts;
        let outcome = self
            .mutate(move |c| {
                let now = now_millis();
                let held = held(c, &name, &receipt)?;
                let attempts = held.attempts + 1;
                if attempts >= max_attempts {
                    let why = format!("failed {attempts} times; last error: {reason}");
                    move_to_dead_letters(c, &name, held.seq, &held.group_id, &why, now)?;
                    return Ok(FailOutcome::DeadLettered);
                }
                c.prepare_cached(
                    "UPDATE queue_entries SET visible_at = ?1, receipt = NULL, last_error = ?2,
                     attempts = attempts + 1 WHERE seq = ?3",
                )?
                .execute(params![now + ms(retry_after), reason, held.seq])?;
                Ok(FailOutcome::WillRetry)
            })
            .await?;
        if outcome == FailOutcome::DeadLettered {
            self.dead_lettered(1);
        }
        Ok(outcome)
    }

    async fn dead_letter(&self, receipt: &Receipt, reason: &str) -> Result<(), QueueError> {
        let name = self.inner.name.clone();
        let receipt = receipt.0.clone();
        let reason = reason.to_owned();
        self.mutate(move |c| {
            let held = held(c, &name, &receipt)?;
            move_to_dead_letters(c, &name, held.seq, &held.group_id, &reason, now_millis())
        })
        .await?;
        self.dead_lettered(1);
        Ok(())
    }

    async fn prune_dead_letters(
        &self,
        before: chrono::DateTime<chrono::Utc>,
    ) -> Result<u64, QueueError> {
        let name = self.inner.name.clone();
        let before = before.timestamp_millis();
        self.inner
            .db
            .write(move |c| {
                let n = c
                    .prepare_cached(
                        "DELETE FROM queue_dead_letters WHERE queue = ?1 AND dead_at < ?2",
                    )?
                    .execute(params![name, before])?;
                Ok(n as u64)
            })
            .await
    }

    async fn take_dead_letters(
        &self,
        ids: &[String],
        take: Take,
    ) -> Result<Vec<String>, QueueError> {
        let name = self.inner.name.clone();
        let ids = ids.to_vec();
        // One transaction: a letter is back on the queue exactly when it left the DLQ.
        self.mutate(move |c| {
            let mut found: Vec<(i64, String, String, Vec<u8>)> = Vec::new();
            let mut lookup = c.prepare_cached(
                "SELECT seq, id, group_id, body FROM queue_dead_letters
                 WHERE queue = ?1 AND id = ?2",
            )?;
            for id in &ids {
                let rows = lookup
                    .query_map(params![name, id], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                found.extend(rows);
            }
            // The order they died in, which within a group is the order they were sent.
            found.sort_by_key(|f| f.0);
            found.dedup_by_key(|f| f.0);
            let mut taken = Vec::with_capacity(found.len());
            for (seq, id, group_id, body) in found {
                if take == Take::Redrive {
                    enqueue(
                        c,
                        &name,
                        &NewMessage {
                            group_id,
                            dedup_id: super::redrive_dedup_id(&id),
                            body,
                        },
                    )?;
                }
                c.prepare_cached("DELETE FROM queue_dead_letters WHERE seq = ?1")?
                    .execute(params![seq])?;
                taken.push(id);
            }
            Ok(taken)
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
                let total: i64 = c
                    .prepare_cached("SELECT messages FROM queue_sizes WHERE queue = ?1")?
                    .query_row(params![name], |r| r.get(0))
                    .optional()?
                    .unwrap_or(0);
                // Only a head is ever received or held back by a retry, and a group's
                // oldest message is its head: the heads give all but the total.
                let (in_flight, delayed, oldest): (i64, i64, Option<i64>) = c
                    .prepare_cached(
                        "SELECT
                           COALESCE(SUM(m.visible_at > ?2 AND m.receipt IS NOT NULL), 0),
                           COALESCE(SUM(m.visible_at > ?2 AND m.receipt IS NULL), 0),
                           MIN(m.sent_at)
                         FROM queue_groups g CROSS JOIN queue_entries m ON m.seq = g.head_seq
                         WHERE g.queue = ?1",
                    )?
                    .query_row(params![name, now], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?;
                let visible = (total - in_flight - delayed).max(0);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::config::Synchronous;
    use rusqlite::StatementStatus;

    const MINUTE: Duration = Duration::from_secs(60);

    async fn open(dir: &tempfile::TempDir) -> (Db, SqliteQueue) {
        let path = dir.path().join("queue.db");
        let db = Db::open_path(&path, Synchronous::Normal).await.unwrap();
        let queue = SqliteQueue::open(db.clone(), "q", Limits::both(5))
            .await
            .unwrap();
        (db, queue)
    }

    fn ids(messages: &[ReceivedMessage]) -> Vec<&str> {
        messages.iter().map(|m| m.dedup_id.as_str()).collect()
    }

    /// Another process's send wakes a long poll through the log's stamp: by growing the
    /// log, and once a checkpoint has let the log be written over from its start, where
    /// its length stays the same, by its modification time.
    #[tokio::test]
    async fn a_long_poll_wakes_for_every_send_by_another_process() {
        let dir = tempfile::tempdir().unwrap();
        let (db, consumer) = open(&dir).await;
        // A second connection with its own thread, as another process would have.
        let other = Db::open_path(&dir.path().join("queue.db"), Synchronous::Normal)
            .await
            .unwrap();
        let producer = SqliteQueue::open(other.clone(), "q", Limits::both(5))
            .await
            .unwrap();
        let mut lengths = std::collections::HashSet::new();
        for n in 0..12 {
            let waiting = {
                let consumer = consumer.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    let got = consumer
                        .receive(1, MINUTE, Duration::from_secs(20))
                        .await
                        .unwrap();
                    (got, started.elapsed())
                })
            };
            // Past the checkpointer's period, so the log is copied over and restarts.
            tokio::time::sleep(Duration::from_millis(150)).await;
            let stamp = db.wal_stamp().unwrap();
            producer
                .send(NewMessage {
                    group_id: format!("g{n}"),
                    dedup_id: format!("d{n}"),
                    body: b"wake".to_vec(),
                })
                .await
                .unwrap();
            assert_ne!(db.wal_stamp(), Some(stamp), "the send left the log's stamp");
            lengths.insert(stamp.0);
            let (got, waited) = waiting.await.unwrap();
            assert_eq!(ids(&got), [format!("d{n}")]);
            // Well under the once-a-second look at the queue itself.
            assert!(
                waited < Duration::from_millis(600),
                "send {n} woke it after {waited:?}"
            );
            consumer.delete(&got[0].receipt).await.unwrap();
        }
        // The log was written over from its start: the same length came back.
        assert!(lengths.len() < 12, "the log only grew: {lengths:?}");
    }

    /// An idle long poll asks the database thread whether another process committed only
    /// when the log moved: not at each of its polls (5-25 ms apart), which was most of an
    /// idle relay's CPU.
    #[tokio::test]
    async fn an_idle_long_poll_leaves_the_database_thread_alone() {
        const VERSION: &str = "PRAGMA data_version";
        let dir = tempfile::tempdir().unwrap();
        let (db, queue) = open(&dir).await;
        // The statement's VM steps, counted from zero after `f` runs.
        async fn steps_of(db: &Db, f: impl std::future::Future<Output = ()>) -> i32 {
            db.read(|c| {
                c.prepare_cached(VERSION)?
                    .reset_status(StatementStatus::VmStep);
                Ok::<_, DbError>(())
            })
            .await
            .unwrap();
            f.await;
            db.read(|c| {
                Ok::<_, DbError>(
                    c.prepare_cached(VERSION)?
                        .get_status(StatementStatus::VmStep),
                )
            })
            .await
            .unwrap()
        }
        let once = steps_of(&db, async {
            db.data_version().await.unwrap();
        })
        .await;
        assert!(once > 0);
        // Under the once-a-second look at the queue itself.
        let idle = steps_of(&db, async {
            let got = queue.receive(1, MINUTE, Duration::from_millis(600)).await;
            assert!(got.unwrap().is_empty());
        })
        .await;
        assert!(
            idle <= 2 * once,
            "an idle 600 ms long poll asked {} times",
            idle / once
        );
    }

    #[tokio::test]
    async fn a_receive_looks_at_group_heads_not_at_the_backlog() {
        let dir = tempfile::tempdir().unwrap();
        let (db, queue) = open(&dir).await;
        db.write(|c| {
            for n in 0..2000 {
                let group = if n % 2 == 0 { "a" } else { "b" };
                let message = NewMessage {
                    group_id: group.into(),
                    dedup_id: format!("{group}{n}"),
                    body: vec![b'x'; 100],
                };
                enqueue(c, "q", &message)?;
            }
            Ok::<_, QueueError>(())
        })
        .await
        .unwrap();
        let heads = queue.receive(10, MINUTE, Duration::ZERO).await.unwrap();
        assert_eq!(ids(&heads), ["a0", "b1"]);

        // Both heads are in flight: 1,998 messages wait behind them, and none is looked at.
        db.read(|c| {
            c.prepare_cached(HEADS)?
                .reset_status(StatementStatus::VmStep);
            Ok::<_, DbError>(())
        })
        .await
        .unwrap();
        let none = queue.receive(10, MINUTE, Duration::ZERO).await.unwrap();
        assert!(none.is_empty());
        let steps = db
            .read(|c| {
                Ok::<_, DbError>(c.prepare_cached(HEADS)?.get_status(StatementStatus::VmStep))
            })
            .await
            .unwrap();
        assert!(steps < 200, "a receive took {steps} VM steps");
        let stats = queue.stats().await.unwrap();
        assert_eq!((stats.visible, stats.in_flight), (1998, 2));
    }

    /// The table that files written before the chains hold.
    const GROUP_INDEX_SCHEMA: &str = "
        CREATE TABLE queue_messages (
            seq INTEGER PRIMARY KEY, queue TEXT NOT NULL, id TEXT NOT NULL,
            group_id TEXT NOT NULL, dedup_id TEXT NOT NULL, body BLOB NOT NULL,
            sent_at INTEGER NOT NULL, visible_at INTEGER NOT NULL,
            receive_count INTEGER NOT NULL DEFAULT 0, receipt TEXT, last_error TEXT);
        CREATE INDEX queue_messages_group ON queue_messages (queue, group_id, seq);";

    #[tokio::test]
    async fn messages_queued_before_the_chains_move_over_in_order_with_their_deliveries() {
        let dir = tempfile::tempdir().unwrap();
        {
            let c = Connection::open(dir.path().join("queue.db")).unwrap();
            c.execute_batch(GROUP_INDEX_SCHEMA).unwrap();
            let later = now_millis() + 60_000;
            // a1 is in flight with receipt "1.old", a2 waits behind it, b1 is ready, and
            // x1 belongs to another queue.
            c.execute_batch(&format!(
                "INSERT INTO queue_messages
                   (seq, queue, id, group_id, dedup_id, body, sent_at, visible_at, receive_count, receipt)
                 VALUES (1, 'q', 'i1', 'a', 'a1', x'00', 0, {later}, 1, '1.old'),
                        (2, 'q', 'i2', 'b', 'b1', x'00', 0, 0, 0, NULL),
                        (3, 'other', 'i3', 'a', 'x1', x'00', 0, 0, 0, NULL),
                        (4, 'q', 'i4', 'a', 'a2', x'00', 0, 0, 0, NULL);"
            ))
            .unwrap();
        }
        let (db, queue) = open(&dir).await;
        let stats = queue.stats().await.unwrap();
        assert_eq!((stats.visible, stats.in_flight), (2, 1));
        assert_eq!(
            ids(&queue.receive(10, MINUTE, Duration::ZERO).await.unwrap()),
            ["b1"]
        );
        queue.delete(&Receipt("1.old".into())).await.unwrap();
        assert_eq!(
            ids(&queue.receive(10, MINUTE, Duration::ZERO).await.unwrap()),
            ["a2"]
        );
        let other = SqliteQueue::open(db.clone(), "other", Limits::both(5))
            .await
            .unwrap();
        assert_eq!(
            ids(&other.receive(10, MINUTE, Duration::ZERO).await.unwrap()),
            ["x1"]
        );
        let old_table: i64 = db
            .read(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM sqlite_schema WHERE name = 'queue_messages'",
                    [],
                    |r| r.get(0),
                )
                .map_err(DbError::from)
            })
            .await
            .unwrap();
        assert_eq!(old_table, 0);
    }

    #[tokio::test]
    async fn only_a_group_head_can_leave_the_queue() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _queue) = open(&dir).await;
        let result = db
            .write(|c| {
                for n in 0..2 {
                    let message = NewMessage {
                        group_id: "a".into(),
                        dedup_id: format!("a{n}"),
                        body: vec![],
                    };
                    enqueue(c, "q", &message)?;
                }
                // The second message is not the head: removing it would strand the group.
                let second: i64 =
                    c.query_row("SELECT MAX(seq) FROM queue_entries", [], |r| r.get(0))?;
                remove_head(c, "q", second, "a")
            })
            .await;
        assert!(matches!(result, Err(QueueError::Backend(_))), "{result:?}");
        let left: i64 = db
            .read(|c| {
                c.query_row("SELECT COUNT(*) FROM queue_entries", [], |r| r.get(0))
                    .map_err(DbError::from)
            })
            .await
            .unwrap();
        assert_eq!(
            left, 0,
            "the failed job's own changes are undone, sends included"
        );
    }
}
