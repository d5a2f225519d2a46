//! The embedded engine's database: one SQLite file in WAL mode, shared by the processes of
//! one host (ingress, relay-worker, outbound-sender) and by the queue and the store.
//!
//! Each process owns one connection on one dedicated thread. Writes from all tasks are
//! *group-committed*: the thread takes every job waiting, runs them in one
//! `BEGIN IMMEDIATE` transaction (each inside its own savepoint, so one job's failure
//! undoes only that job), commits once, and only then answers. With `synchronous=FULL` an
//! answer therefore means "on disk", and the fsync cost is shared by the whole batch.
//! A job whose caller stopped waiting (a timeout) is skipped, so a request that was
//! answered "unavailable" is not committed later behind its back.

use crate::config::{EmbeddedConfig, Synchronous};
use rusqlite::Connection;
use std::collections::HashMap;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, oneshot};

/// How long a connection waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The page cache of each process's connection, at most.
const CACHE_KIB: i64 = 32 * 1024;
/// Upper bound on jobs per transaction, so one batch cannot hold the lock for long.
const MAX_BATCH: usize = 512;

#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    #[error("database is busy (locked by another process for longer than {BUSY_TIMEOUT:?})")]
    Busy,
    #[error("database error: {0}")]
    Sqlite(String),
    #[error("database thread has stopped")]
    Closed,
}

impl DbError {
    /// Whether the failure is the database being unreachable rather than a bad request.
    pub fn is_unavailable(&self) -> bool {
        !matches!(self, Self::Sqlite(_))
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                Self::Busy
            }
            _ => Self::Sqlite(e.to_string()),
        }
    }
}

type Completion = Box<dyn FnOnce(Result<(), DbError>) + Send>;

/// What the database thread does with a job.
enum Step<'a> {
    Run(&'a Connection),
    /// Answer `error` without running (the transaction could not start).
    Abort(DbError),
}

struct Envelope {
    write: bool,
    /// Runs or aborts the job. `None` when there is nothing left to answer: the job was
    /// aborted, or its caller had gone away and the job was skipped.
    run: Job,
}

type Job = Box<dyn FnOnce(Step<'_>) -> Option<(bool, Completion)> + Send>;

/// A handle to the database thread; cheap to clone.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: mpsc::Sender<Envelope>,
    /// In-process wake-ups by topic (e.g. a queue name), for long polls.
    topics: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Db {
    pub async fn open(config: &EmbeddedConfig) -> Result<Self, DbError> {
        Self::open_path(&config.path, config.synchronous).await
    }

    /// Opens the file on the database's own thread: opening may wait for another
    /// process's lock, and that wait must not stall the async runtime.
    pub async fn open_path(path: &Path, synchronous: Synchronous) -> Result<Self, DbError> {
        let (tx, rx) = mpsc::channel::<Envelope>();
        let (opened_tx, opened_rx) = oneshot::channel();
        let file = path.to_owned();
        std::thread::Builder::new()
            .name("waconnect-sqlite".into())
            .spawn(move || match connect(&file, synchronous) {
                Ok(conn) => {
                    let _ = opened_tx.send(Ok(()));
                    serve(conn, rx);
                }
                Err(e) => {
                    let _ = opened_tx.send(Err(e));
                }
            })
            .map_err(|e| DbError::Sqlite(format!("cannot start the database thread: {e}")))?;
        opened_rx.await.map_err(|_| DbError::Closed)??;
        Ok(Self {
            inner: Arc::new(Inner {
                jobs: tx,
                topics: Mutex::default(),
            }),
        })
    }

    /// The in-process wake-up for `topic`: writers notify it after a change that waiters
    /// care about; other processes' changes show in [`Db::data_version`] instead.
    pub fn topic(&self, topic: &str) -> Arc<Notify> {
        let mut topics = self.inner.topics.lock().expect("topic map poisoned");
        topics.entry(topic.to_owned()).or_default().clone()
    }

    /// Runs `f` in a write transaction shared with other concurrent writes; answers after
    /// the commit. An `Err` from `f` undoes `f`'s own changes only.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        self.submit(true, f).await
    }

    /// Runs `f` outside any transaction (a single consistent statement or pragma).
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        self.submit(false, f).await
    }

    /// Applies a schema (idempotent `CREATE ... IF NOT EXISTS` statements).
    pub async fn migrate(&self, schema: &'static str) -> Result<(), DbError> {
        self.write(move |c| c.execute_batch(schema).map_err(DbError::from))
            .await
    }

    /// Bumped whenever another connection (another process) commits; a cheap way for a
    /// long poll to learn that a queue may have changed.
    pub async fn data_version(&self) -> Result<i64, DbError> {
        self.read(|c| {
            c.prepare_cached("PRAGMA data_version")?
                .query_row([], |r| r.get(0))
                .map_err(DbError::from)
        })
        .await
    }

    async fn submit<T, E, F>(&self, write: bool, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnOnce(&Connection) -> Result<T, E> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, E>>();
        let run = Box::new(move |step: Step<'_>| {
            let conn = match step {
                Step::Run(conn) if !tx.is_closed() => conn,
                Step::Run(_) => return None,
                Step::Abort(e) => {
                    let _ = tx.send(Err(E::from(e)));
                    return None;
                }
            };
            let result = f(conn);
            let ok = result.is_ok();
            let completion: Completion = Box::new(move |commit: Result<(), DbError>| {
                let answer = match (result, commit) {
                    (Ok(v), Ok(())) => Ok(v),
                    (Ok(_), Err(e)) => Err(E::from(e)),
                    (Err(e), _) => Err(e),
                };
                let _ = tx.send(answer);
            });
            Some((ok, completion))
        });
        self.inner
            .jobs
            .send(Envelope { write, run })
            .map_err(|_| E::from(DbError::Closed))?;
        rx.await.map_err(|_| E::from(DbError::Closed))?
    }
}

/// Runs a statement from the connection's statement cache: these run once per job, and
/// parsing them every time is measurable in the ingress bench.
/// Called while another connection (usually another process) holds the write lock.
/// SQLite's own timeout sleeps in steps of up to 100 ms, which at a few hundred commits a
/// second between processes costs more waiting than the locks themselves; the lock is
/// held for well under a millisecond, so poll briefly first, then every millisecond.
fn wait_for_lock(attempts: i32) -> bool {
    const QUICK: u32 = 50;
    const QUICK_PAUSE: Duration = Duration::from_micros(100);
    let attempts = attempts.max(0) as u32;
    let waited = if attempts < QUICK {
        QUICK_PAUSE * attempts
    } else {
        QUICK_PAUSE * QUICK + Duration::from_millis(u64::from(attempts - QUICK))
    };
    if waited >= BUSY_TIMEOUT {
        return false;
    }
    std::thread::sleep(if attempts < QUICK {
        QUICK_PAUSE
    } else {
        Duration::from_millis(1)
    });
    true
}

fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn connect(path: &Path, synchronous: Synchronous) -> Result<Connection, DbError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| DbError::Sqlite(format!("{}: {e}", dir.display())))?;
    }
    let conn = Connection::open(path)?;
    conn.busy_handler(Some(wait_for_lock))?;
    let sync = match synchronous {
        Synchronous::Full => "FULL",
        Synchronous::Normal => "NORMAL",
    };
    enable_wal(&conn)?;
    conn.pragma_update(None, "synchronous", sync)?;
    // The default 2 MB cache makes a busy queue re-read its index pages from the file
    // (a pread each); the cache only grows as far as it is used.
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    Ok(conn)
}

/// Switches a new file to WAL. The mode persists in the file, so usually there is nothing
/// to do. When several processes open a fresh file at once, the switch can fail with BUSY
/// at once (SQLite does not wait there, to avoid deadlock), so it is retried.
fn enable_wal(conn: &Connection) -> Result<(), DbError> {
    let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
    let mut pause = Duration::from_millis(2);
    loop {
        let attempt = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get::<_, String>(0))
            .and_then(|mode| {
                if mode.eq_ignore_ascii_case("wal") {
                    Ok(mode)
                } else {
                    conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
                }
            })
            .map_err(DbError::from);
        match attempt {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
            Ok(mode) => {
                return Err(DbError::Sqlite(format!(
                    "the file cannot use WAL (journal mode stays {mode}); is it on a network filesystem?"
                )));
            }
            Err(DbError::Busy) if std::time::Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(e),
        }
    }
}

fn serve(conn: Connection, jobs: mpsc::Receiver<Envelope>) {
    while let Ok(first) = jobs.recv() {
        let mut writes = Vec::new();
        let mut next = Some(first);
        while let Some(env) = next.take() {
            if env.write {
                writes.push(env);
            } else if let Some((_, done)) = (env.run)(Step::Run(&conn)) {
                done(Ok(()));
            }
            if writes.len() < MAX_BATCH {
                next = jobs.try_recv().ok();
            }
        }
        if !writes.is_empty() {
            run_batch(&conn, writes);
        }
    }
}

fn run_batch(conn: &Connection, writes: Vec<Envelope>) {
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        let e = DbError::from(e);
        for env in writes {
            (env.run)(Step::Abort(e.clone()));
        }
        return;
    }
    let mut done = Vec::with_capacity(writes.len());
    for env in writes {
        if let Err(e) = exec(conn, "SAVEPOINT job") {
            (env.run)(Step::Abort(DbError::from(e)));
            continue;
        }
        let outcome = (env.run)(Step::Run(conn));
        let keep = outcome.as_ref().is_some_and(|(ok, _)| *ok);
        let ended = if keep {
            exec(conn, "RELEASE job")
        } else {
            exec(conn, "ROLLBACK TO job").and_then(|()| exec(conn, "RELEASE job"))
        };
        if let Some((_, completion)) = outcome {
            match ended {
                Ok(()) => done.push(completion),
                Err(e) => completion(Err(DbError::from(e))),
            }
        }
    }
    let commit = exec(conn, "COMMIT").map_err(DbError::from);
    if commit.is_err() {
        let _ = exec(conn, "ROLLBACK");
    }
    for completion in done {
        completion(commit.clone());
    }
}
