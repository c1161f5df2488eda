//! Text helpers shared by the output parsers: cutting on char boundaries, the raw tail of an
//! output, the pull-request URL of a final message, usage-limit phrases and the one useful line
//! of a CLI's stderr. None of them can panic, whatever the bytes.

/// The ellipsis appended (or prepended) where text was cut.
pub(crate) const ELLIPSIS: &str = "…";

/// `s` cut to at most `max_bytes` bytes on a char boundary, ending in "…" when it was cut.
pub(crate) fn truncate_head(s: &str, max_bytes: usize) -> String {
    if s.len() <= max_bytes {
        return s.to_owned();
    }
    let budget = max_bytes.saturating_sub(ELLIPSIS.len());
    let mut end = budget.min(s.len());
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(end + ELLIPSIS.len());
    out.push_str(&s[..end]);
    out.push_str(ELLIPSIS);
    out
}

/// The end of `bytes` as text: at most `max_bytes` bytes, lossy UTF-8, trimmed, with a leading
/// "…" when something was cut off.
pub(crate) fn tail_text(bytes: &[u8], max_bytes: usize) -> String {
    let trimmed = trim_ascii_end(bytes);
    // Read a little more than needed: invalid bytes become U+FFFD (3 bytes), so the exact cut
    // is made on the text below.
    let start = trimmed.len().saturating_sub(max_bytes.saturating_add(4));
    let mut slice = &trimmed[start..];
    if start > 0 {
        // The cut may fall inside a multi-byte character: skip its continuation bytes.
        let skip = slice
            .iter()
            .take(3)
            .take_while(|b| (**b & 0xC0) == 0x80)
            .count();
        slice = &slice[skip..];
    }
    let text = String::from_utf8_lossy(slice);
    let text = text.trim();
    if start == 0 && text.len() <= max_bytes {
        return text.to_owned();
    }
    let budget = max_bytes.saturating_sub(ELLIPSIS.len());
    let mut from = text.len().saturating_sub(budget);
    while from < text.len() && !text.is_char_boundary(from) {
        from += 1;
    }
    format!("{ELLIPSIS}{}", text[from..].trim_start())
}

fn trim_ascii_end(bytes: &[u8]) -> &[u8] {
    let mut end = bytes.len();
    while end > 0 && bytes[end - 1].is_ascii_whitespace() {
        end -= 1;
    }
    &bytes[..end]
}

/// One line of text for a failure reason or a note: whitespace runs collapsed, at most
/// `max_bytes` bytes.
pub(crate) fn one_line(s: &str, max_bytes: usize) -> String {
    let mut out = String::new();
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
        if out.len() > max_bytes {
            break;
        }
    }
    truncate_head(&out, max_bytes)
}

/// The last `http(s)://…/pull/N` or `…/pulls/N` URL in `text` (GitHub and Forgejo spellings),
/// ending right after the number.
pub(crate) fn find_pr_url(text: &str) -> Option<String> {
    let mut found = None;
    let mut rest = text;
    while let Some(pos) = rest.find("http") {
        let candidate = &rest[pos..];
        let end = candidate
            .find(|c: char| c.is_whitespace() || "<>()[]{}\"'`|,;".contains(c))
            .unwrap_or(candidate.len());
        let url = &candidate[..end];
        if let Some(pr) = pr_url_prefix(url) {
            found = Some(pr.to_owned());
        }
        rest = &candidate[4.min(candidate.len())..];
    }
    found
}

/// `url` up to and including the number after its first `/pull/` or `/pulls/` segment.
fn pr_url_prefix(url: &str) -> Option<&str> {
    let after_scheme = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let host_end = after_scheme.find('/')?;
    if host_end == 0 {
        return None;
    }
    let scheme_len = url.len() - after_scheme.len();
    let path = &after_scheme[host_end..];
    for marker in ["/pulls/", "/pull/"] {
        let mut search_from = 0;
        while let Some(rel) = path[search_from..].find(marker) {
            let num_start = search_from + rel + marker.len();
            let digits = path[num_start..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            if digits > 0 {
                let end = scheme_len + host_end + num_start + digits;
                return url.get(..end);
            }
            search_from = num_start;
        }
    }
    None
}

/// Whether an error text says the agent hit a usage or rate limit.
pub(crate) fn mentions_usage_limit(text: &str) -> bool {
    const PHRASES: [&str; 4] = [
        "usage limit",
        "rate limit",
        "rate_limit",
        "429 too many requests",
    ];
    let lower = text.to_lowercase();
    PHRASES.iter().any(|p| lower.contains(p)) || hit_your_limit(&lower)
}

/// Claude Code's wording, `You've hit your limit · resets 1pm (Europe/Lisbon)` and (2.1)
/// `You've hit your session limit`, `… weekly limit`, `… Opus limit`, `… Sonnet limit`: `hit
/// your` and `limit` at most two words apart, in a lowercased text.
fn hit_your_limit(lower: &str) -> bool {
    lower.match_indices("hit your ").any(|(i, marker)| {
        lower[i + marker.len()..]
            .split_whitespace()
            .take(2)
            .any(|word| word.starts_with("limit"))
    })
}

/// The most useful line of a CLI's stderr for a failure reason: the first line mentioning an
/// error, else the last line, skipping known noise (warnings, "Reading additional input from
/// stdin...").
pub(crate) fn stderr_hint(stderr: &[u8]) -> Option<String> {
    let text = tail_text(stderr, 16 * 1024);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != ELLIPSIS)
        .filter(|l| {
            let lower = l.to_lowercase();
            !lower.starts_with("warning")
                && !lower.starts_with("reading additional input from stdin")
        })
        .collect();
    let line = lines
        .iter()
        .find(|l| l.to_lowercase().contains("error"))
        .or_else(|| lines.last())?;
    Some(one_line(line, 200))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_head_cuts_on_a_char_boundary() {
        let s = "é".repeat(10); // 20 bytes
        let out = truncate_head(&s, 10);
        assert!(out.len() <= 10);
        assert!(out.ends_with(ELLIPSIS));
        assert_eq!(truncate_head("short", 10), "short");
        assert_eq!(truncate_head("abcdef", 0), ELLIPSIS);
    }

    #[test]
    fn tail_text_is_lossy_trimmed_and_bounded() {
        assert_eq!(tail_text(b"  hello \n\n", 100), "hello");
        let mut bytes = vec![0xff; 10_000];
        bytes.extend_from_slice("end é".as_bytes());
        let out = tail_text(&bytes, 4096);
        assert!(out.len() <= 4096, "{}", out.len());
        assert!(out.starts_with(ELLIPSIS));
        assert!(out.ends_with("end é"));
        // The cut falls inside a multi-byte character.
        let s = "ab".to_owned() + "é".repeat(3000).as_str();
        let out = tail_text(s.as_bytes(), 4096);
        assert!(out.len() <= 4096);
        assert!(
            !out.contains('\u{fffd}'),
            "no replacement char from the cut"
        );
        assert_eq!(tail_text(b"", 10), "");
    }

    #[test]
    fn pr_urls_are_found_in_both_spellings() {
        assert_eq!(
            find_pr_url("Opened https://forge.example/acme/widgets/pulls/12 for review.")
                .as_deref(),
            Some("https://forge.example/acme/widgets/pulls/12")
        );
        assert_eq!(
            find_pr_url("see [PR](https://github.com/a/b/pull/7/files)").as_deref(),
            Some("https://github.com/a/b/pull/7")
        );
        assert_eq!(
            find_pr_url("first http://x/a/pulls/1 then https://y/b/pull/2.").as_deref(),
            Some("https://y/b/pull/2")
        );
        assert_eq!(
            find_pr_url("https://x/a/pulls/ and https:// and http"),
            None
        );
        assert_eq!(find_pr_url("https:///pulls/3"), None);
        assert_eq!(find_pr_url("no url, pulls/3"), None);
    }

    #[test]
    fn usage_limit_phrases_are_case_insensitive() {
        assert!(mentions_usage_limit(
            "Claude AI usage limit reached|1753441200"
        ));
        assert!(mentions_usage_limit(
            "exceeded retry limit, last status: 429 Too Many Requests"
        ));
        assert!(mentions_usage_limit("error: RATE_LIMIT_error"));
        assert!(mentions_usage_limit(
            "You've hit your limit · resets 1pm (Europe/Lisbon)"
        ));
        assert!(mentions_usage_limit(
            "You've hit your session limit · resets 10:11pm (UTC)"
        ));
        assert!(mentions_usage_limit(
            "You've hit your weekly limit · resets Dec 4, 9:11pm (UTC)"
        ));
        assert!(!mentions_usage_limit("you hit your head on the limit"));
        assert!(!mentions_usage_limit(
            "API Error: 500 Fake internal server error"
        ));
    }

    #[test]
    fn stderr_hint_skips_noise() {
        let stderr =
            b"WARNING: proceeding, even though...\nError loading config.toml: bad\nHow to fix: x\n";
        assert_eq!(
            stderr_hint(stderr).as_deref(),
            Some("Error loading config.toml: bad")
        );
        assert_eq!(
            stderr_hint(b"--dangerously-skip-permissions cannot be used with root\n").as_deref(),
            Some("--dangerously-skip-permissions cannot be used with root")
        );
        assert_eq!(
            stderr_hint(b"Reading additional input from stdin...\n"),
            None
        );
        assert_eq!(stderr_hint(b""), None);
    }
}
