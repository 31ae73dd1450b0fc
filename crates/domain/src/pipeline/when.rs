//! Evaluating `when` conditions, as Jenkins does.
//!
//! The facts come from the runner through [`WhenContext`]: the branch being
//! built, the environment, and a regular-expression matcher (this crate has
//! no regex engine; the runner brings one for `comparator: 'REGEXP'`).

use super::model::{Comparator, Condition, ConditionKind, When};

/// What a `when` condition can look at.
pub trait WhenContext {
    /// The branch being built, if the run has one.
    fn branch(&self) -> Option<&str>;
    /// The value of an environment variable.
    fn env(&self, name: &str) -> Option<&str>;
    /// Whether the regular expression `pattern` matches the whole of `text`
    /// (Java's `String.matches`). Only called for `comparator: 'REGEXP'`.
    fn regex_matches(&self, pattern: &str, text: &str) -> bool;
}

impl When {
    /// Whether the stage runs: every condition holds.
    pub fn evaluate(&self, context: &dyn WhenContext) -> bool {
        self.conditions.iter().all(|c| c.evaluate(context))
    }
}

impl Condition {
    /// Whether the condition holds. `branch` is false when the run has no
    /// branch, as in Jenkins.
    pub fn evaluate(&self, context: &dyn WhenContext) -> bool {
        match &self.kind {
            ConditionKind::Branch {
                pattern,
                comparator,
            } => context.branch().is_some_and(|branch| match comparator {
                Comparator::Equals => branch == pattern,
                Comparator::Glob => glob_matches(pattern, branch),
                Comparator::Regexp => context.regex_matches(pattern, branch),
            }),
            ConditionKind::Environment { name, value } => context.env(name) == Some(value),
            ConditionKind::Not(inner) => !inner.evaluate(context),
            ConditionKind::AllOf(all) => all.iter().all(|c| c.evaluate(context)),
            ConditionKind::AnyOf(any) => any.iter().any(|c| c.evaluate(context)),
        }
    }
}

/// Ant-style path matching, as Jenkins' `GLOB` comparator does it: the
/// pattern and the name are split on `/`; in a segment `*` matches any run
/// of characters and `?` exactly one; a whole `**` segment matches any
/// number of segments (`release/**` matches `release/1.0/fix`).
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('/').collect();
    let name: Vec<&str> = name.split('/').collect();
    // reachable[j]: the first i pattern segments can match the first j name segments.
    let mut reachable = vec![false; name.len() + 1];
    reachable[0] = true;
    for segment in &pattern {
        let mut next = vec![false; name.len() + 1];
        if *segment == "**" {
            let mut any = false;
            for j in 0..=name.len() {
                any |= reachable[j];
                next[j] = any;
            }
        } else {
            for j in 1..=name.len() {
                next[j] = reachable[j - 1] && segment_matches(segment, name[j - 1]);
            }
        }
        reachable = next;
    }
    reachable[name.len()]
}

/// `*` and `?` within one path segment, without backtracking blow-up.
fn segment_matches(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::super::Pos;
    use super::*;

    struct Facts {
        branch: Option<&'static str>,
        env: Vec<(&'static str, &'static str)>,
    }

    impl WhenContext for Facts {
        fn branch(&self) -> Option<&str> {
            self.branch
        }
        fn env(&self, name: &str) -> Option<&str> {
            self.env.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
        }
        fn regex_matches(&self, pattern: &str, text: &str) -> bool {
            // Enough of a regex engine for the test: `prefix.*`.
            pattern
                .strip_suffix(".*")
                .is_some_and(|prefix| text.starts_with(prefix))
        }
    }

    fn condition(kind: ConditionKind) -> Condition {
        Condition {
            pos: Pos::default(),
            kind,
        }
    }

    fn branch(pattern: &str, comparator: Comparator) -> Condition {
        condition(ConditionKind::Branch {
            pattern: pattern.into(),
            comparator,
        })
    }

    #[test]
    fn globs() {
        let cases = [
            ("main", "main", true),
            ("main", "mainline", false),
            ("release-*", "release-1.0", true),
            ("release-*", "release-", true),
            ("release-*", "hotfix-1", false),
            ("release-?", "release-1", true),
            ("release-?", "release-10", false),
            ("*", "feature/x", false),
            ("feature/*", "feature/x", true),
            ("feature/*", "feature/x/y", false),
            ("feature/**", "feature/x/y", true),
            ("feature/**", "feature", true),
            ("**/fix", "a/b/fix", true),
            ("**", "anything/at/all", true),
            ("*a*b*c*", "xxaxxbxxcxx", true),
            ("*a*b*c*", "xxaxxcxxbxx", false),
            ("é*", "éclair", true),
        ];
        for (pattern, name, expected) in cases {
            assert_eq!(glob_matches(pattern, name), expected, "{pattern} {name}");
        }
    }

    #[test]
    fn conditions() {
        let facts = Facts {
            branch: Some("release-2"),
            env: vec![("DEPLOY", "yes")],
        };
        let no_branch = Facts {
            branch: None,
            env: vec![],
        };
        let env = |name: &str, value: &str| {
            condition(ConditionKind::Environment {
                name: name.into(),
                value: value.into(),
            })
        };
        let cases = [
            (branch("release-2", Comparator::Equals), true, false),
            (branch("release-*", Comparator::Equals), false, false),
            (branch("release-*", Comparator::Glob), true, false),
            (branch("release-.*", Comparator::Regexp), true, false),
            (env("DEPLOY", "yes"), true, false),
            (env("DEPLOY", "no"), false, false),
            (
                condition(ConditionKind::Not(Box::new(branch(
                    "main",
                    Comparator::Glob,
                )))),
                true,
                true,
            ),
            (
                condition(ConditionKind::AllOf(vec![
                    branch("release-*", Comparator::Glob),
                    env("DEPLOY", "yes"),
                ])),
                true,
                false,
            ),
            (
                condition(ConditionKind::AnyOf(vec![
                    branch("main", Comparator::Glob),
                    env("DEPLOY", "no"),
                ])),
                false,
                false,
            ),
        ];
        for (condition, with_facts, without) in cases {
            assert_eq!(condition.evaluate(&facts), with_facts, "{condition:?}");
            assert_eq!(condition.evaluate(&no_branch), without, "{condition:?}");
        }
        let when = When {
            pos: Pos::default(),
            conditions: vec![branch("release-*", Comparator::Glob), env("DEPLOY", "no")],
            before_agent: false,
        };
        assert!(!when.evaluate(&facts));
    }
}
