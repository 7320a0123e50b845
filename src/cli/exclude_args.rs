//! `--exclude PATTERN`, shared by the commands that scan trees into manifests.

use clap::Args;

use super::UsageError;
use crate::jobs::hash::HashSpec;

#[derive(Debug, Args)]
pub struct ExcludeArgs {
    /// Leave out the paths PATTERN matches: a name at any depth (`*.tmp`, `.DS_Store`), a path
    /// as the manifest spells it when it has a `/` (`cache/**`), directories only with a
    /// trailing `/` (repeatable; adds to [config: hash.exclude]).
    #[arg(long = "exclude", value_name = "PATTERN")]
    pub exclude: Vec<String>,
}

impl ExcludeArgs {
    /// Adds the patterns to `spec`; a bad one is a usage error naming it.
    pub fn apply(&self, spec: &mut HashSpec) -> Result<(), UsageError> {
        spec.exclude_also(&self.exclude).map_err(|e| UsageError {
            message: format!("--exclude {e}"),
        })
    }
}
