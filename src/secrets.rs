//! The daemon's secrets, out of reach of the agents it runs on its own machine (SECURITY.md).
//!
//! `serve` reads every secret variable once, before any thread exists ([`withdraw`]): the values
//! are kept in this module's memory ([`var`]), the variables are removed from the process
//! environment (children cannot inherit them), and their bytes in the *initial* environment
//! block are overwritten. That last part matters: `/proc/<pid>/environ` shows the block the
//! kernel copied at `execve` (`mm->env_start..env_end`), and `unsetenv` only drops the pointer
//! from `environ`, so the value would stay visible there. [`make_undumpable`] then keeps
//! processes of the same user (a local agent) from reading the daemon's memory through
//! `/proc/<pid>/mem` or `ptrace`, or any of its `/proc/<pid>/environ`, `maps`, `fd`… files.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::config::Config;

static KEPT: OnceLock<HashMap<String, String>> = OnceLock::new();

/// The variables holding secrets for `config`: the daemon's own ([`Config::secret_env`]: admin,
/// registration and forge tokens, webhook secret, Matrix credentials, SSH key passphrases) and
/// every agent kind's `env_from`.
pub fn names(config: &Config) -> Vec<String> {
    let mut names = config.secret_env();
    for kind in config.agent_kinds() {
        names.extend(kind.env_from.iter().cloned());
    }
    names.sort();
    names.dedup();
    names
}

/// The value of the secret variable `name`: the one [`withdraw`] kept, else (in commands that
/// did not withdraw anything, and for variables it was not given) the process environment's.
pub fn var(name: &str) -> Option<String> {
    match KEPT.get().and_then(|kept| kept.get(name)) {
        Some(value) => Some(value.clone()),
        None => std::env::var(name).ok(),
    }
}

/// Reads the variables `names` into memory (for [`var`]), removes them from the process
/// environment and overwrites their text in the initial environment block with NULs, so that
/// neither children nor `/proc/<pid>/environ` show them. Only the first call keeps values.
///
/// Refuses (without changing anything) when the process has more than one thread.
///
/// # Safety
///
/// Changing the environment races with any other thread reading it (`getenv` in libc hands out
/// pointers into it), and the bytes overwritten here are the ones such pointers point to. The
/// caller guarantees that no other thread exists (checked too, in `/proc/self/task`: with one
/// thread, no other can appear meanwhile) and that nothing kept a pointer obtained from
/// `getenv` for one of these names (Rust's `std::env::var` copies the value).
pub unsafe fn withdraw(names: &[String]) -> std::io::Result<()> {
    let threads = std::fs::read_dir("/proc/self/task")?.count();
    if threads != 1 {
        return Err(std::io::Error::other(format!(
            "cannot withdraw the secrets from the environment: {threads} threads already run"
        )));
    }
    let mut kept = HashMap::new();
    for name in names {
        if let Ok(value) = std::env::var(name) {
            kept.insert(name.clone(), value);
        }
    }
    let initial = initial_block()?;
    for name in names {
        // SAFETY: single-threaded (checked above and guaranteed by the caller).
        unsafe { std::env::remove_var(name) };
    }
    if let Some((start, text)) = initial {
        let mut offset = 0;
        for entry in text.split(|b| *b == 0) {
            let secret = entry
                .iter()
                .position(|b| *b == b'=')
                .is_some_and(|eq| names.iter().any(|n| n.as_bytes() == &entry[..eq]));
            if secret {
                // SAFETY: `start + offset .. + entry.len()` is inside the initial environment
                // block of this process (the kernel's `env_start..env_end`, read just now),
                // mapped and writable (it is on the main thread's stack). After `remove_var`
                // no `environ` entry points to this string, and the caller guarantees nobody
                // else does; the block is never freed, so the writes cannot hit other data.
                unsafe {
                    let at = (start + offset) as *mut u8;
                    for i in 0..entry.len() {
                        std::ptr::write_volatile(at.add(i), 0);
                    }
                }
            }
            offset += entry.len() + 1;
        }
    }
    let _ = KEPT.set(kept);
    Ok(())
}

/// The initial environment block: its address and its text (what `/proc/self/environ` shows),
/// `None` without a readable `/proc` (then no one can read `/proc/<pid>/environ` either).
fn initial_block() -> std::io::Result<Option<(usize, Vec<u8>)>> {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return Ok(None);
    };
    // Fields after the command name (which may hold spaces) start with field 3, `state`;
    // `env_start` and `env_end` are fields 50 and 51 (proc(5), Linux 3.5+).
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let bad = || std::io::Error::other("cannot read env_start/env_end in /proc/self/stat");
    let field = |n: usize| -> std::io::Result<usize> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(bad)
    };
    let (start, end) = (field(50)?, field(51)?);
    let text = std::fs::read("/proc/self/environ")?;
    if start == 0 || end < start || text.len() > end - start {
        return Err(bad());
    }
    Ok(Some((start, text)))
}

/// Makes this process non-dumpable (`prctl(PR_SET_DUMPABLE, 0)`): other processes of the same
/// user can no longer `ptrace` it nor open its `/proc/<pid>/mem`, `environ`, `maps` or `fd`,
/// and it writes no core dump. Root (CAP_SYS_PTRACE) still can. Lasts until an `execve`; the
/// daemon's children start dumpable again, as usual.
#[cfg(target_os = "linux")]
pub fn make_undumpable() -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_DUMPABLE takes one integer argument and touches no memory.
    let done = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    if done == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Elsewhere there is no `/proc/<pid>/mem` to protect.
#[cfg(not(target_os = "linux"))]
pub fn make_undumpable() -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cover_the_daemons_secrets_and_every_kinds_env_from() {
        let text = r#"
[server]
admin_token_env = "ADMIN_T"
registration_token_env = "REG_T"

[forgejo]
base_url = "http://forge.example"
token_env = "FORGE_T"
webhook_secret_env = "HOOK_T"

[[agents]]
name = "a"
cli_template = "a {prompt_file}"
output_format = "raw"
env_from = ["KEY_A", "SHARED"]

[[agents]]
name = "b"
cli_template = "b {prompt_file}"
output_format = "raw"
env_from = ["SHARED"]

[[hosts]]
host_id = "h"
hostname = "h.example"
user = "u"
key_path = "k"
key_passphrase_env = "PASS_T"
work_root = "/w"
agents = ["a"]
"#;
        let config = Config::from_toml_str(text).expect("valid config");
        assert_eq!(
            names(&config),
            [
                "ADMIN_T", "FORGE_T", "HOOK_T", "KEY_A", "PASS_T", "REG_T", "SHARED"
            ]
        );
    }

    #[test]
    fn the_initial_block_is_what_proc_self_environ_shows() {
        let (start, text) = initial_block().unwrap().expect("Linux has /proc");
        assert!(start > 0);
        assert_eq!(text, std::fs::read("/proc/self/environ").unwrap());
    }

    #[test]
    fn withdraw_refuses_to_run_beside_other_threads() {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || rx.recv());
        // SAFETY: it refuses before touching the environment (another thread runs).
        let refused = unsafe { withdraw(&["AGENT_FLEET_NOT_SET_ANYWHERE".into()]) };
        assert!(refused.is_err());
        drop(tx);
        let _ = other.join();
    }
}
