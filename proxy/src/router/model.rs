//! Finding the top-level `"model"` of a JSON request body without parsing it
//! into a value tree and without re-serialising anything: the router
//! forwards the original bytes, so it only needs one string out of them.
//!
//! The scanner walks the top-level object token by token. Inside nested
//! values it only counts brackets and skips strings (with `memchr`, so the
//! long message texts that make up most of a Claude Code body are skipped
//! in bulk). It reads the whole top-level object so that a second
//! top-level `"model"` key is caught: parsers disagree on which duplicate
//! wins, and routing on one while the provider obeys the other would let a
//! client pick a lane for a model that lane does not serve.
//!
//! Decisions (see [`find_model`]):
//! - a body that does not start with `{` (after whitespace) has no model;
//! - `{...}` without a `model` key has no model;
//! - a top-level structure the scanner cannot follow is an error, so the
//!   router never guesses a lane for a body its provider would read
//!   differently.

use std::borrow::Cow;

/// Longest model name accepted (bytes, after unescaping).
pub const MAX_MODEL_LEN: usize = 256;

/// Why the model could not be read from a JSON body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// The top-level `model` value is not a JSON string.
    #[error("the top-level \"model\" field must be a string (byte {offset})")]
    NotAString {
        /// Where the value starts.
        offset: usize,
    },
    /// The top-level object has `model` twice.
    #[error(
        "the request body has more than one top-level \"model\" field (second at byte {offset})"
    )]
    Duplicate {
        /// Where the second key starts.
        offset: usize,
    },
    /// The `model` string has a bad escape or is not UTF-8.
    #[error("the top-level \"model\" string is not valid (byte {offset}): {what}")]
    BadString {
        /// Where the string starts.
        offset: usize,
        /// What is wrong.
        what: &'static str,
    },
    /// The model name is longer than [`MAX_MODEL_LEN`].
    #[error("the model name is {len} bytes long; at most {MAX_MODEL_LEN} are accepted")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// The body starts like a JSON object but its top level is malformed.
    #[error("the request body is not valid JSON (byte {offset}): {what}")]
    Malformed {
        /// Where the scanner stopped.
        offset: usize,
        /// What it expected.
        what: &'static str,
    },
}

/// Where the scanner is inside the top-level object.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Top {
    /// After `{` or `,`: a key (or `}` right after `{`).
    Key { first: bool },
    /// After a key: `:`.
    Colon { model: bool },
    /// After `:`: a value.
    Value { model: bool },
    /// After a value: `,` or `}`.
    Next,
}

/// Returns the top-level `"model"` string of a JSON object body, `None` when
/// the body is not a JSON object or has no such key.
///
/// Never allocates unless the model string contains escapes.
pub fn find_model(body: &[u8]) -> Result<Option<Cow<'_, str>>, ModelError> {
    let mut i = skip_ws(body, 0);
    if body.get(i) != Some(&b'{') {
        return Ok(None);
    }
    i += 1;
    let mut state = Top::Key { first: true };
    let mut found: Option<Cow<'_, str>> = None;
    loop {
        i = skip_ws(body, i);
        let Some(&b) = body.get(i) else {
            return Err(ModelError::Malformed {
                offset: i,
                what: "the top-level object is not closed",
            });
        };
        match state {
            Top::Key { first } => match b {
                b'"' => {
                    let (end, escaped) = string_end(body, i)?;
                    let raw = &body[i + 1..end - 1];
                    let model = if escaped {
                        unescape(raw, i)?.as_ref() == "model"
                    } else {
                        raw == b"model"
                    };
                    if model && found.is_some() {
                        return Err(ModelError::Duplicate { offset: i });
                    }
                    state = Top::Colon { model };
                    i = end;
                }
                b'}' if first => {
                    i += 1;
                    break;
                }
                _ => {
                    return Err(ModelError::Malformed {
                        offset: i,
                        what: "expected a string key",
                    });
                }
            },
            Top::Colon { model } => {
                if b != b':' {
                    return Err(ModelError::Malformed {
                        offset: i,
                        what: "expected `:` after a key",
                    });
                }
                state = Top::Value { model };
                i += 1;
            }
            Top::Value { model: true } => {
                if b != b'"' {
                    return Err(ModelError::NotAString { offset: i });
                }
                let (end, escaped) = string_end(body, i)?;
                let raw = &body[i + 1..end - 1];
                let value = if escaped {
                    unescape(raw, i)?
                } else {
                    Cow::Borrowed(std::str::from_utf8(raw).map_err(|_| ModelError::BadString {
                        offset: i,
                        what: "not UTF-8",
                    })?)
                };
                if value.len() > MAX_MODEL_LEN {
                    return Err(ModelError::TooLong { len: value.len() });
                }
                found = Some(value);
                state = Top::Next;
                i = end;
            }
            Top::Value { model: false } => {
                i = skip_value(body, i)?;
                state = Top::Next;
            }
            Top::Next => match b {
                b',' => {
                    state = Top::Key { first: false };
                    i += 1;
                }
                b'}' => {
                    i += 1;
                    break;
                }
                _ => {
                    return Err(ModelError::Malformed {
                        offset: i,
                        what: "expected `,` or `}` after a value",
                    });
                }
            },
        }
    }
    let end = skip_ws(body, i);
    if end != body.len() {
        return Err(ModelError::Malformed {
            offset: end,
            what: "data after the top-level object",
        });
    }
    Ok(found)
}

fn skip_ws(body: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\t' | b'\n' | b'\r') = body.get(i) {
        i += 1;
    }
    i
}

/// `body[start]` is `"`; returns the index just past the closing quote and
/// whether the string holds a backslash escape.
fn string_end(body: &[u8], start: usize) -> Result<(usize, bool), ModelError> {
    let mut j = start + 1;
    let mut escaped = false;
    loop {
        let Some(k) = memchr::memchr2(b'"', b'\\', &body[j.min(body.len())..]) else {
            return Err(ModelError::Malformed {
                offset: start,
                what: "a string is not closed",
            });
        };
        let at = j + k;
        if body[at] == b'"' {
            return Ok((at + 1, escaped));
        }
        escaped = true;
        j = at + 2;
        if j > body.len() {
            return Err(ModelError::Malformed {
                offset: start,
                what: "a string is not closed",
            });
        }
    }
}

/// Skips one value that is not the model: a string, a nested object or
/// array (brackets counted, strings skipped), or a scalar.
fn skip_value(body: &[u8], start: usize) -> Result<usize, ModelError> {
    match body[start] {
        b'"' => Ok(string_end(body, start)?.0),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            while let Some(&b) = body.get(i) {
                match b {
                    b'"' => {
                        i = string_end(body, i)?.0;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Ok(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            Err(ModelError::Malformed {
                offset: start,
                what: "a nested value is not closed",
            })
        }
        b',' | b'}' | b':' | b']' => Err(ModelError::Malformed {
            offset: start,
            what: "expected a value",
        }),
        _ => {
            let mut i = start;
            while let Some(&b) = body.get(i) {
                if matches!(b, b',' | b'}' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                if matches!(b, b'"' | b'{' | b'[' | b']' | b':') {
                    return Err(ModelError::Malformed {
                        offset: i,
                        what: "unexpected character in a value",
                    });
                }
                i += 1;
            }
            Ok(i)
        }
    }
}

/// Decodes the JSON escapes of a string's raw contents.
fn unescape(raw: &[u8], offset: usize) -> Result<Cow<'static, str>, ModelError> {
    let bad = |what| ModelError::BadString { offset, what };
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        if b != b'\\' {
            out.push(b);
            i += 1;
            continue;
        }
        let Some(&e) = raw.get(i + 1) else {
            return Err(bad("a backslash ends the string"));
        };
        i += 2;
        let c = match e {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let hi = hex4(raw, i).ok_or_else(|| bad("bad \\u escape"))?;
                i += 4;
                let code = if (0xD800..0xDC00).contains(&hi) {
                    if raw.get(i) != Some(&b'\\') || raw.get(i + 1) != Some(&b'u') {
                        return Err(bad("unpaired surrogate"));
                    }
                    let lo = hex4(raw, i + 2).ok_or_else(|| bad("bad \\u escape"))?;
                    if !(0xDC00..0xE000).contains(&lo) {
                        return Err(bad("unpaired surrogate"));
                    }
                    i += 6;
                    0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)
                } else {
                    hi
                };
                char::from_u32(code).ok_or_else(|| bad("unpaired surrogate"))?
            }
            _ => return Err(bad("unknown escape")),
        };
        let mut buf = [0u8; 4];
        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
    }
    String::from_utf8(out)
        .map(Cow::Owned)
        .map_err(|_| bad("not UTF-8"))
}

fn hex4(raw: &[u8], i: usize) -> Option<u32> {
    let digits = raw.get(i..i + 4)?;
    let mut v = 0u32;
    for d in digits {
        v = v * 16 + char::from(*d).to_digit(16)?;
    }
    Some(v)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn model(body: &str) -> Result<Option<String>, ModelError> {
        find_model(body.as_bytes()).map(|m| m.map(Cow::into_owned))
    }

    #[test]
    fn finds_the_top_level_model() {
        assert_eq!(
            model(r#"{"model":"claude-haiku-4-5","max_tokens":10}"#).unwrap(),
            Some("claude-haiku-4-5".into())
        );
        assert_eq!(
            model(" \n{ \"max_tokens\" : 10 ,\r\n \"model\" :\t\"m\" } \n").unwrap(),
            Some("m".into())
        );
    }

    #[test]
    fn ignores_nested_models_and_strings_that_look_like_keys() {
        let body = r#"{"messages":[{"role":"user","content":"\"model\":\"evil\"","model":"nested"}],
                       "metadata":{"model":"x"},"tools":[[{"}":"{"}]],"model":"real"}"#;
        assert_eq!(model(body).unwrap(), Some("real".into()));
        assert_eq!(model(r#"{"messages":[{"model":"nested"}]}"#).unwrap(), None);
    }

    #[test]
    fn keys_and_values_with_escapes() {
        assert_eq!(
            model(r#"{"mod\u0065l":"claude-\u0073onnet"}"#).unwrap(),
            Some("claude-sonnet".into())
        );
        assert_eq!(
            model(r#"{"model":"a\/b\\c"}"#).unwrap(),
            Some("a/b\\c".into())
        );
        assert_eq!(
            model(r#"{"model":"\ud83d\ude00"}"#).unwrap(),
            Some("\u{1F600}".into())
        );
        assert!(matches!(
            model(r#"{"model":"\ud83d"}"#),
            Err(ModelError::BadString { .. })
        ));
        assert!(matches!(
            model(r#"{"model":"\q"}"#),
            Err(ModelError::BadString { .. })
        ));
        // An escaped quote inside a skipped string does not end it.
        assert_eq!(
            model(r#"{"a":"x\"}, \"model\": \"no","model":"yes"}"#).unwrap(),
            Some("yes".into())
        );
    }

    #[test]
    fn no_model() {
        assert_eq!(model("").unwrap(), None);
        assert_eq!(model("   ").unwrap(), None);
        assert_eq!(model("{}").unwrap(), None);
        assert_eq!(model(r#"[{"model":"x"}]"#).unwrap(), None);
        assert_eq!(model("model=x").unwrap(), None);
        assert_eq!(
            model(r#"{"a":1,"b":true,"c":null,"d":-1.5e3}"#).unwrap(),
            None
        );
    }

    #[test]
    fn refuses_what_it_cannot_route_safely() {
        assert!(matches!(
            model(r#"{"model":"a","x":1,"model":"b"}"#),
            Err(ModelError::Duplicate { .. })
        ));
        assert!(matches!(
            model(r#"{"model":"a","mod\u0065l":"b"}"#),
            Err(ModelError::Duplicate { .. })
        ));
        assert!(matches!(
            model(r#"{"model":42}"#),
            Err(ModelError::NotAString { .. })
        ));
        assert!(matches!(
            model(r#"{"model":{"name":"x"}}"#),
            Err(ModelError::NotAString { .. })
        ));
        assert!(matches!(
            model(r#"{"model":"x""#),
            Err(ModelError::Malformed { .. })
        ));
        assert!(matches!(
            model(r#"{"model":"x"} {"model":"y"}"#),
            Err(ModelError::Malformed { .. })
        ));
        assert!(matches!(
            model(r#"{"model" "x"}"#),
            Err(ModelError::Malformed { .. })
        ));
        assert!(matches!(model(r#"{,}"#), Err(ModelError::Malformed { .. })));
        assert!(matches!(
            model(r#"{"a":[1,2}"#),
            Err(ModelError::Malformed { .. })
        ));
        assert!(matches!(
            model(r#"{"a":"\"#),
            Err(ModelError::Malformed { .. })
        ));
        let long = format!(r#"{{"model":"{}"}}"#, "m".repeat(MAX_MODEL_LEN + 1));
        assert!(matches!(model(&long), Err(ModelError::TooLong { .. })));
    }

    #[test]
    fn borrowed_without_escapes() {
        let body = br#"{"model":"plain"}"#;
        assert!(matches!(
            find_model(body).unwrap(),
            Some(Cow::Borrowed("plain"))
        ));
    }

    #[test]
    fn never_panics_on_prefixes_of_a_real_body() {
        let body = br#"{"model":"claude-haiku-4-5","messages":[{"role":"user","content":[{"type":"text","text":"hi \"there\" \u00e9"}]}],"max_tokens":1,"x":[{},[],{"a":[1,{"b":null}]}]}"#;
        for n in 0..=body.len() {
            let _ = find_model(&body[..n]);
        }
        assert_eq!(
            find_model(body).unwrap().as_deref(),
            Some("claude-haiku-4-5")
        );
    }
}
