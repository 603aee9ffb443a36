//! Configuration errors that name the file, the line and the field.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// One problem found in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line, 0 when the problem has no single place (e.g. the file cannot be read).
    pub line: usize,
    pub column: usize,
    /// Dotted path of the offending field, e.g. `services.cas-rpc.pool`.
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}:{}", self.line, self.column)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in one file; validation reports them all at once.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Turns byte offsets of the source text into line and column numbers.
pub struct Locator<'a> {
    file: &'a Path,
    src: &'a str,
}

impl<'a> Locator<'a> {
    pub fn new(file: &'a Path, src: &'a str) -> Self {
        Self { file, src }
    }

    pub fn line_col(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.src.len());
        let before = &self.src[..offset];
        let line = before.matches('\n').count() + 1;
        let col = offset - before.rfind('\n').map(|p| p + 1).unwrap_or(0) + 1;
        (line, col)
    }

    pub fn error(
        &self,
        span: Option<Range<usize>>,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (line, column) = span.map(|s| self.line_col(s.start)).unwrap_or((0, 0));
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            field: field.into(),
            message: message.into(),
        }
    }

    /// Converts a TOML syntax or shape error (unknown field, wrong type, bad enum value).
    pub fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let span = err.span();
        let field = span
            .clone()
            .and_then(|s| self.src.get(s))
            .map(|t| t.trim().trim_matches('"').to_string())
            .filter(|t| !t.is_empty() && t.len() < 64 && !t.contains('\n'))
            .unwrap_or_default();
        self.error(span, field, err.message().trim().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_columns_are_one_based() {
        let src = "a = 1\nbb = 2\n";
        let l = Locator::new(Path::new("x.toml"), src);
        assert_eq!(l.line_col(0), (1, 1));
        assert_eq!(l.line_col(6), (2, 1));
        assert_eq!(l.line_col(8), (2, 3));
    }

    #[test]
    fn display_names_file_line_and_field() {
        let l = Locator::new(Path::new("/etc/portier/portier.toml"), "x\ny = 1");
        let e = l.error(Some(2..3), "services.a.pool", "no pool named `b`");
        assert_eq!(e.to_string(), "/etc/portier/portier.toml:2:1: services.a.pool: no pool named `b`");
    }
}
