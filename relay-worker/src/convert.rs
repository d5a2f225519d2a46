//! Converting a file Connect would refuse into one it takes, with ffmpeg (what every
//! bridge uses): a separate process per file, bounded in time, output size and how many
//! run at once, killed if the relay gives up on it.

use crate::media_type::Conversion;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tempfile::TempPath;
use tokio::io::AsyncReadExt;
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("no converter is installed (ffmpeg)")]
    Unavailable,
    #[error("the conversion took longer than {0:?}")]
    TimedOut(Duration),
    #[error("the file could not be converted: {0}")]
    Failed(String),
}

#[derive(Clone)]
pub struct Converter {
    /// `None`: ffmpeg is not there, or conversions are off.
    ffmpeg: Option<PathBuf>,
    timeout: Duration,
    /// ffmpeg is CPU-bound: one per core at most, so conversions never starve the relay.
    slots: Arc<Semaphore>,
}

impl Converter {
    pub fn new(ffmpeg: Option<PathBuf>, timeout: Duration) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self {
            ffmpeg,
            timeout,
            slots: Arc::new(Semaphore::new(cores)),
        }
    }

    pub fn available(&self) -> bool {
        self.ffmpeg.is_some()
    }

    /// Converts `input` into a new file next to it, no larger than `max_bytes`.
    pub async fn convert(
        &self,
        input: &Path,
        conversion: Conversion,
        max_bytes: u64,
    ) -> Result<TempPath, ConvertError> {
        let ffmpeg = self.ffmpeg.as_ref().ok_or(ConvertError::Unavailable)?;
        let dir = input.parent().unwrap_or(Path::new("."));
        let output = tempfile::Builder::new()
            .prefix("waconnect-converted-")
            .suffix(&format!(".{}", conversion.extension))
            .tempfile_in(dir)
            .map_err(|e| ConvertError::Failed(format!("no room for the output: {e}")))?
            .into_temp_path();
        let _slot = self.slots.acquire().await.expect("never closed");
        let mut child = tokio::process::Command::new(ffmpeg)
            .args(["-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i"])
            .arg(input)
            .args(conversion.ffmpeg_args)
            // ffmpeg stops writing at this size; a larger result is refused below.
            .args(["-fs", &max_bytes.saturating_add(1).to_string()])
            .arg(&output)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| ConvertError::Failed(format!("ffmpeg did not start: {e}")))?;
        let mut stderr = child.stderr.take().expect("piped");
        let run = async {
            // Only the start of what ffmpeg says: enough to tell why, bounded.
            let mut said = Vec::new();
            let _ = (&mut stderr).take(4096).read_to_end(&mut said).await;
            let status = child.wait().await;
            (status, said)
        };
        let (status, said) = tokio::time::timeout(self.timeout, run)
            .await
            .map_err(|_| ConvertError::TimedOut(self.timeout))?;
        let status = status.map_err(|e| ConvertError::Failed(e.to_string()))?;
        if !status.success() {
            let said = String::from_utf8_lossy(&said);
            let first = said.lines().next().unwrap_or("no reason given").trim();
            return Err(ConvertError::Failed(
                first.chars().take(200).collect::<String>(),
            ));
        }
        let size = tokio::fs::metadata(&output)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        if size == 0 {
            return Err(ConvertError::Failed("the result was empty".into()));
        }
        if size > max_bytes {
            return Err(ConvertError::Failed(format!(
                "the result is larger than {}",
                crate::attachment::human_size(max_bytes)
            )));
        }
        Ok(output)
    }
}

/// Where ffmpeg is: the configured path, or `ffmpeg` on the PATH (without one, the
/// system's default search path, as `execvp` uses).
pub fn find_ffmpeg(configured: Option<&str>) -> Option<PathBuf> {
    match configured {
        Some(path) if path.contains('/') => Some(PathBuf::from(path)).filter(|p| p.is_file()),
        name => {
            let name = name.unwrap_or("ffmpeg");
            let paths =
                std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        }
    }
}
