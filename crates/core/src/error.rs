//! Input violations that name the field or JSON pointer at fault, and their one mapping
//! to a `tonic::Status` with a `BadRequest` detail so generated clients can read them.

use std::fmt;

use tonic_types::{ErrorDetails, StatusExt};

/// One thing wrong with a request: where (a field path or JSON pointer) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub field: String,
    pub description: String,
}

impl Violation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Every violation found in one request, reported together.
#[derive(Debug, Clone, Default, PartialEq, Eq, thiserror::Error)]
pub struct Violations(pub Vec<Violation>);

impl Violations {
    pub fn single(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self(vec![Violation::new(field, description)])
    }

    pub fn push(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(Violation::new(field, description));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok(())` when nothing was found, so checks can end with `violations.into_result()?`.
    pub fn into_result(self) -> Result<(), Violations> {
        if self.is_empty() { Ok(()) } else { Err(self) }
    }

    /// INVALID_ARGUMENT with a message naming every field and a `BadRequest` detail.
    pub fn to_status(&self) -> tonic::Status {
        let mut details = ErrorDetails::new();
        for v in &self.0 {
            details.add_bad_request_violation(v.field.clone(), v.description.clone());
        }
        tonic::Status::with_error_details(tonic::Code::InvalidArgument, self.to_string(), details)
    }
}

impl fmt::Display for Violations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", v.field, v.description)?;
        }
        Ok(())
    }
}

impl From<Violations> for tonic::Status {
    fn from(v: Violations) -> Self {
        v.to_status()
    }
}
