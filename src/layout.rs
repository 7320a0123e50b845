//! Names of the Deadline job-attachments storage layout (spec §2).

use std::path::Path;

use crate::hash::ContentHash;

/// `{xxh128(rootPath)}_input`: the object name of a root's input manifest, from the root path
/// exactly as this OS spells it.
pub fn input_manifest_name(root: &Path) -> String {
    format!(
        "{}_input",
        ContentHash::of(root.as_os_str().as_encoded_bytes())
    )
}
