//! enforcer's policy pack model, signing and TTL allowlist (built by a later issue).
