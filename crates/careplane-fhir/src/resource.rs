//! Newtypes that parse at the boundary: a value of these types is always valid.

use std::fmt;

use crate::definitions::Definitions;

/// A concrete R4 resource type name known to the definitions (`Patient`, `Appointment`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceType(String);

impl ResourceType {
    pub fn parse(defs: &Definitions, name: &str) -> Option<ResourceType> {
        defs.is_resource_type(name)
            .then(|| ResourceType(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A logical resource id: `[A-Za-z0-9\-\.]{1,64}` (R4 datatypes.html#id).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id(String);

impl Id {
    pub const MAX_LEN: usize = 64;

    pub fn parse(s: &str) -> Option<Id> {
        is_valid_id(s).then(|| Id(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= Id::MAX_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// A server-assigned version number, starting at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VersionId(u64);

impl VersionId {
    pub const FIRST: VersionId = VersionId(1);

    pub fn new(n: u64) -> Option<VersionId> {
        (n >= 1).then_some(VersionId(n))
    }

    pub fn parse(s: &str) -> Option<VersionId> {
        if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok().and_then(VersionId::new)
    }

    pub fn get(self) -> u64 {
        self.0
    }

    pub fn next(self) -> VersionId {
        VersionId(self.0 + 1)
    }
}

impl fmt::Display for VersionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_limited_to_64_safe_characters() {
        assert!(Id::parse("abc-DEF.123").is_some());
        assert!(Id::parse(&"a".repeat(64)).is_some());
        assert!(Id::parse(&"a".repeat(65)).is_none());
        assert!(Id::parse("").is_none());
        assert!(Id::parse("a_b").is_none());
        assert!(Id::parse("a/b").is_none());
        assert!(Id::parse("é").is_none());
    }

    #[test]
    fn version_ids_are_positive_integers() {
        assert_eq!(VersionId::parse("3").map(VersionId::get), Some(3));
        assert!(VersionId::parse("0").is_none());
        assert!(VersionId::parse("-1").is_none());
        assert!(VersionId::parse("1a").is_none());
        assert!(VersionId::parse("99999999999999999999").is_none());
    }

    #[test]
    fn resource_types_must_be_concrete_r4_types() {
        let defs = Definitions::r4().unwrap();
        assert!(ResourceType::parse(defs, "Patient").is_some());
        assert!(ResourceType::parse(defs, "patient").is_none());
        assert!(ResourceType::parse(defs, "Resource").is_none());
    }
}
