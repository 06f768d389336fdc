//! Files that hold keys and tokens: created new (an existing key is never overwritten) with the
//! permissions given, so a private key is never readable by others, not even for a moment.

use std::path::Path;

use anyhow::Context as _;

/// Creates `path`, which must not exist, with `mode` (on Unix), and writes `bytes`.
pub fn create_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist yet)", path.display()))?;
    file.write_all(bytes)
        .with_context(|| format!("cannot write {}", path.display()))
}
