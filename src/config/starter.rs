//! A starter config file for `attache config init`: `config.example.toml` (every key, each
//! explained, at its default or commented out) with the keys given set, as `aws configure`
//! and `rclone config` leave a machine with a file to edit rather than a blank page.

/// The documented example, as shipped.
pub const EXAMPLE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/config.example.toml"));

/// `EXAMPLE` with each `(section, key, value)` set: the key's line in its section (set or
/// commented out) replaced by `key = value`. A key the example does not have is an error
/// naming it.
pub fn starter(values: &[(&str, &str, toml::Value)]) -> Result<String, String> {
    let mut lines: Vec<String> = EXAMPLE.lines().map(str::to_owned).collect();
    for (section, key, value) in values {
        let header = format!("[{section}]");
        let mut in_section = false;
        let at = lines.iter().position(|line| {
            if line.starts_with('[') {
                in_section = line.trim() == header;
                return false;
            }
            let setting = line.trim_start_matches('#').trim_start();
            in_section
                && setting
                    .strip_prefix(key)
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
        });
        let at = at.ok_or_else(|| format!("{section}.{key} is not in config.example.toml"))?;
        lines[at] = format!("{key} = {value}");
    }
    let mut text = lines.join("\n");
    text.push('\n');
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_keys_given_are_set_in_their_sections_and_the_rest_is_the_example() {
        let text = starter(&[
            ("store", "url", "s3://farm-bucket/DeadlineCloud".into()),
            ("s3", "endpoint_url", "http://garage.lan:3900".into()),
            ("s3", "force_path_style", true.into()),
        ])
        .unwrap();
        assert!(
            text.contains("\nurl = \"s3://farm-bucket/DeadlineCloud\"\n"),
            "{text}"
        );
        assert!(text.contains("\nendpoint_url = \"http://garage.lan:3900\"\n"));
        assert!(text.contains("\nforce_path_style = true\n"));
        assert!(!text.contains("force_path_style = false"));
        // Only those lines changed: as many lines, the comments kept.
        assert_eq!(text.lines().count(), EXAMPLE.lines().count());
        assert!(text.starts_with("# attache configuration"));
        let e = starter(&[("s3", "nope", "x".into())]).unwrap_err();
        assert_eq!(e, "s3.nope is not in config.example.toml");
        // `url` of [store] is not `url` of another section, nor `endpoint_url`.
        let e = starter(&[("daemon", "url", "x".into())]).unwrap_err();
        assert!(e.starts_with("daemon.url"), "{e}");
    }
}
