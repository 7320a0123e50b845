//! A job bundle's template (`template.yaml` or `.json`): its PATH and LIST[PATH] job parameters
//! are paths the job reads or writes, as `deadline bundle submit` takes them (deadline 0.60.10,
//! `read_job_bundle_parameters` and `apply_job_parameters`).
//!
//! A parameter's value is, first found: `--parameter NAME=VALUE` (the last one given), the
//! bundle's `parameter_values.yaml`/`.json`, the template's `default` (relative to the bundle,
//! and inside it). Its `dataFlow` places it: `IN` an input, `OUT` an output directory (a
//! FILE's directory), `INOUT` both, `NONE` or none a referenced path. An empty value names no
//! path; with the template's `EXPR` extension, a URI value (`s3://…`) is not a local path and
//! is left out, and type names are read in any case.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::asset_references::{AssetReferences, AssetReferencesError, bundle_file, read_document};
use crate::fsutil::access::Caller;

const SPECIFICATION: &str = "jobtemplate-2023-09";

/// A job parameter's value given with the submission: `--parameter NAME=VALUE` on the
/// command line (a string), or `{"name": …, "value": …}` in the daemon's API, as the official
/// client's `job_parameters` (a LIST[PATH]'s value a list, or a string holding a JSON array).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GivenParameter {
    pub name: String,
    pub value: Value,
}

impl std::str::FromStr for GivenParameter {
    type Err = String;

    /// `NAME=VALUE`, NAME an Open Job Description identifier, as `deadline bundle submit -p`.
    fn from_str(s: &str) -> Result<Self, String> {
        let Some((name, value)) = s.split_once('=').filter(|(n, _)| !n.is_empty()) else {
            return Err(format!("{s:?}: give it as NAME=VALUE"));
        };
        let mut chars = name.chars();
        let identifier = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !identifier {
            return Err(format!(
                "{name:?} is not a job parameter name (letters, digits and _, not starting with a digit)"
            ));
        }
        Ok(GivenParameter {
            name: name.to_string(),
            value: Value::String(value.to_string()),
        })
    }
}

/// The paths a bundle's template names through its PATH parameters; `None` when the bundle
/// has no template. Relative values (given, or in `parameter_values`) are kept relative, for
/// the caller to resolve against its current directory as the official client does.
pub fn read(
    bundle: &Path,
    given: &[GivenParameter],
    caller: Option<&Caller>,
) -> Result<Option<AssetReferences>, AssetReferencesError> {
    let Some(template_file) = bundle_file(bundle, "template")? else {
        return Ok(None);
    };
    let err = |message: String| AssetReferencesError {
        path: template_file.clone(),
        message,
    };
    let template = read_document(&template_file, caller)?;
    match template.get("specificationVersion") {
        Some(Value::String(v)) if v == SPECIFICATION => {}
        Some(v) => {
            return Err(err(format!(
                "specificationVersion {} is not supported (only {SPECIFICATION})",
                v.as_str().map_or_else(|| v.to_string(), str::to_string)
            )));
        }
        None => {
            return Err(err(
                "no specificationVersion: is this a job template?".into()
            ));
        }
    }
    let expr = template
        .get("extensions")
        .and_then(Value::as_array)
        .is_some_and(|e| e.iter().any(|x| x == "EXPR"));
    let definitions = match template.get("parameterDefinitions") {
        None => &Vec::new(),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(err("parameterDefinitions must be a list".into())),
    };
    let values = match bundle_file(bundle, "parameter_values")? {
        Some(file) => parameter_values(&file, caller)?,
        None => Vec::new(),
    };

    let mut refs = AssetReferences::default();
    for def in definitions {
        let (Some(name), Some(kind)) = (
            def.get("name").and_then(Value::as_str),
            def.get("type").and_then(Value::as_str),
        ) else {
            return Err(err(format!(
                "a parameter definition without a name or type: {def}"
            )));
        };
        let kind = if expr {
            kind.to_ascii_uppercase()
        } else {
            kind.to_string()
        };
        let list = match kind.as_str() {
            "PATH" => false,
            "LIST[PATH]" => true,
            _ => continue,
        };
        let param = Parameter {
            name,
            list,
            expr,
            data_flow: match def.get("dataFlow").map(|v| v.as_str()) {
                None => "NONE",
                Some(Some(f @ ("NONE" | "IN" | "OUT" | "INOUT"))) => f,
                Some(other) => {
                    return Err(err(format!(
                        "parameter {name}: dataFlow {} is not one of NONE, IN, OUT, INOUT",
                        other.unwrap_or("(not a string)")
                    )));
                }
            },
            file: def.get("objectType").and_then(Value::as_str) == Some("FILE"),
        };
        let paths = if let Some(g) = given.iter().rev().find(|g| g.name == name) {
            param.items(&g.value, None)
        } else if let Some((_, v)) = values.iter().rev().find(|(n, _)| n == name) {
            param.items(v, None)
        } else if let Some(default) = def.get("default") {
            param.items(default, Some(bundle))
        } else {
            Err(format!(
                "parameter {name} has no value and no default: give it with --parameter {name}=VALUE or in the bundle's parameter_values file"
            ))
        };
        for path in paths.map_err(err)? {
            param.place(path, &mut refs);
        }
    }
    Ok(Some(refs))
}

/// Parameters `given` that the bundles' templates do not define, for a warning: a mistyped
/// name would otherwise leave its paths out without a word.
pub fn undefined(bundles: &[PathBuf], given: &[GivenParameter]) -> Vec<String> {
    let mut defined = std::collections::HashSet::new();
    for bundle in bundles {
        let Ok(Some(file)) = bundle_file(bundle, "template") else {
            continue;
        };
        let Ok(doc) = read_document(&file, None) else {
            continue;
        };
        for def in doc
            .get("parameterDefinitions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(name) = def.get("name").and_then(Value::as_str) {
                defined.insert(name.to_string());
            }
        }
    }
    let mut out: Vec<String> = given
        .iter()
        .filter(|g| !defined.contains(&g.name))
        .map(|g| g.name.clone())
        .collect();
    out.dedup();
    out
}

struct Parameter<'a> {
    name: &'a str,
    list: bool,
    expr: bool,
    data_flow: &'a str,
    /// `objectType: FILE`: an output is its directory.
    file: bool,
}

impl Parameter<'_> {
    /// The paths of a value (a PATH's string, a LIST[PATH]'s strings or a string holding a
    /// JSON array of them); a default's are joined with the bundle directory, which they must
    /// stay inside. Empty ones and, with EXPR, URIs are left out.
    fn items(&self, value: &Value, default_of: Option<&Path>) -> Result<Vec<PathBuf>, String> {
        let name = self.name;
        let items: Vec<String> = if !self.list {
            match value {
                Value::String(s) => vec![s.clone()],
                other => return Err(format!("parameter {name}: {other} is not a path")),
            }
        } else {
            let parsed = match value {
                Value::String(s) => serde_json::from_str::<Value>(s).ok(),
                v => Some(v.clone()),
            };
            match parsed {
                Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
                    .into_iter()
                    .map(|i| i.as_str().unwrap_or_default().to_string())
                    .collect(),
                _ => {
                    return Err(format!(
                        "parameter {name}: {value} is not a list of paths (a LIST[PATH] value is a list, or a JSON array such as [\"/a\", \"/b\"])"
                    ));
                }
            }
        };
        let mut out = Vec::new();
        for item in items {
            if item.is_empty() || (self.expr && is_uri(&item)) {
                continue;
            }
            out.push(match default_of {
                Some(bundle) => inside_bundle(bundle, name, &item)?,
                None => PathBuf::from(item),
            });
        }
        Ok(out)
    }

    fn place(&self, path: PathBuf, refs: &mut AssetReferences) {
        if self.data_flow == "NONE" {
            refs.referenced_paths.push(path);
            return;
        }
        if self.data_flow.contains("IN") {
            refs.inputs.push(path.clone());
        }
        if self.data_flow.contains("OUT") {
            // Job attachments take output directories: a FILE output's is its parent.
            let dir = if self.file {
                path.parent().map(Path::to_path_buf).unwrap_or_default()
            } else {
                path
            };
            refs.output_directories.push(dir);
        }
    }
}

/// A default joined with the bundle directory (lexically, as Open Job Description says);
/// it must be relative and stay inside the bundle once symbolic links are followed.
fn inside_bundle(bundle: &Path, name: &str, default: &str) -> Result<PathBuf, String> {
    let refuse = |why: &str| {
        format!(
            "parameter {name}: the default {default:?} {why}; a PATH default must be relative and stay inside the job bundle directory"
        )
    };
    if Path::new(default).is_absolute() {
        return Err(refuse("is absolute"));
    }
    let joined = super::normalize_root(&bundle.join(default)).map_err(|e| e.to_string())?;
    let real_bundle = std::fs::canonicalize(bundle).map_err(|e| e.to_string())?;
    if !real_path(&joined).starts_with(&real_bundle) {
        return Err(refuse("leads outside it"));
    }
    Ok(joined)
}

/// `path` with symbolic links followed as far as it exists (Python's `os.path.realpath`).
fn real_path(path: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut head = path;
    loop {
        if let Ok(real) = std::fs::canonicalize(head) {
            return rest.iter().rev().fold(real, |p, c| p.join(c));
        }
        match (head.parent(), head.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                head = parent;
            }
            _ => return path.to_path_buf(),
        }
    }
}

/// `scheme://…`, as the official client tells a URI from a path.
fn is_uri(s: &str) -> bool {
    let Some((scheme, _)) = s.split_once("://") else {
        return false;
    };
    let mut chars = scheme.chars();
    scheme.len() >= 2
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
}

/// `parameterValues: [{name, value}, …]` of a bundle's parameter values file.
fn parameter_values(
    file: &Path,
    caller: Option<&Caller>,
) -> Result<Vec<(String, Value)>, AssetReferencesError> {
    let doc = read_document(file, caller)?;
    let err = |message: String| AssetReferencesError {
        path: file.to_path_buf(),
        message,
    };
    let list = match doc.get("parameterValues") {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Array(list)) => list,
        Some(_) => return Err(err("parameterValues must be a list".into())),
    };
    list.iter()
        .map(
            |v| match (v.get("name").and_then(Value::as_str), v.get("value")) {
                (Some(name), Some(value)) => Ok((name.to_string(), value.clone())),
                _ => Err(err(format!(
                    "a parameter value without a name or value: {v}"
                ))),
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn given(v: &[&str]) -> Vec<GivenParameter> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn paths(v: &[&str]) -> Vec<PathBuf> {
        v.iter().map(PathBuf::from).collect()
    }

    const TEMPLATE: &str = r#"
specificationVersion: jobtemplate-2023-09
name: render
parameterDefinitions:
- {name: Scene, type: PATH, objectType: FILE, dataFlow: IN}
- {name: Textures, type: PATH, objectType: DIRECTORY, dataFlow: IN, default: tex}
- {name: OutImage, type: PATH, objectType: FILE, dataFlow: OUT}
- {name: Cache, type: PATH, objectType: DIRECTORY, dataFlow: INOUT, default: ""}
- {name: Plugins, type: PATH, default: plugins}
- {name: Extra, type: "LIST[PATH]", objectType: FILE, dataFlow: IN, default: [a.txt, sub/b.txt]}
- {name: Frames, type: INT, default: 1}
steps: []
"#;

    #[test]
    fn path_parameters_are_placed_by_their_data_flow() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("bundle");
        std::fs::create_dir(&bundle).unwrap();
        std::fs::write(bundle.join("template.yaml"), TEMPLATE).unwrap();
        std::fs::write(
            bundle.join("parameter_values.json"),
            r#"{"parameterValues": [{"name": "Scene", "value": "/proj/scene.ma"}, {"name": "OutImage", "value": "/proj/renders/beauty.####.exr"}, {"name": "deadline:priority", "value": 50}]}"#,
        )
        .unwrap();
        let at = |p: &str| bundle.join(p);
        let refs = read(&bundle, &given(&["Cache=/proj/cache", "Frames=1-10"]), None)
            .unwrap()
            .unwrap();
        assert_eq!(
            refs.inputs,
            vec![
                PathBuf::from("/proj/scene.ma"),
                at("tex"),
                "/proj/cache".into(),
                at("a.txt"),
                at("sub/b.txt"),
            ]
        );
        assert_eq!(
            refs.output_directories,
            paths(&["/proj/renders", "/proj/cache"])
        );
        assert_eq!(refs.referenced_paths, vec![at("plugins")]);

        // The command line wins over the values file; the last one given wins; a LIST[PATH]
        // from the command line is a JSON array; an empty value names nothing.
        let refs = read(
            &bundle,
            &given(&[
                "Scene=shots/a.ma",
                "Scene=shots/b.ma",
                r#"Extra=["/x/1.txt", ""]"#,
                "Textures=",
            ]),
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(refs.inputs, paths(&["shots/b.ma", "/x/1.txt"]));
    }

    #[test]
    fn a_bundle_without_a_template_names_no_parameters() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path(), &[], None).unwrap(), None);
    }

    #[test]
    fn what_the_official_client_refuses_is_refused_naming_the_parameter() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("b");
        std::fs::create_dir(&bundle).unwrap();
        let refused = |template: &str| {
            std::fs::write(bundle.join("template.yaml"), template).unwrap();
            read(&bundle, &[], None).unwrap_err().to_string()
        };
        let head = "specificationVersion: jobtemplate-2023-09\nparameterDefinitions:\n";
        let e = refused(&format!("{head}- {{name: In, type: PATH, dataFlow: IN}}\n"));
        assert!(
            e.contains("parameter In has no value and no default"),
            "{e}"
        );
        assert!(e.contains("--parameter In=VALUE"), "{e}");
        let e = refused(&format!(
            "{head}- {{name: In, type: PATH, dataFlow: IN, default: /abs}}\n"
        ));
        assert!(e.contains("\"/abs\" is absolute"), "{e}");
        let e = refused(&format!(
            "{head}- {{name: In, type: PATH, dataFlow: IN, default: ../up}}\n"
        ));
        assert!(e.contains("leads outside it"), "{e}");
        let e = refused(&format!(
            "{head}- {{name: In, type: PATH, dataFlow: SIDEWAYS, default: x}}\n"
        ));
        assert!(e.contains("dataFlow SIDEWAYS"), "{e}");
        let e = refused("specificationVersion: jobtemplate-2099-01\n");
        assert!(e.contains("jobtemplate-2099-01 is not supported"), "{e}");
        assert!(e.starts_with(&bundle.join("template.yaml").display().to_string()));
    }

    #[test]
    fn a_link_out_of_the_bundle_is_outside_it() {
        let dir = tempfile::tempdir().unwrap();
        let bundle = dir.path().join("b");
        std::fs::create_dir(&bundle).unwrap();
        std::os::unix::fs::symlink(dir.path(), bundle.join("up")).unwrap();
        std::fs::write(
            bundle.join("template.json"),
            r#"{"specificationVersion": "jobtemplate-2023-09", "parameterDefinitions": [{"name": "In", "type": "PATH", "dataFlow": "IN", "default": "up/secret"}]}"#,
        )
        .unwrap();
        let e = read(&bundle, &[], None).unwrap_err().to_string();
        assert!(e.contains("leads outside it"), "{e}");
    }

    #[test]
    fn with_expr_uris_are_not_paths_and_types_take_any_case() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("template.yaml"),
            "specificationVersion: jobtemplate-2023-09\nextensions: [EXPR]\nparameterDefinitions:\n- {name: In, type: path, dataFlow: IN}\n- {name: More, type: 'list[path]', dataFlow: IN}\n",
        )
        .unwrap();
        let refs = read(
            dir.path(),
            &given(&["In=s3://bucket/scene.ma", r#"More=["/a", "https://x/y"]"#]),
            None,
        )
        .unwrap()
        .unwrap();
        assert_eq!(refs.inputs, paths(&["/a"]));
    }

    #[test]
    fn given_parameters_are_name_equals_value() {
        let p: GivenParameter = "Out=/a=b".parse().unwrap();
        assert_eq!((p.name.as_str(), p.value.as_str()), ("Out", Some("/a=b")));
        assert!("=x".parse::<GivenParameter>().is_err());
        assert!("novalue".parse::<GivenParameter>().is_err());
        assert!(
            "1st=x"
                .parse::<GivenParameter>()
                .unwrap_err()
                .contains("not a job parameter name")
        );
        assert!("deadline:priority=1".parse::<GivenParameter>().is_err());
    }

    #[test]
    fn undefined_names_are_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("template.yaml"), TEMPLATE).unwrap();
        assert_eq!(
            undefined(
                &[dir.path().to_path_buf()],
                &given(&["Scene=/a", "Scnee=/b"])
            ),
            vec!["Scnee".to_string()]
        );
    }
}
