//! The configuration file: what is accepted, and how each kind of mistake is explained (the key
//! path and the line of the offending item).

use std::path::Path;
use std::time::Duration;

use agent_fleet::config::{Config, ConfigError, OutputFormat};

/// A small valid configuration the tests below break in one place each.
const VALID: &str = r#"
[storage]
path = "/tmp/fleet.redb"

[[agents]]
name = "demo"
cli_template = "demo --prompt-file {prompt_file}"
output_format = "claude-json"

[[agents]]
name = "codex"
cli_template = "codex exec --json - < {prompt_file}"
output_format = "codex-jsonl"

[[hosts]]
host_id = "localhost"
hostname = "localhost"
agents = ["demo"]
work_root = "/tmp/work"

[[hosts]]
host_id = "build-1"
hostname = "build-1.example.org"
user = "fleet"
key_path = "/etc/agent-fleet/id_ed25519"
agents = ["demo", "codex"]
work_root = "/srv/work"
"#;

/// 1-based line of the `n`-th (0-based) line of `text` containing `needle`.
fn line_of_nth(text: &str, needle: &str, n: usize) -> usize {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle))
        .nth(n)
        .map(|(i, _)| i + 1)
        .unwrap_or_else(|| panic!("`{needle}` not in the text"))
}

fn line_of(text: &str, needle: &str) -> usize {
    line_of_nth(text, needle, 0)
}

/// The errors of a text that must not load.
fn errors(text: &str) -> Vec<ConfigError> {
    match Config::from_toml_str(text) {
        Ok(_) => panic!("the config was accepted:\n{text}"),
        Err(e) => e.errors,
    }
}

/// The only error of a text that must not load.
fn the_error(text: &str) -> ConfigError {
    let mut all = errors(text);
    assert_eq!(all.len(), 1, "expected one error, got {all:#?}");
    all.remove(0)
}

fn assert_names(e: &ConfigError, key: &str, line: usize) {
    assert_eq!(e.key(), Some(key), "key of {e}");
    assert_eq!(e.line(), Some(line), "line of {e}");
    let shown = e.to_string();
    assert!(shown.contains(&format!("`{key}`")), "{shown}");
    assert!(shown.contains(&format!("line {line},")), "{shown}");
}

#[test]
fn the_example_config_passes() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
    let config = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.agents.len(), 1);
    assert_eq!(config.agents[0].name, "demo");
    assert_eq!(config.agents[0].output_format, OutputFormat::ClaudeJson);
    assert_eq!(config.hosts.len(), 1);
    assert!(config.hosts[0].is_local());
    assert!(config.forgejo.is_none() && config.matrix.is_none());
}

#[test]
fn the_valid_test_config_passes() {
    Config::from_toml_str(VALID).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn an_empty_file_gives_the_documented_defaults() {
    let c = Config::from_toml_str("").unwrap();
    assert_eq!(c.server.listen.to_string(), "127.0.0.1:8787");
    assert_eq!(c.server.admin_token_env, "FLEET_ADMIN_TOKEN");
    assert_eq!(c.storage.path, Path::new("./data/fleet.redb"));
    assert_eq!(c.storage.history_cap, 4096);
    assert_eq!(c.dispatch.undecided_timeout, Duration::from_secs(30));
    assert_eq!(c.dispatch.max_retries, 3);
    assert_eq!(c.dispatch.retry_backoff, Duration::from_secs(30));
    assert_eq!(c.dispatch.task_timeout, Duration::from_secs(45 * 60));
    assert_eq!(c.dispatch.max_reviews, 3);
    assert_eq!(c.dispatch.heartbeat_interval, Duration::from_secs(30));
    assert_eq!(c.dispatch.heartbeat_misses, 3);
    assert_eq!(c.ssh.connect_timeout, Duration::from_secs(10));
    assert_eq!(c.ssh.keepalive_interval, Duration::from_secs(15));
    assert_eq!(c.ssh.keepalive_max, 3);
    assert_eq!(c.ssh.max_sessions, 8);
    assert_eq!(c.health.check_interval, Duration::from_secs(30));
    assert_eq!(c.health.check_timeout, Duration::from_secs(20));
    assert_eq!(c.health.lost_after, Duration::from_secs(120));
}

#[test]
fn durations_are_humantime_strings() {
    let c = Config::from_toml_str("[dispatch]\ntask_timeout = \"1h 30m\"\n").unwrap();
    assert_eq!(c.dispatch.task_timeout, Duration::from_secs(90 * 60));
}

#[test]
fn host_and_agent_defaults_apply() {
    let c = Config::from_toml_str(VALID).unwrap();
    let host = c.host("build-1").unwrap();
    assert_eq!(host.port, 22);
    assert_eq!(host.max_concurrent, 1);
    assert!(!host.insecure_ignore_host_key);
    let demo = c.agent("demo").unwrap();
    assert_eq!(
        demo.timeout_or_default(&c.dispatch),
        c.dispatch.task_timeout
    );
}

#[test]
fn forgejo_section_gets_its_defaults() {
    let text = "[forgejo]\nbase_url = \"https://forge.example.org\"\n";
    let f = Config::from_toml_str(text).unwrap().forgejo.unwrap();
    assert_eq!(f.token_env, "FORGEJO_TOKEN");
    assert_eq!(f.trigger_label, "agent-fleet");
    assert_eq!(f.reconcile_interval, Duration::from_secs(300));
}

#[test]
fn forgejo_repos_must_be_owner_slash_name() {
    let text = format!(
        "{VALID}\n[forgejo]\nbase_url = \"https://forge.example.org\"\nrepos = [\"acme/widgets\", \"widgets\"]\n"
    );
    let e = the_error(&text);
    assert_names(&e, "forgejo.repos[1]", line_of(&text, "repos ="));
    assert!(e.message().contains("owner/name"), "{}", e.message());
}

#[test]
fn forgejo_default_agent_must_be_a_known_kind() {
    let text = format!(
        "{VALID}\n[forgejo]\nbase_url = \"https://forge.example.org\"\ndefault_agent = \"aider\"\n"
    );
    let e = the_error(&text);
    assert_names(&e, "forgejo.default_agent", line_of(&text, "default_agent"));
    assert!(
        e.message().contains("unknown agent kind `aider`"),
        "{}",
        e.message()
    );
}

#[test]
fn forgejo_default_agent_no_host_offers_is_refused_without_pull_agents() {
    let text = format!(
        "{VALID}\n[forgejo]\nbase_url = \"https://forge.example.org\"\ndefault_agent = \"claude\"\n"
    );
    let e = the_error(&text);
    assert_names(&e, "forgejo.default_agent", line_of(&text, "default_agent"));
    assert!(
        e.message().contains("no host offers agent kind `claude`"),
        "{}",
        e.message()
    );
    assert!(
        e.message().contains("registration_token_env"),
        "{}",
        e.message()
    );
}

#[test]
fn forgejo_default_agent_may_be_left_to_pull_agents_that_can_register() {
    let text = format!(
        "[server]\nregistration_token_env = \"FLEET_REGISTRATION_TOKEN\"\n{VALID}\n[forgejo]\n\
         base_url = \"https://forge.example.org\"\ndefault_agent = \"claude\"\n"
    );
    Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn a_bad_duration_names_the_key_and_line() {
    let text = VALID.replace(
        "[storage]",
        "[dispatch]\ntask_timeout = \"30 parsecs\"\n\n[storage]",
    );
    let e = the_error(&text);
    assert!(matches!(e, ConfigError::Schema { .. }), "{e:?}");
    assert_names(&e, "dispatch.task_timeout", line_of(&text, "30 parsecs"));
    assert!(e.message().contains("30 parsecs"), "{e}");
    assert!(e.message().contains("\"30s\""), "hint missing: {e}");
}

#[test]
fn a_workspace_retention_longer_than_the_retention_is_refused_and_says_why() {
    let text = VALID.replace(
        "path = \"/tmp/fleet.redb\"",
        "path = \"/tmp/fleet.redb\"\nretention = \"1d\"\nworkspace_retention = \"2d\"\ndedupe_window = \"1d\"",
    );
    let e = the_error(&text);
    assert!(matches!(e, ConfigError::Invalid { .. }), "{e:?}");
    assert_names(
        &e,
        "storage.workspace_retention",
        line_of(&text, "workspace_retention"),
    );
    assert!(e.message().contains("`storage.retention` (1day)"), "{e}");
    assert!(e.message().contains("removed from the store"), "{e}");
    let equal = VALID.replace(
        "path = \"/tmp/fleet.redb\"",
        "path = \"/tmp/fleet.redb\"\nretention = \"2d\"\nworkspace_retention = \"2d\"\ndedupe_window = \"2d\"",
    );
    Config::from_toml_str(&equal).unwrap();
}

#[test]
fn a_dedupe_window_longer_than_the_retention_is_refused_and_says_why() {
    let text = VALID.replace(
        "path = \"/tmp/fleet.redb\"",
        "path = \"/tmp/fleet.redb\"\nretention = \"3d\"\nworkspace_retention = \"1d\"\ndedupe_window = \"4d\"",
    );
    let e = the_error(&text);
    assert!(matches!(e, ConfigError::Invalid { .. }), "{e:?}");
    assert_names(&e, "storage.dedupe_window", line_of(&text, "dedupe_window"));
    assert!(e.message().contains("`storage.retention` (3days)"), "{e}");
}

#[test]
fn a_typo_in_a_key_is_an_error_naming_it() {
    let text = format!("[server]\nlisen = \"127.0.0.1:8787\"\n{VALID}");
    let e = the_error(&text);
    assert_names(&e, "server.lisen", line_of(&text, "lisen"));
    assert!(e.message().contains("unknown field `lisen`"), "{e}");
}

#[test]
fn a_typo_in_a_host_key_names_the_host_entry() {
    let text = VALID.replace("user = \"fleet\"", "usr = \"fleet\"");
    let e = the_error(&text);
    assert_names(&e, "hosts[1].usr", line_of(&text, "usr ="));
}

#[test]
fn an_unknown_section_is_an_error() {
    let text = format!("{VALID}\n[forgejoo]\nbase_url = \"https://x\"\n");
    let e = the_error(&text);
    assert_names(&e, "forgejoo", line_of(&text, "[forgejoo]"));
}

#[test]
fn an_unknown_output_format_lists_the_known_ones() {
    let text = VALID.replace("\"codex-jsonl\"", "\"codex-json\"");
    let e = the_error(&text);
    assert_names(
        &e,
        "agents[1].output_format",
        line_of(&text, "codex-json\""),
    );
    assert!(e.message().contains("claude-stream-json"), "{e}");
}

#[test]
fn a_missing_required_field_names_the_field_and_its_entry() {
    let text = VALID.replace("work_root = \"/srv/work\"", "");
    let e = the_error(&text);
    assert!(matches!(e, ConfigError::Schema { .. }), "{e:?}");
    assert!(e.message().contains("missing field `work_root`"), "{e}");
    assert_eq!(e.key(), Some("hosts[1].work_root"));
}

#[test]
fn an_agent_kind_that_is_not_built_in_needs_its_template_and_format() {
    let text =
        format!("{VALID}\n[[agents]]\nname = \"mine\"\ncli_template = \"mine {{prompt_file}}\"\n");
    let e = the_error(&text);
    assert!(e.message().contains("missing field `output_format`"), "{e}");
    assert_names(
        &e,
        "agents[2].output_format",
        line_of_nth(&text, "[[agents]]", 2),
    );
}

#[test]
fn an_entry_named_like_a_built_in_kind_keeps_what_it_leaves_out() {
    let text = format!(
        "{VALID}\n[[agents]]\nname = \"claude\"\nenv = {{ ANTHROPIC_BASE_URL = \"http://127.0.0.1:9\" }}\n\
         env_from = [\"ANTHROPIC_API_KEY\"]\n"
    );
    let config = Config::from_toml_str(&text).unwrap();
    let claude = config.agent("claude").unwrap();
    let builtin = agent_fleet::config::builtin_agents()
        .iter()
        .find(|a| a.name == "claude")
        .unwrap();
    assert_eq!(claude.cli_template, builtin.cli_template);
    assert_eq!(claude.resume_template, builtin.resume_template);
    assert_eq!(claude.output_format, OutputFormat::ClaudeJson);
    assert_eq!(claude.env_from, ["ANTHROPIC_API_KEY"]);
    assert_eq!(claude.env["ANTHROPIC_BASE_URL"], "http://127.0.0.1:9");
}

#[test]
fn an_agent_kind_cannot_pass_through_the_daemons_own_secrets() {
    let text = format!(
        "{VALID}\n[[agents]]\nname = \"claude\"\nenv_from = [\"OK_KEY\", \"FLEET_ADMIN_TOKEN\", \"bad name\"]\n"
    );
    let all = errors(&text);
    assert_eq!(all.len(), 2, "{all:#?}");
    assert_eq!(all[0].key(), Some("agents[2].env_from[1]"));
    assert!(
        all[0].message().contains("daemon's own secrets"),
        "{}",
        all[0]
    );
    assert_eq!(all[1].key(), Some("agents[2].env_from[2]"));
    assert!(
        all[1]
            .message()
            .contains("not an environment variable name")
    );
}

#[test]
fn a_wrong_type_names_the_key_and_line() {
    let text = VALID.replace(
        "work_root = \"/srv/work\"",
        "work_root = \"/srv/work\"\nport = \"22\"",
    );
    let e = the_error(&text);
    assert_names(&e, "hosts[1].port", line_of(&text, "port = \"22\""));
}

#[test]
fn a_toml_syntax_error_gives_its_line() {
    let text = VALID.replace("name = \"codex\"", "name = \"codex");
    let e = the_error(&text);
    assert!(matches!(e, ConfigError::Syntax { .. }), "{e:?}");
    assert_eq!(e.line(), Some(line_of(&text, "name = \"codex")));
}

#[test]
fn a_host_using_an_unknown_agent_names_the_list_item() {
    let text = VALID.replace(
        "agents = [\"demo\", \"codex\"]",
        "agents = [\"demo\", \"aider\"]",
    );
    let e = the_error(&text);
    assert!(matches!(e, ConfigError::Invalid { .. }), "{e:?}");
    assert_names(&e, "hosts[1].agents[1]", line_of(&text, "\"aider\"]"));
    let m = e.message();
    assert!(
        m.contains("unknown agent `aider`") && m.contains("`demo`, `codex`, `claude`"),
        "{m}"
    );
}

#[test]
fn built_in_agent_kinds_need_no_agents_entry() {
    let text = VALID.replace(
        "agents = [\"demo\", \"codex\"]",
        "agents = [\"demo\", \"claude\"]",
    );
    let config = agent_fleet::config::Config::from_toml_str(&text).unwrap();
    let claude = config.agent("claude").unwrap();
    assert!(claude.cli_template.contains("--output-format json"));
}

#[test]
fn a_duplicate_host_id_names_the_second_one() {
    let text = VALID.replace("host_id = \"build-1\"", "host_id = \"localhost\"");
    let e = the_error(&text);
    assert_names(
        &e,
        "hosts[1].host_id",
        line_of_nth(&text, "host_id = \"localhost\"", 1),
    );
    assert!(e.message().contains("hosts[0]"), "{e}");
}

#[test]
fn a_duplicate_agent_name_is_an_error() {
    let text = VALID
        .replace("name = \"codex\"", "name = \"demo\"")
        .replace("agents = [\"demo\", \"codex\"]", "agents = [\"demo\"]");
    let e = the_error(&text);
    assert_names(
        &e,
        "agents[1].name",
        line_of_nth(&text, "name = \"demo\"", 1),
    );
}

#[test]
fn a_proxy_jump_to_an_unknown_host_is_an_error() {
    let text = VALID.replace(
        "user = \"fleet\"",
        "user = \"fleet\"\nproxy_jump = \"bastion\"",
    );
    let e = the_error(&text);
    assert_names(&e, "hosts[1].proxy_jump", line_of(&text, "proxy_jump"));
    assert!(e.message().contains("`bastion`"), "{e}");
}

#[test]
fn a_proxy_jump_cycle_is_an_error() {
    let text = format!(
        "{}\n[[hosts]]\nhost_id = \"b\"\nhostname = \"b.example.org\"\nuser = \"u\"\nkey_path = \"/k\"\n\
         proxy_jump = \"build-1\"\nagents = [\"demo\"]\nwork_root = \"/w\"\n",
        VALID.replace("user = \"fleet\"", "user = \"fleet\"\nproxy_jump = \"b\"")
    );
    let all = errors(&text);
    assert!(!all.is_empty());
    assert!(
        all.iter().all(|e| e.message().contains("cycle")),
        "{all:#?}"
    );
    assert_eq!(all[0].key(), Some("hosts[1].proxy_jump"));
}

#[test]
fn max_concurrent_zero_is_an_error() {
    let text = VALID.replace(
        "work_root = \"/srv/work\"",
        "work_root = \"/srv/work\"\nmax_concurrent = 0",
    );
    let e = the_error(&text);
    assert_names(
        &e,
        "hosts[1].max_concurrent",
        line_of(&text, "max_concurrent = 0"),
    );
}

#[test]
fn an_empty_agent_name_is_an_error() {
    let text = VALID
        .replace("name = \"codex\"", "name = \"\"")
        .replace("agents = [\"demo\", \"codex\"]", "agents = [\"demo\"]");
    let e = the_error(&text);
    assert_names(&e, "agents[1].name", line_of(&text, "name = \"\""));
}

#[test]
fn an_ssh_host_needs_a_user_and_a_key() {
    let text = VALID
        .replace("user = \"fleet\"\n", "")
        .replace("key_path = \"/etc/agent-fleet/id_ed25519\"\n", "");
    let all = errors(&text);
    let keys: Vec<_> = all.iter().map(|e| e.key().unwrap()).collect();
    assert_eq!(keys, ["hosts[1].user", "hosts[1].key_path"]);
    // Absent keys point at their entry's header.
    let header = line_of_nth(&text, "[[hosts]]", 1);
    assert!(all.iter().all(|e| e.line() == Some(header)), "{all:#?}");
}

#[test]
fn an_unknown_template_placeholder_is_an_error() {
    let text = VALID.replace(
        "{prompt_file}\"\noutput_format = \"claude-json\"",
        "{promt_file}\"\noutput_format = \"claude-json\"",
    );
    let all = errors(&text);
    assert!(
        all[0]
            .message()
            .contains("unknown placeholder `{promt_file}`"),
        "{all:#?}"
    );
    assert_names(
        &all[0],
        "agents[0].cli_template",
        line_of(&text, "{promt_file}"),
    );
}

#[test]
fn a_secret_written_inline_instead_of_a_variable_name_is_an_error() {
    let text = format!(
        "{VALID}\n[forgejo]\nbase_url = \"https://forge.example.org\"\ntoken_env = \"3f9a-secret-token\"\n"
    );
    let e = the_error(&text);
    assert_names(&e, "forgejo.token_env", line_of(&text, "token_env"));
}

#[test]
fn every_semantic_error_is_reported_at_once() {
    let text = VALID
        .replace(
            "agents = [\"demo\", \"codex\"]",
            "agents = [\"nope\"]\nmax_concurrent = 0",
        )
        .replace("[storage]", "[storage]\nhistory_cap = 0");
    let keys: Vec<String> = errors(&text)
        .iter()
        .map(|e| e.key().unwrap().to_string())
        .collect();
    assert_eq!(
        keys,
        [
            "storage.history_cap",
            "hosts[1].agents[0]",
            "hosts[1].max_concurrent"
        ]
    );
}

#[test]
fn a_missing_file_is_a_read_error_naming_the_path() {
    let err = Config::load(Path::new("/nonexistent/agent-fleet.toml")).unwrap_err();
    assert!(matches!(err.errors[0], ConfigError::Read { .. }));
    assert!(
        err.to_string().contains("/nonexistent/agent-fleet.toml"),
        "{err}"
    );
}

#[test]
fn a_zero_lost_after_is_an_error() {
    let text = format!("{VALID}\n[health]\nlost_after = \"0s\"\n");
    let e = the_error(&text);
    assert_names(&e, "health.lost_after", line_of(&text, "lost_after"));
}

#[test]
fn zero_ssh_sessions_is_an_error() {
    let text = format!("{VALID}\n[ssh]\nmax_sessions = 0\n");
    let e = the_error(&text);
    assert_names(&e, "ssh.max_sessions", line_of(&text, "max_sessions"));
}

#[test]
fn a_key_passphrase_env_on_localhost_is_an_error() {
    let text = VALID.replace(
        "work_root = \"/tmp/work\"",
        "work_root = \"/tmp/work\"\nkey_passphrase_env = \"KEY_PASS\"",
    );
    let e = the_error(&text);
    assert_names(
        &e,
        "hosts[0].key_passphrase_env",
        line_of(&text, "key_passphrase_env"),
    );
}

#[test]
fn a_key_passphrase_env_must_be_a_variable_name() {
    let text = VALID.replace(
        "work_root = \"/srv/work\"",
        "work_root = \"/srv/work\"\nkey_passphrase_env = \"not a name\"",
    );
    let e = the_error(&text);
    assert_names(
        &e,
        "hosts[1].key_passphrase_env",
        line_of(&text, "key_passphrase_env"),
    );
}
