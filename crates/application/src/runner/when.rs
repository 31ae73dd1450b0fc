//! `when` conditions: `branch` (EQUALS, GLOB, REGEXP), `environment`, `not`,
//! `allOf`, `anyOf`.

use std::collections::BTreeMap;

use hodei_domain::pipeline::{Comparator, Condition, ConditionKind, When};

/// Whether every condition of `when` holds. `branch` is the branch being
/// built (every `branch` condition is false without one); `env` is the
/// environment the stage sees.
///
/// Fails on a `REGEXP` pattern that is not a valid regular expression,
/// naming its position.
pub(super) fn evaluate(
    when: &When,
    branch: Option<&str>,
    env: &BTreeMap<String, String>,
) -> Result<bool, String> {
    for condition in &when.conditions {
        if !holds(condition, branch, env)? {
            return Ok(false);
        }
    }
    Ok(true)
}

fn holds(
    condition: &Condition,
    branch: Option<&str>,
    env: &BTreeMap<String, String>,
) -> Result<bool, String> {
    Ok(match &condition.kind {
        ConditionKind::Branch {
            pattern,
            comparator,
        } => match branch {
            None => false,
            Some(name) => match comparator {
                Comparator::Equals => name == pattern,
                Comparator::Glob => glob_matches(pattern, name),
                Comparator::Regexp => {
                    let regex = regex::Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
                        format!(
                            "{}: branch pattern '{pattern}' is not a valid regular expression: {e}",
                            condition.pos
                        )
                    })?;
                    regex.is_match(name)
                }
            },
        },
        ConditionKind::Environment { name, value } => env.get(name) == Some(value),
        ConditionKind::Not(inner) => !holds(inner, branch, env)?,
        ConditionKind::AllOf(all) => {
            for c in all {
                if !holds(c, branch, env)? {
                    return Ok(false);
                }
            }
            true
        }
        ConditionKind::AnyOf(any) => {
            for c in any {
                if holds(c, branch, env)? {
                    return Ok(true);
                }
            }
            false
        }
    })
}

/// Ant-style path matching, as Jenkins' `GLOB` comparator does it: `?` is
/// one character and `*` any run of characters within a `/`-separated
/// segment; a `**` segment matches any number of segments; a pattern ending
/// in `/` ends in `**`.
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let mut pattern_segments: Vec<&str> = pattern.split('/').filter(|s| !s.is_empty()).collect();
    if pattern.ends_with('/') {
        pattern_segments.push("**");
    }
    let name_segments: Vec<&str> = name.split('/').filter(|s| !s.is_empty()).collect();
    segments_match(&pattern_segments, &name_segments)
}

fn segments_match(pattern: &[&str], name: &[&str]) -> bool {
    match pattern.split_first() {
        None => name.is_empty(),
        Some((&"**", rest)) => (0..=name.len()).any(|skip| segments_match(rest, &name[skip..])),
        Some((first, rest)) => match name.split_first() {
            None => false,
            Some((head, tail)) => {
                let p: Vec<char> = first.chars().collect();
                let n: Vec<char> = head.chars().collect();
                segment_matches(&p, &n) && segments_match(rest, tail)
            }
        },
    }
}

/// `*` and `?` within one segment, by the classic greedy walk with one
/// backtracking point (linear in practice, never exponential).
fn segment_matches(pattern: &[char], name: &[char]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && (pattern[p] == '?' || pattern[p] == name[n]) {
            p += 1;
            n += 1;
        } else if p < pattern.len() && pattern[p] == '*' {
            star = Some((p, n));
            p += 1;
        } else if let Some((star_p, star_n)) = star {
            p = star_p + 1;
            n = star_n + 1;
            star = Some((star_p, star_n + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pattern: &str, name: &str, expected: bool) {
        assert_eq!(
            glob_matches(pattern, name),
            expected,
            "glob '{pattern}' against '{name}'"
        );
    }

    #[test]
    fn globs_match_like_ant() {
        let cases = [
            ("main", "main", true),
            ("main", "mainline", false),
            ("release-*", "release-1.2", true),
            ("release-*", "release-", true),
            ("release-*", "hotfix-1", false),
            ("release-?", "release-1", true),
            ("release-?", "release-12", false),
            ("*", "feature/x", false),
            ("feature/*", "feature/x", true),
            ("feature/*", "feature/x/y", false),
            ("feature/**", "feature/x/y", true),
            ("feature/**", "feature", true),
            ("feature/", "feature/a/b", true),
            ("**/fix-*", "team/a/fix-12", true),
            ("**/fix-*", "fix-12", true),
            ("**", "anything/at/all", true),
            ("*-*-*", "a-b-c", true),
            ("*a*b", "xxaxxbxb", true),
            ("*a*b", "xxaxxbxc", false),
            ("", "", true),
            ("", "main", false),
            ("ma?n", "maín", true),
            ("ma?n", "mäin", false),
            ("m?in", "mäin", true),
        ];
        for (pattern, name, expected) in cases {
            check(pattern, name, expected);
        }
    }
}
