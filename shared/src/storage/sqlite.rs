//! The embedded engine's database: one SQLite file in WAL mode, shared by the processes of
//! one host (ingress, relay-worker, outbound-sender) and by the queue and the store.
//!
//! Each process owns one connection on one dedicated thread. Writes from all tasks are
//! *group-committed*: the thread takes every job waiting, runs them in one
//! `BEGIN IMMEDIATE` transaction, commits once, and only then answers. With
//! `synchronous=FULL` an answer therefore means "on disk", and the fsync cost is shared by
//! the whole batch. If a job fails, the batch is rolled back and run again with each job
//! in its own savepoint, so that job's changes alone are undone. (A savepoint around every
//! job costs ~15% of the thread's time, and jobs rarely fail.) A write job may therefore
//! run twice, and must do nothing outside the database.
//! A job whose caller stopped waiting (a timeout) is skipped, so a request that was
//! answered "unavailable" is not committed later behind its back. At most [`MAX_JOBS`]
//! jobs wait or run at once; beyond that a caller waits (asynchronously, within its own
//! timeout) for room, so a database slower than its callers makes them wait rather than
//! pile up without bound.
//!
//! Checkpoints (copying the WAL's pages into the database file, and syncing it) mostly
//! run on a second connection on a thread of their own, every [`CHECKPOINT_EVERY`].
//! Left to SQLite alone, the commit that grows the WAL past 1,000 pages copies all of
//! them and syncs the file before it answers: about 6 ms here, during which every job
//! waits behind it — once or twice a second at 20 messages a second each way. That commit
//! still checkpoints (under a steady stream of writes, only a writer can start the WAL
//! over, and only once a checkpoint has caught up with it), but it finds nearly
//! everything already copied and synced.

use crate::service::config::{EmbeddedConfig, Synchronous};
use rusqlite::Connection;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, oneshot};

/// How long a connection waits for another process's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// The page cache of each process's connection, at most.
const CACHE_KIB: i64 = 32 * 1024;
/// Prepared statements kept per connection. The engines run about 60 distinct
/// statements; rusqlite keeps 16 by default, so a busy box kept evicting and parsing
/// them again (3.5% of the process's CPU in the latency bench at 500 msg/s).
const STATEMENTS_KEPT: usize = 128;
/// Upper bound on jobs per transaction, so one batch cannot hold the lock for long.
const MAX_BATCH: usize = 512;
/// Jobs waiting for the database thread or running, at most: several batches' worth.
const MAX_JOBS: usize = 8 * MAX_BATCH;
/// How often the checkpointer copies what the WAL gained into the database file. A
/// passive checkpoint never blocks a writer; one with nothing to do costs a few reads.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);

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

/// A caller's work for the database thread, with the way back to the caller.
trait Job: Send {
    /// Whether the caller still waits for the answer.
    fn wanted(&self) -> bool;
    /// Runs the work, replacing an earlier run's result; whether it succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers with the last run's result, or with `done`'s error when the transaction
    /// around it did not commit (or the work never ran).
    fn answer(self: Box<Self>, done: Result<(), DbError>);
}

struct Call<T, E, F> {
    f: F,
    result: Option<Result<T, E>>,
    caller: oneshot::Sender<Result<T, E>>,
    /// The job's place among [`MAX_JOBS`], given back as the job is answered (or dropped).
    _room: OwnedSemaphorePermit,
}

impl<T, E, F> Job for Call<T, E, F>
where
    T: Send + 'static,
    E: From<DbError> + Send + 'static,
    F: FnMut(&Connection) -> Result<T, E> + Send + 'static,
{
    fn wanted(&self) -> bool {
        !self.caller.is_closed()
    }

    fn run(&mut self, conn: &Connection) -> bool {
        let result = (self.f)(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn answer(self: Box<Self>, done: Result<(), DbError>) {
        let Self {
            result,
            caller,
            _room: room,
            ..
        } = *self;
        // The place goes back before the answer: a caller that has its answer has its
        // place back too, so the next call it makes cannot find its own job in the way.
        drop(room);
        let answer = match (result, done) {
            (Some(Err(e)), _) => Err(e),
            (_, Err(e)) => Err(E::from(e)),
            (Some(Ok(v)), Ok(())) => Ok(v),
            (None, Ok(())) => Err(E::from(DbError::Sqlite("the job did not run".into()))),
        };
        let _ = caller.send(answer);
    }
}

struct Envelope {
    write: bool,
    job: Box<dyn Job>,
}

/// A handle to the database thread; cheap to clone.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: mpsc::Sender<Envelope>,
    /// Room for [`MAX_JOBS`]: the channel itself is unbounded, and its sender never blocks
    /// (a runtime thread may not); a permit is taken before each send.
    room: Arc<Semaphore>,
    /// Dropped with the last handle, which stops the checkpointer.
    _checkpointer: mpsc::Sender<()>,
    /// In-process wake-ups by topic (e.g. a queue name), for long polls.
    topics: Mutex<HashMap<String, Arc<Notify>>>,
    /// The write-ahead log, where every commit lands first.
    wal: PathBuf,
}

/// The write-ahead log's length and last modification, as [`Db::wal_stamp`] reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalStamp(pub(crate) u64, pub(crate) std::time::SystemTime);

/// The databases this process opened with [`Db::open`], by absolute path.
static OPEN: Mutex<Vec<(PathBuf, Weak<Inner>)>> = Mutex::new(Vec::new());

impl Db {
    /// The file's database for this process: services that share a process (`waconnect
    /// serve`, the sandbox) share one connection and thread, so a write by one wakes
    /// another's long poll at once (an in-process topic) instead of at its next poll, and
    /// their writes share commits. The first opener's settings hold.
    pub async fn open(config: &EmbeddedConfig) -> Result<Self, DbError> {
        let key = std::path::absolute(&config.path).unwrap_or_else(|_| config.path.clone());
        let find = |open: &mut Vec<(PathBuf, Weak<Inner>)>| {
            open.retain(|(_, db)| db.strong_count() > 0);
            open.iter()
                .find(|(path, _)| *path == key)
                .and_then(|(_, db)| db.upgrade())
        };
        if let Some(inner) = find(&mut OPEN.lock().expect("open databases lock")) {
            return Ok(Self { inner });
        }
        let db = Self::open_path(&config.path, config.synchronous).await?;
        let mut open = OPEN.lock().expect("open databases lock");
        // Another task may have opened it meanwhile: theirs is kept, ours closes.
        if let Some(inner) = find(&mut open) {
            return Ok(Self { inner });
        }
        open.push((key, Arc::downgrade(&db.inner)));
        Ok(db)
    }

    /// Opens the file on the database's own thread: opening may wait for another
    /// process's lock, and that wait must not stall the async runtime.
    pub async fn open_path(path: &Path, synchronous: Synchronous) -> Result<Self, DbError> {
        let (tx, rx) = mpsc::channel::<Envelope>();
        on_own_thread("waconnect-sqlite", path, synchronous, move |conn| {
            serve(conn, rx)
        })
        .await?;
        // Runs until the last handle drops its sender.
        let (checkpointer, stopped) = mpsc::channel::<()>();
        on_own_thread("waconnect-checkpoint", path, synchronous, move |conn| {
            checkpoint_until(&conn, &stopped)
        })
        .await?;
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        Ok(Self {
            inner: Arc::new(Inner {
                jobs: tx,
                room: Arc::new(Semaphore::new(MAX_JOBS)),
                _checkpointer: checkpointer,
                topics: Mutex::default(),
                wal: PathBuf::from(wal),
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
    /// the commit. An `Err` from `f` undoes `f`'s own changes only. `f` may run twice
    /// (see the module's notes), so it must not act outside the database.
    pub async fn write<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnMut(&Connection) -> Result<T, E> + Send + 'static,
    {
        self.submit(true, f).await
    }

    /// Runs `f` outside any transaction (a single consistent statement or pragma).
    pub async fn read<T, E, F>(&self, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnMut(&Connection) -> Result<T, E> + Send + 'static,
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

    /// The write-ahead log's length and modification time, read with one `stat` on the
    /// caller's thread; `None` if it cannot be read. Every commit, by any process, changes
    /// it — appending grows the file, writing it over again from the start after a
    /// checkpoint moves its time — so a long poll asks [`Db::data_version`] (a round trip
    /// to the database thread: at idle, 40 of them a second were a third to a half of an idle
    /// relay's CPU) only once the stamp moved. Two commits within one tick of the
    /// filesystem's clock over a log being written from the start leave it unmoved: a
    /// long poll still looks at the queue itself every second.
    pub fn wal_stamp(&self) -> Option<WalStamp> {
        let meta = std::fs::metadata(&self.inner.wal).ok()?;
        Some(WalStamp(meta.len(), meta.modified().ok()?))
    }

    async fn submit<T, E, F>(&self, write: bool, f: F) -> Result<T, E>
    where
        T: Send + 'static,
        E: From<DbError> + Send + 'static,
        F: FnMut(&Connection) -> Result<T, E> + Send + 'static,
    {
        let room = self
            .inner
            .room
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| E::from(DbError::Closed))?;
        let (caller, answer) = oneshot::channel::<Result<T, E>>();
        let job = Box::new(Call {
            f,
            result: None,
            caller,
            _room: room,
        });
        self.inner
            .jobs
            .send(Envelope { write, job })
            .map_err(|_| E::from(DbError::Closed))?;
        answer.await.map_err(|_| E::from(DbError::Closed))?
    }
}

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

/// Runs a statement from the connection's statement cache: these run once per batch or
/// job, and parsing them every time is measurable in the ingress bench.
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
    conn.set_prepared_statement_cache_capacity(STATEMENTS_KEPT);
    Ok(conn)
}

/// Opens a connection to `path` on a new thread named `name`, which then runs `work`
/// with it; answers once the connection is open, or why it is not.
async fn on_own_thread(
    name: &str,
    path: &Path,
    synchronous: Synchronous,
    work: impl FnOnce(Connection) + Send + 'static,
) -> Result<(), DbError> {
    let (opened_tx, opened_rx) = oneshot::channel();
    let file = path.to_owned();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || match connect(&file, synchronous) {
            Ok(conn) => {
                let _ = opened_tx.send(Ok(()));
                work(conn);
            }
            Err(e) => {
                let _ = opened_tx.send(Err(e));
            }
        })
        .map_err(|e| DbError::Sqlite(format!("cannot start the {name} thread: {e}")))?;
    opened_rx.await.map_err(|_| DbError::Closed)?
}

/// Checkpoints every [`CHECKPOINT_EVERY`] until `stopped` hangs up. A failure is told
/// once per streak: the next attempt is a tenth of a second away, and SQLite's own
/// checkpoint at 1,000 pages keeps the WAL bounded meanwhile.
fn checkpoint_until(conn: &Connection, stopped: &mpsc::Receiver<()>) {
    let mut failing = false;
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
        match checkpoint(conn) {
            Ok(()) => failing = false,
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(error = %e, "cannot checkpoint the database's WAL");
            }
            Err(_) => {}
        }
    }
}

/// One passive checkpoint: copies what no reader still needs, and never waits for a
/// lock (another connection checkpointing makes it a no-op).
fn checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
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
        while let Some(Envelope { write, mut job }) = next.take() {
            if write {
                writes.push(job);
            } else if job.wanted() {
                job.run(&conn);
                job.answer(Ok(()));
            }
            if writes.len() < MAX_BATCH {
                next = jobs.try_recv().ok();
            }
        }
        run_batch(&conn, writes);
    }
}

/// Runs `writes` in one transaction and answers them once it has committed (or not).
/// A job whose caller stopped waiting (a timeout) is skipped.
fn run_batch(conn: &Connection, writes: Vec<Box<dyn Job>>) {
    let mut jobs: Vec<_> = writes.into_iter().filter(|job| job.wanted()).collect();
    if jobs.is_empty() {
        return;
    }
    if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
        answer_all(jobs, Err(DbError::from(e)));
        return;
    }
    if !jobs.iter_mut().all(|job| job.run(conn)) {
        // A job failed and its changes are mixed with the others': undo the batch and
        // run it again with each job in a savepoint of its own. The failure may itself
        // have ended the transaction (an I/O error does), so only the new BEGIN says
        // whether the replay can go ahead.
        let _ = exec(conn, "ROLLBACK");
        if let Err(e) = exec(conn, "BEGIN IMMEDIATE") {
            let _ = exec(conn, "ROLLBACK");
            answer_all(jobs, Err(DbError::from(e)));
            return;
        }
        let mut kept = Vec::with_capacity(jobs.len());
        for mut job in jobs {
            match in_savepoint(conn, job.as_mut()) {
                Ok(()) => kept.push(job),
                Err(e) => job.answer(Err(e)),
            }
        }
        jobs = kept;
    }
    let commit = exec(conn, "COMMIT").map_err(DbError::from);
    if commit.is_err() {
        let _ = exec(conn, "ROLLBACK");
    }
    answer_all(jobs, commit);
}

/// Runs `job` so that, if it fails, its own changes are undone and nothing else.
fn in_savepoint(conn: &Connection, job: &mut dyn Job) -> Result<(), DbError> {
    exec(conn, "SAVEPOINT job")?;
    if job.run(conn) {
        exec(conn, "RELEASE job")?;
    } else {
        exec(conn, "ROLLBACK TO job")?;
        exec(conn, "RELEASE job")?;
    }
    Ok(())
}

fn answer_all(jobs: Vec<Box<dyn Job>>, done: Result<(), DbError>) {
    for job in jobs {
        job.answer(done.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::pin;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Waker};

    /// Polls a database call once, which hands its job to the database thread.
    fn submit<F: Future>(call: std::pin::Pin<&mut F>) {
        let mut cx = Context::from_waker(Waker::noop());
        assert!(matches!(call.poll(&mut cx), Poll::Pending));
    }

    async fn open(dir: &tempfile::TempDir) -> Db {
        let db = Db::open_path(&dir.path().join("t.db"), Synchronous::Normal)
            .await
            .unwrap();
        db.migrate("CREATE TABLE t (x INTEGER PRIMARY KEY)")
            .await
            .unwrap();
        db
    }

    fn insert(
        runs: &Arc<AtomicUsize>,
        x: i64,
        fail: bool,
    ) -> impl FnMut(&Connection) -> Result<(), DbError> + use<> {
        let runs = runs.clone();
        move |c| {
            runs.fetch_add(1, Ordering::SeqCst);
            c.execute("INSERT INTO t VALUES (?1)", [x])?;
            if fail {
                return Err(DbError::Sqlite("refused".into()));
            }
            Ok(())
        }
    }

    async fn rows(db: &Db) -> Vec<i64> {
        db.read(|c| {
            c.prepare("SELECT x FROM t ORDER BY x")?
                .query_map([], |r| r.get(0))?
                .collect::<Result<Vec<i64>, _>>()
                .map_err(DbError::from)
        })
        .await
        .unwrap()
    }

    /// Runs `calls` as one batch: the database thread is held by a read until all are
    /// submitted.
    async fn one_batch(db: &Db, runs: &Arc<AtomicUsize>, fails: [bool; 3]) -> [bool; 3] {
        let (release, held) = mpsc::channel::<()>();
        let mut hold = pin!(db.read(move |_| {
            let _ = held.recv_timeout(Duration::from_secs(10));
            Ok::<_, DbError>(())
        }));
        submit(hold.as_mut());
        let mut a = pin!(db.write(insert(runs, 1, fails[0])));
        let mut b = pin!(db.write(insert(runs, 2, fails[1])));
        let mut c = pin!(db.write(insert(runs, 3, fails[2])));
        submit(a.as_mut());
        submit(b.as_mut());
        submit(c.as_mut());
        release.send(()).unwrap();
        hold.await.unwrap();
        [a.await.is_ok(), b.await.is_ok(), c.await.is_ok()]
    }

    /// The oldest SQLite the engine may run on: 3.51.3 fixed the WAL-reset bug (3.7.0 to
    /// 3.51.2), a race between two checkpoints and a write that starts the WAL over, which
    /// loses writes. Several processes writing one file, each with a checkpointer, is the
    /// workload that meets it (the chaos runs did). The workspace bundles SQLite, so this
    /// fails the build's tests if the pin ever goes back.
    const MIN_SQLITE: (i32, &str) = (3_051_003, "3.51.3");

    #[test]
    fn the_sqlite_in_use_has_the_wal_reset_fix() {
        assert!(
            rusqlite::version_number() >= MIN_SQLITE.0,
            "SQLite {} predates {}",
            rusqlite::version(),
            MIN_SQLITE.1
        );
    }

    #[tokio::test]
    async fn a_batch_without_failures_runs_each_job_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir).await;
        let runs = Arc::new(AtomicUsize::new(0));
        assert_eq!(one_batch(&db, &runs, [false; 3]).await, [true; 3]);
        assert_eq!(rows(&db).await, [1, 2, 3]);
        assert_eq!(runs.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn callers_beyond_the_bound_wait_for_room_and_then_run() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir).await;
        let runs = Arc::new(AtomicUsize::new(0));
        let (release, held) = mpsc::channel::<()>();
        let mut hold = pin!(db.read(move |_| {
            let _ = held.recv_timeout(Duration::from_secs(10));
            Ok::<_, DbError>(())
        }));
        submit(hold.as_mut());
        let mut writes: Vec<_> = (1..MAX_JOBS as i64)
            .map(|x| Box::pin(db.write(insert(&runs, x, false))))
            .collect();
        for write in &mut writes {
            submit(write.as_mut());
        }
        assert_eq!(db.inner.room.available_permits(), 0, "the bound is full");
        let mut extra = Box::pin(db.write(insert(&runs, MAX_JOBS as i64, false)));
        submit(extra.as_mut());
        assert_eq!(db.inner.room.available_permits(), 0);
        release.send(()).unwrap();
        hold.await.unwrap();
        for write in writes {
            write.await.unwrap();
        }
        extra.await.unwrap();
        assert_eq!(rows(&db).await.len(), MAX_JOBS);
        assert_eq!(
            db.inner.room.available_permits(),
            MAX_JOBS,
            "every place came back"
        );
    }

    #[tokio::test]
    async fn a_failed_job_undoes_its_own_changes_and_no_other_job_s() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir).await;
        let runs = Arc::new(AtomicUsize::new(0));
        let answered = one_batch(&db, &runs, [false, true, false]).await;
        assert_eq!(answered, [true, false, true]);
        assert_eq!(rows(&db).await, [1, 3]);
        // The first two ran, then the batch ran again with savepoints: 2 + 3.
        assert_eq!(runs.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn the_checkpointer_moves_committed_pages_into_the_file_with_no_commit_doing_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir).await;
        let file = dir.path().join("t.db");
        let before = std::fs::metadata(&file).unwrap().len();
        // 2 MiB: about 500 pages, under SQLite's own threshold of 1,000, so without the
        // checkpointer they would stay in the WAL.
        db.write(|c| {
            c.execute("CREATE TABLE b (v BLOB)", [])?;
            c.execute("INSERT INTO b VALUES (zeroblob(2 * 1024 * 1024))", [])
                .map_err(DbError::from)
        })
        .await
        .unwrap();
        let grown = async {
            while std::fs::metadata(&file).unwrap().len() < before + 2 * 1024 * 1024 {
                tokio::time::sleep(CHECKPOINT_EVERY / 4).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), grown)
            .await
            .expect("the database file never got the committed pages");
    }
}
