//! `ringkv serve --config FILE` and `ringkv config example|check`: a TOML
//! file that holds `serve`'s flags, one key per flag (`data_dir` for
//! `--data-dir`), so that a node's settings can live in version control.
//!
//! The file is read through clap, not beside it: each key becomes the flag
//! it names and the whole goes through the same parser and checks as the
//! command line, so every flag `serve` has, now and later, is a key of the
//! file with the same values and errors. Flags given on the command line
//! (or through their environment variable) override the file.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::ops::Range;
use std::path::Path;

use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, CommandFactory, FromArgMatches};
use toml_edit::{Document, Item, Value};

use ringkv::config::ServeArgs;

/// What is wrong with a configuration file, with the line and column.
#[derive(Debug)]
pub struct ConfigError {
    message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The flags a file may set: every flag of `serve` a user sees, but
/// `--config` itself.
fn settings() -> Vec<Arg> {
    ServeArgs::command()
        .get_arguments()
        .filter(|arg| !arg.is_hide_set() && arg.get_long().is_some())
        .filter(|arg| !matches!(arg.get_id().as_str(), "config" | "help"))
        .cloned()
        .collect()
}

/// The key of `arg` in a file: its long name with `_` for `-`.
fn key_of(arg: &Arg) -> String {
    arg.get_long().unwrap_or_default().replace('-', "_")
}

/// Whether `arg` is an on/off switch (`--fsync`) rather than one taking a
/// value.
fn is_switch(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse)
}

/// Whether `arg` may be given several times (`--join a --join b`).
fn is_list(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
}

/// 1-based line and column of byte `offset` in `text`.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

fn error_at(path: &Path, text: &str, span: Option<Range<usize>>, what: String) -> ConfigError {
    let message = match span {
        Some(span) => {
            let (line, column) = line_col(text, span.start);
            format!("{}:{line}:{column}: {what}", path.display())
        }
        None => format!("{}: {what}", path.display()),
    };
    ConfigError { message }
}

/// One setting read from the file: its flag, the arguments it stands for,
/// and where it is.
struct Setting {
    id: String,
    args: Vec<OsString>,
    span: Option<Range<usize>>,
}

/// The value of a TOML scalar as the text a flag takes.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.value().clone()),
        Value::Integer(i) => Some(i.value().to_string()),
        Value::Float(f) => Some(f.value().to_string()),
        Value::Boolean(b) => Some(b.value().to_string()),
        _ => None,
    }
}

/// Reads `text` (the file at `path`) into settings; every key must be a
/// setting with a value of the right shape, and each must parse alone.
fn read_settings(path: &Path, text: &str) -> Result<Vec<Setting>, ConfigError> {
    let doc = Document::parse(text).map_err(|err| {
        let what = err.message().to_string();
        error_at(path, text, err.span(), what)
    })?;
    let known = settings();
    let mut out = Vec::new();
    for (key, item) in doc.as_table().iter() {
        let span = doc
            .as_table()
            .key(key)
            .and_then(|k| k.span())
            .or_else(|| item.span());
        let Some(arg) = known.iter().find(|arg| key_of(arg) == key) else {
            let hint = if key.contains('-') {
                format!(" (keys use `_`: {})", key.replace('-', "_"))
            } else if matches!(item, Item::Table(_) | Item::ArrayOfTables(_)) {
                " (the file has no sections: every setting is a top-level key)".to_string()
            } else {
                " (`ringkv config example` lists every setting)".to_string()
            };
            return Err(error_at(
                path,
                text,
                span,
                format!("unknown setting `{key}`{hint}"),
            ));
        };
        let flag = format!("--{}", arg.get_long().unwrap_or_default());
        let value_span = item.span().or(span.clone());
        let wrong =
            |what: &str| error_at(path, text, value_span.clone(), format!("`{key}`: {what}"));
        let args: Vec<OsString> = match item.as_value() {
            Some(Value::Boolean(b)) if is_switch(arg) => {
                if *b.value() {
                    vec![flag.into()]
                } else {
                    Vec::new()
                }
            }
            Some(_) if is_switch(arg) => return Err(wrong("expected true or false")),
            Some(Value::Array(items)) if is_list(arg) => {
                let mut args = Vec::new();
                for element in items.iter() {
                    let Some(element) = scalar(element) else {
                        return Err(wrong("expected a list of strings"));
                    };
                    args.push(format!("{flag}={element}").into());
                }
                args
            }
            Some(value) => match scalar(value) {
                Some(value) => vec![format!("{flag}={value}").into()],
                None if is_list(arg) => return Err(wrong("expected a list of strings")),
                None => return Err(wrong("expected a string or a number")),
            },
            None => return Err(wrong("expected a value, not a section")),
        };
        // Each setting alone, for an error that points at its line.
        let alone = std::iter::once(OsString::from("serve")).chain(args.iter().cloned());
        if let Err(err) = ServeArgs::command().try_get_matches_from(alone) {
            let what = clap_message(&err);
            return Err(error_at(path, text, value_span, format!("`{key}`: {what}")));
        }
        out.push(Setting {
            id: arg.get_id().to_string(),
            args,
            span,
        });
    }
    Ok(out)
}

/// A clap error's first line without its `error: ` prefix.
fn clap_message(err: &clap::Error) -> String {
    let rendered = err.render().to_string();
    let first = rendered.lines().next().unwrap_or_default();
    first.strip_prefix("error: ").unwrap_or(first).to_string()
}

/// The arguments `matches` got from the command line or the environment,
/// as flags again, and the ids of those flags.
fn given(matches: &ArgMatches) -> (Vec<OsString>, Vec<String>) {
    let mut args = Vec::new();
    let mut ids = Vec::new();
    for arg in ServeArgs::command().get_arguments() {
        let id = arg.get_id().as_str();
        let Some(long) = arg.get_long() else { continue };
        if !matches!(
            matches.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        ids.push(id.to_string());
        if is_switch(arg) {
            if matches.get_flag(id) {
                args.push(format!("--{long}").into());
            }
            continue;
        }
        for raw in matches.get_raw(id).into_iter().flatten() {
            let mut flag = OsString::from(format!("--{long}="));
            flag.push(raw);
            args.push(flag);
        }
    }
    (args, ids)
}

/// `serve`'s flags from `matches` (the command line), with the settings of
/// the file at `path` for every flag the command line did not give.
pub fn apply(path: &Path, matches: &ArgMatches) -> Result<ServeArgs, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
        message: format!(
            "cannot read the configuration file {}: {err}",
            path.display()
        ),
    })?;
    let file = read_settings(path, &text)?;
    let (cli, overridden) = given(matches);
    let mut args = vec![OsString::from("serve")];
    for setting in &file {
        if !overridden.contains(&setting.id) {
            args.extend(setting.args.iter().cloned());
        }
    }
    args.extend(cli);
    let matches = ServeArgs::command()
        .try_get_matches_from(args)
        .map_err(|err| error_at(path, &text, None, clap_message(&err)))?;
    let serve = ServeArgs::from_arg_matches(&matches)
        .map_err(|err| error_at(path, &text, None, clap_message(&err)))?;
    Ok(serve)
}

/// `ringkv config check FILE`: the file parses, every key is a setting with
/// a valid value, and the node configuration they make is valid.
pub fn check(path: &Path) -> Result<usize, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError {
        message: format!("cannot read {}: {err}", path.display()),
    })?;
    let file = read_settings(path, &text)?;
    let args = std::iter::once(OsString::from("serve"))
        .chain(file.iter().flat_map(|s| s.args.iter().cloned()));
    let matches = ServeArgs::command()
        .try_get_matches_from(args)
        .map_err(|err| {
            // Two settings that exclude each other: point at the first.
            let span = file.first().and_then(|s| s.span.clone());
            error_at(path, &text, span, clap_message(&err))
        })?;
    let serve = ServeArgs::from_arg_matches(&matches)
        .map_err(|err| error_at(path, &text, None, clap_message(&err)))?;
    serve
        .config()
        .validate()
        .map_err(|err| error_at(path, &text, None, err.to_string()))?;
    Ok(file.len())
}

/// A TOML literal for `value` (a flag's default): a number as a number,
/// else a string.
fn literal(value: &str) -> String {
    if value.parse::<i64>().is_ok() {
        value.to_string()
    } else {
        toml_edit::Value::from(value).to_string().trim().to_string()
    }
}

/// `ringkv config example`: every setting, commented out, with its help
/// and its default.
pub fn example() -> String {
    let mut out = String::from(
        "# ringkv node configuration: `ringkv serve --config FILE`.\n\
         # Every key is a flag of `ringkv serve` (`data_dir` for `--data-dir`);\n\
         # a flag on the command line overrides the file. Uncomment to change.\n\
         # `ringkv config check FILE` checks a file.\n",
    );
    for arg in settings() {
        out.push('\n');
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        for line in help.lines() {
            let _ = writeln!(out, "# {line}");
        }
        let key = key_of(&arg);
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        if is_switch(&arg) {
            let _ = writeln!(out, "#{key} = false");
        } else if is_list(&arg) {
            let items: Vec<String> = defaults.iter().map(|d| literal(d)).collect();
            let _ = writeln!(out, "#{key} = [{}]", items.join(", "));
        } else if let Some(default) = defaults.first() {
            if let Some(values) = possible_values(&arg) {
                let _ = writeln!(out, "# one of: {values}");
            }
            let _ = writeln!(out, "#{key} = {}", literal(default));
        } else {
            let name = arg
                .get_value_names()
                .and_then(|n| n.first())
                .map_or_else(|| key.to_uppercase(), |n| n.to_string());
            let _ = writeln!(out, "# (not set by default)\n#{key} = \"{name}\"");
        }
    }
    out
}

fn possible_values(arg: &Arg) -> Option<String> {
    let values = arg.get_possible_values();
    (!values.is_empty()).then(|| {
        values
            .iter()
            .map(|v| v.get_name().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys `example` gives a default, for tests: those a file may set to
    /// the example's value as it stands.
    fn keys_with_defaults() -> Vec<String> {
        settings()
            .iter()
            .filter(|arg| is_switch(arg) || is_list(arg) || !arg.get_default_values().is_empty())
            .map(key_of)
            .collect()
    }

    fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ringkv.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    fn serve_matches(cli: &[&str]) -> ArgMatches {
        ServeArgs::command()
            .try_get_matches_from(std::iter::once("serve").chain(cli.iter().copied()))
            .unwrap()
    }

    #[test]
    fn the_file_sets_what_the_command_line_does_not() {
        let (_dir, path) = write(
            "port = 6000\nfsync = true\njoin = [\"a:1\", \"b:2\"]\ndisk_reserve = \"1GiB\"\n\
             zone = \"z1\"\n",
        );
        let serve = apply(&path, &serve_matches(&["--port", "7000", "--join=c:3"])).unwrap();
        assert_eq!(serve.port, 7000);
        assert_eq!(serve.join, vec!["c:3".to_string()]);
        assert!(serve.fsync);
        assert_eq!(serve.disk_reserve, 1 << 30);
        assert_eq!(serve.zone, "z1");
        let serve = apply(&path, &serve_matches(&[])).unwrap();
        assert_eq!(serve.port, 6000);
        assert_eq!(serve.join, vec!["a:1".to_string(), "b:2".to_string()]);
    }

    #[test]
    fn errors_name_the_line_and_column() {
        let cases = [
            (
                "port = 1\nprot = 2\n",
                "ringkv.toml:2:1: unknown setting `prot`",
            ),
            ("data-dir = \"x\"\n", "keys use `_`: data_dir"),
            ("[node]\nport = 1\n", "no sections"),
            (
                "port = 1\nfsync = \"yes\"\n",
                ":2:9: `fsync`: expected true or false",
            ),
            ("port = \"many\"\n", ":1:8: `port`: invalid value 'many'"),
            ("disk_reserve = \"12 parsecs\"\n", ":1:16: `disk_reserve`"),
            ("port = 1\nport = 2\n", ":2:"),
            ("port = [\n", ":1:"),
            (
                "in_memory = true\ndata_dir = \"/x\"\n",
                "cannot be used with",
            ),
            ("replicas = 0\n", "replicas"),
        ];
        for (text, expected) in cases {
            let (_dir, path) = write(text);
            let err = check(&path).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn the_example_lists_every_setting_and_its_defaults_check() {
        let example = example();
        for arg in settings() {
            assert!(
                example.contains(&format!("\n#{} = ", key_of(&arg))),
                "{} missing",
                key_of(&arg)
            );
        }
        assert!(!example.contains("clock_skew_ms"), "hidden flags stay out");
        let defaults = keys_with_defaults();
        let uncommented: String = example
            .lines()
            .map(|line| {
                let key = line.strip_prefix('#').and_then(|l| l.split(" = ").next());
                match key {
                    Some(key) if defaults.iter().any(|d| d == key) => &line[1..],
                    _ => line,
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        let (_dir, path) = write(&uncommented);
        assert_eq!(check(&path).unwrap(), defaults.len());
    }
}
