//! Keys and names of the Deadline job-attachments storage layout (spec §2).

use std::path::Path;

use crate::hash::ContentHash;

/// `{rootPrefix}/Data/{hash}.xxh128`: where a content object lives.
pub fn data_key(root_prefix: &str, hash: ContentHash) -> String {
    join(root_prefix, &format!("Data/{hash}.xxh128"))
}

/// The data key objects from very old clients used (no `.xxh128`); readers fall back to it.
pub fn legacy_data_key(root_prefix: &str, hash: ContentHash) -> String {
    join(root_prefix, &format!("Data/{hash}"))
}

/// `{xxh128(rootPath)}_input`: the object name of a root's input manifest, from the root path
/// exactly as this OS spells it.
pub fn input_manifest_name(root: &Path) -> String {
    format!(
        "{}_input",
        ContentHash::of(root.as_os_str().as_encoded_bytes())
    )
}

/// Joins a root prefix (possibly empty) and a relative key with one `/`.
pub fn join(root_prefix: &str, rest: &str) -> String {
    let p = root_prefix.trim_matches('/');
    if p.is_empty() {
        rest.to_string()
    } else {
        format!("{p}/{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_match_the_official_layout() {
        let h = ContentHash::from_hex("99aa06d3014798d86001c324468d497f").unwrap();
        assert_eq!(
            data_key("DeadlineCloud", h),
            "DeadlineCloud/Data/99aa06d3014798d86001c324468d497f.xxh128"
        );
        assert_eq!(
            data_key("", h),
            "Data/99aa06d3014798d86001c324468d497f.xxh128"
        );
        assert_eq!(
            legacy_data_key("p/", h),
            "p/Data/99aa06d3014798d86001c324468d497f"
        );
        assert_eq!(
            input_manifest_name(Path::new("/tmp/ja-golden/tiny/root")),
            "a582e63e3c3710564eac2e800e5a9ef9_input"
        );
    }
}
