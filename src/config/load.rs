//! Loading and validating the config (stub; replaced by the full checker).
use super::Config;
use std::fmt;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct Diagnostic {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

#[derive(Debug, Clone)]
pub struct Diagnostics {
    pub file: String,
    pub problems: Vec<Diagnostic>,
}

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for p in &self.problems {
            match (p.line, p.column) {
                (Some(l), Some(c)) => writeln!(f, "{}:{}:{}: {}", self.file, l, c, p.message)?,
                (Some(l), None) => writeln!(f, "{}:{}: {}", self.file, l, p.message)?,
                _ => writeln!(f, "{}: {}", self.file, p.message)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

impl Config {
    pub fn load(path: &Path) -> Result<Config, Diagnostics> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Diagnostics {
            file: file.clone(),
            problems: vec![Diagnostic { line: None, column: None, message: format!("cannot read: {e}") }],
        })?;
        Config::parse(&text, &file)
    }

    pub fn parse(text: &str, file: &str) -> Result<Config, Diagnostics> {
        toml::from_str(text).map_err(|e| Diagnostics {
            file: file.into(),
            problems: vec![Diagnostic { line: None, column: None, message: e.to_string() }],
        })
    }

    pub fn summary(&self) -> String {
        format!("{} buses, {} devices", self.buses.len(), self.devices.len())
    }
}
