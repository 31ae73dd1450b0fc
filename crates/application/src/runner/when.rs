//! `when` conditions, evaluated by the domain model with the facts of the
//! run: the branch, the stage's environment, and the `regex` crate for
//! `comparator: 'REGEXP'`.

use std::collections::{BTreeMap, HashMap};

use hodei_domain::pipeline::{Comparator, Condition, ConditionKind, When, WhenContext};
use regex::Regex;

/// The facts a `when` looks at.
struct Facts<'a> {
    branch: Option<&'a str>,
    env: &'a BTreeMap<String, String>,
    /// Every `REGEXP` pattern of the `when`, compiled to match whole names.
    regexes: HashMap<String, Regex>,
}

impl WhenContext for Facts<'_> {
    fn branch(&self) -> Option<&str> {
        self.branch
    }

    fn env(&self, name: &str) -> Option<&str> {
        self.env.get(name).map(String::as_str)
    }

    fn regex_matches(&self, pattern: &str, text: &str) -> bool {
        self.regexes
            .get(pattern)
            .is_some_and(|regex| regex.is_match(text))
    }
}

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
    let mut regexes = HashMap::new();
    for condition in &when.conditions {
        compile(condition, &mut regexes)?;
    }
    Ok(when.evaluate(&Facts {
        branch,
        env,
        regexes,
    }))
}

/// Compiles the `REGEXP` patterns in `condition`, as Java's
/// `String.matches` uses them: anchored at both ends.
fn compile(condition: &Condition, regexes: &mut HashMap<String, Regex>) -> Result<(), String> {
    match &condition.kind {
        ConditionKind::Branch {
            pattern,
            comparator: Comparator::Regexp,
        } => {
            if !regexes.contains_key(pattern) {
                let regex = Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
                    format!(
                        "{}: branch pattern '{pattern}' is not a valid regular expression: {e}",
                        condition.pos
                    )
                })?;
                regexes.insert(pattern.clone(), regex);
            }
        }
        ConditionKind::Branch { .. } | ConditionKind::Environment { .. } => {}
        ConditionKind::Not(inner) => compile(inner, regexes)?,
        ConditionKind::AllOf(all) | ConditionKind::AnyOf(all) => {
            for c in all {
                compile(c, regexes)?;
            }
        }
    }
    Ok(())
}
