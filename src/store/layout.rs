//! Keys and names of the Deadline job-attachments storage layout (spec §2).

use std::path::Path;

use crate::hash::ContentHash;

/// `{rootPrefix}/Data/{hash}.xxh128`: where a content object lives.
pub fn data_key(root_prefix: &str, hash: ContentHash) -> String {
    join(root_prefix, &format!("Data/{hash}.xxh128"))
}

/// `{rootPrefix}/Data/`: the prefix every content object's key starts with.
pub fn data_prefix(root_prefix: &str) -> String {
    join(root_prefix, "Data/")
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

/// `{rootPrefix}/Manifests/`: what `inputManifestPath` and `outputManifestPath` are relative to.
pub fn manifests_prefix(root_prefix: &str) -> String {
    join(root_prefix, "Manifests/")
}

/// `{farm}/{queue}/Inputs/{guid}/{xxh128(rootPath)}_input`, relative to the manifests prefix.
pub fn input_manifest_path(farm: &str, queue: &str, guid: &str, root_path: &str) -> String {
    format!(
        "{farm}/{queue}/Inputs/{guid}/{}_input",
        ContentHash::of(root_path.as_bytes())
    )
}

/// The task output manifest path, relative to the manifests prefix:
/// `{farm}/{queue}/{job}/{step}/{task}/{startTime}_{sessionActionId}/{xxh128(fslName + rootPath)}_output`,
/// or without `{task}/` for a chunked step's session action (a chunk of its tasks).
pub struct OutputManifestPath<'a> {
    pub farm: &'a str,
    pub queue: &'a str,
    pub job: &'a str,
    pub step: &'a str,
    pub task: Option<&'a str>,
    /// `%Y-%m-%dT%H:%M:%S.%fZ`, see [`session_action_time`].
    pub start_time: &'a str,
    pub session_action: &'a str,
}

impl OutputManifestPath<'_> {
    pub fn for_root(&self, file_system_location_name: Option<&str>, root_path: &str) -> String {
        let name = format!("{}{root_path}", file_system_location_name.unwrap_or(""));
        let task = self.task.map(|t| format!("{t}/")).unwrap_or_default();
        format!(
            "{}/{}/{}/{}/{task}{}_{}/{}_output",
            self.farm,
            self.queue,
            self.job,
            self.step,
            self.start_time,
            self.session_action,
            ContentHash::of(name.as_bytes())
        )
    }
}

/// A session action's start time as the output key spells it: UTC, six fractional digits.
pub fn session_action_time(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// A fresh submission id: a random UUID as 32 hex digits (Python's `uuid4().hex`).
pub fn new_guid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    crate::hash::hex(&b)
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
    fn manifest_keys_match_the_official_layout() {
        let p = input_manifest_path(
            "farm-0123456789abcdef0123456789abcdef",
            "queue-fedcba9876543210fedcba9876543210",
            "0000000000004000a000000000000000",
            "/tmp/ja-golden/tiny/root",
        );
        assert_eq!(
            format!("{}{p}", manifests_prefix("DeadlineCloud")),
            "DeadlineCloud/Manifests/farm-0123456789abcdef0123456789abcdef/queue-fedcba9876543210fedcba9876543210/Inputs/0000000000004000a000000000000000/a582e63e3c3710564eac2e800e5a9ef9_input"
        );
        let out = OutputManifestPath {
            farm: "f",
            queue: "q",
            job: "j",
            step: "s",
            task: Some("t"),
            start_time: "2026-01-02T03:04:05.000006Z",
            session_action: "sessionaction-1",
        };
        assert_eq!(
            out.for_root(None, "/r"),
            format!(
                "f/q/j/s/t/2026-01-02T03:04:05.000006Z_sessionaction-1/{}_output",
                ContentHash::of(b"/r")
            )
        );
        assert_eq!(
            out.for_root(Some("Assets"), "/r"),
            format!(
                "f/q/j/s/t/2026-01-02T03:04:05.000006Z_sessionaction-1/{}_output",
                ContentHash::of(b"Assets/r")
            )
        );
        let chunk = OutputManifestPath { task: None, ..out };
        assert_eq!(
            chunk.for_root(None, "/r"),
            format!(
                "f/q/j/s/2026-01-02T03:04:05.000006Z_sessionaction-1/{}_output",
                ContentHash::of(b"/r")
            )
        );
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_000_001);
        assert_eq!(session_action_time(t), "2023-11-14T22:13:20.000001Z");
        let g = new_guid();
        assert_eq!(g.len(), 32);
        assert_eq!(&g[12..13], "4");
    }

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
