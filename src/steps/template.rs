//! STUB (replaced by the real template renderer).
#[derive(Debug, Default)]
pub struct Vars(Vec<(String, String)>);
impl Vars {
    pub fn new() -> Self {
        Vars(Vec::new())
    }
    pub fn set(mut self, k: &str, v: impl Into<String>) -> Self {
        self.0.push((k.to_string(), v.into()));
        self
    }
}
#[derive(Debug, thiserror::Error)]
#[error("template error")]
pub struct TemplateError;
pub fn render(template: &str, vars: &Vars) -> Result<String, TemplateError> {
    let mut s = template.to_string();
    for (k, v) in &vars.0 {
        s = s.replace(
            &format!("{{{k}}}"),
            &shlex::try_quote(v).map_err(|_| TemplateError)?,
        );
    }
    Ok(s)
}
