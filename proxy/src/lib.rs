//! enforcer's CONNECT proxy and lane router (built by a later issue).
