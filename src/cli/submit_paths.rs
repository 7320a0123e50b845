//! Where `submit` takes its paths from besides its arguments: a job bundle's asset references
//! (as `deadline bundle submit` reads them) and lists of input paths (as rclone's
//! `--files-from`), for a pipeline that has more paths than a command line holds.

use std::io::Read;
use std::path::PathBuf;

use clap::Args;

use super::UsageError;
use crate::jobs::asset_references::{AssetReferences, Relative};
use crate::jobs::bundle_template::{self, GivenParameter};

#[derive(Debug, Args)]
pub struct SubmitPathArgs {
    /// Take the inputs, output directories and referenced paths of a job bundle's asset
    /// references: its asset_references.json or .yaml, or the bundle directory, whose
    /// template's PATH parameters add theirs (as `deadline bundle submit` reads them; relative
    /// paths are relative to the current directory). Adds to INPUT, --output-dir and
    /// --referenced (repeatable).
    #[arg(long = "asset-references", value_name = "FILE|DIR")]
    asset_references: Vec<PathBuf>,
    /// The value of a job parameter of the bundle's template, as `deadline bundle submit -p`:
    /// a PATH parameter with a dataFlow is an input or output (a LIST[PATH] is a JSON array,
    /// '["/a", "/b"]'). Wins over the bundle's parameter_values file and the template's
    /// default (repeatable).
    #[arg(
        short = 'p',
        long = "parameter",
        value_name = "NAME=VALUE",
        requires = "asset_references"
    )]
    parameters: Vec<GivenParameter>,
    /// Read input paths from FILE, one per line (`-`: stdin); blank lines and lines starting
    /// with `#` are skipped. Adds to INPUT (repeatable).
    #[arg(long = "inputs-from", value_name = "FILE")]
    inputs_from: Vec<PathBuf>,
    /// The --inputs-from lists are separated by NUL bytes, as `find -print0` writes them (a
    /// name may hold a newline), with no line skipped (as rsync's --from0).
    #[arg(long = "from0", requires = "inputs_from")]
    from0: bool,
}

impl SubmitPathArgs {
    /// `given` (the arguments and flags) with the files' paths added; a path named twice is
    /// kept once. A file that cannot be read is bad usage, naming the flag and the file.
    pub fn gather(&self, given: AssetReferences) -> Result<AssetReferences, UsageError> {
        let mut all = given;
        all.merge(
            AssetReferences::read_all(
                &self.asset_references,
                &self.parameters,
                Relative::Kept,
                None,
            )
            .map_err(|e| UsageError {
                message: format!("--asset-references {e}"),
            })?,
        );
        let undefined = bundle_template::undefined(&self.asset_references, &self.parameters);
        if !undefined.is_empty() {
            // Other parameters are the job's (CreateJob's), but a mistyped PATH parameter's
            // paths would be left out without a word.
            tracing::warn!(
                "--parameter {}: not a parameter of the bundle's template; its value names no path for the job's attachments",
                undefined.join(", ")
            );
        }
        for file in &self.inputs_from {
            all.merge(AssetReferences {
                inputs: read_path_list(file, self.from0)?,
                ..AssetReferences::default()
            });
        }
        Ok(all)
    }
}

/// The paths of a list file, one per line, exactly as written (a name may end in a space),
/// or, with `nul_separated`, one per NUL-terminated entry; `-` reads stdin.
fn read_path_list(file: &PathBuf, nul_separated: bool) -> Result<Vec<PathBuf>, UsageError> {
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
    if nul_separated {
        return Ok(bytes
            .split(|&b| b == 0)
            .filter(|p| !p.is_empty())
            .map(|p| PathBuf::from(std::ffi::OsStr::from_bytes(p)))
            .collect());
    }
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
            parameters: vec![],
            inputs_from: vec![list],
            from0: false,
        };
        let got = args
            .gather(AssetReferences {
                inputs: paths(&["/proj/extra.abc"]),
                output_directories: paths(&["/proj/renders"]),
                referenced_paths: vec![],
            })
            .unwrap();
        assert_eq!(
            got,
            AssetReferences {
                inputs: paths(&[
                    "/proj/extra.abc",
                    "/proj/scene.ma",
                    "/proj/tex/a.png",
                    "/proj/name ending in a space ",
                ]),
                output_directories: paths(&["/proj/renders", "/proj/out"]),
                referenced_paths: paths(&["/proj/cache"]),
            }
        );
    }

    #[test]
    fn a_nul_separated_list_keeps_newlines_and_hashes_in_names() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("inputs.bin");
        // As `find -print0` writes it: each name ends in a NUL.
        std::fs::write(&list, b"/proj/two\nlines.png\0#not a comment\0/proj/a b \0").unwrap();
        let args = SubmitPathArgs {
            asset_references: vec![],
            parameters: vec![],
            inputs_from: vec![list],
            from0: true,
        };
        let got = args.gather(AssetReferences::default()).unwrap();
        assert_eq!(
            got.inputs,
            paths(&["/proj/two\nlines.png", "#not a comment", "/proj/a b "])
        );
    }

    #[test]
    fn an_unreadable_file_names_its_flag() {
        let args = SubmitPathArgs {
            asset_references: vec![],
            parameters: vec![],
            inputs_from: vec!["/nonexistent/list.txt".into()],
            from0: false,
        };
        let e = args.gather(AssetReferences::default()).unwrap_err().message;
        assert!(
            e.starts_with("--inputs-from /nonexistent/list.txt: "),
            "{e}"
        );
        let args = SubmitPathArgs {
            asset_references: vec!["/nonexistent/refs.yaml".into()],
            parameters: vec![],
            inputs_from: vec![],
            from0: false,
        };
        let e = args.gather(AssetReferences::default()).unwrap_err().message;
        assert!(
            e.starts_with("--asset-references /nonexistent/refs.yaml: "),
            "{e}"
        );
    }
}
