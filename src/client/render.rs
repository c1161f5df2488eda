//! What the `task` commands print for people: the aligned [`Table`], the task list, the story of
//! one task (`task show`), event lines (`task watch`) and the time, duration and size formats
//! they share. Pure functions of the API's views (and of "now", passed in), so tests pin them.
//!
//! Text that comes from the daemon (titles, summaries, agent output) is shown with its control
//! characters blanked, so that a task cannot move the cursor or recolour the terminal.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use crate::api::views::{EventView, ReceiptView, RunView, TaskView};

/// Width the task list fits into when the terminal's is unknown.
pub const LIST_WIDTH: usize = 100;
/// Columns between two cells.
const GAP: &str = "  ";
/// The last column never shrinks below this, even when the others leave less room.
const MIN_LAST: usize = 12;

// ---------------------------------------------------------------------------------------------
// Text
// ---------------------------------------------------------------------------------------------

/// `text` on one line: newlines, tabs and other control characters become spaces.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `text` with its control characters blanked, newlines kept.
fn clean_lines(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() && c != '\n' { ' ' } else { c })
        .collect()
}

/// The first line of `text`, cleaned.
pub fn first_line(text: &str) -> String {
    one_line(text.trim().lines().next().unwrap_or(""))
}

/// `text` cut to at most `max` terminal columns, ending in `…` when it was cut. Never splits a
/// character; wide (CJK, emoji) characters count two columns, combining marks none.
pub fn truncate(text: &str, max: usize) -> String {
    if width(text) <= max {
        return text.to_string();
    }
    let mut cut = String::new();
    let mut used = 0;
    for c in text.chars() {
        let w = char_width(c);
        if used + w + 1 > max {
            break;
        }
        cut.push(c);
        used += w;
    }
    let mut cut = cut.trim_end().to_string();
    if max > 0 {
        cut.push('…');
    }
    cut
}

/// Terminal columns of `text` (see [`char_width`]).
pub fn width(text: &str) -> usize {
    text.chars().map(char_width).sum()
}

/// Terminal columns of one character, after Markus Kuhn's `wcwidth`: 0 for combining marks and
/// zero-width characters, 2 for East Asian wide and full-width characters and most emoji, 1
/// otherwise. Close enough for aligning columns without a Unicode-table dependency.
fn char_width(c: char) -> usize {
    match u32::from(c) {
        0x0300..=0x036F
        | 0x0483..=0x0489
        | 0x0591..=0x05BD
        | 0x0610..=0x061A
        | 0x064B..=0x065F
        | 0x0E31
        | 0x0E34..=0x0E3A
        | 0x1AB0..=0x1AFF
        | 0x1DC0..=0x1DFF
        | 0x200B..=0x200F
        | 0x20D0..=0x20FF
        | 0xFE00..=0xFE0F
        | 0xFE20..=0xFE2F
        | 0xFEFF => 0,
        0x1100..=0x115F
        | 0x2E80..=0x303E
        | 0x3041..=0x33FF
        | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF
        | 0xA000..=0xA4CF
        | 0xAC00..=0xD7A3
        | 0xF900..=0xFAFF
        | 0xFE30..=0xFE4F
        | 0xFF00..=0xFF60
        | 0xFFE0..=0xFFE6
        | 0x1F300..=0x1F64F
        | 0x1F900..=0x1F9FF
        | 0x20000..=0x3FFFD => 2,
        _ => 1,
    }
}

// ---------------------------------------------------------------------------------------------
// Table
// ---------------------------------------------------------------------------------------------

/// A plain-text table: a header row, columns two spaces apart, each as wide as its widest
/// cell; the last column is cut to fit the width given to [`Table::render`].
#[derive(Debug, Clone)]
pub struct Table {
    headers: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|h| h.to_string()).collect(),
            right: vec![false; headers.len()],
            rows: Vec::new(),
        }
    }

    /// Aligns column `column` (0-based) to the right, as numbers are.
    pub fn right_align(mut self, column: usize) -> Table {
        if let Some(r) = self.right.get_mut(column) {
            *r = true;
        }
        self
    }

    /// Adds a row; missing cells are empty, extra ones dropped, control characters blanked.
    pub fn row<S: AsRef<str>>(&mut self, cells: impl IntoIterator<Item = S>) {
        let mut row: Vec<String> = cells
            .into_iter()
            .take(self.headers.len())
            .map(|c| one_line(c.as_ref()))
            .collect();
        row.resize(self.headers.len(), String::new());
        self.rows.push(row);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table, one line per row (each ending in `\n`), no line wider than `max_width` unless
    /// the columns before the last already are.
    pub fn render(&self, max_width: usize) -> String {
        let columns = self.headers.len();
        if columns == 0 {
            return String::new();
        }
        let all = || std::iter::once(&self.headers).chain(&self.rows);
        let mut widths: Vec<usize> = (0..columns)
            .map(|i| all().map(|row| width(&row[i])).max().unwrap_or(0))
            .collect();
        let fixed: usize = widths[..columns - 1].iter().map(|w| w + GAP.len()).sum();
        let last = columns - 1;
        widths[last] = widths[last].min(max_width.saturating_sub(fixed).max(MIN_LAST));

        let mut out = String::new();
        for row in all() {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str(GAP);
                }
                let cell = truncate(cell, widths[i]);
                let pad = widths[i] - width(&cell);
                if self.right[i] {
                    line.extend(std::iter::repeat_n(' ', pad));
                    line.push_str(&cell);
                } else {
                    line.push_str(&cell);
                    if i < last {
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// Each line of `text` indented by `by` spaces.
fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines().map(|l| format!("{pad}{l}\n")).collect()
}

// ---------------------------------------------------------------------------------------------
// Times, durations, sizes
// ---------------------------------------------------------------------------------------------

/// An RFC 3339 time (`Z` or a numeric offset; fractional seconds allowed).
pub fn parse_time(text: &str) -> Option<SystemTime> {
    let text = text.trim();
    if !text.is_ascii() {
        return None;
    }
    let n = text.len();
    let b = text.as_bytes();
    let (local, offset_secs): (&str, i64) = if text.ends_with(['Z', 'z']) {
        (&text[..n - 1], 0)
    } else if n >= 25 && matches!(b[n - 6], b'+' | b'-') && b[n - 3] == b':' {
        let hours: i64 = text[n - 5..n - 3].parse().ok()?;
        let minutes: i64 = text[n - 2..].parse().ok()?;
        let sign = if b[n - 6] == b'-' { -1 } else { 1 };
        (&text[..n - 6], sign * (hours * 3600 + minutes * 60))
    } else {
        (text, 0)
    };
    let local = humantime::parse_rfc3339_weak(local).ok()?;
    let shift = Duration::from_secs(offset_secs.unsigned_abs());
    // 12:00+02:00 is 10:00 UTC.
    if offset_secs >= 0 {
        local.checked_sub(shift)
    } else {
        local.checked_add(shift)
    }
}

/// `2026-11-21 21:31:04Z` (UTC, whole seconds); the text itself when it is not a time.
pub fn fmt_time(text: &str) -> String {
    match parse_time(text) {
        Some(t) => humantime::format_rfc3339_seconds(t)
            .to_string()
            .replacen('T', " ", 1),
        None => one_line(text),
    }
}

/// `21:31:04` (UTC): the time of day of an event.
pub fn fmt_clock(text: &str) -> String {
    match parse_time(text) {
        Some(t) => humantime::format_rfc3339_seconds(t).to_string()[11..19].to_string(),
        None => one_line(text),
    }
}

/// `45s`, `3m05s`, `1h02m`, `2d03h`: two units at most.
pub fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

/// How long before `now` the time `text` was: `12s ago`, `3m ago`, `5h ago`, `2d ago`.
pub fn fmt_age(text: &str, now: SystemTime) -> String {
    let Some(t) = parse_time(text) else {
        return one_line(text);
    };
    let s = now.duration_since(t).unwrap_or_default().as_secs();
    match s {
        0 => "now".into(),
        1..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..172_800 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// From `start` to `end` (or to `now` while there is no end).
fn span(start: &str, end: Option<&str>, now: SystemTime) -> Option<Duration> {
    let start = parse_time(start)?;
    let end = match end {
        Some(end) => parse_time(end)?,
        None => now,
    };
    end.duration_since(start).ok()
}

/// `950`, `12.3k`, `4.5M`.
pub fn fmt_count(n: u64) -> String {
    match n {
        0..1000 => n.to_string(),
        1000..1_000_000 => format!("{:.1}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

/// `$0.42`; four decimals under a cent.
pub fn fmt_cost(usd: f64) -> String {
    if usd != 0.0 && usd.abs() < 0.01 {
        format!("${usd:.4}")
    } else {
        format!("${usd:.2}")
    }
}

fn short_sha(sha: &str) -> &str {
    sha.get(..7).unwrap_or(sha)
}

// ---------------------------------------------------------------------------------------------
// Tasks
// ---------------------------------------------------------------------------------------------

/// `task list`: ID, STATUS, MODE, HOST, AGENT, ATTEMPT, UPDATED, TITLE.
pub fn task_table(tasks: &[TaskView], now: SystemTime, max_width: usize) -> String {
    let mut table = Table::new(&[
        "ID", "STATUS", "MODE", "HOST", "AGENT", "ATTEMPT", "UPDATED", "TITLE",
    ])
    .right_align(5);
    for t in tasks {
        table.row([
            t.id.clone(),
            t.status.clone(),
            t.execution_mode.clone(),
            t.assigned_host.clone().unwrap_or_else(|| "-".into()),
            t.assigned_agent.clone().unwrap_or_else(|| t.agent.clone()),
            t.attempt.to_string(),
            fmt_age(&t.updated_at, now),
            t.title.clone(),
        ]);
    }
    table.render(max_width)
}

/// `seq  time  kind  text`: one event on one line.
pub fn event_line(event: &EventView) -> String {
    format!(
        "{:>4}  {}  {:<8}  {}",
        event.seq,
        fmt_clock(&event.at),
        one_line(&event.kind),
        one_line(event.text.trim_end())
    )
}

/// The line `task watch` ends with: `task 7 completed`, `task 7 failed: why`.
pub fn status_line(task: &TaskView) -> String {
    match &task.failure {
        Some(why) if task.status != "completed" => {
            format!("task {} {}: {}", task.id, task.status, one_line(why))
        }
        _ => format!("task {} {}", task.id, task.status),
    }
}

/// `task show`: header, runs, receipt, events.
pub fn task_story(task: &TaskView, now: SystemTime) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "task {}  {}", task.id, one_line(&task.title));
    let mut field = |label: &str, value: String| {
        let _ = writeln!(out, "  {label:<9} {value}");
    };
    field(
        "status",
        format!(
            "{} (attempt {}, priority {})",
            task.status, task.attempt, task.priority
        ),
    );
    if let Some(why) = &task.failure {
        field("failure", one_line(why));
    }
    let paused = task
        .runs
        .last()
        .and_then(|r| Some((r, r.paused_until.as_ref()?)));
    if let Some((run, until)) = paused
        && !matches!(task.status.as_str(), "completed" | "failed" | "cancelled")
    {
        field(
            "paused",
            format!(
                "agent kind {} on {} until {} (usage limit)",
                run.agent,
                run.host,
                fmt_time(until)
            ),
        );
    }
    field("mode", task.execution_mode.clone());
    field(
        "host",
        task.assigned_host.clone().unwrap_or_else(|| "-".into()),
    );
    field(
        "agent",
        match &task.assigned_agent {
            Some(a) if *a != task.agent => format!("{a} (kind {})", task.agent),
            Some(a) => a.clone(),
            None => task.agent.clone(),
        },
    );
    field("branch", task.branch_name.clone());
    field("repo", one_line(&task.repo));
    if let Some(kind) = &task.kind {
        field("type", one_line(kind));
    }
    if !task.labels.is_empty() {
        field("labels", one_line(&task.labels.join(", ")));
    }
    if let Some(pr) = task.pr_number {
        let title = task.pr_title.as_deref().map(one_line).unwrap_or_default();
        field("pr", format!("#{pr} {title}").trim_end().to_string());
    }
    field("source", one_line(&task.source));
    field("created", fmt_time(&task.created_at));
    field("updated", fmt_time(&task.updated_at));
    if let Some(at) = &task.last_activity_at {
        field("activity", fmt_time(at));
    }

    out.push('\n');
    if task.runs.is_empty() {
        out.push_str("runs: none\n");
    } else {
        let _ = writeln!(out, "runs ({})", task.runs.len());
        out.push_str(&indent(&runs_table(&task.runs, now), 2));
    }

    out.push('\n');
    match &task.receipt {
        None => out.push_str("receipt: none\n"),
        Some(receipt) => out.push_str(&receipt_text(receipt)),
    }

    if let Some(events) = &task.events {
        out.push('\n');
        if events.is_empty() {
            out.push_str("events: none\n");
        } else {
            let _ = writeln!(out, "events ({})", events.len());
            for e in events {
                let _ = writeln!(out, "{}", event_line(e));
            }
        }
    }
    out
}

fn runs_table(runs: &[RunView], now: SystemTime) -> String {
    let mut table = Table::new(&[
        "RUN", "HOST", "OUTCOME", "EXIT", "TIME", "TOKENS", "COST", "SUMMARY",
    ])
    .right_align(3)
    .right_align(4)
    .right_align(6);
    let dash = || "-".to_string();
    for r in runs {
        let tokens = match (r.input_tokens, r.output_tokens) {
            (None, None) => dash(),
            (i, o) => format!(
                "{}/{}",
                i.map_or_else(dash, fmt_count),
                o.map_or_else(dash, fmt_count)
            ),
        };
        table.row([
            r.run_id.clone(),
            r.host.clone(),
            match &r.failure_kind {
                Some(kind) if r.outcome != "succeeded" => format!("{} ({kind})", r.outcome),
                _ => r.outcome.clone(),
            },
            r.exit_code.map_or_else(dash, |c| c.to_string()),
            span(&r.started_at, r.ended_at.as_deref(), now).map_or_else(dash, fmt_duration),
            tokens,
            r.cost_usd.map_or_else(dash, fmt_cost),
            r.summary.as_deref().map(first_line).unwrap_or_default(),
        ]);
    }
    table.render(LIST_WIDTH - 2)
}

fn receipt_text(r: &ReceiptView) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "receipt  {} from {} ({}..{}), verified {}",
        one_line(&r.branch),
        one_line(&r.base),
        short_sha(&r.base_sha),
        short_sha(&r.head_sha),
        fmt_time(&r.verified_at)
    );
    if let Some(cost) = r.cost_usd {
        let _ = writeln!(out, "  cost {}", fmt_cost(cost));
    }
    let _ = writeln!(out, "  commits ({})", r.commits.len());
    for c in &r.commits {
        let _ = writeln!(out, "    {} {}", short_sha(&c.sha), one_line(&c.subject));
    }
    let _ = writeln!(out, "  files changed ({})", r.files_changed.len());
    for f in &r.files_changed {
        let _ = writeln!(out, "    {}", one_line(f));
    }
    let summary = clean_lines(r.summary.trim());
    if !summary.is_empty() {
        out.push_str("  summary\n");
        out.push_str(&indent(&summary, 4));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::views::CommitView;

    fn at(text: &str) -> SystemTime {
        parse_time(text).unwrap()
    }

    fn task(id: &str, title: &str) -> TaskView {
        TaskView {
            id: id.into(),
            title: title.into(),
            body: String::new(),
            status: "running".into(),
            execution_mode: "ssh_cli".into(),
            priority: "normal".into(),
            kind: None,
            labels: vec![],
            agent: "claude".into(),
            capabilities: vec![],
            repo: "/srv/repo".into(),
            source: "api".into(),
            assigned_host: Some("h1".into()),
            assigned_agent: None,
            branch_name: format!("fleet/task-{id}"),
            pr_number: None,
            pr_title: None,
            pr_url: None,
            pr_merged: false,
            attempt: 1,
            claim_epoch: 0,
            review_count: 0,
            created_at: "2026-11-21T10:00:00Z".into(),
            updated_at: "2026-11-21T10:05:00Z".into(),
            last_activity_at: None,
            failure: None,
            runs: vec![],
            receipt: None,
            events: None,
        }
    }

    #[test]
    fn columns_are_as_wide_as_their_widest_cell_and_numbers_align_right() {
        let mut table = Table::new(&["ID", "N", "NAME"]).right_align(1);
        table.row(["1", "7", "short"]);
        table.row(["1234", "12", "a longer name"]);
        assert_eq!(
            table.render(80),
            "ID     N  NAME\n\
             1      7  short\n\
             1234  12  a longer name\n"
        );
    }

    #[test]
    fn the_last_column_is_cut_to_fit_the_width_without_splitting_a_character() {
        let mut table = Table::new(&["ID", "TITLE"]);
        table.row(["1", "Fix the naïve café parser"]);
        table.row(["2", "日本語のタイトルはとても長いです"]);
        let out = table.render(20);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[1], "1   Fix the naïve c…");
        // Wide characters take two columns each: 7 of them and the ellipsis fill 15.
        assert_eq!(lines[2], "2   日本語のタイト…");
        assert!(lines.iter().all(|l| width(l) <= 20));
    }

    #[test]
    fn wide_characters_are_padded_by_their_display_width() {
        let mut table = Table::new(&["NAME", "X"]);
        table.row(["日本", "1"]);
        table.row(["ab", "2"]);
        assert_eq!(table.render(80), "NAME  X\n日本  1\nab    2\n");
    }

    #[test]
    fn the_last_column_keeps_a_minimum_width_when_the_others_fill_the_line() {
        let mut table = Table::new(&["A", "TITLE"]);
        table.row(["x".repeat(30).as_str(), "a title of twenty chars"]);
        let line = table.render(20).lines().nth(1).unwrap().to_string();
        assert!(line.ends_with("a title of…"), "{line}");
    }

    #[test]
    fn cells_lose_their_control_characters_and_lines_their_trailing_spaces() {
        let mut table = Table::new(&["A", "B"]);
        table.row(["x\ty", ""]);
        table.row(["\u{1b}[31mred", "two\nlines"]);
        assert_eq!(table.render(80), "A         B\nx y\n [31mred  two lines\n");
    }

    #[test]
    fn the_task_list_fits_in_100_columns() {
        let long = "Refactor the dispatcher so that hosts with more free slots are preferred \
                    over hosts that merely answered first";
        let tasks = [task("17", long), task("18", "Short")];
        let now = at("2026-11-21T12:05:00Z");
        let out = task_table(&tasks, now, LIST_WIDTH);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "ID  STATUS   MODE     HOST  AGENT   ATTEMPT  UPDATED  TITLE"
        );
        assert!(
            lines[1].starts_with("17  running  ssh_cli  h1    claude        1  2h ago   Refactor")
        );
        assert!(lines[1].ends_with('…'));
        assert_eq!(lines[1].chars().count(), LIST_WIDTH);
        assert!(lines[2].ends_with("Short"));
    }

    #[test]
    fn times_parse_with_z_offsets_and_fractions() {
        let z = at("2026-11-21T21:31:04Z");
        assert_eq!(
            at("2026-11-21T21:31:04.250Z"),
            z + Duration::from_millis(250)
        );
        assert_eq!(at("2026-11-21T23:31:04+02:00"), z);
        assert_eq!(at("2026-11-21T16:01:04-05:30"), z);
        assert_eq!(parse_time("yesterday"), None);
        assert_eq!(parse_time("2026-11-21T21:31:04Zé"), None);
    }

    #[test]
    fn times_show_in_utc_to_the_second_and_non_times_as_they_are() {
        assert_eq!(
            fmt_time("2026-11-21T23:31:04.987+02:00"),
            "2026-11-21 21:31:04Z"
        );
        assert_eq!(fmt_clock("2026-11-21T21:31:04.5Z"), "21:31:04");
        assert_eq!(fmt_time("soon"), "soon");
    }

    #[test]
    fn ages_and_durations_use_at_most_two_units() {
        let now = at("2026-11-21T12:00:00Z");
        assert_eq!(fmt_age("2026-11-21T12:00:00Z", now), "now");
        assert_eq!(fmt_age("2026-11-21T12:00:01Z", now), "now"); // clock skew
        assert_eq!(fmt_age("2026-11-21T11:59:48Z", now), "12s ago");
        assert_eq!(fmt_age("2026-11-21T11:57:00Z", now), "3m ago");
        assert_eq!(fmt_age("2026-11-20T11:00:00Z", now), "25h ago");
        assert_eq!(fmt_age("2026-11-18T12:00:00Z", now), "3d ago");
        assert_eq!(fmt_duration(Duration::from_secs(45)), "45s");
        assert_eq!(fmt_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(fmt_duration(Duration::from_secs(3720)), "1h02m");
        assert_eq!(
            fmt_duration(Duration::from_secs(2 * 86400 + 3 * 3600)),
            "2d03h"
        );
    }

    #[test]
    fn counts_and_costs_are_short() {
        assert_eq!(fmt_count(950), "950");
        assert_eq!(fmt_count(12_345), "12.3k");
        assert_eq!(fmt_count(4_500_000), "4.5M");
        assert_eq!(fmt_cost(0.4217), "$0.42");
        assert_eq!(fmt_cost(0.0031), "$0.0031");
        assert_eq!(fmt_cost(0.0), "$0.00");
    }

    #[test]
    fn an_event_is_one_line_of_seq_time_kind_and_text() {
        let event = EventView {
            seq: 12,
            at: "2026-11-21T21:31:04Z".into(),
            kind: "step".into(),
            text: "launched\nclaude on h1\n".into(),
        };
        assert_eq!(
            event_line(&event),
            "  12  21:31:04  step      launched claude on h1"
        );
    }

    #[test]
    fn the_status_line_gives_the_reason_of_a_failure() {
        let mut t = task("7", "x");
        t.status = "completed".into();
        assert_eq!(status_line(&t), "task 7 completed");
        t.status = "failed".into();
        t.failure = Some("validation failed:\ncargo test".into());
        assert_eq!(
            status_line(&t),
            "task 7 failed: validation failed: cargo test"
        );
    }

    #[test]
    fn the_story_of_a_task_has_its_header_runs_receipt_and_events() {
        let mut t = task("7", "Fix the login bug");
        t.assigned_agent = Some("claude-2".into());
        t.runs = vec![RunView {
            run_id: "r-1".into(),
            host: "h1".into(),
            agent: "claude".into(),
            attempt: 1,
            run_dir: "/tmp/r-1".into(),
            started_at: "2026-11-21T10:00:00Z".into(),
            ended_at: Some("2026-11-21T10:03:05Z".into()),
            exit_code: Some(0),
            outcome: "succeeded".into(),
            summary: Some("Fixed it.\nDetails follow.".into()),
            session_id: None,
            turns: Some(4),
            input_tokens: Some(12_345),
            output_tokens: Some(678),
            cost_usd: Some(0.42),
            files_changed: vec![],
            notes: vec![],
            failure_kind: None,
            paused_until: None,
        }];
        t.receipt = Some(ReceiptView {
            branch: "fleet/task-7".into(),
            base: "main".into(),
            base_sha: "0123456789abcdef".into(),
            head_sha: "fedcba9876543210".into(),
            commits: vec![CommitView {
                sha: "fedcba9876543210".into(),
                subject: "Fix the login bug".into(),
            }],
            files_changed: vec!["src/login.rs".into()],
            summary: "Fixed the bug.\nAdded a test.".into(),
            cost_usd: None,
            verified_at: "2026-11-21T10:04:00Z".into(),
        });
        t.events = Some(vec![EventView {
            seq: 1,
            at: "2026-11-21T10:00:00Z".into(),
            kind: "started".into(),
            text: "task created".into(),
        }]);
        let story = task_story(&t, at("2026-11-21T12:00:00Z"));
        for expected in [
            "task 7  Fix the login bug\n",
            "  status    running (attempt 1, priority normal)\n",
            "  agent     claude-2 (kind claude)\n",
            "  created   2026-11-21 10:00:00Z\n",
            "runs (1)\n  RUN  HOST  OUTCOME    EXIT   TIME  TOKENS      COST  SUMMARY\n",
            "  r-1  h1    succeeded     0  3m05s  12.3k/678  $0.42  Fixed it.\n",
            "receipt  fleet/task-7 from main (0123456..fedcba9), verified 2026-11-21 10:04:00Z\n",
            "    fedcba9 Fix the login bug\n",
            "  files changed (1)\n    src/login.rs\n",
            "  summary\n    Fixed the bug.\n    Added a test.\n",
            "events (1)\n   1  10:00:00  started   task created\n",
        ] {
            assert!(
                story.contains(expected),
                "missing {expected:?} in:\n{story}"
            );
        }
    }
}
