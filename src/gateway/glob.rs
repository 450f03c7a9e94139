//! Glob patterns for model names: `*` matches any run of characters, `?` one character
//! (the `wildmatch` crate's semantics, which are exactly these).

/// Whether `name` matches `pattern` (case-sensitive, as model ids are), by `wildmatch`.
pub fn matches(pattern: &str, name: &str) -> bool {
    wildmatch::WildMatch::new(pattern).matches(name)
}

/// Whether any pattern matches.
pub fn any(patterns: &[String], name: &str) -> bool {
    patterns.iter().any(|p| matches(p, name))
}

/// Whether the pattern has no wildcard (so it names one model).
pub fn is_literal(pattern: &str) -> bool {
    !pattern.contains(['*', '?'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_globs() {
        let cases = [
            ("*", "anything", true),
            ("*", "", true),
            ("gpt-*", "gpt-4o", true),
            ("gpt-*", "gpt-", true),
            ("gpt-*", "claude-3", false),
            ("o3*", "o3-mini", true),
            ("claude-*-4*", "claude-sonnet-4-6", true),
            ("claude-*-4*", "claude-3-haiku", false),
            ("gpt-4?", "gpt-4o", true),
            ("gpt-4?", "gpt-4", false),
            ("exact", "exact", true),
            ("exact", "exactly", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
        ];
        for (pattern, name, want) in cases {
            assert_eq!(matches(pattern, name), want, "{pattern} vs {name}");
        }
    }
}
