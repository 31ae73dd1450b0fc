//! Label selectors (`a=b,c!=d,e in (f,g),h notin (i),j,!k,l>3`) and field
//! selectors (`metadata.name=x,status.phase!=Failed`), parsed and matched
//! as the API server does.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::status::ApiError;
use crate::store::Kind;

/// A parsed label selector: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LabelSelector {
    requirements: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
    GreaterThan(String, i64),
    LessThan(String, i64),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Word(String),
    Eq,
    DoubleEq,
    NotEq,
    Not,
    Gt,
    Lt,
    Open,
    Close,
    Comma,
}

fn lex(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                chars.next();
            }
            '=' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                    tokens.push(Token::DoubleEq);
                } else {
                    tokens.push(Token::Eq);
                }
            }
            '!' => {
                chars.next();
                if chars.peek() == Some(&'=') {
                    chars.next();
                    tokens.push(Token::NotEq);
                } else {
                    tokens.push(Token::Not);
                }
            }
            '>' => {
                chars.next();
                tokens.push(Token::Gt);
            }
            '<' => {
                chars.next();
                tokens.push(Token::Lt);
            }
            '(' => {
                chars.next();
                tokens.push(Token::Open);
            }
            ')' => {
                chars.next();
                tokens.push(Token::Close);
            }
            ',' => {
                chars.next();
                tokens.push(Token::Comma);
            }
            _ => {
                let mut word = String::new();
                while let Some(&c) = chars.peek() {
                    if matches!(
                        c,
                        ' ' | '\t' | '\n' | '\r' | '=' | '!' | '>' | '<' | '(' | ')' | ','
                    ) {
                        break;
                    }
                    word.push(c);
                    chars.next();
                }
                tokens.push(Token::Word(word));
            }
        }
    }
    Ok(tokens)
}

/// Whether `key` is a valid label key: an optional DNS subdomain prefix
/// and `/`, then a name of at most 63 characters.
pub(crate) fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    prefix.is_none_or(crate::validation::is_dns_subdomain)
        && valid_label_value(name)
        && !name.is_empty()
}

/// Whether `value` is a valid label value (empty, or at most 63
/// alphanumerics, `-`, `_`, `.`, starting and ending alphanumeric).
pub(crate) fn valid_label_value(value: &str) -> bool {
    if value.is_empty() {
        return true;
    }
    let bytes = value.as_bytes();
    value.len() <= 63
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl LabelSelector {
    /// Parses a label selector; an empty text selects everything.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let fail =
            |why: String| ApiError::bad_request(format!("unable to parse requirement: {why}"));
        let tokens = lex(text).map_err(fail)?;
        let mut requirements = Vec::new();
        let mut at = 0;
        let word = |at: usize| match tokens.get(at) {
            Some(Token::Word(w)) => Some(w.clone()),
            _ => None,
        };
        while at < tokens.len() {
            let requirement = if tokens[at] == Token::Not {
                let key = word(at + 1)
                    .ok_or_else(|| fail(format!("expected a key after '!' in {text:?}")))?;
                at += 2;
                Requirement::NotExists(key)
            } else {
                let key = word(at)
                    .ok_or_else(|| fail(format!("expected a key at token {at} in {text:?}")))?;
                at += 1;
                match tokens.get(at) {
                    None | Some(Token::Comma) => Requirement::Exists(key),
                    Some(Token::Eq | Token::DoubleEq | Token::NotEq) => {
                        let negated = tokens[at] == Token::NotEq;
                        // `a=` selects the empty value.
                        let value = match tokens.get(at + 1) {
                            Some(Token::Word(w)) => {
                                at += 2;
                                w.clone()
                            }
                            None | Some(Token::Comma) => {
                                at += 1;
                                String::new()
                            }
                            Some(other) => {
                                return Err(fail(format!(
                                    "found {other:?}, expected a value for key {key:?}"
                                )));
                            }
                        };
                        if !valid_label_value(&value) {
                            return Err(fail(format!(
                                "values[0][{key}]: Invalid value: {value:?}: a valid label must be \
                                 an empty string or consist of alphanumeric characters, '-', '_' \
                                 or '.', and must start and end with an alphanumeric character"
                            )));
                        }
                        if negated {
                            Requirement::NotEquals(key, value)
                        } else {
                            Requirement::Equals(key, value)
                        }
                    }
                    Some(Token::Gt | Token::Lt) => {
                        let greater = tokens[at] == Token::Gt;
                        let value = word(at + 1)
                            .and_then(|w| w.parse::<i64>().ok())
                            .ok_or_else(|| {
                                fail(format!("for 'Gt', 'Lt' operators, the value of {key:?} must be an integer"))
                            })?;
                        at += 2;
                        if greater {
                            Requirement::GreaterThan(key, value)
                        } else {
                            Requirement::LessThan(key, value)
                        }
                    }
                    Some(Token::Word(op)) if op == "in" || op == "notin" => {
                        let negated = op == "notin";
                        at += 1;
                        if tokens.get(at) != Some(&Token::Open) {
                            return Err(fail(format!("expected '(' after {op} for key {key:?}")));
                        }
                        at += 1;
                        let mut values = Vec::new();
                        loop {
                            match tokens.get(at) {
                                Some(Token::Word(w)) => {
                                    values.push(w.clone());
                                    at += 1;
                                }
                                Some(Token::Close) => {
                                    at += 1;
                                    break;
                                }
                                Some(Token::Comma) => at += 1,
                                _ => {
                                    return Err(fail(format!(
                                        "expected ')' to close the values of key {key:?}"
                                    )));
                                }
                            }
                        }
                        if values.is_empty() {
                            return Err(fail(format!(
                                "for 'in', 'notin' operators, values set can't be empty (key {key:?})"
                            )));
                        }
                        if negated {
                            Requirement::NotIn(key, values)
                        } else {
                            Requirement::In(key, values)
                        }
                    }
                    Some(other) => {
                        return Err(fail(format!(
                            "found {other:?}, expected one of ['!=', '=', '==', 'in', 'notin'] after key {key:?}"
                        )));
                    }
                }
            };
            let key = requirement.key();
            if !valid_label_key(key) {
                return Err(fail(format!(
                    "key: Invalid value: {key:?}: name part must consist of alphanumeric \
                     characters, '-', '_' or '.', and must start and end with an alphanumeric \
                     character"
                )));
            }
            requirements.push(requirement);
            match tokens.get(at) {
                None => {}
                Some(Token::Comma) => {
                    at += 1;
                    if at == tokens.len() {
                        return Err(fail(format!("trailing ',' in {text:?}")));
                    }
                }
                Some(other) => {
                    return Err(fail(format!("found {other:?}, expected ',' in {text:?}")));
                }
            }
        }
        Ok(Self { requirements })
    }

    /// Whether an object with `labels` is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Whether the object `object` (its `metadata.labels`) is selected.
    pub fn matches_object(&self, object: &Value) -> bool {
        if self.requirements.is_empty() {
            return true;
        }
        let labels: BTreeMap<String, String> = object
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|map| {
                map.iter()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                    .collect()
            })
            .unwrap_or_default();
        self.matches(&labels)
    }
}

impl Requirement {
    fn key(&self) -> &str {
        match self {
            Self::Equals(k, _)
            | Self::NotEquals(k, _)
            | Self::In(k, _)
            | Self::NotIn(k, _)
            | Self::Exists(k)
            | Self::NotExists(k)
            | Self::GreaterThan(k, _)
            | Self::LessThan(k, _) => k,
        }
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let get = |k: &String| labels.get(k);
        match self {
            Self::Equals(k, v) => get(k) == Some(v),
            Self::NotEquals(k, v) => get(k) != Some(v),
            Self::In(k, vs) => get(k).is_some_and(|x| vs.contains(x)),
            Self::NotIn(k, vs) => get(k).is_none_or(|x| !vs.contains(x)),
            Self::Exists(k) => get(k).is_some(),
            Self::NotExists(k) => get(k).is_none(),
            Self::GreaterThan(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x > *n),
            Self::LessThan(k, n) => get(k)
                .and_then(|x| x.parse::<i64>().ok())
                .is_some_and(|x| x < *n),
        }
    }
}

/// A parsed field selector: every `field=value` / `field!=value` must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct FieldSelector {
    requirements: Vec<(String, bool, String)>,
}

/// The fields the API server lets a selector name, per kind.
fn supported_fields(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Pod => &[
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ],
        Kind::Secret => &["metadata.name", "metadata.namespace", "type"],
    }
}

/// Splits on `sep` where it is not escaped by a backslash.
fn split_unescaped(text: &str, sep: char) -> Vec<String> {
    let mut parts = Vec::new();
    let mut current = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            current.push(c);
            if let Some(next) = chars.next() {
                current.push(next);
            }
        } else if c == sep {
            parts.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    parts.push(current);
    parts
}

fn unescape(text: &str) -> String {
    let mut out = String::new();
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl FieldSelector {
    /// Parses a field selector for objects of `kind`; an unknown field is
    /// `400 field label not supported: x`, as real.
    pub fn parse(kind: Kind, text: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for part in split_unescaped(text, ',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (field, negated, value) = if let Some((f, v)) = part.split_once("!=") {
                (f, true, v)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, false, v)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, false, v)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{text}'; can't understand '{part}'"
                )));
            };
            let field = field.trim();
            if !supported_fields(kind).contains(&field) {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            requirements.push((field.to_owned(), negated, unescape(value.trim())));
        }
        Ok(Self { requirements })
    }

    /// Whether `object` is selected.
    pub fn matches_object(&self, object: &Value) -> bool {
        self.requirements.iter().all(|(field, negated, value)| {
            let actual = field_value(object, field);
            (actual == *value) != *negated
        })
    }
}

/// The text the API server compares for `field` of `object`.
fn field_value(object: &Value, field: &str) -> String {
    let pointer = format!("/{}", field.replace('.', "/"));
    match object.pointer(&pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Bool(b)) => b.to_string(),
        Some(Value::Number(n)) => n.to_string(),
        _ if field == "spec.hostNetwork" => "false".to_owned(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn check(selector: &str, pairs: &[(&str, &str)], expected: bool) {
        let parsed = LabelSelector::parse(selector)
            .unwrap_or_else(|e| panic!("{selector:?} does not parse: {e:?}"));
        assert_eq!(
            parsed.matches(&labels(pairs)),
            expected,
            "{selector:?} against {pairs:?}"
        );
    }

    #[test]
    fn label_selectors_match_as_the_api_server() {
        let l = [("app", "web"), ("tier", "front"), ("n", "5")];
        check("", &l, true);
        check("app=web", &l, true);
        check("app==web", &l, true);
        check("app=db", &l, false);
        check("app!=db", &l, true);
        check("missing!=x", &l, true);
        check("app in (db, web)", &l, true);
        check("app in (db)", &l, false);
        check("app notin (db)", &l, true);
        check("missing notin (db)", &l, true);
        check("app notin (web,db)", &l, false);
        check("tier", &l, true);
        check("missing", &l, false);
        check("!missing", &l, true);
        check("!app", &l, false);
        check("app=web,tier=front", &l, true);
        check("app=web, tier=back", &l, false);
        check("n>4,n<6", &l, true);
        check("n>5", &l, false);
        check(
            "hodei.dev/worker-id=w1",
            &[("hodei.dev/worker-id", "w1")],
            true,
        );
        check("a=", &[("a", "")], true);
    }

    #[test]
    fn bad_label_selectors_are_bad_requests() {
        for bad in [
            "app in ()",
            "app in (a",
            "=x",
            "a=b,",
            "a b",
            "a=b c",
            "a>x",
            "bad key=x",
        ] {
            let e = LabelSelector::parse(bad).expect_err(bad);
            assert_eq!(e.code, 400, "{bad}");
            assert!(
                e.message.starts_with("unable to parse requirement"),
                "{bad}: {}",
                e.message
            );
        }
    }

    #[test]
    fn field_selectors_match_pod_fields() {
        let pod =
            json!({"metadata": {"name": "p", "namespace": "ns"}, "status": {"phase": "Running"}});
        let check = |text: &str, expected: bool| {
            let parsed = FieldSelector::parse(Kind::Pod, text).expect(text);
            assert_eq!(parsed.matches_object(&pod), expected, "{text}");
        };
        check("metadata.name=p", true);
        check("metadata.name==p,metadata.namespace=ns", true);
        check("metadata.name!=p", false);
        check("status.phase!=Failed", true);
        check("status.phase=Pending", false);
        check("spec.hostNetwork=false", true);
        let e = FieldSelector::parse(Kind::Pod, "spec.foo=x").expect_err("unknown field");
        assert_eq!(e.message, "field label not supported: spec.foo");
        assert_eq!(e.code, 400);
        assert!(FieldSelector::parse(Kind::Secret, "type=Opaque").is_ok());
        assert!(FieldSelector::parse(Kind::Secret, "status.phase=x").is_err());
    }
}
