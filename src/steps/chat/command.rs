//! What a chat message asks of the fleet: `!fleet <command> …` (or `/fleet …` typed as plain
//! text) read into a [`Command`], or a one-line [`Usage`] hint when it is not a command the
//! bot knows. Knows nothing of Matrix nor of the engine: text in, command out, never a panic.

use std::fmt;

use crate::workflow::InstanceId;

/// The prefixes a message for the bot starts with (matched case-insensitively).
const PREFIXES: [&str; 2] = ["!fleet", "/fleet"];
/// Longest piece of a message echoed back in a usage hint.
const ECHO_MAX: usize = 40;
/// Longest host id or pull agent name `assign` takes.
const TARGET_MAX: usize = 128;

/// A task as a person names it in the room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskRef {
    /// `12` or `#12`.
    Id(InstanceId),
    /// `owner/repo#7`: the task(s) of a forge issue, found through the engine's key index.
    Issue {
        owner: String,
        repo: String,
        number: u64,
    },
}

impl TaskRef {
    /// `owner/repo`, for an issue reference.
    pub fn repo_name(&self) -> Option<String> {
        match self {
            TaskRef::Id(_) => None,
            TaskRef::Issue { owner, repo, .. } => Some(format!("{owner}/{repo}")),
        }
    }
}

impl fmt::Display for TaskRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskRef::Id(id) => write!(f, "task {id}"),
            TaskRef::Issue {
                owner,
                repo,
                number,
            } => write!(f, "{owner}/{repo}#{number}"),
        }
    }
}

/// A command the bot answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Help,
    Status,
    Task(TaskRef),
    /// `target`: a host id or a pull agent's name.
    Assign {
        target: String,
        task: TaskRef,
    },
    Retry(TaskRef),
    Cancel(TaskRef),
}

impl Command {
    /// Whether the command only reads (help, status, task): what the room may be open to.
    pub fn is_read_only(&self) -> bool {
        matches!(self, Command::Help | Command::Status | Command::Task(_))
    }

    /// The command's word, for logs and refusals.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Help => "help",
            Command::Status => "status",
            Command::Task(_) => "task",
            Command::Assign { .. } => "assign",
            Command::Retry(_) => "retry",
            Command::Cancel(_) => "cancel",
        }
    }
}

/// Each command's word, its syntax and what it does: the help and the usage hints.
pub const COMMANDS: [(&str, &str, &str); 6] = [
    (
        "status",
        "status",
        "hosts, pull agents, tasks by status, the running ones",
    ),
    (
        "task",
        "task <id | owner/repo#n>",
        "a task's status, runs, pull request, receipt, cost and last events",
    ),
    (
        "assign",
        "assign <host | agent> <id | owner/repo#n>",
        "send a task to a host or a pull agent",
    ),
    (
        "retry",
        "retry <id | owner/repo#n>",
        "put a failed task back in the queue",
    ),
    (
        "cancel",
        "cancel <id | owner/repo#n>",
        "stop a task (an issue's only live task)",
    ),
    ("help", "help", "this list"),
];

/// Why a message for the bot is not a command: a one-line hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Usage {
    /// The command it is about; `None` for an unknown command.
    pub command: Option<&'static str>,
    /// One line: what is wrong and the syntax.
    pub hint: String,
}

impl fmt::Display for Usage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.hint)
    }
}

impl Usage {
    fn unknown(word: &str) -> Self {
        let words: Vec<&str> = COMMANDS.iter().map(|(w, _, _)| *w).collect();
        Usage {
            command: None,
            hint: format!(
                "unknown command `{}`; commands: {} (`!fleet help`)",
                echo(word),
                words.join(", ")
            ),
        }
    }

    /// The syntax of `command` (one of [`COMMANDS`]), after what is wrong.
    fn of(command: &'static str, problem: &str) -> Self {
        let syntax = COMMANDS
            .iter()
            .find(|(w, _, _)| *w == command)
            .map_or(command, |(_, s, _)| *s);
        Usage {
            command: Some(command),
            hint: format!("{problem}; usage: !fleet {syntax}"),
        }
    }
}

/// `None`: the message is not for the bot. Otherwise the command it asks for, or why it is
/// not one. `!fleet` alone asks for help.
pub fn parse(body: &str) -> Option<Result<Command, Usage>> {
    let rest = strip_prefix(body.trim_start())?;
    let mut words = rest.split_whitespace();
    let Some(word) = words.next() else {
        return Some(Ok(Command::Help));
    };
    let args: Vec<&str> = words.collect();
    Some(command(&word.to_lowercase(), word, &args))
}

/// What follows the prefix, when `text` starts with one followed by whitespace or nothing.
fn strip_prefix(text: &str) -> Option<&str> {
    PREFIXES.iter().find_map(|p| {
        let head = text.get(..p.len())?;
        let rest = &text[p.len()..];
        let ends = rest.chars().next().is_none_or(char::is_whitespace);
        (head.eq_ignore_ascii_case(p) && ends).then_some(rest)
    })
}

fn command(lower: &str, word: &str, args: &[&str]) -> Result<Command, Usage> {
    match lower {
        "help" => Ok(Command::Help),
        "status" => no_args("status", args).map(|()| Command::Status),
        "task" => one_task("task", args).map(Command::Task),
        "retry" => one_task("retry", args).map(Command::Retry),
        "cancel" => one_task("cancel", args).map(Command::Cancel),
        "assign" => match args {
            [target, task] => Ok(Command::Assign {
                target: check_target(target)?,
                task: task_ref("assign", task)?,
            }),
            [] | [_] => Err(Usage::of("assign", "missing argument")),
            _ => Err(Usage::of("assign", "too many arguments")),
        },
        _ => Err(Usage::unknown(word)),
    }
}

fn no_args(command: &'static str, args: &[&str]) -> Result<(), Usage> {
    match args {
        [] => Ok(()),
        [first, ..] => Err(Usage::of(command, &format!("unexpected `{}`", echo(first)))),
    }
}

fn one_task(command: &'static str, args: &[&str]) -> Result<TaskRef, Usage> {
    match args {
        [task] => task_ref(command, task),
        [] => Err(Usage::of(command, "missing task")),
        _ => Err(Usage::of(command, "too many arguments")),
    }
}

/// `12`, `#12` or `owner/repo#7`.
fn task_ref(command: &'static str, text: &str) -> Result<TaskRef, Usage> {
    let bad = || {
        Usage::of(
            command,
            &format!("`{}` is not a task id or owner/repo#n", echo(text)),
        )
    };
    if let Some((path, number)) = text.split_once('#')
        && let Some((owner, repo)) = path.split_once('/')
    {
        let number = number_of(number).ok_or_else(bad)?;
        if !is_name(owner) || !is_name(repo) {
            return Err(bad());
        }
        return Ok(TaskRef::Issue {
            owner: owner.to_string(),
            repo: repo.to_string(),
            number,
        });
    }
    number_of(text.strip_prefix('#').unwrap_or(text))
        .map(TaskRef::Id)
        .ok_or_else(bad)
}

/// A positive decimal number (digits only: no sign, no spaces).
fn number_of(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|n| *n > 0)
}

/// An owner or repository name as forges spell them.
fn is_name(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 100
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn check_target(text: &str) -> Result<String, Usage> {
    if text.len() > TARGET_MAX || text.chars().any(char::is_control) {
        return Err(Usage::of(
            "assign",
            &format!("`{}` is not a host or agent name", echo(text)),
        ));
    }
    Ok(text.to_string())
}

/// `text` cut to [`ECHO_MAX`] characters, without control characters: safe to repeat in one
/// line.
fn echo(text: &str) -> String {
    let mut out: String = text
        .chars()
        .filter(|c| !c.is_control())
        .take(ECHO_MAX)
        .collect();
    if text.chars().count() > ECHO_MAX {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::{any, prop_assert};

    use super::*;

    fn ok(body: &str) -> Command {
        match parse(body) {
            Some(Ok(c)) => c,
            other => panic!("{body:?} gave {other:?}"),
        }
    }

    fn usage(body: &str) -> Usage {
        match parse(body) {
            Some(Err(u)) => u,
            other => panic!("{body:?} gave {other:?}"),
        }
    }

    fn issue(owner: &str, repo: &str, number: u64) -> TaskRef {
        TaskRef::Issue {
            owner: owner.into(),
            repo: repo.into(),
            number,
        }
    }

    #[test]
    fn a_message_without_the_prefix_is_not_for_the_bot() {
        for body in [
            "",
            "hello",
            "fleet status",
            "!fleetx status",
            "/fleets",
            "please !fleet status",
            "!flee",
        ] {
            assert_eq!(parse(body), None, "{body:?}");
        }
    }

    #[test]
    fn both_prefixes_in_any_case_after_leading_whitespace_are_for_the_bot() {
        for body in [
            "!fleet status",
            "/fleet status",
            "  !FLEET status",
            "\n\t/Fleet   STATUS  ",
        ] {
            assert_eq!(ok(body), Command::Status, "{body:?}");
        }
    }

    #[test]
    fn the_prefix_alone_asks_for_help() {
        assert_eq!(ok("!fleet"), Command::Help);
        assert_eq!(ok("/fleet   "), Command::Help);
        assert_eq!(ok("!fleet help"), Command::Help);
    }

    #[test]
    fn task_takes_an_id_with_or_without_a_hash() {
        assert_eq!(ok("!fleet task 12"), Command::Task(TaskRef::Id(12)));
        assert_eq!(ok("!fleet task #12"), Command::Task(TaskRef::Id(12)));
    }

    #[test]
    fn task_takes_an_issue_reference() {
        assert_eq!(
            ok("!fleet task acme/widgets#7"),
            Command::Task(issue("acme", "widgets", 7))
        );
        assert_eq!(
            ok("!fleet task my.org/web_site-2#40"),
            Command::Task(issue("my.org", "web_site-2", 40))
        );
    }

    #[test]
    fn retry_and_cancel_take_an_id_or_an_issue() {
        assert_eq!(ok("!fleet retry 3"), Command::Retry(TaskRef::Id(3)));
        assert_eq!(
            ok("/fleet retry acme/widgets#1"),
            Command::Retry(issue("acme", "widgets", 1))
        );
        assert_eq!(ok("!fleet cancel 4"), Command::Cancel(TaskRef::Id(4)));
        assert_eq!(
            ok("!fleet Cancel acme/widgets#2"),
            Command::Cancel(issue("acme", "widgets", 2))
        );
    }

    #[test]
    fn assign_takes_a_target_then_a_task() {
        assert_eq!(
            ok("!fleet assign gpu-1 12"),
            Command::Assign {
                target: "gpu-1".into(),
                task: TaskRef::Id(12)
            }
        );
        assert_eq!(
            ok("!fleet assign laptop acme/widgets#9"),
            Command::Assign {
                target: "laptop".into(),
                task: issue("acme", "widgets", 9)
            }
        );
    }

    #[test]
    fn only_help_status_and_task_are_read_only() {
        assert!(Command::Help.is_read_only());
        assert!(Command::Status.is_read_only());
        assert!(Command::Task(TaskRef::Id(1)).is_read_only());
        assert!(!Command::Retry(TaskRef::Id(1)).is_read_only());
        assert!(!Command::Cancel(TaskRef::Id(1)).is_read_only());
        let assign = Command::Assign {
            target: "h".into(),
            task: TaskRef::Id(1),
        };
        assert!(!assign.is_read_only());
    }

    #[test]
    fn an_unknown_command_lists_the_commands() {
        let u = usage("!fleet deploy now");
        assert_eq!(u.command, None);
        assert_eq!(
            u.hint,
            "unknown command `deploy`; commands: status, task, assign, retry, cancel, help \
             (`!fleet help`)"
        );
    }

    #[test]
    fn a_missing_task_gives_that_commands_syntax() {
        let u = usage("!fleet retry");
        assert_eq!(u.command, Some("retry"));
        assert_eq!(
            u.hint,
            "missing task; usage: !fleet retry <id | owner/repo#n>"
        );
        assert_eq!(
            usage("!fleet task").hint,
            "missing task; usage: !fleet task <id | owner/repo#n>"
        );
    }

    #[test]
    fn a_bad_task_reference_is_named_in_the_hint() {
        for (body, bad) in [
            ("!fleet task abc", "abc"),
            ("!fleet task 0", "0"),
            ("!fleet task -3", "-3"),
            (
                "!fleet task 99999999999999999999999",
                "99999999999999999999999",
            ),
            ("!fleet cancel acme#3", "acme#3"),
            ("!fleet cancel acme/#3", "acme/#3"),
            ("!fleet cancel acme/widgets#", "acme/widgets#"),
            ("!fleet cancel acme/wid<b>gets#3", "acme/wid<b>gets#3"),
        ] {
            let u = usage(body);
            assert!(
                u.hint.starts_with(&format!(
                    "`{bad}` is not a task id or owner/repo#n; usage: !fleet "
                )),
                "{body:?}: {}",
                u.hint
            );
        }
    }

    #[test]
    fn extra_arguments_give_that_commands_syntax() {
        assert_eq!(
            usage("!fleet task 1 2").hint,
            "too many arguments; usage: !fleet task <id | owner/repo#n>"
        );
        assert_eq!(
            usage("!fleet status now").hint,
            "unexpected `now`; usage: !fleet status"
        );
        assert_eq!(
            usage("!fleet assign a 1 2").hint,
            "too many arguments; usage: !fleet assign <host | agent> <id | owner/repo#n>"
        );
    }

    #[test]
    fn assign_without_its_two_arguments_gives_its_syntax() {
        for body in ["!fleet assign", "!fleet assign gpu-1"] {
            assert_eq!(
                usage(body).hint,
                "missing argument; usage: !fleet assign <host | agent> <id | owner/repo#n>",
                "{body:?}"
            );
        }
    }

    #[test]
    fn a_long_word_is_cut_in_the_hint() {
        let word = "x".repeat(500);
        let hint = usage(&format!("!fleet {word}")).hint;
        assert!(hint.len() < 200, "{hint}");
        assert!(hint.contains('…'));
    }

    #[test]
    fn odd_inputs_never_panic_and_every_hint_is_one_line() {
        let mut bodies: Vec<String> = vec![
            String::new(),
            "!".into(),
            "!fleet".into(),
            "/fleet\u{0}".into(),
            "!fleet\u{0}status".into(),
            "!fleet task \u{202e}12".into(),
            "!fleet task 1\u{0}".into(),
            "!fleet ✓ ✗ 🚀".into(),
            "!fleé status".into(),
            "!fleet\u{a0}status".into(),
            "ǃfleet status".into(),
            "!fleet assign \u{7}bell 3".into(),
            "!fleet task ##12".into(),
            "!fleet task #".into(),
            "!fleet task a/b#c#d".into(),
            "!fleet task /#1".into(),
            format!("!fleet task {}", "9".repeat(10_000)),
            format!("!fleet {}", "é".repeat(10_000)),
            format!("!fleet assign {} 1", "h".repeat(10_000)),
            "!fleet ".repeat(1_000),
        ];
        // Every prefix of a few messages, cut at every character.
        for text in ["!fleet assign gpu-1 acme/widgets#7", "/FLEET task é#3"] {
            for (i, _) in text.char_indices() {
                bodies.push(text[..i].to_string());
            }
        }
        for body in &bodies {
            if let Some(Err(u)) = parse(body) {
                assert!(!u.hint.contains('\n'), "{body:?}: {}", u.hint);
                assert!(u.hint.chars().count() < 300, "{body:?}: {}", u.hint);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_text_with_or_without_the_prefix_never_panics(text in any::<String>()) {
            let bodies = [
                text.clone(),
                format!("!fleet {text}"),
                format!("/FLEET task {text}"),
                format!("!fleet assign {text} {text}"),
            ];
            for body in bodies {
                if let Some(Err(u)) = parse(&body) {
                    prop_assert!(!u.hint.contains('\n'), "{:?}: {}", body, u.hint);
                }
            }
        }
    }

    #[test]
    fn a_control_character_in_an_assign_target_is_refused() {
        assert_eq!(usage("!fleet assign \u{7}bell 3").command, Some("assign"));
    }
}
