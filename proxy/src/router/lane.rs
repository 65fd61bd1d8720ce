//! Picking the lane for a request (pure): the first `routing.matchers`
//! pattern that matches the model wins; a request without a model goes to
//! the default lane; a model nothing matches is refused.
//!
//! Default lane (requests without a body, or whose body has no top-level
//! `model`, e.g. `GET /v1/models`): the lane of the first catch-all matcher
//! (a pattern made only of `*`, which is also where an unlisted model would
//! go), else the lane of the first matcher. Packs usually list specific
//! patterns first and a catch-all last, so the catch-all is the natural
//! default; without one, the first lane is the one the operator listed first.

use http::Uri;
use policy::{HttpsUrl, Matcher, Policy, Provider};

/// How the lane was chosen (for logs and audit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LaneReason {
    /// The model matched this matcher (index into `routing.matchers`).
    Matched {
        /// Index of the matcher.
        index: usize,
    },
    /// The request had no model; the default lane was used.
    Default,
}

/// The lane a request goes to.
#[derive(Debug, Clone, Copy)]
pub struct LaneChoice<'p> {
    /// The provider (lane).
    pub provider: &'p Provider,
    /// Why.
    pub reason: LaneReason,
}

/// Why no lane could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LaneError {
    /// The model matches no pattern.
    #[error("model `{model}` matches no lane: the router's routing.matchers allow {patterns}")]
    UnknownModel {
        /// The model the client asked for.
        model: String,
        /// The configured patterns, for the message.
        patterns: String,
    },
    /// The policy has no matchers at all.
    #[error("the active policy defines no lanes (routing.matchers is empty)")]
    NoLanes,
}

/// Chooses the lane for `model` (pure).
pub fn choose_lane<'p>(
    policy: &'p Policy,
    model: Option<&str>,
) -> Result<LaneChoice<'p>, LaneError> {
    let matchers = &policy.routing.matchers;
    let provider_of = |m: &Matcher| policy.providers.get(&m.lane);
    match model {
        Some(model) => matchers
            .iter()
            .enumerate()
            .find(|(_, m)| m.pattern.matches(model))
            .and_then(|(index, m)| {
                provider_of(m).map(|provider| LaneChoice {
                    provider,
                    reason: LaneReason::Matched { index },
                })
            })
            .ok_or_else(|| {
                if matchers.is_empty() {
                    LaneError::NoLanes
                } else {
                    LaneError::UnknownModel {
                        model: model.to_owned(),
                        patterns: matchers
                            .iter()
                            .map(|m| format!("`{}`", m.pattern))
                            .collect::<Vec<_>>()
                            .join(", "),
                    }
                }
            }),
        None => matchers
            .iter()
            .find(|m| m.pattern.as_str().bytes().all(|b| b == b'*'))
            .or_else(|| matchers.first())
            .and_then(provider_of)
            .map(|provider| LaneChoice {
                provider,
                reason: LaneReason::Default,
            })
            .ok_or(LaneError::NoLanes),
    }
}

/// Why the upstream URI could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The request target is not an origin-form path (`*`, or empty).
    #[error("the request path must start with `/` (got `{path}`)")]
    NotAPath {
        /// The request target as received.
        path: String,
    },
    /// base URL + path did not form a valid URI.
    #[error("`{base}` + the request path is not a valid URL")]
    Invalid {
        /// The provider's base URL.
        base: String,
    },
}

/// `baseURL` + path + query: the upstream URI for a request whose target
/// (origin form, or the path of an absolute-form target) is `path_and_query`.
pub fn target_uri(base: &HttpsUrl, path_and_query: &str) -> Result<Uri, TargetError> {
    if !path_and_query.starts_with('/') {
        return Err(TargetError::NotAPath {
            path: path_and_query.chars().take(64).collect(),
        });
    }
    let mut s = String::with_capacity(base.as_str().len() + path_and_query.len());
    s.push_str(base.as_str());
    s.push_str(path_and_query);
    s.parse::<Uri>().map_err(|_| TargetError::Invalid {
        base: base.as_str().to_owned(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use policy::{ValidationMode, parse_pack};

    fn policy(matchers: &str) -> Policy {
        let json = format!(
            r#"{{"schema":"ccp.policy.v1","version":"1","ttlSeconds":60,
            "routing":{{"matchers":{matchers}}},
            "providers":{{
              "a":{{"baseURL":"https://a.test/api","authHeader":{{"mode":"x-api-key","env":"A_KEY"}}}},
              "b":{{"baseURL":"https://b.test","authHeader":{{"mode":"bearer","env":"B_KEY"}}}},
              "c":{{"baseURL":"https://c.test:8443","authHeader":{{"mode":"bearer","passthrough":true}}}}}}}}"#
        );
        parse_pack(json.as_bytes(), ValidationMode::Signed).unwrap()
    }

    fn lane(p: &Policy, model: Option<&str>) -> Result<String, LaneError> {
        choose_lane(p, model).map(|c| c.provider.name.clone())
    }

    #[test]
    fn first_match_wins() {
        let p = policy(
            r#"[{"pattern":"claude-haiku-*","lane":"a"},{"pattern":"claude-*","lane":"b"},{"pattern":"*","lane":"c"}]"#,
        );
        assert_eq!(lane(&p, Some("claude-haiku-4-5")).unwrap(), "a");
        assert_eq!(lane(&p, Some("claude-sonnet-4-5")).unwrap(), "b");
        assert_eq!(lane(&p, Some("gpt-5")).unwrap(), "c");
        assert_eq!(
            choose_lane(&p, Some("claude-sonnet-4")).unwrap().reason,
            LaneReason::Matched { index: 1 }
        );
    }

    #[test]
    fn unknown_model_names_the_model() {
        let p = policy(
            r#"[{"pattern":"claude-haiku-*","lane":"a"},{"pattern":"claude-sonnet-*","lane":"b"}]"#,
        );
        let err = lane(&p, Some("gpt-5")).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`gpt-5`"), "{msg}");
        assert!(msg.contains("`claude-haiku-*`"), "{msg}");
    }

    #[test]
    fn default_lane_is_the_catch_all_else_the_first() {
        let p = policy(r#"[{"pattern":"claude-haiku-*","lane":"a"},{"pattern":"**","lane":"c"}]"#);
        assert_eq!(lane(&p, None).unwrap(), "c");
        assert_eq!(choose_lane(&p, None).unwrap().reason, LaneReason::Default);
        let p = policy(
            r#"[{"pattern":"claude-sonnet-*","lane":"b"},{"pattern":"claude-*","lane":"a"}]"#,
        );
        assert_eq!(lane(&p, None).unwrap(), "b");
        let p = policy("[]");
        assert_eq!(lane(&p, None).unwrap_err(), LaneError::NoLanes);
        assert_eq!(lane(&p, Some("x")).unwrap_err(), LaneError::NoLanes);
    }

    #[test]
    fn target_keeps_prefix_path_and_query() {
        let base = HttpsUrl::parse("https://api.z.ai/api/anthropic").unwrap();
        assert_eq!(
            target_uri(&base, "/v1/messages?beta=true")
                .unwrap()
                .to_string(),
            "https://api.z.ai/api/anthropic/v1/messages?beta=true"
        );
        let base = HttpsUrl::parse("https://[::1]:8443").unwrap();
        let uri = target_uri(&base, "/v1/models").unwrap();
        assert_eq!(uri.port_u16(), Some(8443));
        assert_eq!(uri.path(), "/v1/models");
        assert!(matches!(
            target_uri(&base, "*"),
            Err(TargetError::NotAPath { .. })
        ));
    }
}
