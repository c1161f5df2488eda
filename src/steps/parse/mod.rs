//! STUB (replaced by the real parsers).
use crate::config::OutputFormat;
use serde::{Deserialize, Serialize};

pub struct RunOutput<'a> {
    pub stdout: &'a [u8],
    pub stderr: &'a [u8],
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    pub success: bool,
    pub failure: Option<String>,
    pub summary: String,
    pub session_id: Option<String>,
    pub turns: Option<u32>,
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cache_read_tokens: Option<u64>,
    pub cache_write_tokens: Option<u64>,
    pub cost_usd: Option<f64>,
    pub files_changed: Vec<String>,
    pub pr_url: Option<String>,
    pub usage_limited: bool,
    pub notes: Vec<String>,
}

pub fn parse(_format: OutputFormat, out: &RunOutput<'_>) -> RunReport {
    RunReport {
        success: out.exit_code == Some(0),
        failure: None,
        summary: String::from_utf8_lossy(out.stdout).into_owned(),
        session_id: None,
        turns: None,
        input_tokens: None,
        output_tokens: None,
        cache_read_tokens: None,
        cache_write_tokens: None,
        cost_usd: None,
        files_changed: vec![],
        pr_url: None,
        usage_limited: false,
        notes: vec![],
    }
}
