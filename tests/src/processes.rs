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
