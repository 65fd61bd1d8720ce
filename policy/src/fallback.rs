//! The embedded fallback pack (`policy/packs/fallback.json`), compiled into
//! the binary: lanes routing `claude-*` to `api.anthropic.com` with the
//! client's own bearer token, and an allowlist of `api.anthropic.com:443`
//! only. It is trusted because it is part of the binary: it needs no
//! signature and never expires. It is used, with a warning, when no signed
//! pack verifies.

use std::sync::{Arc, OnceLock};

use crate::model::{PackError, Policy, ValidationMode, parse_pack};

/// The fallback pack's JSON, exactly as compiled in.
pub const FALLBACK_JSON: &str = include_str!("../packs/fallback.json");

/// The fallback pack, parsed once (validated with [`ValidationMode::Embedded`]).
pub fn fallback_policy() -> Result<Arc<Policy>, PackError> {
    static CELL: OnceLock<Result<Arc<Policy>, PackError>> = OnceLock::new();
    CELL.get_or_init(|| {
        parse_pack(FALLBACK_JSON.as_bytes(), ValidationMode::Embedded).map(Arc::new)
    })
    .clone()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::model::Auth;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn fallback_is_anthropic_only_and_never_expires() {
        let p = fallback_policy().unwrap();
        assert_eq!(p.expires_at(), None);
        let (m, provider) = p.route("claude-sonnet-4-5").unwrap();
        assert_eq!(m.lane, "anthropic");
        assert_eq!(provider.base_url.as_str(), "https://api.anthropic.com");
        assert!(matches!(provider.auth, Auth::Passthrough { .. }));
        assert!(p.route("gpt-4o").is_none());
        assert_eq!(p.fronting.allowlist.len(), 1);
        assert_eq!(
            p.fronting.allowlist[0].pattern.to_string(),
            "api.anthropic.com:443"
        );
        assert_eq!(p.fronting.allowlist[0].expires_at, None);
        assert!(p.egress.direct.is_empty());
        let far = UNIX_EPOCH + Duration::from_secs(4_000_000_000);
        let a = crate::Allowlist::new(&p.fronting, &[]);
        assert!(a.decide("api.anthropic.com", 443, far).allowed);
        assert!(!a.decide("github.com", 443, far).allowed);
    }
}
