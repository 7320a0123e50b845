//! Where `submit` takes its paths from besides its arguments: a job bundle's asset references
//! (as `deadline bundle submit` reads them) and lists of input paths (as rclone's
//! `--files-from`), for a pipeline that has more paths than a command line holds.

use std::io::Read;
use std::path::PathBuf;

use clap::Args;

use super::UsageError;
use crate::jobs::asset_references::{AssetReferences, keep_first_of_each};

#[derive(Debug, Args)]
pub struct SubmitPathArgs {
    /// Take the inputs, output directories and referenced paths of a job bundle's asset
    /// references: its asset_references.json or .yaml, or the bundle directory holding one
    /// (as `deadline bundle submit` reads them; relative paths are relative to the current
    /// directory). Adds to INPUT, --output-dir and --referenced (repeatable).
    #[arg(long = "asset-references", value_name = "FILE|DIR")]
    asset_references: Vec<PathBuf>,
    /// Read input paths from FILE, one per line (`-`: stdin); blank lines and lines starting
    /// with `#` are skipped. Adds to INPUT (repeatable).
    #[arg(long = "inputs-from", value_name = "FILE")]
    inputs_from: Vec<PathBuf>,
}

/// A submission's paths, from the arguments and the files.
#[derive(Debug, Default, PartialEq)]
pub struct SubmitPaths {
    pub inputs: Vec<PathBuf>,
    pub output_dirs: Vec<PathBuf>,
    pub referenced: Vec<PathBuf>,
}

impl SubmitPathArgs {
    /// `given` (the arguments and flags) with the files' paths added; a path named twice is
    /// kept once. A file that cannot be read is bad usage, naming the flag and the file.
    pub fn gather(&self, given: SubmitPaths) -> Result<SubmitPaths, UsageError> {
        let mut all = given;
        for path in &self.asset_references {
            let refs = AssetReferences::read(path).map_err(|e| UsageError {
                message: format!("--asset-references {e}"),
            })?;
            all.inputs.extend(refs.inputs);
            all.output_dirs.extend(refs.output_directories);
            all.referenced.extend(refs.referenced_paths);
        }
        for file in &self.inputs_from {
            all.inputs.extend(read_path_list(file)?);
        }
        for list in [&mut all.inputs, &mut all.output_dirs, &mut all.referenced] {
            keep_first_of_each(list);
        }
        Ok(all)
    }
}

/// The paths of a list file, one per line, exactly as written (a name may end in a space);
/// `-` reads stdin.
fn read_path_list(file: &PathBuf) -> Result<Vec<PathBuf>, UsageError> {
    let bad = |e: std::io::Error| UsageError {
        message: format!("--inputs-from {}: {e}", file.display()),
    };
    let mut bytes = Vec::new();
    if file.as_os_str() == "-" {
        std::io::stdin().read_to_end(&mut bytes).map_err(bad)?;
    } else {
        bytes = std::fs::read(file).map_err(bad)?;
    }
    use std::os::unix::ffi::OsStrExt;
    Ok(bytes
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .filter(|l| !l.trim_ascii().is_empty() && !l.starts_with(b"#"))
        .map(|l| PathBuf::from(std::ffi::OsStr::from_bytes(l)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(v: &[&str]) -> Vec<PathBuf> {
        v.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn lists_and_asset_references_add_to_the_arguments_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("inputs.txt");
        std::fs::write(
            &list,
            "# textures\n/proj/tex/a.png\r\n\n   \n/proj/scene.ma\n/proj/name ending in a space \n",
        )
        .unwrap();
        let refs = dir.path().join("asset_references.yaml");
        std::fs::write(
            &refs,
            "assetReferences:\n  inputs:\n    filenames: [/proj/scene.ma]\n  outputs:\n    directories: [/proj/renders, /proj/out]\n  referencedPaths: [/proj/cache]\n",
        )
        .unwrap();
        let args = SubmitPathArgs {
            asset_references: vec![dir.path().to_path_buf()],
            inputs_from: vec![list],
        };
        let got = args
            .gather(SubmitPaths {
                inputs: paths(&["/proj/extra.abc"]),
                output_dirs: paths(&["/proj/renders"]),
                referenced: vec![],
            })
            .unwrap();
        assert_eq!(
            got,
            SubmitPaths {
                inputs: paths(&[
                    "/proj/extra.abc",
                    "/proj/scene.ma",
                    "/proj/tex/a.png",
                    "/proj/name ending in a space ",
                ]),
                output_dirs: paths(&["/proj/renders", "/proj/out"]),
                referenced: paths(&["/proj/cache"]),
            }
        );
    }

    #[test]
    fn an_unreadable_file_names_its_flag() {
        let args = SubmitPathArgs {
            asset_references: vec![],
            inputs_from: vec!["/nonexistent/list.txt".into()],
        };
        let e = args.gather(SubmitPaths::default()).unwrap_err().message;
        assert!(
            e.starts_with("--inputs-from /nonexistent/list.txt: "),
            "{e}"
        );
        let args = SubmitPathArgs {
            asset_references: vec!["/nonexistent/refs.yaml".into()],
            inputs_from: vec![],
        };
        let e = args.gather(SubmitPaths::default()).unwrap_err().message;
        assert!(
            e.starts_with("--asset-references /nonexistent/refs.yaml: "),
            "{e}"
        );
    }
}
