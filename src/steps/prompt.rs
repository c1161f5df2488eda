//! STUB (replaced by the real prompt builder).
pub struct PromptInput<'a> {
    pub task_id: u64,
    pub title: &'a str,
    pub body: &'a str,
    pub branch: &'a str,
    pub base: &'a str,
    pub file_scope: &'a [String],
    pub validation: &'a [String],
    pub labels: &'a [String],
    pub attempt: u32,
    pub previous_failure: Option<&'a str>,
    pub review_feedback: &'a [String],
}
pub fn build(input: &PromptInput<'_>) -> String {
    format!("# {}\n\n{}\n", input.title, input.body)
}
