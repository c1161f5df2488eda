//! What an ended task left on the hosts, and where: on each host it used (its workspace's, its
//! runs'), its clone, its run directories and its branch's refs in the host's mirror of its
//! repository. Every path is made from the task's names ([`TaskNames`]) under the host's
//! *current* work root and checked to lie inside it: nothing outside a work root is ever
//! removed. A path the task's state records elsewhere (the work root was moved since) is
//! refused and said so, never followed.

use std::collections::BTreeSet;

use crate::steps::agent_task::TaskState;
use crate::steps::names::TaskNames;
use crate::steps::workspace;

/// What to remove on one host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPlan {
    pub host: String,
    pub work_root: String,
    /// `<work_root>/<task>`.
    pub clone: String,
    /// `<work_root>/.runs/<run id>`, each once.
    pub runs: Vec<String>,
    /// `<work_root>/.mirrors/<repository>`: the task's refs in it go.
    pub mirror: String,
    /// The task's branch: `refs/heads/<branch>` and `refs/remotes/origin/<branch>` go.
    pub branch: String,
}

/// Everything of one task, host by host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    pub hosts: Vec<HostPlan>,
    /// Hosts the task used that the config no longer has: tried again later.
    pub missing: Vec<String>,
    /// What is not removed because it is not where it must be, and why.
    pub refused: Vec<String>,
}

/// The plan for task `task` whose state is `state`; `work_root` gives a configured host's work
/// root (`None`: the host is no longer configured). A task without a workspace or runs on our
/// hosts (left to pull agents: its work is on the agent's machine) has an empty plan.
pub fn plan(
    task: u64,
    state: &TaskState,
    names: TaskNames,
    work_root: impl Fn(&str) -> Option<String>,
) -> Plan {
    let mut hosts: BTreeSet<&str> = state
        .runs
        .iter()
        .map(|r| r.host.as_str())
        .filter(|h| !h.is_empty())
        .collect();
    if let Some(ws) = &state.workspace {
        hosts.insert(ws.host.as_str());
    }
    let mut plan = Plan::default();
    for host in hosts {
        let Some(root) = work_root(host) else {
            plan.missing.push(host.to_string());
            continue;
        };
        match host_plan(task, state, names, host, &root) {
            Ok((p, refused)) => {
                plan.hosts.push(p);
                plan.refused.extend(refused);
            }
            Err(why) => plan.refused.push(why),
        }
    }
    plan
}

/// The plan on `host`, and what of the task's there is refused; an error when the work root
/// itself is not one to remove anything under.
fn host_plan(
    task: u64,
    state: &TaskState,
    names: TaskNames,
    host: &str,
    root: &str,
) -> Result<(HostPlan, Vec<String>), String> {
    let root = root.trim_end_matches('/');
    if !is_clean_root(root) {
        return Err(format!(
            "{host}: work root `{root}` is not an absolute path without `.`/`..` (nothing removed)"
        ));
    }
    let mut refused = Vec::new();
    let clone = names.clone_dir(root, task);
    let mirror = workspace::mirror_dir(root, &state.spec.repo);
    if let Some(ws) = state.workspace.as_ref().filter(|ws| ws.host == host) {
        if ws.work_dir != clone {
            refused.push(format!(
                "{host}: {} is not under the work root {root}",
                ws.work_dir
            ));
        }
        if ws.mirror != mirror {
            refused.push(format!(
                "{host}: mirror {} is not under the work root {root}",
                ws.mirror
            ));
        }
    }
    let mut runs = Vec::new();
    for run in state
        .runs
        .iter()
        .filter(|r| r.host == host && !r.run_dir.is_empty())
    {
        let dir = format!("{root}/.runs/{}", run.run_id);
        if !names.is_run_of(task, &run.run_id) || run.run_dir != dir {
            refused.push(format!(
                "{host}: run directory {} is not this task's under {root}",
                run.run_dir
            ));
        } else if !runs.contains(&dir) {
            runs.push(dir);
        }
    }
    let branch = names.branch(task);
    // By construction; checked again because what follows deletes.
    let sound = within(root, &clone, None)
        && runs.iter().all(|d| within(root, d, Some(".runs")))
        && within(root, &mirror, Some(".mirrors"))
        && names.task_of_branch(&branch) == Some(task);
    if !sound {
        return Err(format!(
            "{host}: the task's names do not lie under {root} (nothing removed)"
        ));
    }
    Ok((
        HostPlan {
            host: host.to_string(),
            work_root: root.to_string(),
            clone,
            runs,
            mirror,
            branch,
        },
        refused,
    ))
}

/// An absolute path other than `/`, without empty, `.` or `..` components.
fn is_clean_root(root: &str) -> bool {
    root.len() > 1
        && root.starts_with('/')
        && root[1..]
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// Whether `path` is `<root>/<name>` (`sub` = `None`; `name` not hidden, so never `.runs` or
/// `.mirrors`) or `<root>/<sub>/<name>`, `name` one plain component.
pub fn within(root: &str, path: &str, sub: Option<&str>) -> bool {
    let Some(rest) = path.strip_prefix(root).and_then(|r| r.strip_prefix('/')) else {
        return false;
    };
    let name = match sub {
        Some(sub) => match rest.strip_prefix(sub).and_then(|r| r.strip_prefix('/')) {
            Some(name) => name,
            None => return false,
        },
        None if rest.starts_with('.') => return false,
        None => rest,
    };
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::steps::agent_task::Run;
    use crate::steps::task::{Priority, Source, TaskSpec};
    use crate::steps::workspace::Workspace;
    use crate::workflow::Timestamp;

    const NAMES: TaskNames = TaskNames::new(None);

    fn spec() -> TaskSpec {
        TaskSpec {
            source: Source::Api,
            title: "t".into(),
            body: String::new(),
            labels: vec![],
            kind: None,
            priority: Priority::Normal,
            agent: "demo".into(),
            capabilities: vec![],
            repo: "/srv/git/widgets".into(),
            base: None,
            file_scope: vec![],
            validation: vec![],
        }
    }

    fn task_on(host: &str, root: &str, runs: usize) -> TaskState {
        let mut s = TaskState::new(spec(), Timestamp(0));
        s.workspace = Some(Workspace {
            host: host.into(),
            mirror: workspace::mirror_dir(root, "/srv/git/widgets"),
            work_dir: NAMES.clone_dir(root, 7),
            branch: NAMES.branch(7),
            base: "main".into(),
            base_sha: "abc".into(),
        });
        for n in 1..=runs {
            s.runs.push(Run::new(
                &NAMES.run_id(7, n),
                host,
                "demo",
                &NAMES.run_dir(root, 7, n),
                Timestamp(0),
            ));
        }
        s
    }

    fn roots(host: &str) -> Option<String> {
        (host == "a").then(|| "/w".to_string())
    }

    #[test]
    fn a_task_on_one_host_has_its_clone_runs_and_branch_there() {
        let p = plan(7, &task_on("a", "/w", 2), NAMES, roots);
        assert_eq!(p.missing, Vec::<String>::new());
        assert_eq!(p.refused, Vec::<String>::new());
        assert_eq!(p.hosts.len(), 1);
        let h = &p.hosts[0];
        assert_eq!(h.clone, "/w/7");
        assert_eq!(h.runs, vec!["/w/.runs/7-1", "/w/.runs/7-2"]);
        assert!(h.mirror.starts_with("/w/.mirrors/widgets-"), "{}", h.mirror);
        assert_eq!(h.branch, "task/7");
    }

    #[test]
    fn a_host_no_longer_configured_is_missing_not_refused() {
        let p = plan(7, &task_on("gone", "/w", 1), NAMES, roots);
        assert_eq!(p.missing, vec!["gone"]);
        assert!(p.hosts.is_empty() && p.refused.is_empty());
    }

    #[test]
    fn a_task_with_nothing_on_our_hosts_has_an_empty_plan() {
        let s = TaskState::new(spec(), Timestamp(0));
        assert_eq!(plan(7, &s, NAMES, roots), Plan::default());
    }

    #[test]
    fn paths_recorded_outside_the_current_work_root_are_refused_not_removed() {
        let mut s = task_on("a", "/old", 1);
        s.runs[0].run_dir = "/etc".into();
        let p = plan(7, &s, NAMES, roots);
        let h = &p.hosts[0];
        assert_eq!(h.clone, "/w/7");
        assert!(h.runs.is_empty(), "{:?}", h.runs);
        assert_eq!(p.refused.len(), 3, "{:?}", p.refused);
        assert!(p.refused.iter().any(|r| r.contains("/etc")));
    }

    #[test]
    fn a_run_id_of_another_task_is_refused() {
        let mut s = task_on("a", "/w", 1);
        s.runs[0].run_id = "../../etc".into();
        s.runs[0].run_dir = "/w/.runs/../../etc".into();
        let p = plan(7, &s, NAMES, roots);
        assert!(p.hosts[0].runs.is_empty());
        assert_eq!(p.refused.len(), 1, "{:?}", p.refused);
    }

    #[test]
    fn a_work_root_that_is_not_clean_removes_nothing() {
        for root in ["/", "", "relative/w", "/w/../etc", "/w/./x"] {
            let p = plan(7, &task_on("a", "/w", 1), NAMES, |_| Some(root.to_string()));
            assert!(p.hosts.is_empty(), "{root:?}: {:?}", p.hosts);
            assert_eq!(p.refused.len(), 1, "{root:?}");
        }
    }

    #[test]
    fn within_takes_only_one_plain_component_under_the_root() {
        assert!(within("/w", "/w/7", None));
        assert!(within("/w", "/w/.runs/7-1", Some(".runs")));
        for (path, sub) in [
            ("/w", None),
            ("/w/", None),
            ("/w/.runs", None),
            ("/w/..", None),
            ("/w/7/x", None),
            ("/wx/7", None),
            ("/w/.runs/", Some(".runs")),
            ("/w/.runs/..", Some(".runs")),
            ("/w/.runs/a/b", Some(".runs")),
            ("/w/7", Some(".runs")),
        ] {
            assert!(!within("/w", path, sub), "{path} {sub:?}");
        }
    }
}
