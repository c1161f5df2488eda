//! Rendering an agent kind's CLI template (`cli_template`, `resume_template`) into the shell
//! command line that launches the agent, and the one scanner of `{name}` placeholders that both
//! rendering and config validation use.
//!
//! A template is a POSIX `sh` command line such as
//! `claude -p --output-format json --resume {session_id} < {prompt_file}`. Rendering replaces
//! each placeholder (see [`TEMPLATE_PLACEHOLDERS`]) with its value **shell-quoted** by
//! [`shlex::try_quote`], so whatever a value holds (`$(…)`, backticks, quotes, newlines, spaces)
//! reaches the command as one literal argument and nothing in it is executed or expanded.
//!
//! `{prompt}` is special: the prompt text never goes on a command line (it may be megabytes and
//! is user input). The caller gives the **prompt file's path** as the value of `prompt`, as it does
//! for `prompt_file`, and `{prompt}` renders as `"$(cat -- '<path>')"`: the shell reads the file
//! into one argument at run time, and the result of a command substitution inside double quotes
//! is not re-interpreted (no word splitting, globbing or further expansion). As with any command
//! substitution, trailing newlines of the file are dropped, and NUL bytes cannot be passed.

use std::collections::BTreeMap;
use std::ops::Range;

use thiserror::Error;

use crate::config::TEMPLATE_PLACEHOLDERS;

/// One `{name}` placeholder found in a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeholder<'a> {
    /// Byte range of the whole placeholder in the template, braces included.
    pub range: Range<usize>,
    /// The name between the braces.
    pub name: &'a str,
}

/// The `{name}` placeholders of `template`, in order.
///
/// A placeholder is `{` + a non-empty run of `[a-z0-9_]` + `}`. Shell and awk braces are left
/// alone: `${VAR}` (a `{` right after `$`) and `{ ... }` / `{print $1}` (anything else between the
/// braces) are not placeholders. Whether a name is known is not checked here.
pub fn placeholders(template: &str) -> Vec<Placeholder<'_>> {
    let bytes = template.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'{' && (i == 0 || bytes[i - 1] != b'$') {
            let rest = &template[i + 1..];
            if let Some(end) = rest.find('}') {
                let name = &rest[..end];
                if !name.is_empty()
                    && name
                        .bytes()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_')
                {
                    let next = i + end + 2;
                    out.push(Placeholder {
                        range: i..next,
                        name,
                    });
                    i = next;
                    continue;
                }
            }
        }
        i += 1;
    }
    out
}

/// Values for a template's placeholders, built with [`Vars::set`].
///
/// `prompt` and `prompt_file` both take the prompt file's **path** (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Vars {
    values: BTreeMap<String, String>,
}

impl Vars {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (or replaces) the value of placeholder `name`.
    pub fn set(mut self, name: &str, value: impl Into<String>) -> Self {
        self.values.insert(name.to_string(), value.into());
        self
    }

    /// The value of placeholder `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }
}

/// Why a template could not be rendered.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    /// The template uses a placeholder that is not in [`TEMPLATE_PLACEHOLDERS`].
    #[error("unknown placeholder `{{{name}}}`")]
    Unknown { name: String },
    /// The template uses a known placeholder that has no value (e.g. `{session_id}` on a first
    /// run).
    #[error("placeholder `{{{name}}}` has no value")]
    Missing { name: String },
    /// The value cannot be shell-quoted (e.g. it contains a NUL byte).
    #[error("value of placeholder `{{{name}}}` cannot be shell-quoted: {reason}")]
    Unquotable { name: String, reason: String },
}

/// Renders `template` with every placeholder replaced by its shell-quoted value from `vars`;
/// `{prompt}` becomes `"$(cat -- <quoted path>)"` (see the module docs). Text outside placeholders
/// is kept as is. Fails on the first unknown placeholder, missing value or unquotable value.
pub fn render(template: &str, vars: &Vars) -> Result<String, TemplateError> {
    let mut out = String::with_capacity(template.len());
    let mut copied = 0;
    for Placeholder { range, name } in placeholders(template) {
        if !TEMPLATE_PLACEHOLDERS.contains(&name) {
            return Err(TemplateError::Unknown { name: name.into() });
        }
        let value = vars
            .get(name)
            .ok_or_else(|| TemplateError::Missing { name: name.into() })?;
        let quoted = shlex::try_quote(value).map_err(|e| TemplateError::Unquotable {
            name: name.into(),
            reason: e.to_string(),
        })?;
        out.push_str(&template[copied..range.start]);
        if name == "prompt" {
            out.push_str("\"$(cat -- ");
            out.push_str(&quoted);
            out.push_str(")\"");
        } else {
            out.push_str(&quoted);
        }
        copied = range.end;
    }
    out.push_str(&template[copied..]);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    const HOSTILE: &[&str] = &[
        "$(touch marker)",
        "`touch marker`",
        "'; touch marker; rm -rf ~ #",
        "\"; touch marker; echo \"",
        "line one\nline two; touch marker\n",
        "a b\tc  d",
        "*",
        "~",
        "${HOME} $HOME",
        "\\ \\\\ \\n",
        "héllo wörld ✓ 日本",
        "-n",
        "",
    ];

    /// Runs `command` with `sh -c` in `dir` and returns its stdout.
    fn sh(command: &str, dir: &Path) -> String {
        let out = Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(dir)
            .output()
            .expect("run sh");
        assert!(out.status.success(), "sh failed: {out:?}");
        String::from_utf8(out.stdout).expect("utf-8 stdout")
    }

    #[test]
    fn placeholders_skip_shell_braces() {
        let names: Vec<&str> = placeholders("run {prompt_file} ${HOME} awk '{print $1}' {task_id}")
            .iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, vec!["prompt_file", "task_id"]);
    }

    #[test]
    fn placeholders_report_byte_ranges_including_braces() {
        let template = "é {task_id} x{branch}";
        let found = placeholders(template);
        assert_eq!(
            found,
            vec![
                Placeholder {
                    range: 3..12,
                    name: "task_id"
                },
                Placeholder {
                    range: 14..22,
                    name: "branch"
                },
            ]
        );
        assert_eq!(&template[found[0].range.clone()], "{task_id}");
        assert_eq!(&template[found[1].range.clone()], "{branch}");
    }

    #[test]
    fn render_keeps_text_outside_placeholders() {
        let vars = Vars::new().set("prompt_file", "/runs/12/prompt.md");
        assert_eq!(
            render("agent ${HOME} awk '{print $1}' < {prompt_file}", &vars).unwrap(),
            "agent ${HOME} awk '{print $1}' < /runs/12/prompt.md"
        );
    }

    #[test]
    fn render_quotes_values_that_need_it() {
        let vars = Vars::new().set("branch", "a b").set("task_id", "12");
        assert_eq!(render("x {task_id} {branch}", &vars).unwrap(), "x 12 'a b'");
    }

    #[test]
    fn unknown_placeholder_is_an_error() {
        let vars = Vars::new().set("model", "x");
        assert_eq!(
            render("agent --model {model}", &vars),
            Err(TemplateError::Unknown {
                name: "model".into()
            })
        );
    }

    #[test]
    fn known_placeholder_without_value_is_missing() {
        let vars = Vars::new().set("prompt_file", "/p");
        assert_eq!(
            render("claude --resume {session_id} < {prompt_file}", &vars),
            Err(TemplateError::Missing {
                name: "session_id".into()
            })
        );
    }

    #[test]
    fn nul_in_a_value_is_unquotable() {
        let vars = Vars::new().set("task_id", "a\0b");
        assert!(matches!(
            render("x {task_id}", &vars),
            Err(TemplateError::Unquotable { name, .. }) if name == "task_id"
        ));
    }

    #[test]
    fn hostile_values_arrive_verbatim_as_one_argument_and_nothing_executes() {
        let dir = tempfile::tempdir().unwrap();
        for value in HOSTILE {
            let vars = Vars::new().set("task_id", *value);
            let command = render("printf '[%s]' {task_id}", &vars).unwrap();
            let out = sh(&command, dir.path());
            assert_eq!(out, format!("[{value}]"), "rendered: {command}");
            assert!(
                !dir.path().join("marker").exists(),
                "executed something: {command}"
            );
        }
    }

    #[test]
    fn prompt_renders_as_the_file_content_in_one_argument_without_interpretation() {
        let dir = tempfile::tempdir().unwrap();
        let content = "# Goal\n$(touch marker) `touch marker` ${HOME} 'q' \"dq\" * \\n\n\nend";
        let prompt_path = dir.path().join("prompt dir 'x'").join("prompt.md");
        std::fs::create_dir(prompt_path.parent().unwrap()).unwrap();
        std::fs::write(&prompt_path, content).unwrap();
        let path = prompt_path.to_str().unwrap();
        let vars = Vars::new().set("prompt", path);
        let command = render("printf '[%s]' {prompt}", &vars).unwrap();
        assert!(command.starts_with("printf '[%s]' \"$(cat -- "));
        let out = sh(&command, dir.path());
        assert_eq!(out, format!("[{content}]"), "rendered: {command}");
        assert!(!dir.path().join("marker").exists());
    }

    #[test]
    fn prompt_drops_only_trailing_newlines_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let prompt_path = dir.path().join("prompt.md");
        std::fs::write(&prompt_path, "line\n\n").unwrap();
        let vars = Vars::new().set("prompt", prompt_path.to_str().unwrap());
        let command = render("printf '[%s]' {prompt}", &vars).unwrap();
        assert_eq!(sh(&command, dir.path()), "[line]");
    }
}
