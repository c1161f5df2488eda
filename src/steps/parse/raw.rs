//! The raw reader: output in no known format. It finds nothing in the text; the exit code
//! decides and the output's tail becomes the summary (see [`super::parse`]).

use super::{Parsed, Verdict};

/// Raw output carries no verdict and no final message of its own.
pub(crate) fn parse(_stdout: &[u8]) -> Parsed {
    Parsed::new(Verdict::ExitCode)
}
