//! Jenkins label expressions: parse, print, evaluate.
//!
//! The grammar is Jenkins' (`hudson.model.labels.LabelExpression`):
//!
//! ```text
//! expr    := iff EOF
//! iff     := implies ( "<->" implies )*      left-associative
//! implies := or ( "->" or )?                 not chainable
//! or      := and ( "||" and )*               left-associative
//! and     := unary ( "&&" unary )*           left-associative
//! unary   := "!" primary | primary
//! primary := "(" iff ")" | ATOM | STRING
//! ```
//!
//! * An `ATOM` is a run of characters other than `& | ! < > ( ) " '`, space
//!   and tab. A `-` belongs to the atom unless `>` follows it, so `java-11`
//!   is one atom, `a->b` is an implication and `a-->b` is `a-` implies `b`.
//! * A `STRING` is double-quoted, with the escapes `\b \t \n \f \r \" \' \\`;
//!   it may not contain a raw line break.
//! * Only space and tab separate tokens.
//! * As in Jenkins, `!` applies to a label or a parenthesised expression:
//!   `!!a` is an error, `!(!a)` is fine.
//! * `a -> b -> c` is an error: `(a -> b) -> c` and `a -> (b -> c)` differ,
//!   so Jenkins makes you choose. `<->`, `||` and `&&` chain to the left.
//!
//! Parentheses group but leave no node in the tree: `(a)` and `a` parse to
//! the same [`LabelExpr`]. [`LabelExpr`]'s `Display` prints the canonical
//! form, with the fewest parentheses that keep the tree and quotes only
//! around atoms that need them; it parses back to the same tree.
//!
//! ```
//! use std::collections::BTreeSet;
//! use hodei_domain::label::LabelExpr;
//!
//! let e = LabelExpr::parse("linux&&(java-17||java-21)&&!windows")?;
//! assert_eq!(e.to_string(), "linux && (java-17 || java-21) && !windows");
//! let labels: BTreeSet<String> = ["linux", "java-21"].map(String::from).into();
//! assert!(e.matches(&labels));
//! # Ok::<(), hodei_domain::label::LabelExprError>(())
//! ```

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::hash::{BuildHasher, Hash};

/// The deepest tree [`LabelExpr::parse`] builds. Deeper input (thousands of
/// nested parentheses or chained operators) is refused so that printing,
/// evaluating and dropping the tree cannot exhaust the stack.
pub const MAX_DEPTH: usize = 256;

/// A syntax error in a label expression.
///
/// Displays as `column N: message`, where `N` is the 1-based character
/// column within the parsed input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelExprError {
    /// 1-based character (not byte) column within the input.
    pub column: usize,
    /// What was expected and what was found, lower case, no trailing period.
    pub message: String,
}

impl fmt::Display for LabelExprError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "column {}: {}", self.column, self.message)
    }
}

impl std::error::Error for LabelExprError {}

/// A parsed label expression.
///
/// Build one with [`LabelExpr::parse`], or directly from the variants (any
/// string is a valid atom; `Display` quotes it when needed).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LabelExpr {
    /// A single label, true when the label set contains it.
    Atom(String),
    /// `!e`
    Not(Box<LabelExpr>),
    /// `l && r`
    And(Box<LabelExpr>, Box<LabelExpr>),
    /// `l || r`
    Or(Box<LabelExpr>, Box<LabelExpr>),
    /// `l -> r`: true unless `l` holds and `r` does not.
    Implies(Box<LabelExpr>, Box<LabelExpr>),
    /// `l <-> r`: true when both hold or neither does.
    Iff(Box<LabelExpr>, Box<LabelExpr>),
}

/// A set of labels an expression is evaluated against: a template's
/// capabilities or a static worker's labels.
///
/// Implemented for `BTreeSet` and `HashSet` of `String` or `&str`, for
/// slices and `Vec`s of anything `AsRef<str>`; use
/// [`LabelExpr::matches_with`] for a closure.
pub trait LabelSet {
    /// Whether `label` is in the set.
    fn contains_label(&self, label: &str) -> bool;
}

impl LabelSet for BTreeSet<String> {
    fn contains_label(&self, label: &str) -> bool {
        self.contains(label)
    }
}

impl LabelSet for BTreeSet<&str> {
    fn contains_label(&self, label: &str) -> bool {
        self.contains(label)
    }
}

impl<H: BuildHasher> LabelSet for HashSet<String, H> {
    fn contains_label(&self, label: &str) -> bool {
        self.contains(label)
    }
}

impl<H: BuildHasher> LabelSet for HashSet<&str, H> {
    fn contains_label(&self, label: &str) -> bool {
        self.contains(label)
    }
}

impl<S: AsRef<str>> LabelSet for [S] {
    fn contains_label(&self, label: &str) -> bool {
        self.iter().any(|s| s.as_ref() == label)
    }
}

impl<S: AsRef<str>> LabelSet for Vec<S> {
    fn contains_label(&self, label: &str) -> bool {
        self.as_slice().contains_label(label)
    }
}

impl<S: AsRef<str>, const N: usize> LabelSet for [S; N] {
    fn contains_label(&self, label: &str) -> bool {
        self.as_slice().contains_label(label)
    }
}

/// A label whose presence or absence decides an evaluation, as returned by
/// [`LabelExpr::explain`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LabelFact<'a> {
    /// The label, borrowed from the expression.
    pub label: &'a str,
    /// Whether the label set contains it.
    pub present: bool,
}

impl fmt::Display for LabelFact<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.present {
            write!(f, "has {}", AtomDisplay(self.label))
        } else {
            write!(f, "lacks {}", AtomDisplay(self.label))
        }
    }
}

impl LabelExpr {
    /// Parses a label expression with Jenkins' grammar (see the module docs).
    ///
    /// # Errors
    /// [`LabelExprError`] with the 1-based column of the offending token and
    /// a message saying what was expected there.
    pub fn parse(input: &str) -> Result<LabelExpr, LabelExprError> {
        let tokens = lex(input)?;
        let mut p = Parser { tokens, pos: 0 };
        let (expr, _) = p.iff(0)?;
        match p.peek() {
            Tok::End => Ok(expr),
            Tok::RParen => Err(p.error_here("unexpected ')' without a matching '('".into())),
            _ => Err(p.error_here(format!(
                "expected '&&', '||', '->', '<->' or the end of the expression, found {}",
                p.peek().describe()
            ))),
        }
    }

    /// A single-label expression.
    pub fn atom(label: impl Into<String>) -> LabelExpr {
        LabelExpr::Atom(label.into())
    }

    /// Evaluates the expression: an atom is true when `labels` contains it.
    ///
    /// ```
    /// use hodei_domain::label::LabelExpr;
    /// let e = LabelExpr::parse("docker -> linux")?;
    /// assert!(e.matches(&["docker", "linux"]));
    /// assert!(e.matches(&["windows"]));
    /// assert!(!e.matches(&["docker"]));
    /// # Ok::<(), hodei_domain::label::LabelExprError>(())
    /// ```
    pub fn matches<L: LabelSet + ?Sized>(&self, labels: &L) -> bool {
        self.matches_with(&|label| labels.contains_label(label))
    }

    /// Evaluates the expression with `has(label)` deciding each atom.
    pub fn matches_with<F: Fn(&str) -> bool + ?Sized>(&self, has: &F) -> bool {
        match self {
            LabelExpr::Atom(a) => has(a),
            LabelExpr::Not(e) => !e.matches_with(has),
            LabelExpr::And(l, r) => l.matches_with(has) && r.matches_with(has),
            LabelExpr::Or(l, r) => l.matches_with(has) || r.matches_with(has),
            LabelExpr::Implies(l, r) => !l.matches_with(has) || r.matches_with(has),
            LabelExpr::Iff(l, r) => l.matches_with(has) == r.matches_with(has),
        }
    }

    /// The distinct labels the expression mentions, sorted.
    pub fn atoms(&self) -> BTreeSet<&str> {
        let mut out = BTreeSet::new();
        self.collect_atoms(&mut out);
        out
    }

    fn collect_atoms<'a>(&'a self, out: &mut BTreeSet<&'a str>) {
        match self {
            LabelExpr::Atom(a) => {
                out.insert(a.as_str());
            }
            LabelExpr::Not(e) => e.collect_atoms(out),
            LabelExpr::And(l, r)
            | LabelExpr::Or(l, r)
            | LabelExpr::Implies(l, r)
            | LabelExpr::Iff(l, r) => {
                l.collect_atoms(out);
                r.collect_atoms(out);
            }
        }
    }

    /// Why the expression evaluates as it does against `labels`: a small
    /// set of labels whose presence or absence is enough to decide the
    /// result, sorted. For `linux && java-17` against `{linux, node-18}`
    /// that is `[lacks java-17]`.
    pub fn explain<L: LabelSet + ?Sized>(&self, labels: &L) -> Vec<LabelFact<'_>> {
        let has = |label: &str| labels.contains_label(label);
        let mut facts = Vec::new();
        let value = self.matches_with(&has);
        self.witness(value, &has, &mut facts);
        facts.sort_unstable();
        facts.dedup();
        facts
    }

    /// Adds to `facts` labels that make `self` evaluate to `value` (which it
    /// does).
    fn witness<'a>(
        &'a self,
        value: bool,
        has: &dyn Fn(&str) -> bool,
        facts: &mut Vec<LabelFact<'a>>,
    ) {
        match self {
            LabelExpr::Atom(a) => {
                facts.push(LabelFact {
                    label: a,
                    present: value,
                });
            }
            LabelExpr::Not(e) => e.witness(!value, has, facts),
            LabelExpr::And(l, r) | LabelExpr::Or(l, r) => {
                let is_and = matches!(self, LabelExpr::And(..));
                if value == is_and {
                    // and: both true; or: both false.
                    l.witness(value, has, facts);
                    r.witness(value, has, facts);
                } else if l.matches_with(has) == value {
                    l.witness(value, has, facts);
                } else {
                    r.witness(value, has, facts);
                }
            }
            LabelExpr::Implies(l, r) => {
                if !value {
                    l.witness(true, has, facts);
                    r.witness(false, has, facts);
                } else if !l.matches_with(has) {
                    l.witness(false, has, facts);
                } else {
                    r.witness(true, has, facts);
                }
            }
            LabelExpr::Iff(l, r) => {
                let lv = l.matches_with(has);
                l.witness(lv, has, facts);
                r.witness(lv == value, has, facts);
            }
        }
    }

    /// Binding strength for printing: higher binds tighter.
    fn precedence(&self) -> u8 {
        match self {
            LabelExpr::Iff(..) => 1,
            LabelExpr::Implies(..) => 2,
            LabelExpr::Or(..) => 3,
            LabelExpr::And(..) => 4,
            LabelExpr::Not(_) => 5,
            LabelExpr::Atom(_) => 6,
        }
    }
}

/// Prints `e` in parentheses unless its precedence is at least `min`.
struct Operand<'a>(&'a LabelExpr, u8);

impl fmt::Display for Operand<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.precedence() >= self.1 {
            write!(f, "{}", self.0)
        } else {
            write!(f, "({})", self.0)
        }
    }
}

impl fmt::Display for LabelExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.precedence();
        match self {
            LabelExpr::Atom(a) => write!(f, "{}", AtomDisplay(a)),
            // `!` takes only a label or a parenthesised expression.
            LabelExpr::Not(e) => write!(f, "!{}", Operand(e, 6)),
            // Left-associative operators: the left operand may be the same
            // operator without parentheses, the right one may not.
            LabelExpr::And(l, r) => write!(f, "{} && {}", Operand(l, p), Operand(r, p + 1)),
            LabelExpr::Or(l, r) => write!(f, "{} || {}", Operand(l, p), Operand(r, p + 1)),
            LabelExpr::Iff(l, r) => write!(f, "{} <-> {}", Operand(l, p), Operand(r, p + 1)),
            // Not chainable: neither operand may be an implication.
            LabelExpr::Implies(l, r) => {
                write!(f, "{} -> {}", Operand(l, p + 1), Operand(r, p + 1))
            }
        }
    }
}

/// Serializes as the canonical string.
impl serde::Serialize for LabelExpr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Deserializes from a string with [`LabelExpr::parse`].
impl<'de> serde::Deserialize<'de> for LabelExpr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <String as serde::Deserialize>::deserialize(deserializer)?;
        LabelExpr::parse(&s)
            .map_err(|e| serde::de::Error::custom(format!("invalid label expression {s:?}: {e}")))
    }
}

/// Whether `c` may appear in an unquoted atom.
fn is_atom_char(c: char) -> bool {
    !matches!(
        c,
        '&' | '|' | '!' | '<' | '>' | '(' | ')' | '"' | '\'' | ' ' | '\t'
    )
}

/// Prints an atom bare when it lexes back as the same single atom and is
/// readable, else as a double-quoted string.
struct AtomDisplay<'a>(&'a str);

impl fmt::Display for AtomDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let a = self.0;
        let bare = !a.is_empty()
            && a.chars()
                .all(|c| is_atom_char(c) && !c.is_whitespace() && !c.is_control());
        if bare {
            return f.write_str(a);
        }
        f.write_str("\"")?;
        for c in a.chars() {
            match c {
                '"' => f.write_str("\\\"")?,
                '\\' => f.write_str("\\\\")?,
                '\u{8}' => f.write_str("\\b")?,
                '\t' => f.write_str("\\t")?,
                '\n' => f.write_str("\\n")?,
                '\u{c}' => f.write_str("\\f")?,
                '\r' => f.write_str("\\r")?,
                c => write!(f, "{c}")?,
            }
        }
        f.write_str("\"")
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Atom(String),
    Str(String),
    And,
    Or,
    Not,
    Implies,
    Iff,
    LParen,
    RParen,
    End,
}

impl Tok {
    fn describe(&self) -> String {
        match self {
            Tok::Atom(a) => format!("label {a:?}"),
            Tok::Str(s) => format!("string {s:?}"),
            Tok::And => "'&&'".into(),
            Tok::Or => "'||'".into(),
            Tok::Not => "'!'".into(),
            Tok::Implies => "'->'".into(),
            Tok::Iff => "'<->'".into(),
            Tok::LParen => "'('".into(),
            Tok::RParen => "')'".into(),
            Tok::End => "the end of the expression".into(),
        }
    }
}

fn err(column: usize, message: impl Into<String>) -> LabelExprError {
    LabelExprError {
        column,
        message: message.into(),
    }
}

/// Splits `input` into tokens, each with its 1-based character column.
fn lex(input: &str) -> Result<Vec<(Tok, usize)>, LabelExprError> {
    let chars: Vec<char> = input.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let column = i + 1;
        let next = chars.get(i + 1).copied();
        let tok = match chars[i] {
            ' ' | '\t' => {
                i += 1;
                continue;
            }
            '&' if next == Some('&') => {
                i += 2;
                Tok::And
            }
            '&' => return Err(err(column, "expected '&&', found a single '&'")),
            '|' if next == Some('|') => {
                i += 2;
                Tok::Or
            }
            '|' => return Err(err(column, "expected '||', found a single '|'")),
            '!' => {
                i += 1;
                Tok::Not
            }
            '(' => {
                i += 1;
                Tok::LParen
            }
            ')' => {
                i += 1;
                Tok::RParen
            }
            '-' if next == Some('>') => {
                i += 2;
                Tok::Implies
            }
            '<' if next == Some('-') && chars.get(i + 2) == Some(&'>') => {
                i += 3;
                Tok::Iff
            }
            '<' => {
                let found = if next == Some('-') { "'<-'" } else { "'<'" };
                return Err(err(column, format!("expected '<->', found {found}")));
            }
            '>' => return Err(err(column, "unexpected '>', expected '->' or '<->'")),
            '\'' => {
                return Err(err(
                    column,
                    "single quotes are not allowed, quote labels with double quotes",
                ));
            }
            '"' => {
                let (s, end) = lex_string(&chars, i)?;
                i = end;
                Tok::Str(s)
            }
            _ => {
                let start = i;
                while i < chars.len()
                    && is_atom_char(chars[i])
                    && !(chars[i] == '-' && chars.get(i + 1) == Some(&'>'))
                {
                    i += 1;
                }
                Tok::Atom(chars[start..i].iter().collect())
            }
        };
        tokens.push((tok, column));
    }
    tokens.push((Tok::End, chars.len() + 1));
    Ok(tokens)
}

/// Reads the double-quoted string starting at `chars[start]`; returns its
/// value and the index just past the closing quote.
fn lex_string(chars: &[char], start: usize) -> Result<(String, usize), LabelExprError> {
    let mut out = String::new();
    let mut i = start + 1;
    loop {
        match chars.get(i) {
            None | Some('\r' | '\n') => {
                return Err(err(
                    start + 1,
                    "unterminated string, expected a closing '\"' on the same line",
                ));
            }
            Some('"') => return Ok((out, i + 1)),
            Some('\\') => {
                let c = match chars.get(i + 1) {
                    Some('b') => '\u{8}',
                    Some('t') => '\t',
                    Some('n') => '\n',
                    Some('f') => '\u{c}',
                    Some('r') => '\r',
                    Some('"') => '"',
                    Some('\'') => '\'',
                    Some('\\') => '\\',
                    Some(c) => {
                        return Err(err(
                            i + 1,
                            format!(
                                "unknown escape '\\{c}', expected one of \\b \\t \\n \\f \\r \\\" \\' \\\\"
                            ),
                        ));
                    }
                    None => {
                        return Err(err(
                            start + 1,
                            "unterminated string, expected a closing '\"' on the same line",
                        ));
                    }
                };
                out.push(c);
                i += 2;
            }
            Some(&c) => {
                out.push(c);
                i += 1;
            }
        }
    }
}

struct Parser {
    tokens: Vec<(Tok, usize)>,
    pos: usize,
}

type Parsed = (LabelExpr, usize);

impl Parser {
    fn peek(&self) -> &Tok {
        // The token list always ends with `End`, and `pos` never moves past it.
        &self.tokens[self.pos.min(self.tokens.len() - 1)].0
    }

    fn column(&self) -> usize {
        self.tokens[self.pos.min(self.tokens.len() - 1)].1
    }

    fn bump(&mut self) {
        if self.pos + 1 < self.tokens.len() {
            self.pos += 1;
        }
    }

    fn error_here(&self, message: String) -> LabelExprError {
        err(self.column(), message)
    }

    fn check_depth(&self, depth: usize, column: usize) -> Result<usize, LabelExprError> {
        if depth > MAX_DEPTH {
            Err(err(
                column,
                format!("expression nested too deeply, expected at most {MAX_DEPTH} levels"),
            ))
        } else {
            Ok(depth)
        }
    }

    /// Parses a left-associative chain of `op` over `operand`.
    fn chain(
        &mut self,
        nesting: usize,
        op: &Tok,
        operand: fn(&mut Parser, usize) -> Result<Parsed, LabelExprError>,
        build: fn(Box<LabelExpr>, Box<LabelExpr>) -> LabelExpr,
    ) -> Result<Parsed, LabelExprError> {
        let (mut left, mut depth) = operand(self, nesting)?;
        while self.peek() == op {
            let column = self.column();
            self.bump();
            let (right, rdepth) = operand(self, nesting)?;
            depth = self.check_depth(1 + depth.max(rdepth), column)?;
            left = build(Box::new(left), Box::new(right));
        }
        Ok((left, depth))
    }

    fn iff(&mut self, nesting: usize) -> Result<Parsed, LabelExprError> {
        self.chain(nesting, &Tok::Iff, Parser::implies, LabelExpr::Iff)
    }

    fn implies(&mut self, nesting: usize) -> Result<Parsed, LabelExprError> {
        let (left, ldepth) = self.or(nesting)?;
        if *self.peek() != Tok::Implies {
            return Ok((left, ldepth));
        }
        let column = self.column();
        self.bump();
        let (right, rdepth) = self.or(nesting)?;
        if *self.peek() == Tok::Implies {
            return Err(self.error_here(
                "'->' cannot be chained, add parentheses: (a -> b) -> c or a -> (b -> c)".into(),
            ));
        }
        let depth = self.check_depth(1 + ldepth.max(rdepth), column)?;
        Ok((LabelExpr::Implies(Box::new(left), Box::new(right)), depth))
    }

    fn or(&mut self, nesting: usize) -> Result<Parsed, LabelExprError> {
        self.chain(nesting, &Tok::Or, Parser::and, LabelExpr::Or)
    }

    fn and(&mut self, nesting: usize) -> Result<Parsed, LabelExprError> {
        self.chain(nesting, &Tok::And, Parser::unary, LabelExpr::And)
    }

    fn unary(&mut self, nesting: usize) -> Result<Parsed, LabelExprError> {
        if *self.peek() != Tok::Not {
            return self.primary(nesting);
        }
        let column = self.column();
        self.bump();
        if *self.peek() == Tok::Not {
            return Err(self.error_here(
                "expected a label or '(' after '!', found '!' (write !(!a) to negate twice)".into(),
            ));
        }
        let (e, depth) = self.primary(nesting)?;
        let depth = self.check_depth(depth + 1, column)?;
        Ok((LabelExpr::Not(Box::new(e)), depth))
    }

    fn primary(&mut self, nesting: usize) -> Result<Parsed, LabelExprError> {
        let column = self.column();
        match self.peek().clone() {
            Tok::Atom(a) | Tok::Str(a) => {
                self.bump();
                Ok((LabelExpr::Atom(a), 1))
            }
            Tok::LParen => {
                self.check_depth(nesting + 1, column)?;
                self.bump();
                let (e, depth) = self.iff(nesting + 1)?;
                if *self.peek() != Tok::RParen {
                    return Err(self.error_here(format!(
                        "expected ')' to close the '(' at column {column}, found {}",
                        self.peek().describe()
                    )));
                }
                self.bump();
                Ok((e, depth))
            }
            Tok::End if self.pos == 0 => {
                Err(self.error_here("empty expression, expected a label, '!' or '('".into()))
            }
            other => Err(self.error_here(format!(
                "expected a label, '!' or '(', found {}",
                other.describe()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> LabelExpr {
        LabelExpr::atom(s)
    }
    fn not(e: LabelExpr) -> LabelExpr {
        LabelExpr::Not(Box::new(e))
    }
    fn and(l: LabelExpr, r: LabelExpr) -> LabelExpr {
        LabelExpr::And(Box::new(l), Box::new(r))
    }
    fn or(l: LabelExpr, r: LabelExpr) -> LabelExpr {
        LabelExpr::Or(Box::new(l), Box::new(r))
    }
    fn implies(l: LabelExpr, r: LabelExpr) -> LabelExpr {
        LabelExpr::Implies(Box::new(l), Box::new(r))
    }
    fn iff(l: LabelExpr, r: LabelExpr) -> LabelExpr {
        LabelExpr::Iff(Box::new(l), Box::new(r))
    }

    /// Parses `input`; on success compares the tree and the canonical
    /// printing (which must parse back to the same tree), on failure the
    /// error's `column N: message`.
    fn check(input: &str, expected: Result<(LabelExpr, &str), &str>) {
        match (LabelExpr::parse(input), expected) {
            (Ok(got), Ok((tree, printed))) => {
                assert_eq!(got, tree, "tree of {input:?}");
                assert_eq!(got.to_string(), printed, "printing of {input:?}");
                assert_eq!(
                    LabelExpr::parse(printed).as_ref(),
                    Ok(&tree),
                    "reparse of {printed:?}"
                );
            }
            (Err(e), Err(msg)) => assert_eq!(e.to_string(), msg, "error for {input:?}"),
            (got, want) => panic!("{input:?}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn atoms() {
        check("linux", Ok((a("linux"), "linux")));
        check("java-11", Ok((a("java-11"), "java-11")));
        check("32bit.dot", Ok((a("32bit.dot"), "32bit.dot")));
        check("solaris-x86", Ok((a("solaris-x86"), "solaris-x86")));
        check("  padded\t", Ok((a("padded"), "padded")));
        check("k=v:x/y@z", Ok((a("k=v:x/y@z"), "k=v:x/y@z")));
        check("-", Ok((a("-"), "-")));
        check("a-", Ok((a("a-"), "a-")));
        check("mañana", Ok((a("mañana"), "mañana")));
        check("(linux)", Ok((a("linux"), "linux")));
        check("((linux))", Ok((a("linux"), "linux")));
    }

    #[test]
    fn quoted_atoms() {
        check("\"linux\"", Ok((a("linux"), "linux")));
        check("\"has space\"", Ok((a("has space"), "\"has space\"")));
        check("\"a&&b\"", Ok((a("a&&b"), "\"a&&b\"")));
        check("\"\"", Ok((a(""), "\"\"")));
        check(
            r#""q\"uote\\back\'s\ttab\nnl""#,
            Ok((
                a("q\"uote\\back's\ttab\nnl"),
                r#""q\"uote\\back's\ttab\nnl""#,
            )),
        );
        check(r#""\b\f\r""#, Ok((a("\u{8}\u{c}\r"), r#""\b\f\r""#)));
        check("\"it's\"", Ok((a("it's"), "\"it's\"")));
        check("\"a->b\"", Ok((a("a->b"), "\"a->b\"")));
        check(
            "\"x\" && \"y z\"",
            Ok((and(a("x"), a("y z")), "x && \"y z\"")),
        );
    }

    #[test]
    fn implication_and_minus() {
        check("a->b", Ok((implies(a("a"), a("b")), "a -> b")));
        check("a-->b", Ok((implies(a("a-"), a("b")), "a- -> b")));
        check(
            "a - > b",
            Err("column 5: unexpected '>', expected '->' or '<->'"),
        );
        check("a<->b", Ok((iff(a("a"), a("b")), "a <-> b")));
        check("a<-->b", Err("column 2: expected '<->', found '<-'"));
    }

    #[test]
    fn precedence() {
        check(
            "a || b && c",
            Ok((or(a("a"), and(a("b"), a("c"))), "a || b && c")),
        );
        check(
            "a && b || c",
            Ok((or(and(a("a"), a("b")), a("c")), "a && b || c")),
        );
        check(
            "(a || b) && c",
            Ok((and(or(a("a"), a("b")), a("c")), "(a || b) && c")),
        );
        check("!a && b", Ok((and(not(a("a")), a("b")), "!a && b")));
        check("!(a && b)", Ok((not(and(a("a"), a("b"))), "!(a && b)")));
        check(
            "a || b -> c && d",
            Ok((
                implies(or(a("a"), a("b")), and(a("c"), a("d"))),
                "a || b -> c && d",
            )),
        );
        check(
            "a -> b <-> c -> d",
            Ok((
                iff(implies(a("a"), a("b")), implies(a("c"), a("d"))),
                "a -> b <-> c -> d",
            )),
        );
        check(
            "a <-> b || c",
            Ok((iff(a("a"), or(a("b"), a("c"))), "a <-> b || c")),
        );
        check(
            "(a <-> b) && c",
            Ok((and(iff(a("a"), a("b")), a("c")), "(a <-> b) && c")),
        );
        check("!(!a)", Ok((not(not(a("a"))), "!(!a)")));
    }

    #[test]
    fn associativity() {
        check(
            "a && b && c",
            Ok((and(and(a("a"), a("b")), a("c")), "a && b && c")),
        );
        check(
            "a && (b && c)",
            Ok((and(a("a"), and(a("b"), a("c"))), "a && (b && c)")),
        );
        check(
            "a || b || c",
            Ok((or(or(a("a"), a("b")), a("c")), "a || b || c")),
        );
        check(
            "a <-> b <-> c",
            Ok((iff(iff(a("a"), a("b")), a("c")), "a <-> b <-> c")),
        );
        check(
            "a <-> (b <-> c)",
            Ok((iff(a("a"), iff(a("b"), a("c"))), "a <-> (b <-> c)")),
        );
        check(
            "(a -> b) -> c",
            Ok((implies(implies(a("a"), a("b")), a("c")), "(a -> b) -> c")),
        );
        check(
            "a -> (b -> c)",
            Ok((implies(a("a"), implies(a("b"), a("c"))), "a -> (b -> c)")),
        );
    }

    #[test]
    fn syntax_errors_name_the_column() {
        check(
            "foo bar",
            Err(
                "column 5: expected '&&', '||', '->', '<->' or the end of the expression, found label \"bar\"",
            ),
        );
        check(
            "foo (bar)",
            Err(
                "column 5: expected '&&', '||', '->', '<->' or the end of the expression, found '('",
            ),
        );
        check("a <- b", Err("column 3: expected '<->', found '<-'"));
        check("a < b", Err("column 3: expected '<->', found '<'"));
        check(
            "->",
            Err("column 1: expected a label, '!' or '(', found '->'"),
        );
        check(
            "a -> b -> c",
            Err(
                "column 8: '->' cannot be chained, add parentheses: (a -> b) -> c or a -> (b -> c)",
            ),
        );
        check(
            "",
            Err("column 1: empty expression, expected a label, '!' or '('"),
        );
        check(
            "   ",
            Err("column 4: empty expression, expected a label, '!' or '('"),
        );
        check(
            "a &&",
            Err("column 5: expected a label, '!' or '(', found the end of the expression"),
        );
        check("a & b", Err("column 3: expected '&&', found a single '&'"));
        check("a | b", Err("column 3: expected '||', found a single '|'"));
        check(
            "(a",
            Err(
                "column 3: expected ')' to close the '(' at column 1, found the end of the expression",
            ),
        );
        check("a)", Err("column 2: unexpected ')' without a matching '('"));
        check(
            "()",
            Err("column 2: expected a label, '!' or '(', found ')'"),
        );
        check(
            "!!a",
            Err(
                "column 2: expected a label or '(' after '!', found '!' (write !(!a) to negate twice)",
            ),
        );
        check(
            "a > b",
            Err("column 3: unexpected '>', expected '->' or '<->'"),
        );
        check(
            "'a'",
            Err("column 1: single quotes are not allowed, quote labels with double quotes"),
        );
        check(
            "x && \"abc",
            Err("column 6: unterminated string, expected a closing '\"' on the same line"),
        );
        check(
            "\"a\nb\"",
            Err("column 1: unterminated string, expected a closing '\"' on the same line"),
        );
        check(
            r#""a\qb""#,
            Err(r#"column 3: unknown escape '\q', expected one of \b \t \n \f \r \" \' \\"#),
        );
        check(
            "é && ->",
            Err("column 6: expected a label, '!' or '(', found '->'"),
        );
        check(
            "a && && b",
            Err("column 6: expected a label, '!' or '(', found '&&'"),
        );
    }

    #[test]
    fn depth_is_bounded() {
        let deep = format!("{}a{}", "(".repeat(10_000), ")".repeat(10_000));
        let e = LabelExpr::parse(&deep).unwrap_err();
        assert_eq!(e.column, MAX_DEPTH + 1);
        let long = vec!["a"; 10_000].join(" && ");
        assert!(LabelExpr::parse(&long).is_err());
        let ok = vec!["a"; MAX_DEPTH].join(" || ");
        assert!(LabelExpr::parse(&ok).is_ok());
    }

    /// Evaluates `expr` against `labels` and compares with `expected`.
    fn eval(expr: &str, labels: &[&str], expected: bool) {
        let e = LabelExpr::parse(expr).unwrap();
        assert_eq!(e.matches(labels), expected, "{expr:?} against {labels:?}");
    }

    #[test]
    fn evaluation() {
        eval("linux", &["linux"], true);
        eval("linux", &["windows"], false);
        eval("!linux", &["windows"], true);
        eval("!linux", &["linux"], false);
        eval("a && b", &["a", "b"], true);
        eval("a && b", &["a"], false);
        eval("a || b", &["b"], true);
        eval("a || b", &[], false);
        for (l, r, want) in [
            (false, false, true),
            (false, true, true),
            (true, false, false),
            (true, true, true),
        ] {
            let labels: Vec<&str> = [l.then_some("a"), r.then_some("b")]
                .into_iter()
                .flatten()
                .collect();
            eval("a -> b", &labels, want);
            eval("a <-> b", &labels, l == r);
        }
        // Precedence: `a || b && c` is `a || (b && c)`.
        eval("a || b && c", &["a"], true);
        eval("(a || b) && c", &["a"], false);
        // `!` binds tighter than `&&`.
        eval("!a && b", &["b"], true);
        eval("!(a && b)", &["a"], true);
        // The two readings of a chained `->` differ at a=F, b=T, c=F, which
        // is why the grammar refuses the chain.
        eval("(a -> b) -> c", &["b"], false);
        eval("a -> (b -> c)", &["b"], true);
        // `->` binds tighter than `<->`.
        eval("a <-> b -> c", &["a", "b"], false);
        eval("(a <-> b) -> c", &["a", "b"], false);
        eval("a <-> b -> c", &[], false);
        eval("(a <-> b) -> c", &[], false);
        eval("a <-> b -> c", &["a", "c"], true);
        eval("\"two words\"", &["two words"], true);
    }

    #[test]
    fn atoms_are_sorted_and_distinct() {
        let e = LabelExpr::parse("z && (a || !z) -> \"m m\"").unwrap();
        assert_eq!(e.atoms().into_iter().collect::<Vec<_>>(), ["a", "m m", "z"]);
    }

    fn explain(expr: &str, labels: &[&str], expected: &[&str]) {
        let e = LabelExpr::parse(expr).unwrap();
        let got: Vec<String> = e.explain(labels).iter().map(ToString::to_string).collect();
        assert_eq!(got, expected, "{expr:?} against {labels:?}");
    }

    #[test]
    fn explanations() {
        explain(
            "linux && java-17",
            &["linux", "node-18"],
            &["lacks java-17"],
        );
        explain(
            "linux && java-17",
            &["linux", "java-17"],
            &["has java-17", "has linux"],
        );
        explain(
            "java-17 || java-21",
            &["linux"],
            &["lacks java-17", "lacks java-21"],
        );
        explain("!windows", &["windows"], &["has windows"]);
        explain(
            "docker -> linux",
            &["docker"],
            &["has docker", "lacks linux"],
        );
        explain("a <-> b", &["a"], &["has a", "lacks b"]);
        explain("\"x y\"", &[], &["lacks \"x y\""]);
    }

    #[test]
    fn label_sets() {
        let e = LabelExpr::parse("a && !b").unwrap();
        let owned: BTreeSet<String> = ["a".to_owned()].into();
        let borrowed: BTreeSet<&str> = ["a"].into();
        let hashed: HashSet<String> = ["a".to_owned(), "b".to_owned()].into();
        assert!(e.matches(&owned));
        assert!(e.matches(&borrowed));
        assert!(!e.matches(&hashed));
        assert!(e.matches(&vec!["a".to_owned()]));
        assert!(e.matches_with(&|l| l == "a"));
    }
}
