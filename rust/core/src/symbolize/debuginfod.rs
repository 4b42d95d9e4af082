//! A small debuginfod client: `GET <url>/buildid/<hex>/debuginfo`, cached in elfutils' layout
//! (`<cache>/<hex>/debuginfo`), at most one network attempt per build-id per session.

use std::collections::HashSet;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{debugfile, elf, MessageSink, SymbolizeError};

/// Bytes between two progress messages.
const PROGRESS_STEP: u64 = 16 << 20;

pub(crate) struct Debuginfod {
    urls: Vec<String>,
    timeout: Duration,
    cache_dir: Option<PathBuf>,
    max_bytes: u64,
    attempted: HashSet<Vec<u8>>,
}

impl Debuginfod {
    pub(crate) fn new(
        urls: Vec<String>,
        timeout: Duration,
        cache_dir: Option<PathBuf>,
        max_bytes: u64,
    ) -> Self {
        Debuginfod {
            urls,
            timeout,
            cache_dir,
            max_bytes,
            attempted: HashSet::new(),
        }
    }

    /// The debug file for `build_id`: from the cache, else downloaded (once per session).
    /// `Ok(None)` when no server is configured or none has it.
    pub(crate) fn fetch(
        &mut self,
        build_id: &[u8],
        module: &Path,
        say: &MessageSink,
    ) -> Result<Option<PathBuf>, SymbolizeError> {
        if self.urls.is_empty() || build_id.is_empty() {
            return Ok(None);
        }
        let hex = elf::hex(build_id);
        let Some(cache_dir) = &self.cache_dir else {
            return Ok(None);
        };
        let target_dir = cache_dir.join(&hex);
        let target = target_dir.join("debuginfo");
        if std::fs::metadata(&target).is_ok_and(|m| m.len() > 0)
            && debugfile::is_debug_file_for(&target, Some(build_id))
        {
            return Ok(Some(target));
        }
        if !self.attempted.insert(build_id.to_vec()) {
            return Ok(None);
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(self.timeout))
            .http_status_as_error(false)
            .build()
            .new_agent();
        let mut last_error = None;
        for base in &self.urls {
            let url = format!("{}/buildid/{hex}/debuginfo", base.trim_end_matches('/'));
            match self.download(&agent, &url, &target_dir, &target, module, say) {
                Ok(true) if debugfile::is_debug_file_for(&target, Some(build_id)) => {
                    return Ok(Some(target));
                }
                Ok(true) => {
                    let _ = std::fs::remove_file(&target);
                    last_error = Some(SymbolizeError::Debuginfod {
                        url,
                        message: "not an ELF file with DWARF for this build-id".into(),
                    });
                }
                Ok(false) => {}
                Err(e) => last_error = Some(e),
            }
        }
        match last_error {
            Some(e) => Err(e),
            None => Ok(None),
        }
    }

    /// Downloads `url` to `target`. `Ok(false)` when the server does not have it.
    fn download(
        &self,
        agent: &ureq::Agent,
        url: &str,
        target_dir: &Path,
        target: &Path,
        module: &Path,
        say: &MessageSink,
    ) -> Result<bool, SymbolizeError> {
        let err = |message: String| SymbolizeError::Debuginfod {
            url: url.to_owned(),
            message,
        };
        say(&format!(
            "heapgate: debuginfod: looking up debug info for {} at {url}",
            module.display()
        ));
        let response = agent.get(url).call().map_err(|e| err(e.to_string()))?;
        let status = response.status().as_u16();
        if status == 404 {
            return Ok(false);
        }
        if status != 200 {
            return Err(err(format!("HTTP status {status}")));
        }
        let length = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if let Some(length) = length.filter(|&l| l > self.max_bytes) {
            return Err(err(format!(
                "{length} bytes is over the limit of {} bytes",
                self.max_bytes
            )));
        }
        say(&format!(
            "heapgate: debuginfod: downloading {} for {}",
            length.map_or_else(|| "debug info".to_owned(), |l| format!("{:.1} MB", mb(l))),
            module.display()
        ));
        std::fs::create_dir_all(target_dir).map_err(|e| SymbolizeError::io(target_dir, e))?;
        let temp = target_dir.join(format!(".debuginfo.heapgate-{}", std::process::id()));
        let result = (|| {
            let mut out = File::create(&temp).map_err(|e| SymbolizeError::io(&temp, e))?;
            let mut body = response
                .into_body()
                .into_with_config()
                .limit(self.max_bytes)
                .reader();
            let mut buf = vec![0u8; 1 << 16];
            let (mut done, mut next_report) = (0u64, PROGRESS_STEP);
            loop {
                let n = match body.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(err(e.to_string())),
                };
                out.write_all(&buf[..n])
                    .map_err(|e| SymbolizeError::io(&temp, e))?;
                done += n as u64;
                if done >= next_report {
                    next_report += PROGRESS_STEP;
                    say(&format!(
                        "heapgate: debuginfod: {:.1} MB of {} received",
                        mb(done),
                        length.map_or_else(|| "?".to_owned(), |l| format!("{:.1} MB", mb(l)))
                    ));
                }
            }
            out.sync_all().map_err(|e| SymbolizeError::io(&temp, e))?;
            std::fs::rename(&temp, target).map_err(|e| SymbolizeError::io(target, e))?;
            say(&format!(
                "heapgate: debuginfod: saved {:.1} MB to {}",
                mb(done),
                target.display()
            ));
            Ok(true)
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&temp);
        }
        result
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// elfutils' cache directory: `$DEBUGINFOD_CACHE_PATH`, else `$XDG_CACHE_HOME/debuginfod_client`,
/// else `$HOME/.cache/debuginfod_client`.
pub(crate) fn default_cache_dir() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(path) = var("DEBUGINFOD_CACHE_PATH") {
        return Some(path.into());
    }
    if let Some(xdg) = var("XDG_CACHE_HOME") {
        return Some(PathBuf::from(xdg).join("debuginfod_client"));
    }
    var("HOME").map(|home| PathBuf::from(home).join(".cache").join("debuginfod_client"))
}
