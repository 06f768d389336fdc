//! The keys a verifying reader trusts, kept current: the file or directory they came from (a
//! mounted ConfigMap) is read again when it changes, like a token file. A key removed is no
//! longer trusted for records read after the change, and a directory that stops loading trusts
//! none of its keys until it loads again (fail closed, since removing a key is how one is
//! revoked). A key must be trusted before anything it signs is written: a record refused once is
//! not read again until a restart.

use std::sync::Arc;

use kappa_model::signing::TrustedKeys;
use kappa_runtime::reload::Reloading;

/// What re-reads `keys` from their source when it changes, once told to
/// [`watch`](Reloading::watch); none for keys that came from no file.
pub fn watcher(keys: &TrustedKeys) -> Result<Option<Arc<Reloading<()>>>, String> {
    let Some(source) = keys.source().map(std::path::Path::to_path_buf) else {
        return Ok(None);
    };
    // A directory's own time changes when a file is added, removed or swapped in (a ConfigMap's
    // update); its files' when one is rewritten in place.
    let mut paths = vec![source.clone()];
    if let Ok(entries) = std::fs::read_dir(&source) {
        paths.extend(entries.filter_map(|e| e.ok().map(|e| e.path())));
    }
    let (reloaded, distrusted) = (keys.clone(), keys.clone());
    Reloading::fail_closed(
        "trusted keys",
        paths,
        move || reloaded.reload().map_err(|e| e.to_string()),
        move || distrusted.distrust_loaded(),
    )
    .map(Some)
}
