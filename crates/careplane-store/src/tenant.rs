//! The tenant (clinic network) every storage call is scoped to; first argument of every method.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TenantId(String);

impl TenantId {
    /// The tenant used until multi-tenancy is configured.
    pub fn default_tenant() -> TenantId {
        TenantId("default".to_string())
    }

    /// 1-63 characters of lowercase letters, digits and '-'; the same shape as a DNS label.
    pub fn parse(s: &str) -> Option<TenantId> {
        let ok = !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        ok.then(|| TenantId(s.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::TenantId;

    #[test]
    fn tenant_ids_are_dns_label_shaped() {
        assert!(TenantId::parse("clinic-net-1").is_some());
        assert!(TenantId::parse("Clinic").is_none());
        assert!(TenantId::parse("").is_none());
        assert!(TenantId::parse(&"a".repeat(64)).is_none());
    }
}
