//! A linear pre-scan of the annotation values a parser reads, so that every review has a bounded
//! cost whatever the pod holds.
//!
//! The YAML reader's work grows with the square of a value's flow nesting (`{a: ` repeated
//! 32,000 times takes seconds, for a pod that is refused in the end). Annotations are the pod
//! author's, so every value the engine hands to the YAML or JSON reader is first measured here,
//! in one pass, and refused when it is larger or more nested than any real configuration. The
//! scan only refuses: a value it lets through goes to the same reader as it would without it, so
//! the answer to every accepted pod is unchanged.
//!
//! The limits, and why they are far from real values:
//! - [`MAX_BYTES`] (64 KiB) per value. A ProxyConfig in a pod is a few hundred bytes; the API
//!   server limits all of a pod's annotations together to 256 KiB once it stores the pod, but
//!   mutating webhooks see the pod before that check.
//! - JSON values (`userVolume`, `userVolumeMount`, `overrides`, `status`): [`MAX_DEPTH`] (64)
//!   levels of nesting, counted exactly (brackets inside strings do not count). A volume
//!   specification nests about 5 deep.
//! - YAML values (`proxy.istio.io/config`): at most [`MAX_YAML_BRACKETS`] (256) `[` or `{`
//!   characters in the whole value. Each flow collection starts with one of them, so this bounds
//!   the nesting whatever the quoting, comments or tags (a count that tried to skip quoted text
//!   would have to lex YAML as its reader does, and a mistake there would let a deep value
//!   through). A ProxyConfig written as JSON has one bracket per mapping or list, a few dozen
//!   at most.
//! - YAML values hold no alias (`*name`). The reader copies an anchor's value at each alias, so
//!   one anchored list of a few thousand items and a few thousand aliases to it are seconds of
//!   work in 64 KiB (serde_yaml's repetition limit counts aliases, not what they copy). An alias
//!   is a token, so in a document that reads it starts the value, follows a space, a tab or a
//!   line break, or directly follows one of `[`, `{`, `,`, `:`, `?`; after anything else a `*` is
//!   text or an error. The scan refuses a `*` in any of those places (and after any non-ASCII
//!   byte, for YAML's Unicode line breaks), so a `*` inside a word or a regex (`.*`) or quoted
//!   on its own (`"*"`) is fine. ProxyConfig annotations have no use for aliases.

/// The longest annotation value handed to a reader.
pub const MAX_BYTES: usize = 64 * 1024;
/// The deepest nesting of a JSON annotation value.
pub const MAX_DEPTH: usize = 64;
/// The most `[` and `{` characters in a YAML annotation value.
pub const MAX_YAML_BRACKETS: usize = 256;

/// The reader a value goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Syntax {
    Json,
    Yaml,
}

/// `Err` says what was found and what is accepted, for a denial.
pub fn check(text: &str, syntax: Syntax) -> Result<(), String> {
    let accepted = match syntax {
        Syntax::Json => format!(
            "accepted: at most {MAX_DEPTH} levels of nesting and {} KiB",
            MAX_BYTES / 1024
        ),
        Syntax::Yaml => format!(
            "accepted: at most {MAX_YAML_BRACKETS} '[' or '{{' characters, no YAML alias, and {} KiB",
            MAX_BYTES / 1024
        ),
    };
    if text.len() > MAX_BYTES {
        return Err(format!(
            "{} bytes, larger than {MAX_BYTES} bytes; {accepted}",
            text.len()
        ));
    }
    match syntax {
        Syntax::Json => {
            let depth = json_depth(text.as_bytes());
            if depth > MAX_DEPTH {
                return Err(format!(
                    "nesting deeper than {MAX_DEPTH} levels (found {depth}); {accepted}"
                ));
            }
        }
        Syntax::Yaml => {
            let brackets = memchr::memchr2_iter(b'[', b'{', text.as_bytes()).count();
            if brackets > MAX_YAML_BRACKETS {
                return Err(format!(
                    "{brackets} '[' or '{{' characters, more than {MAX_YAML_BRACKETS} (each can open a nested collection, and the YAML reader's work grows with their nesting); {accepted}"
                ));
            }
            if let Some(at) = yaml_alias(text.as_bytes()) {
                return Err(format!(
                    "a YAML alias ('*' at byte {at}; the reader copies the anchored value at every alias); {accepted}"
                ));
            }
        }
    }
    Ok(())
}

/// Where the first `*` that could start a YAML alias is (see the module comment).
fn yaml_alias(bytes: &[u8]) -> Option<usize> {
    memchr::memchr_iter(b'*', bytes).find(|&at| {
        at == 0
            || matches!(
                bytes[at - 1],
                b' ' | b'\t' | b'\r' | b'\n' | b'[' | b'{' | b',' | b':' | b'?' | 0x80..=0xff
            )
    })
}

/// The deepest nesting of `[` and `{` outside JSON strings. Text that is not JSON gets some
/// number too; the JSON reader refuses it anyway, in one pass.
fn json_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nested_json(levels: usize) -> String {
        format!("{}1{}", "[".repeat(levels), "]".repeat(levels))
    }

    #[test]
    fn json_nesting_is_accepted_up_to_the_limit_exactly() {
        assert_eq!(json_depth(nested_json(MAX_DEPTH).as_bytes()), MAX_DEPTH);
        check(&nested_json(MAX_DEPTH), Syntax::Json).unwrap();
        let err = check(&nested_json(MAX_DEPTH + 1), Syntax::Json).unwrap_err();
        assert!(
            err.contains("nesting deeper than 64 levels (found 65)"),
            "{err}"
        );
        assert!(err.contains("accepted: at most 64 levels"), "{err}");
    }

    #[test]
    fn brackets_inside_json_strings_do_not_nest() {
        let text = format!(r#"{{"a": "{}\"[{{"}}"#, "[".repeat(1000));
        assert_eq!(json_depth(text.as_bytes()), 1);
        check(&text, Syntax::Json).unwrap();
        // Nor can a string's closing brackets hide real ones.
        let hiding = format!("{}1{}", r#"{"a":"}}}","b":"#.repeat(100), "}".repeat(100));
        assert_eq!(json_depth(hiding.as_bytes()), 100);
    }

    #[test]
    fn size_is_accepted_up_to_the_limit_exactly() {
        for syntax in [Syntax::Json, Syntax::Yaml] {
            let at = format!("\"{}\"", "a".repeat(MAX_BYTES - 2));
            assert_eq!(at.len(), MAX_BYTES);
            check(&at, syntax).unwrap();
            let over = format!("\"{}\"", "a".repeat(MAX_BYTES - 1));
            let err = check(&over, syntax).unwrap_err();
            assert!(err.contains("65537 bytes, larger than 65536"), "{err}");
            assert!(err.contains("64 KiB"), "{err}");
        }
    }

    #[test]
    fn yaml_brackets_are_accepted_up_to_the_limit_exactly() {
        let at = format!(
            "{}{}",
            "{a: ".repeat(MAX_YAML_BRACKETS / 2),
            "[".repeat(MAX_YAML_BRACKETS / 2)
        );
        check(&at, Syntax::Yaml).unwrap();
        let over = format!("{at}{{");
        let err = check(&over, Syntax::Yaml).unwrap_err();
        assert!(err.starts_with("257 '[' or '{' characters"), "{err}");
        assert!(err.contains("accepted: at most 256"), "{err}");
        // Quoted or not: every one counts, so quoting cannot hide a nested one.
        let quoted = format!("a: \"{}\"", "{".repeat(MAX_YAML_BRACKETS + 1));
        assert!(check(&quoted, Syntax::Yaml).is_err());
    }

    #[test]
    fn yaml_aliases_are_refused_and_stars_in_text_are_not() {
        for text in [
            "a: &x [1]\nb: *x",
            "*x",
            "a: [*x]",
            "{\"a\":*x}",
            "a: {b: 1,*x}",
            "a:\n\t*x",
            "a:\u{85}*x",
        ] {
            let err = check(text, Syntax::Yaml).unwrap_err();
            assert!(err.starts_with("a YAML alias"), "{text:?}: {err}");
        }
        for text in [
            "inclusionRegexps: [\".*circuit_breakers.*\", '.*'] ",
            "includeInboundPorts: \"*\"",
            "a: b*c",
            "a: '*'",
        ] {
            assert_eq!(check(text, Syntax::Yaml), Ok(()), "{text:?}");
        }
        // JSON has no aliases: a star is only text there.
        check("[\"a\", \" *x\"]", Syntax::Json).unwrap();
    }

    #[test]
    fn an_alias_bomb_is_refused_before_the_reader_sees_it() {
        let mut bomb = String::from("f: [");
        bomb.push_str(&"1,".repeat(20_000));
        bomb.push_str("1]\na0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..9 {
            bomb.push_str(&format!("a{level}: &a{level}\n"));
            for _ in 0..10 {
                bomb.push_str(&format!("  - *a{}\n", level - 1));
            }
        }
        assert!(bomb.len() < MAX_BYTES);
        let err = check(&bomb, Syntax::Yaml).unwrap_err();
        assert!(err.starts_with("a YAML alias"), "{err}");
    }

    #[test]
    fn the_hostile_proxy_config_is_refused_in_one_pass() {
        let text = format!("{}{}", "{a: ".repeat(32_000), "}".repeat(32_000));
        let err = check(&text, Syntax::Yaml).unwrap_err();
        assert!(err.contains("160000 bytes"), "{err}");
        let small = format!("{}{}", "{a: ".repeat(4_000), "}".repeat(4_000));
        let err = check(&small, Syntax::Yaml).unwrap_err();
        assert!(err.starts_with("4000 '[' or '{' characters"), "{err}");
    }
}
