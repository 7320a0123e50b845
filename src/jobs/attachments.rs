//! The job `attachments` document (the CreateJob payload) and how a worker maps its roots.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha3::digest::{ExtendableOutput, Update, XofReader};

use crate::fsutil::access::Caller;

/// `{"manifests": [...], "fileSystem": "COPIED"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Attachments {
    pub manifests: Vec<ManifestProperties>,
    #[serde(default = "copied")]
    pub file_system: String,
}

/// The largest attachments file the daemon reads for a job: a root's entry is a few hundred
/// bytes, so this is hundreds of thousands of roots, and a huge (or sparse) file given
/// instead does not take the daemon's memory.
const ATTACHMENTS_MAX: u64 = 64 << 20;

impl Attachments {
    /// Reads an attachments file (as `submit` writes it); the error names the file.
    pub fn read_file(path: &Path) -> Result<Attachments, String> {
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(path, &text)
    }

    /// Reads an attachments file the daemon was given by path: a regular file only (a FIFO
    /// would block it); for `caller` (a client of another user) looked up and opened as that
    /// user would ([`Caller::open_to_read`]), for the daemon's own not through a link at its
    /// name. The CLI reads its own with [`Attachments::read_file`], which takes `<(command)` too.
    pub fn read_regular_file(path: &Path, caller: Option<&Caller>) -> Result<Attachments, String> {
        let mut file = match caller {
            Some(c) => c.open_to_read(path).map_err(|e| e.to_string())?,
            None => crate::fsutil::beneath::open_regular(path)
                .map_err(|e| format!("{}: {e}", path.display()))?,
        };
        let text = crate::fsutil::read_capped(&mut file, ATTACHMENTS_MAX)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &[u8]) -> Result<Attachments, String> {
        serde_json::from_slice(text).map_err(|e| {
            format!(
                "{}: not an attachments document, as submit writes one ({e})",
                path.display()
            )
        })
    }
}

fn copied() -> String {
    "COPIED".into()
}

/// One asset root of a job. Field order is the official client's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestProperties {
    pub root_path: String,
    pub root_path_format: PathFormat,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_system_location_name: Option<String>,
    /// Relative to `{rootPrefix}/Manifests/`; absent for a root with outputs only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_manifest_path: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_manifest_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_relative_directories: Option<Vec<String>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PathFormat {
    Posix,
    Windows,
}

impl PathFormat {
    /// The format of this machine's paths.
    pub fn native() -> Self {
        if cfg!(windows) {
            PathFormat::Windows
        } else {
            PathFormat::Posix
        }
    }

    /// The format a root path is spelled in, when nothing says: Windows for `C:\…`, `C:/…`
    /// and `\\server\share`, else POSIX.
    pub fn of(root_path: &str) -> Self {
        let b = root_path.as_bytes();
        let drive = b.len() >= 3
            && b[0].is_ascii_alphabetic()
            && b[1] == b':'
            && matches!(b[2], b'\\' | b'/');
        if drive || root_path.starts_with("\\\\") {
            PathFormat::Windows
        } else {
            PathFormat::Posix
        }
    }
}

/// A path-mapping rule handed to the renderer: paths under `source_path` (as the submitter's
/// OS spelled them) are found under `destination_path` on this worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathMappingRule {
    pub source_path_format: PathFormat,
    pub source_path: String,
    pub destination_path: String,
}

/// `assetroot-{shake_256(rootPath).hexdigest(10)}`: the worker's directory for an asset root
/// without a storage-profile mapping.
pub fn asset_root_dir_name(root_path: &str) -> String {
    let mut shake = sha3::Shake256::default();
    shake.update(root_path.as_bytes());
    let mut out = [0u8; 10];
    shake.finalize_xof().read(&mut out);
    format!("assetroot-{}", crate::hash::hex(&out))
}

/// Where an asset root lives on this worker: a mapped storage-profile location, else its own
/// directory in the session dir.
pub fn local_root(
    session_dir: &Path,
    m: &ManifestProperties,
    location_map: &[(String, PathBuf)],
) -> PathBuf {
    if let Some(name) = &m.file_system_location_name
        && let Some((_, dest)) = location_map.iter().find(|(n, _)| n == name)
    {
        return dest.clone();
    }
    session_dir.join(asset_root_dir_name(&m.root_path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_attachments_round_trip() {
        for name in ["tiny", "edge"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/deadline")
                .join(name)
                .join("attachments.json");
            let text = std::fs::read_to_string(path).unwrap();
            let a: Attachments = serde_json::from_str(&text).unwrap();
            assert_eq!(a.manifests[0].root_path_format, PathFormat::Posix);
            assert_eq!(
                a.manifests[0].output_relative_directories.as_deref(),
                Some(&[".".to_string()][..])
            );
            let back: serde_json::Value = serde_json::to_value(&a).unwrap();
            assert_eq!(
                back,
                serde_json::from_str::<serde_json::Value>(&text).unwrap()
            );
        }
    }

    #[test]
    fn asset_root_names_are_shake256_of_the_root_path() {
        // hashlib.shake_256(b"/tmp/ja-golden/tiny/root").hexdigest(10)
        let want = std::process::Command::new("python3")
            .args([
                "-c",
                "import hashlib,sys; print(hashlib.shake_256(sys.argv[1].encode()).hexdigest(10))",
                "C:\\proj\\shot 10",
            ])
            .output()
            .expect("python3 is needed for this test");
        let want = String::from_utf8(want.stdout).unwrap();
        assert_eq!(
            asset_root_dir_name("C:\\proj\\shot 10"),
            format!("assetroot-{}", want.trim())
        );
        assert_eq!(asset_root_dir_name("/x").len(), "assetroot-".len() + 20);
    }

    #[test]
    fn a_root_path_s_format_is_told_by_its_spelling() {
        for p in ["C:\\proj", "d:/proj", "\\\\nas\\proj"] {
            assert_eq!(PathFormat::of(p), PathFormat::Windows, "{p}");
        }
        for p in ["/proj", "/C:/x", "C:", "relative\\x"] {
            assert_eq!(PathFormat::of(p), PathFormat::Posix, "{p}");
        }
    }
}
