//! The bearer token of the daemon's TCP listener: read from its file (by the daemon, and by
//! a client reaching it from another machine) and compared in constant time.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use subtle::ConstantTimeEq;

/// Tokens shorter than this are refused: a guessable token on a TCP port is an open door.
const MIN_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct TokenFileError {
    pub path: PathBuf,
    pub message: String,
}

/// The token in `path`, trimmed. The file must be readable by its owner only (as ssh asks of
/// a key) and hold at least 16 characters.
pub fn read_token_file(path: &Path) -> Result<String, TokenFileError> {
    let err = |message: String| TokenFileError {
        path: path.to_path_buf(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(err("readable by others; chmod 600 it".into()));
    }
    let token = std::fs::read_to_string(path)
        .map_err(|e| err(e.to_string()))?
        .trim()
        .to_string();
    if token.len() < MIN_LEN {
        return Err(err(format!(
            "the token must be at least {MIN_LEN} characters"
        )));
    }
    Ok(token)
}

/// Whether `given` is `expected`, in a time that does not tell how much of it was right.
pub fn token_matches(expected: &str, given: Option<&str>) -> bool {
    given.is_some_and(|g| bool::from(expected.as_bytes().ct_eq(g.as_bytes())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file_with(dir: &Path, text: &str, mode: u32) -> PathBuf {
        let p = dir.join("token");
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn a_token_file_is_private_long_enough_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let ok = file_with(dir.path(), "  s3cr3t-t0ken-0123456789\n", 0o600);
        assert_eq!(read_token_file(&ok).unwrap(), "s3cr3t-t0ken-0123456789");
        let open = file_with(dir.path(), "s3cr3t-t0ken-0123456789\n", 0o644);
        let e = read_token_file(&open).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
        let short = file_with(dir.path(), "short\n", 0o600);
        let e = read_token_file(&short).unwrap_err().to_string();
        assert!(e.contains("at least 16"), "{e}");
        let e = read_token_file(&dir.path().join("none")).unwrap_err();
        assert!(e.to_string().contains("none"), "{e}");
    }

    #[test]
    fn only_the_same_token_matches() {
        assert!(token_matches(
            "s3cr3t-t0ken-0123456789",
            Some("s3cr3t-t0ken-0123456789")
        ));
        assert!(!token_matches(
            "s3cr3t-t0ken-0123456789",
            Some("s3cr3t-t0ken-012345678")
        ));
        assert!(!token_matches(
            "s3cr3t-t0ken-0123456789",
            Some("S3cr3t-t0ken-0123456789")
        ));
        assert!(!token_matches("s3cr3t-t0ken-0123456789", Some("")));
        assert!(!token_matches("s3cr3t-t0ken-0123456789", None));
    }
}
