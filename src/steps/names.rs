//! The names a task goes by outside the store, and the one place each is made: its branch, its
//! clone on a host and its run directories.
//!
//! Task ids restart at 1 in every store, so a store with an id ([`StoreId`]) puts it in each
//! name: branch `task/<id>-<store>`, clone `<work_root>/<id>-<store>`, runs
//! `<work_root>/.runs/<id>-<store>-<n>`. Two daemons (or a fresh store) on the same hosts and
//! repository then never take each other's runs, clones, branches or pull requests. A store
//! older than store ids keeps the names it always had (`task/<id>`, `<work_root>/<id>`,
//! `.runs/<id>-<n>`), for its old tasks and its new ones alike.
//!
//! `task/<id>-<store>` is one path component under `task/`, so no name of one form is a
//! directory of another's in git's ref store, and Forgejo matches it as a head like any branch.

use crate::workflow::{Engine, StoreId};

/// How this daemon's store names its tasks (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskNames {
    store: Option<StoreId>,
}

impl TaskNames {
    pub const fn new(store: Option<StoreId>) -> Self {
        TaskNames { store }
    }

    /// The names of the tasks of `engine`'s store.
    pub fn of(engine: &Engine) -> Self {
        TaskNames::new(engine.store_id())
    }

    /// `<id>` or `<id>-<store>`: what every name below is made of.
    fn stem(&self, task: u64) -> String {
        match self.store {
            Some(store) => format!("{task}-{store}"),
            None => task.to_string(),
        }
    }

    /// The branch the task's work lives on.
    pub fn branch(&self, task: u64) -> String {
        format!("task/{}", self.stem(task))
    }

    /// The task's own clone under a host's work root.
    pub fn clone_dir(&self, work_root: &str, task: u64) -> String {
        format!("{work_root}/{}", self.stem(task))
    }

    /// The id of the task's `n`th run (from 1).
    pub fn run_id(&self, task: u64, n: usize) -> String {
        format!("{}-{n}", self.stem(task))
    }

    /// The directory of the task's `n`th run under a host's work root.
    pub fn run_dir(&self, work_root: &str, task: u64, n: usize) -> String {
        format!("{work_root}/.runs/{}", self.run_id(task, n))
    }

    /// Whether `run_id` is one of task `task`'s run ids (`<id>[-<store>]-<n>`, see
    /// [`Self::run_id`]).
    pub fn is_run_of(&self, task: u64, run_id: &str) -> bool {
        run_id
            .strip_prefix(self.stem(task).as_str())
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }

    /// The task whose branch `branch` is, when it is one of this store's: another store's
    /// branch (or the other form) is no task of ours.
    pub fn task_of_branch(&self, branch: &str) -> Option<u64> {
        let stem = branch.strip_prefix("task/")?;
        let id = match self.store {
            Some(store) => stem
                .strip_suffix(store.to_string().as_str())?
                .strip_suffix('-')?,
            None => stem,
        };
        // Digits only: `parse` would take a leading `+`.
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let task = id.parse().ok()?;
        (self.branch(task) == branch).then_some(task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> StoreId {
        // Any id will do: the names only show it.
        crate::workflow::StoreId::random()
    }

    #[test]
    fn a_store_without_an_id_keeps_the_old_names() {
        let n = TaskNames::new(None);
        assert_eq!(n.branch(7), "task/7");
        assert_eq!(n.clone_dir("/w", 7), "/w/7");
        assert_eq!(n.run_id(7, 2), "7-2");
        assert_eq!(n.run_dir("/w", 7, 2), "/w/.runs/7-2");
        assert_eq!(n.task_of_branch("task/7"), Some(7));
        assert!(n.is_run_of(7, "7-2"));
        assert!(!n.is_run_of(7, "77-2") && !n.is_run_of(7, "7-") && !n.is_run_of(7, "7-2/x"));
    }

    #[test]
    fn a_store_with_an_id_puts_it_in_every_name() {
        let s = store();
        let n = TaskNames::new(Some(s));
        assert_eq!(n.branch(7), format!("task/7-{s}"));
        assert_eq!(n.clone_dir("/w", 7), format!("/w/7-{s}"));
        assert_eq!(n.run_id(7, 2), format!("7-{s}-2"));
        assert_eq!(n.run_dir("/w", 7, 2), format!("/w/.runs/7-{s}-2"));
        assert_eq!(n.task_of_branch(&format!("task/7-{s}")), Some(7));
        assert!(n.is_run_of(7, &format!("7-{s}-2")));
        assert!(!n.is_run_of(7, "7-2"), "the old form is another store's");
    }

    #[test]
    fn a_branch_of_another_store_or_form_is_no_task_of_ours() {
        let s = store();
        let other = loop {
            let o = store();
            if o != s {
                break o;
            }
        };
        let ours = TaskNames::new(Some(s));
        let old = TaskNames::new(None);
        assert_eq!(ours.task_of_branch("task/7"), None);
        assert_eq!(ours.task_of_branch(&format!("task/7-{other}")), None);
        assert_eq!(old.task_of_branch(&format!("task/7-{s}")), None);
        for bad in [
            "task/", "task/+7", "task/07x", "main", "task/7/x", "task/-1",
        ] {
            assert_eq!(old.task_of_branch(bad), None, "{bad}");
        }
        assert_eq!(ours.task_of_branch(&format!("task/+7-{s}")), None);
        assert_eq!(ours.task_of_branch(&format!("task/-{s}")), None);
    }
}
