//! The services as real processes, for the end-to-end and chaos tests: the binaries
//! `cargo test --workspace` built, started with exactly the variables given.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::process::{Child, Command};

/// A workspace binary, built beside the running test (target/<profile>/).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built; run the workspace's tests (tests/run)",
        path.display()
    );
    path
}

/// Starts `name` with only `vars` in its environment; stdout dropped, stderr shown, and
/// killed if the handle is dropped.
pub fn spawn(name: &str, vars: &[(String, String)]) -> Child {
    Command::new(binary(name))
        .env_clear()
        .envs(vars.iter().cloned())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn a service")
}

/// Starts `name` like [`spawn`], but appends its stdout and stderr (the JSON log lines) to
/// `log`, so a run that fails can be read afterwards; a restart appends to the same file.
pub fn spawn_logged(name: &str, vars: &[(String, String)], log: &Path) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open a service's log file");
    let err = file.try_clone().expect("a second handle on the log file");
    Command::new(binary(name))
        .env_clear()
        .envs(vars.iter().cloned())
        .stdout(Stdio::from(file))
        .stderr(Stdio::from(err))
        .kill_on_drop(true)
        .spawn()
        .expect("spawn a service")
}

/// Stops `child` where it stands (SIGSTOP): a VM the hypervisor froze, a container
/// throttled to nothing. Its timers, leases and visibility timeouts run on without it.
pub fn freeze(child: &Child) {
    signal(child, rustix::process::Signal::STOP);
}

/// Lets a [`freeze`]d `child` go on (SIGCONT), with everything it held in memory as it was.
pub fn thaw(child: &Child) {
    signal(child, rustix::process::Signal::CONT);
}

fn signal(child: &Child, signal: rustix::process::Signal) {
    // A child that already exited has no id: nothing to stop or wake.
    if let Some(pid) = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(i32::try_from(id).ok()?))
    {
        let _ = rustix::process::kill_process(pid, signal);
    }
}
