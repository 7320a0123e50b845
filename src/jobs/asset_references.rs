//! A job bundle's asset references (`asset_references.json` or `.yaml`), the file the official
//! client's `deadline bundle submit` and the DCC submitters read a job's inputs, outputs and
//! referenced paths from, so `attache submit --asset-references` submits what they would.
//!
//! ```yaml
//! assetReferences:
//!   inputs:
//!     filenames: [/proj/shot010/scene.ma]
//!     directories: [/proj/shot010/tex]
//!   outputs:
//!     directories: [/proj/shot010/renders]
//!   referencedPaths: [/proj/cache/sim]
//! ```
//!
//! As the official client reads it (deadline 0.60.10, `AssetReferences.from_dict`): every list
//! is optional, other keys are ignored, relative paths are relative to the current directory.
//! A bundle directory holds `asset_references.json` or `asset_references.yaml`, not both.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::bundle_template::{self, GivenParameter};
use crate::fsutil::access::Caller;

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct AssetReferencesError {
    pub path: PathBuf,
    pub message: String,
}

/// What a job bundle says the job reads, writes and refers to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AssetReferences {
    /// Input files and directories (a directory is taken whole).
    pub inputs: Vec<PathBuf>,
    pub output_directories: Vec<PathBuf>,
    pub referenced_paths: Vec<PathBuf>,
}

#[derive(Deserialize)]
struct File {
    #[serde(rename = "assetReferences")]
    asset_references: Option<Refs>,
}

#[derive(Deserialize, Default)]
struct Refs {
    #[serde(default)]
    inputs: Option<Inputs>,
    #[serde(default)]
    outputs: Option<Outputs>,
    #[serde(default, rename = "referencedPaths")]
    referenced_paths: Option<Vec<PathBuf>>,
}

#[derive(Deserialize, Default)]
struct Inputs {
    #[serde(default)]
    filenames: Option<Vec<PathBuf>>,
    #[serde(default)]
    directories: Option<Vec<PathBuf>>,
}

#[derive(Deserialize, Default)]
struct Outputs {
    #[serde(default)]
    directories: Option<Vec<PathBuf>>,
}

impl AssetReferences {
    /// Reads `path`: an asset references file (`.json` as JSON, anything else as YAML, which
    /// also reads JSON), or a job bundle directory (see [`AssetReferences::read_bundle`]).
    pub fn read(path: &Path) -> Result<AssetReferences, AssetReferencesError> {
        AssetReferences::read_for(path, None)
    }

    /// [`Self::read`] for `caller` (the daemon's client of another user): each document only
    /// if that user may read it.
    fn read_for(
        path: &Path,
        caller: Option<&Caller>,
    ) -> Result<AssetReferences, AssetReferencesError> {
        if path.is_dir() {
            return AssetReferences::read_bundle(path, &[], caller);
        }
        let parsed: File = serde_json::from_value(read_document(path, caller)?).map_err(|e| {
            AssetReferencesError {
                path: path.to_path_buf(),
                message: e.to_string(),
            }
        })?;
        let refs = parsed
            .asset_references
            .ok_or_else(|| AssetReferencesError {
                path: path.to_path_buf(),
                message:
                    "no assetReferences: the file a job bundle names its inputs and outputs in \
                      has them under that key"
                        .into(),
            })?;
        let inputs = refs.inputs.unwrap_or_default();
        Ok(AssetReferences {
            inputs: (inputs.filenames.into_iter().flatten())
                .chain(inputs.directories.into_iter().flatten())
                .collect(),
            output_directories: refs
                .outputs
                .unwrap_or_default()
                .directories
                .unwrap_or_default(),
            referenced_paths: refs.referenced_paths.unwrap_or_default(),
        })
    }

    /// A job bundle directory's paths: those of its asset references file, then those of its
    /// template's PATH parameters (values from `given`, see [`bundle_template`]). It must hold
    /// one of the two.
    pub fn read_bundle(
        dir: &Path,
        given: &[GivenParameter],
        caller: Option<&Caller>,
    ) -> Result<AssetReferences, AssetReferencesError> {
        let file = bundle_file(dir, "asset_references")?;
        let template = bundle_template::read(dir, given, caller)?;
        if file.is_none() && template.is_none() {
            return Err(AssetReferencesError {
                path: dir.to_path_buf(),
                message: "no asset_references.json or asset_references.yaml, and no \
                          template.json or template.yaml, in this job bundle directory"
                    .into(),
            });
        }
        let mut refs = match file {
            Some(file) => AssetReferences::read_for(&file, caller)?,
            None => AssetReferences::default(),
        };
        refs.merge(template.unwrap_or_default());
        Ok(refs)
    }
}

/// Whom a relative path in an asset references file is left to.
#[derive(Clone, Copy, PartialEq)]
pub enum Relative {
    /// Kept as it is: the caller makes it absolute against its current directory, as the
    /// official client does (the CLI).
    Kept,
    /// Refused, naming the file: the daemon has no current directory of its client's.
    Refused,
}

impl AssetReferences {
    /// The paths of each of `files` (files or bundle directories, see [`Self::read`]) after
    /// one another, each path once; `given` are the values of the bundles' template
    /// parameters; `caller`: the daemon's client of another user, who must be able to read
    /// each document.
    pub fn read_all(
        files: &[PathBuf],
        given: &[GivenParameter],
        relative: Relative,
        caller: Option<&Caller>,
    ) -> Result<AssetReferences, AssetReferencesError> {
        let mut all = AssetReferences::default();
        for file in files {
            let refs = if file.is_dir() {
                AssetReferences::read_bundle(file, given, caller)?
            } else {
                AssetReferences::read_for(file, caller)?
            };
            let mut paths = refs
                .inputs
                .iter()
                .chain(&refs.output_directories)
                .chain(&refs.referenced_paths);
            if relative == Relative::Refused
                && let Some(rel) = paths.find(|p| p.is_relative())
            {
                return Err(AssetReferencesError {
                    path: file.clone(),
                    message: format!(
                        "{} is relative, and the daemon has no current directory to read it from: write absolute paths, or submit with `attache submit --asset-references`, which reads them from its own",
                        rel.display()
                    ),
                });
            }
            all.merge(refs);
        }
        Ok(all)
    }

    /// Adds `more`'s paths after these, and keeps each path once (its first time).
    pub fn merge(&mut self, more: AssetReferences) {
        self.inputs.extend(more.inputs);
        self.output_directories.extend(more.output_directories);
        self.referenced_paths.extend(more.referenced_paths);
        for list in [
            &mut self.inputs,
            &mut self.output_directories,
            &mut self.referenced_paths,
        ] {
            let mut seen = std::collections::HashSet::new();
            list.retain(|p| seen.insert(p.clone()));
        }
    }
}

/// The documents of a job bundle directory attache reads (each as `NAME.json` or
/// `NAME.yaml`, see [`bundle_file`]): its asset references, its template, its parameter
/// values.
const BUNDLE_DOCUMENTS: [&str; 3] = ["asset_references", "template", "parameter_values"];

/// The paths each of [`BUNDLE_DOCUMENTS`] may have in `dir`, there or not.
pub(super) fn bundle_document_paths(dir: &Path) -> impl Iterator<Item = PathBuf> + '_ {
    BUNDLE_DOCUMENTS
        .into_iter()
        .flat_map(move |name| ["json", "yaml"].map(|ext| dir.join(format!("{name}.{ext}"))))
}

/// A job bundle's `NAME.json` or `NAME.yaml` (not both); `None` when neither is there.
pub(super) fn bundle_file(dir: &Path, name: &str) -> Result<Option<PathBuf>, AssetReferencesError> {
    let json = dir.join(format!("{name}.json"));
    let yaml = dir.join(format!("{name}.yaml"));
    match (json.is_file(), yaml.is_file()) {
        (true, true) => Err(AssetReferencesError {
            path: dir.to_path_buf(),
            message: format!("a job bundle holds {name}.json or {name}.yaml, not both"),
        }),
        (true, false) => Ok(Some(json)),
        (false, true) => Ok(Some(yaml)),
        (false, false) => Ok(None),
    }
}

/// The largest job bundle document read: the daemon reads one while it accepts a job, so a
/// huge (or sparse) file must not take its memory and time. Templates are kilobytes.
const DOCUMENT_MAX: u64 = 16 << 20;

/// A JSON (`.json`) or YAML (anything else; YAML reads JSON too) document; for `caller`,
/// looked up and opened as that user would ([`Caller::open_to_read`]): a link swapped in
/// since the job was checked is not read with the daemon's rights.
pub(super) fn read_document(
    file: &Path,
    caller: Option<&Caller>,
) -> Result<serde_json::Value, AssetReferencesError> {
    let err = |message: String| AssetReferencesError {
        path: file.to_path_buf(),
        message,
    };
    // A regular file only: the daemon reads a bundle while it accepts a job, and a FIFO there
    // would block it (and every other client) until someone wrote to it.
    let mut f = match caller {
        Some(c) => c.open_to_read(file).map_err(|e| err(e.to_string()))?,
        None => {
            crate::fsutil::beneath::open_regular_following(file).map_err(|e| err(e.to_string()))?
        }
    };
    let text = crate::fsutil::read_capped(&mut f, DOCUMENT_MAX).map_err(|e| err(e.to_string()))?;
    let text = String::from_utf8(text).map_err(|e| err(e.to_string()))?;
    if file.extension().is_some_and(|e| e == "json") {
        serde_json::from_str(&text).map_err(|e| err(e.to_string()))
    } else {
        yaml_serde::from_str(&text).map_err(|e| err(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(v: &[&str]) -> Vec<PathBuf> {
        v.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn a_document_is_read_for_another_user_only_if_the_file_opened_lets_them() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
        mode(dir.path(), 0o755).unwrap();
        let meta = std::fs::metadata(dir.path()).unwrap();
        let stranger = Caller {
            uid: meta.uid() + 1000,
            gid: meta.gid() + 1000,
            groups: vec![meta.gid() + 1000],
        };
        let refs = dir.path().join("asset_references.json");
        std::fs::write(
            &refs,
            r#"{"assetReferences": {"inputs": {"filenames": ["/a"]}}}"#,
        )
        .unwrap();
        mode(&refs, 0o644).unwrap();
        let read = AssetReferences::read_for(&refs, Some(&stranger)).unwrap();
        assert_eq!(read.inputs, paths(&["/a"]));
        // Swapped for a link to the daemon's own secret after the path was checked: the file
        // opened is the secret, which that user may not read.
        let secret = dir.path().join("token");
        std::fs::write(&secret, "s3cr3t").unwrap();
        mode(&secret, 0o600).unwrap();
        std::fs::remove_file(&refs).unwrap();
        std::os::unix::fs::symlink(&secret, &refs).unwrap();
        let e = AssetReferences::read_for(&refs, Some(&stranger))
            .unwrap_err()
            .to_string();
        assert!(e.contains("may not read it"), "{e}");
        assert!(!e.contains("s3cr3t"), "{e}");
        // A huge (here sparse) document is not read into memory.
        let huge = dir.path().join("template.yaml");
        std::fs::File::create(&huge)
            .unwrap()
            .set_len(DOCUMENT_MAX + 1)
            .unwrap();
        let e = read_document(&huge, None).unwrap_err().to_string();
        assert!(e.contains("larger than 16 MiB"), "{e}");
        // The daemon's own user (no caller) reads what it may: here, no JSON.
        let e = read_document(&refs, None).unwrap_err().to_string();
        assert!(e.contains("expected"), "{e}");
    }

    #[test]
    fn yaml_and_json_give_the_same_references() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = dir.path().join("refs.yaml");
        std::fs::write(
            &yaml,
            "assetReferences:\n  inputs:\n    filenames:\n    - /proj/scene.ma\n    - 'rel/a b.txt'\n    directories: [/proj/tex]\n  outputs:\n    directories:\n    - /proj/renders\n  referencedPaths:\n  - /proj/cache\n",
        )
        .unwrap();
        let json = dir.path().join("refs.json");
        std::fs::write(
            &json,
            r#"{"assetReferences": {"inputs": {"directories": ["/proj/tex"], "filenames": ["/proj/scene.ma", "rel/a b.txt"]}, "outputs": {"directories": ["/proj/renders"]}, "referencedPaths": ["/proj/cache"]}}"#,
        )
        .unwrap();
        let want = AssetReferences {
            inputs: paths(&["/proj/scene.ma", "rel/a b.txt", "/proj/tex"]),
            output_directories: paths(&["/proj/renders"]),
            referenced_paths: paths(&["/proj/cache"]),
        };
        assert_eq!(AssetReferences::read(&yaml).unwrap(), want);
        assert_eq!(AssetReferences::read(&json).unwrap(), want);
    }

    #[test]
    fn lists_are_optional_and_other_keys_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("asset_references.yaml");
        // As the DCC submitters write it when a list is empty, and with a key of a later version.
        std::fs::write(
            &f,
            "assetReferences:\n  inputs:\n    filenames:\n    directories: []\n  outputs: {}\n  somethingNew: 1\n",
        )
        .unwrap();
        assert_eq!(
            AssetReferences::read(dir.path()).unwrap(),
            AssetReferences::default()
        );
    }

    #[test]
    fn a_bundle_directory_holds_one_file_and_the_key_must_be_there() {
        let dir = tempfile::tempdir().unwrap();
        let e = AssetReferences::read(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("no asset_references.json or asset_references.yaml"),
            "{e}"
        );
        std::fs::write(dir.path().join("asset_references.json"), "{}").unwrap();
        let e = AssetReferences::read(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("asset_references.json: no assetReferences"),
            "{e}"
        );
        std::fs::write(dir.path().join("asset_references.yaml"), "{}").unwrap();
        let e = AssetReferences::read(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, "assetReferences:\n  inputs: [oops\n").unwrap();
        let e = AssetReferences::read(&bad).unwrap_err().to_string();
        assert!(e.starts_with(&bad.display().to_string()), "{e}");
    }
}
