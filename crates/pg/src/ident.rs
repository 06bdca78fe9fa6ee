//! SQL identifiers from config: validated once, always quoted.

use std::fmt;

/// A validated SQL identifier: letters, digits, `_`, `$`; not starting with a digit; ≤ 63 bytes.
/// Displays quoted.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Ident(String);

impl Ident {
    /// Validates `name`; the error says why it is not a plain identifier.
    pub fn new(name: &str) -> Result<Self, String> {
        let valid_start = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        let valid_rest = name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$');
        if !valid_start || !valid_rest || name.len() > 63 {
            return Err(format!("`{name}` is not a plain SQL identifier (letters, digits, `_`; at most 63)"));
        }
        Ok(Self(name.to_owned()))
    }

    /// An identifier written in herald's own code.
    pub fn trusted(name: &'static str) -> Self {
        Self(name.to_owned())
    }

    /// The name, unquoted (for binding as a value, e.g. in catalog queries).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Ident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Validation admits no `"`, so quoting cannot be escaped.
        write!(f, "\"{}\"", self.0)
    }
}

/// `table` or `schema.table`, each part an [`Ident`]. Displays quoted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QualifiedName {
    schema: Option<Ident>,
    name: Ident,
}

impl QualifiedName {
    /// A name from its parts.
    pub fn new(schema: Option<Ident>, name: Ident) -> Self {
        Self { schema, name }
    }

    /// Parses `table` or `schema.table`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<Self, String> {
        match text.split_once('.') {
            Some((schema, name)) => Ok(Self { schema: Some(Ident::new(schema)?), name: Ident::new(name)? }),
            None => Ok(Self { schema: None, name: Ident::new(text)? }),
        }
    }

    /// The schema, when the name is qualified.
    pub fn schema(&self) -> Option<&Ident> {
        self.schema.as_ref()
    }

    /// The table's own name.
    pub fn name(&self) -> &Ident {
        &self.name
    }
}

impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.schema {
            Some(schema) => write!(f, "{schema}.{}", self.name),
            None => write!(f, "{}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_validated_and_quoted() {
        assert_eq!(Ident::new("pipeline_status").unwrap().to_string(), "\"pipeline_status\"");
        for hostile in ["", "1abc", "a\"b", "a;drop table x", "a b", &"x".repeat(64)] {
            assert!(Ident::new(hostile).is_err(), "{hostile:?}");
        }
        assert_eq!(QualifiedName::parse("ops.job_status").unwrap().to_string(), "\"ops\".\"job_status\"");
        assert_eq!(QualifiedName::parse("job_status").unwrap().schema(), None);
        assert!(QualifiedName::parse("a.b.c").is_err());
    }
}
