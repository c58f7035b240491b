//! Source positions for errors in the policy directory: `file:line:column: message`.

use std::fmt;

/// An error at a position in one file of the policy directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    /// The file name, as given.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong, lowercase, naming ids in backticks.
    pub message: String,
}

impl SourceError {
    /// An error at byte `offset` of `text`.
    pub fn at_offset(file: &str, text: &str, offset: usize, message: impl Into<String>) -> Self {
        let offset = offset.min(text.len());
        let before = text.get(..offset).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
        Self {
            file: file.to_owned(),
            line,
            column,
            message: message.into(),
        }
    }

    /// An error about a whole file.
    pub fn in_file(file: &str, message: impl Into<String>) -> Self {
        Self {
            file: file.to_owned(),
            line: 1,
            column: 1,
            message: message.into(),
        }
    }
}

impl fmt::Display for SourceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

/// A position in one file of the policy directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcePos {
    /// The file name.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl SourcePos {
    /// The position of byte `offset` of `text` in `file`.
    pub fn at_offset(file: &str, text: &str, offset: usize) -> Self {
        let e = SourceError::at_offset(file, text, offset, "");
        Self {
            file: e.file,
            line: e.line,
            column: e.column,
        }
    }
}

impl fmt::Display for SourcePos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// Several source errors, one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SourceErrors(pub Vec<SourceError>);

impl fmt::Display for SourceErrors {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_become_lines_and_columns() {
        let text = "ab\ncd\nef";
        let e = SourceError::at_offset("f", text, 4, "x");
        assert_eq!((e.line, e.column), (2, 2));
        assert_eq!(e.to_string(), "f:2:2: x");
        let end = SourceError::at_offset("f", text, 999, "x");
        assert_eq!((end.line, end.column), (3, 3));
    }
}
